"""Applications that hold ``commandbus worker``, ``coordinator`` or ``web`` at a chosen
point of its start, for the tests of a stop signal then (test_cli_early_stop.py).

``STARTING_AT`` names the point: ``import`` (this module is being imported by
``--app``), ``validate`` (imported; the worker checks the registry's domains) or
``loop`` (the command's event loop runs, before ``serve()`` has installed its
signal handlers). There it prints ``holding at POINT`` on stdout and waits until
the command has taken a stop signal (at most 30 seconds).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from typing import Any

from commandbus import Command, HandlerContext, HandlerRegistry
from commandbus.cli import serving
from commandbus.cli.demo_app import sagas

AT = os.environ.get("STARTING_AT", "")


def hold(point: str) -> None:
    """Say it is at ``point``, then wait for a stop: where the command raises on one
    (outside an event loop), the wait ends with it; in the loop, it ends once the
    command's start-up handler has taken it."""
    print(f"holding at {point}", flush=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        stops = serving._starting
        if stops is not None and stops.signum is not None:
            return
        time.sleep(0.01)


class _HoldingRegistry(HandlerRegistry):
    def validate_for(self, domain: str) -> None:
        if AT == "validate":
            hold("validate")
        super().validate_for(domain)


class _HoldingLoop(asyncio.SelectorEventLoop):
    """Holds in its first add_signal_handler(): serve() installing its handlers."""

    held = False

    def add_signal_handler(  # type: ignore[override]  # the stub's TypeVarTuple form
        self, sig: int, callback: Callable[..., object], *args: Any
    ) -> None:
        if not self.held:
            self.held = True
            hold("loop")
        super().add_signal_handler(sig, callback, *args)


class _HoldingPolicy(asyncio.DefaultEventLoopPolicy):
    def new_event_loop(self) -> asyncio.AbstractEventLoop:
        return _HoldingLoop()


registry = _HoldingRegistry()


@registry.handler("jobs", "Work")
async def work(cmd: Command, ctx: HandlerContext) -> None:
    """Never reached: these workers are stopped before they serve."""


if AT == "loop":
    asyncio.set_event_loop_policy(_HoldingPolicy())
if AT == "import":
    hold("import")

__all__ = ["registry", "sagas"]
