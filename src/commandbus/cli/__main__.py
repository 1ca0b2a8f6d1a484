"""``python -m commandbus.cli``."""

from commandbus.cli.main import main

main()
