"""A worker rides out a full restart of its PostgreSQL server."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from commandbus import CommandBus, CommandRequest, CommandStatus, HandlerRegistry, Worker, migrate
from commandbus.engine.db.embedded import start_embedded, stop_embedded
from support import FAST, wait_for

pytestmark = pytest.mark.slow


async def test_worker_survives_a_server_restart(embedded_dir: Path) -> None:
    url = await asyncio.to_thread(start_embedded, embedded_dir)
    await migrate(url)
    registry = HandlerRegistry()

    @registry.handler("jobs", "Work")
    async def work(cmd: object, ctx: object) -> None:
        await asyncio.sleep(0.01)

    n = 300
    async with CommandBus(url, config=FAST) as bus:
        sent = await bus.send_batch(
            [CommandRequest(domain="jobs", command_type="Work") for _ in range(n)]
        )
        batch_id = sent.unwrap().batch_id
    worker = Worker(url, registry, domain="jobs", concurrency=4, config=FAST)
    task = asyncio.create_task(worker.run())
    await wait_for(lambda: _true(worker.stats.completed >= 50))
    # stop the server under the worker's feet, keep it down a moment, bring it back
    assert await asyncio.to_thread(stop_embedded, embedded_dir)
    await asyncio.sleep(1.0)
    again = await asyncio.to_thread(start_embedded, embedded_dir)
    assert again == url
    async with CommandBus(url, config=FAST) as bus:
        for _ in range(600):
            batch = await bus.get_batch(batch_id)
            assert batch is not None
            if batch.counts.get(CommandStatus.COMPLETED.value) == n:
                break
            await asyncio.sleep(0.1)
        assert batch.counts == {"COMPLETED": n}
        assert not task.done()  # the worker carried on
        await worker.stop(timeout=5)
        stats = await task
        assert (await bus.verify_projection()).ok
    # every command completed once; an outcome whose commit succeeded while its
    # acknowledgement was lost shows up as a (harmless) conflict on the retry
    assert stats.completed + stats.conflicts == n


async def _true(value: bool) -> bool:
    return value
