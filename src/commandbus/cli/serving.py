"""What ``commandbus worker`` and ``commandbus coordinator`` share: finding the
application (``--app module:attribute``), their logging options, and running a
consumer until a signal."""

from __future__ import annotations

import asyncio
import difflib
import importlib
import logging
import signal
import sys
from typing import Any, Protocol, TypeVar

from commandbus.cli._common import CLIError, errors_as_json
from commandbus.engine.observability.logging import configure_logging

S = TypeVar("S", covariant=True)

log = logging.getLogger("commandbus.cli")


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
    ``--log-format``; the runner logs its own summary when it ends, once.
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

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    announcing = asyncio.create_task(announce(), name="commandbus-cli-banner")
    try:
        result = await runner.run()
        if not runner.ready.is_set():
            # a stop before it was ready (still connecting): it never served anything, and a
            # supervisor (systemd, an orchestrator) should see that as a failure
            raise CLIError("stopped before it was ready (connected to the database and listening)")
        return result
    finally:
        announcing.cancel()
        await asyncio.gather(announcing, return_exceptions=True)
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
