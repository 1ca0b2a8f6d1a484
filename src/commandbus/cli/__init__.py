"""The ``commandbus`` command line (see :mod:`commandbus.cli.main`)."""
