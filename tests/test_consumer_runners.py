"""A slow handler never holds up the messages read after it (runners are started for
the backlog whatever the runners busy in handlers are doing)."""

from __future__ import annotations

import asyncio
from typing import Any

from commandbus import Command, CommandBus, CommandStatus, HandlerContext, HandlerRegistry, Worker
from support import FAST, wait_for


async def test_a_hanging_handler_does_not_stall_the_commands_after_it(
    dsn: str, bus: CommandBus
) -> None:
    reg = HandlerRegistry()
    release = asyncio.Event()

    @reg.handler("jobs", "Slow")
    async def slow(cmd: Command, ctx: HandlerContext) -> None:
        await release.wait()

    @reg.handler("jobs", "Fast")
    async def fast(cmd: Command, ctx: HandlerContext) -> str:
        return "done"

    async def status(cid: Any) -> CommandStatus | None:
        rec = await bus.get_command("jobs", cid)
        return None if rec is None else rec.status

    async with Worker(dsn, reg, domain="jobs", concurrency=4, config=FAST):
        stuck = (await bus.send("jobs", "Slow", {})).unwrap()
        await asyncio.sleep(0.3)  # the slow one is read (alone) and running
        # sent one by one, each read on its own: each must find a free runner
        quick = []
        for _ in range(3):
            quick.append((await bus.send("jobs", "Fast", {})).unwrap())
            await asyncio.sleep(0.1)

        async def all_quick_done() -> bool:
            return all([await status(q.command_id) is CommandStatus.COMPLETED for q in quick])

        await wait_for(all_quick_done, timeout=3)
        assert await status(stuck.command_id) is CommandStatus.PENDING
        release.set()
        await wait_for(
            lambda: _is_done(status(stuck.command_id)),
            timeout=3,
        )


async def _is_done(value: Any) -> bool:
    return await value is CommandStatus.COMPLETED
