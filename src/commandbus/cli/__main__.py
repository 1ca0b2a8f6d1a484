"""``python -m commandbus.cli``: the same as the ``commandbus`` console script."""

from commandbus.cli.entry import main

main()
