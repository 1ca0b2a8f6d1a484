"""Handler registries that the CLI worker loads in subprocess tests (``--app``)."""

from __future__ import annotations

import asyncio
import os

from commandbus import Command, HandlerContext, HandlerRegistry

registry = HandlerRegistry()
SLEEP = float(os.environ.get("TEST_HANDLER_SLEEP", "0.1"))


@registry.handler("jobs", "Work")
async def work(cmd: Command, ctx: HandlerContext) -> dict[str, int]:
    """Writes its side effect in the completion's transaction, then takes a while."""
    db = await ctx.connection()
    await db.execute(
        "INSERT INTO public.effects (command_id, attempt) VALUES (%s, %s)",
        (cmd.command_id, ctx.attempt),
    )
    await asyncio.sleep(SLEEP)
    return {"attempt": ctx.attempt}


not_a_registry = object()


@registry.handler("jobs", "Crash")
async def crash(cmd: Command, ctx: HandlerContext) -> None:
    """A poison command: its handler works a little, then takes the whole process down."""
    await asyncio.sleep(float(os.environ.get("TEST_CRASH_AFTER", "0.2")))  # it may read ahead
    os._exit(3)
