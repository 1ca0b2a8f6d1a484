"""Where the ``commandbus`` command starts: the console script and ``python -m
commandbus.cli`` call :func:`main`.

Its first action is to handle SIGINT and SIGTERM; only then is the command line
itself imported (click, psycopg, the library: a few hundred milliseconds). A
stop from there until a command takes the signals over ends the process with
one line, ``error: stopped before it was ready (SIGTERM while starting)``, and
exit status 1, instead of a KeyboardInterrupt traceback (SIGINT) or a silent
death by the signal (SIGTERM). Then:

* a long-running command (``worker``, ``coordinator``, ``web``) carries on with
  :func:`commandbus.cli.serving.starting`, which takes the signals over with
  :func:`take_over` and keeps the same behaviour until it serves;
* any other command gets the handlers from before back as it begins
  (:func:`hand_back`), so it stops as it always did (SIGINT: ``error: aborted``);
* if the command line ends before either (``--help``, a usage error), further
  stops are ignored while the process exits.

Light on purpose: this module imports the standard library's signal handling
only, as ``commandbus`` and ``commandbus.cli`` import next to nothing.
"""

from __future__ import annotations

import signal
import sys
import threading

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    from types import FrameType
    from typing import Any

#: The signals that stop a command (gracefully once a long-running one serves).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StoppedWhileStarting(BaseException):
    """SIGINT or SIGTERM while a command starts, raised where the command was
    (importing the command line or the application, say) as KeyboardInterrupt is:
    a BaseException, so the ``except Exception`` of an import does not take it.
    It ends the command with :func:`stopped_message`, exit status 1."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def stopped_message(signum: int) -> str:
    """What a command stopped by ``signum`` before it served says (after ``error:``)."""
    return f"stopped before it was ready ({signal.Signals(signum).name} while starting)"


class EarlyStops:
    """The SIGINT/SIGTERM handler from the first line of :func:`main` until a
    command takes the signals over or gets the previous handlers back."""

    def __init__(self) -> None:
        self.signum: int | None = None  # the stop that came
        self.previous: dict[signal.Signals, Any] = {}  # the handlers it replaced

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:
            return  # the command is ending already
        self.signum = signum
        raise StoppedWhileStarting(signum)


_early: EarlyStops | None = None


def take_over() -> EarlyStops | None:
    """For :func:`commandbus.cli.serving.starting`, once its own handler is installed:
    the start-up handling of :func:`main` ends, and its state is returned (the
    handlers from before it, to put back; a stop it took whose exception was
    swallowed, which must end the command at once). ``None`` when the command line
    did not start from :func:`main` (called in-process) or it was taken over."""
    global _early
    early, _early = _early, None
    return early


def hand_back() -> None:
    """For a command that is not long-running, as it begins: the handlers from
    before :func:`main` go back, so it stops as it always did. A stop that came
    already (its exception swallowed by what ran) ends it now instead."""
    early = _early
    if early is None or threading.current_thread() is not threading.main_thread():
        return
    if early.signum is not None:
        raise StoppedWhileStarting(early.signum)  # still armed: main() ends the process
    take_over()
    for sig, handler in early.previous.items():
        if handler is not None:  # None: not set from Python, nothing to put back
            signal.signal(sig, handler)


def _arm() -> None:
    global _early
    if threading.current_thread() is not threading.main_thread():
        return  # (called from a thread, as a test might): signals are the main thread's
    early = _early = EarlyStops()  # first: a stop while they are installed ends it too
    for sig in STOP_SIGNALS:
        early.previous[sig] = signal.signal(sig, early)


def main() -> None:
    """The ``commandbus`` command: handles stops first, then runs the command line."""
    try:
        try:
            _arm()
            from commandbus.cli.main import main as command_line

            command_line()
        finally:
            early = take_over()
            if early is not None:
                # no command took the signals over (it was stopped, or --help, a
                # usage error): the process ends, and further stops are ignored at
                # the system level (Python puts its own handlers back to the default
                # action as it finalises: a SIGTERM then would kill it with -15)
                for sig in STOP_SIGNALS:
                    signal.signal(sig, signal.SIG_IGN)
                if early.signum is not None:  # (raised again if it was swallowed)
                    raise StoppedWhileStarting(early.signum)
    except StoppedWhileStarting as exc:
        print(f"error: {stopped_message(exc.signum)}", file=sys.stderr, flush=True)
        sys.exit(1)
