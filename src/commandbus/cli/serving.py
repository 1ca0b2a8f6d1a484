"""What ``commandbus worker`` and ``commandbus coordinator`` share: finding the
application (``--app module:attribute``) and running a consumer until a signal."""

from __future__ import annotations

import asyncio
import importlib
import signal
import sys
from typing import Any, Protocol, TypeVar

import click

from commandbus.cli._common import CLIError

S = TypeVar("S", covariant=True)


def import_app(spec: str, what: str) -> Any:
    """Import ``module:attribute`` (from the working directory too) and return it.

    ``what`` names the expected attribute in the one-line refusals.
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name.strip() or not attr.strip():
        raise CLIError(f"--app must look like 'package.module:{what}', got {spec!r}")
    if "." not in sys.path:
        sys.path.insert(0, ".")  # an application next to where the command runs
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise CLIError(f"cannot import {module_name!r} for --app: {exc}") from exc
    except Exception as exc:  # the user's module failed while being imported
        raise CLIError(
            f"importing {module_name!r} for --app failed: {type(exc).__name__}: {exc}"
        ) from exc
    if not hasattr(module, attr):
        raise CLIError(f"module {module_name!r} has no attribute {attr!r} (--app {spec!r})")
    return getattr(module, attr)


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

    ``banner`` is printed on stderr once it is connected and listening (it checks
    the schema first: an unmigrated database is a one-line error). The first
    signal asks for a stop with ``grace`` seconds (``stopping`` says so on
    stderr); a second one forces it.
    """
    loop = asyncio.get_running_loop()
    signals = 0

    def on_signal() -> None:
        nonlocal signals
        signals += 1
        if signals == 1:
            click.echo(stopping, err=True)
            runner.request_stop(grace)
        else:
            click.echo("forcing: cancelling what is still running", err=True)
            runner.request_stop(0)

    async def announce() -> None:
        await runner.ready.wait()
        if banner:
            click.echo(banner, err=True)

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    announcing = asyncio.create_task(announce(), name="commandbus-cli-banner")
    try:
        return await runner.run()
    finally:
        announcing.cancel()
        await asyncio.gather(announcing, return_exceptions=True)
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
