"""What ``commandbus worker`` and ``commandbus coordinator`` share: finding the
application (``--app module:attribute``), their logging options, and running a
consumer until a signal, and what a stop signal does before it serves."""

from __future__ import annotations

import asyncio
import difflib
import importlib
import logging
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any, Protocol, TypeVar

from commandbus.cli._common import CLIError, errors_as_json
from commandbus.cli.entry import STOP_SIGNALS as STOP_SIGNALS
from commandbus.cli.entry import StoppedWhileStarting as StoppedWhileStarting
from commandbus.cli.entry import stopped_message, take_over
from commandbus.engine.observability.logging import configure_logging

S = TypeVar("S", covariant=True)

log = logging.getLogger("commandbus.cli")

# STOP_SIGNALS and StoppedWhileStarting are commandbus.cli.entry's, which handles
# the stops from the command line's first line until starting() takes them over.


def stopped_error(signum: int) -> CLIError:
    """The one line of a command stopped by ``signum`` before it served (exit status 1)."""
    return CLIError(stopped_message(signum))


class _StartingStops:
    """The SIGINT/SIGTERM handler of a command from :func:`starting` until it serves."""

    def __init__(self) -> None:
        self.signum: int | None = None  # the stop that came
        self.taken_over = False  # the serving code has the signals now

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        if self.taken_over or self.signum is not None:
            return  # handled by what serves, or the command is ending already
        self.signum = signum
        try:
            asyncio.get_running_loop()
        except RuntimeError:  # no event loop runs: raise where the command is
            raise StoppedWhileStarting(signum) from None
        # an event loop runs (the command's asyncio.run starting to serve): raised
        # here it could land in the loop's own code; take_over_signals() stops instead


_starting: _StartingStops | None = None


@contextmanager
def starting() -> Iterator[None]:
    """The body of a long-running command (``worker``, ``coordinator``, ``web``).

    From here until the serving code installs its own handlers (and calls
    :func:`take_over_signals`), SIGINT and SIGTERM end the command at once with
    :func:`stopped_error` (exit status 1, one line) instead of killing it silently
    (SIGTERM's default action) or with a traceback. Once a stop came, later ones
    are ignored while the command ends. It takes over from the command line's
    own start-up handling (:mod:`commandbus.cli.entry`), which did the same from
    the process's start: a stop that one took and that did not end the command
    (something swallowed its exception) ends it here, before the body runs.
    """
    global _starting
    if threading.current_thread() is not threading.main_thread():
        # (called from a thread, as a test might): signals are the main thread's
        yield
        return
    stops = _starting = _StartingStops()
    previous: dict[signal.Signals, Any] = {}
    try:
        for sig in STOP_SIGNALS:
            previous[sig] = signal.signal(sig, stops)
        early = take_over()  # the command line's start-up handler, replaced just now
        if early is not None:
            previous = dict(early.previous)  # what goes back is what was there before it
            if early.signum is not None:
                stops.signum = early.signum
                raise StoppedWhileStarting(early.signum)
        yield
    except StoppedWhileStarting as exc:
        raise stopped_error(exc.signum) from None
    finally:
        served = stops.taken_over  # the serving code had the signals: it ran
        stops.taken_over = True  # whatever ends the command now, no stop interrupts that
        _starting = None
        if stops.signum is None and not served:
            # it ended before serving, unstopped (a start-up error; a test running
            # it in-process): the previous handlers go back
            for sig, handler in previous.items():
                if handler is not None:  # None: not set from Python, nothing to put back
                    signal.signal(sig, handler)
        else:
            # it served or was stopped, and the process is ending: further stops
            # are ignored, at the system level (Python puts its own handlers back
            # to the default action as it finalises, and a SIGTERM then would kill
            # it with -15 instead of its own status)
            for sig in STOP_SIGNALS:
                signal.signal(sig, signal.SIG_IGN)


def take_over_signals() -> int | None:
    """Called by the serving code (in its event loop) once its own SIGINT/SIGTERM
    handlers are installed: the stop that came since :func:`starting` and was
    not raised (the loop was running), which it must act on at once; later calls
    of :func:`starting`'s handler, if it is installed again, do nothing."""
    if _starting is None:
        return None
    _starting.taken_over = True
    return _starting.signum


def _hand_back_signals() -> None:
    """Put :func:`starting`'s handler back (it ignores stops now): a stop while the
    command ends after serving does not kill it (the status stays its own)."""
    if _starting is not None:
        for sig in STOP_SIGNALS:
            signal.signal(sig, _starting)


def import_app(spec: str, what: str, option: str = "--app") -> Any:
    """Import ``module:attribute`` (from the working directory too) and return it.

    ``attribute`` may be dotted (``module:app.registry``). ``what`` names the
    expected attribute in the one-line refusals (about ``option``), which say
    whether the module is missing, failed while being imported, or lacks the
    attribute.
    """
    module_name, sep, attr = spec.partition(":")
    module_name, attr = module_name.strip(), attr.strip()
    if not sep or not module_name or not attr:
        raise CLIError(f"{option} must look like 'package.module:{what}', got {spec!r}")
    if "." not in sys.path:
        sys.path.insert(0, ".")  # an application next to where the command runs
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and _is_part_of(exc.name, module_name):
            raise CLIError(
                f"cannot import {module_name!r} for {option}: no module named {exc.name!r} "
                "(looked in the current directory and on the Python path)"
            ) from exc
        raise _failed_import(module_name, exc, option) from exc
    except Exception as exc:  # the user's module failed while being imported
        raise _failed_import(module_name, exc, option) from exc
    found: Any = module
    path = module_name
    for part in attr.split("."):
        try:
            found = getattr(found, part)
        except AttributeError:
            owner = f"module {path!r}" if path == module_name else repr(path)
            raise CLIError(
                f"{owner} has no attribute {part!r} ({option} {spec!r}){_close_to(part, found)}"
            ) from None
        except Exception as exc:  # a module __getattr__ or a property that raised
            raise CLIError(
                f"reading {part!r} of {path!r} for {option} failed: {type(exc).__name__}: {exc}"
            ) from exc
        path = f"{path}.{part}"
    return found


def _is_part_of(missing: str, module_name: str) -> bool:
    """Whether ``missing`` is ``module_name`` or one of its parent packages."""
    return module_name == missing or module_name.startswith(missing + ".")


def _close_to(name: str, owner: object) -> str:
    """``"; did you mean 'registry'?"`` when ``owner`` has a name like ``name``."""
    try:
        names = [n for n in dir(owner) if not n.startswith("_")]
    except Exception:  # a __dir__ that raises: no hint
        return ""
    close = difflib.get_close_matches(name, names, n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _failed_import(module_name: str, exc: BaseException, option: str) -> CLIError:
    try:
        lines = str(exc).strip().splitlines()
    except Exception:  # an exception whose __str__ raises
        lines = []
    first = f": {lines[0]}" if lines else ""
    return CLIError(f"importing {module_name!r} for {option} failed: {type(exc).__name__}{first}")


def setup_logging(level: str, log_format: str) -> None:
    """``--log-level`` and ``--log-format``: every logger, the application's too (and
    with ``json``, the command's final error line as well)."""
    configure_logging(level, json=log_format == "json")
    errors_as_json(log_format == "json")


class Servable(Protocol[S]):
    """A worker or a coordinator, as far as running it from the shell goes."""

    @property
    def ready(self) -> asyncio.Event: ...

    def request_stop(self, timeout: float | None = None) -> None: ...

    async def run(self) -> S: ...


async def serve(
    runner: Servable[S],
    *,
    grace: float,
    banner: str | None = None,
    stopping: str = "stopping",
) -> S:
    """Run ``runner`` until SIGINT or SIGTERM, then stop it gracefully.

    ``banner`` is logged once it is connected and listening (it checks the
    schema first: an unmigrated database is a one-line error). The first signal
    asks for a stop with ``grace`` seconds (``stopping`` says so); a second one
    forces it. These lines are log records (``commandbus.cli``), so they follow
    ``--log-format``; the runner logs its own summary when it ends, once. A stop
    that came while the command was starting (see :func:`starting`) ends it here
    before the runner runs.
    """
    loop = asyncio.get_running_loop()
    signals = 0

    def on_signal() -> None:
        nonlocal signals
        signals += 1
        if signals == 1:
            log.info("%s", stopping)
            runner.request_stop(grace)
        else:
            log.warning("forcing: cancelling what is still running")
            runner.request_stop(0)

    async def announce() -> None:
        await runner.ready.wait()
        if banner:
            log.info("%s", banner)

    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, on_signal)
    announcing: asyncio.Task[None] | None = None
    try:
        early = take_over_signals()
        if early is not None:
            raise stopped_error(early)  # it came while starting: nothing runs
        announcing = asyncio.create_task(announce(), name="commandbus-cli-banner")
        result = await runner.run()
        if not runner.ready.is_set():
            # a stop before it was ready (still connecting): it never served anything, and a
            # supervisor (systemd, an orchestrator) should see that as a failure
            raise CLIError("stopped before it was ready (connected to the database and listening)")
        return result
    finally:
        if announcing is not None:
            announcing.cancel()
            await asyncio.gather(announcing, return_exceptions=True)
        for sig in STOP_SIGNALS:
            loop.remove_signal_handler(sig)
        _hand_back_signals()
