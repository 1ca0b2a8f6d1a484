"""Handler registries that the CLI worker loads in subprocess tests (``--app``)."""

from __future__ import annotations

import asyncio
import logging
import os

from commandbus import Command, HandlerContext, HandlerRegistry

registry = HandlerRegistry()
SLEEP = float(os.environ.get("TEST_HANDLER_SLEEP", "0.1"))
#: the application's own logger, as a user's handlers would have
app_log = logging.getLogger("myapp.handlers")


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


@registry.handler("mail", "Send")
async def send_mail(cmd: Command, ctx: HandlerContext) -> dict[str, bool]:
    """Logs on the application's own logger, here and in a task it starts."""
    app_log.info("sending mail to %s", cmd.data.get("to"))
    app_log.debug("mail debug detail for %s", cmd.data.get("to"))

    async def deliver() -> None:
        app_log.warning("delivery of mail to %s is slow", cmd.data.get("to"))

    await asyncio.create_task(deliver())
    await asyncio.sleep(float(os.environ.get("TEST_MAIL_SLEEP", "0")))
    return {"sent": True}


@registry.handler("mail", "Broken")
async def broken_mail(cmd: Command, ctx: HandlerContext) -> None:
    """A mistake in the code: an AttributeError on every delivery."""
    await asyncio.sleep(0)
    return cmd.data.recipient  # type: ignore[attr-defined, no-any-return]
