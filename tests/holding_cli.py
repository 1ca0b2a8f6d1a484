"""``python tests/holding_cli.py ARGS``: runs ``python -m commandbus.cli ARGS`` as
``-m`` does, holding it while it imports the command line itself, for the tests
of a stop signal then (test_cli_early_stop.py).

The import of :mod:`commandbus.cli.main` (click, psycopg, the library: what
comes after :mod:`commandbus.cli.entry` has installed its handlers) waits: this
prints ``holding at cli import`` on stdout and waits for a stop signal (at most
30 seconds), whose exception ends the wait. With ``HOLDING_SWALLOWS=1`` that
exception is swallowed (as a finalizer or an ``except BaseException`` would),
so the import and the command carry on, and the stop must end the command
where a command takes the signals over.
"""

from __future__ import annotations

import os
import runpy
import sys
import time
from collections.abc import Sequence
from importlib.abc import MetaPathFinder
from importlib.machinery import ModuleSpec
from types import ModuleType

HELD = "commandbus.cli.main"
SWALLOWS = os.environ.get("HOLDING_SWALLOWS") == "1"


class _Hold(MetaPathFinder):
    """Holds the first import of :data:`HELD`, then lets the other finders find it."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if fullname == HELD:
            sys.meta_path.remove(self)
            hold()
        return None


def hold() -> None:
    deadline = time.monotonic() + 30
    try:  # (the signal may come as soon as the line is written)
        print("holding at cli import", flush=True)
        while time.monotonic() < deadline:
            time.sleep(0.01)
    except BaseException as exc:  # the stop, raised by the command line's handler
        if not SWALLOWS or type(exc).__name__ != "StoppedWhileStarting":
            raise


if __name__ == "__main__":
    sys.meta_path.insert(0, _Hold())
    sys.argv[0] = "commandbus"
    runpy.run_module("commandbus.cli", run_name="__main__", alter_sys=True)
