"""The queue gauges: ``commandbus.queue.depth`` and ``commandbus.queue.oldest_age``.

Each consumer reads its queue with its heartbeat while metrics are recorded; the
gauges report the latest reading of every queue the process serves, and a queue
whose consumer stopped is no longer reported.
"""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import pytest

from commandbus import Command, CommandBus, HandlerContext, HandlerRegistry, Worker
from support import FAST, fetch, wait_for
from test_tracing import Recorded, recorded

__all__ = ["recorded"]  # the fixture, shared with test_tracing

DOMAIN = "gauges"
READY = "SELECT count(*) FROM pgmq.q_gauges WHERE vt <= now()"
QUEUE_KEY = (("messaging.destination.name", DOMAIN), ("messaging.system", "pgmq"))


def reading(r: Recorded) -> tuple[Any, Any]:
    """(depth, oldest age) of the test's queue in a fresh collection (None: not reported)."""
    data = r.metrics.get_metrics_data()
    found: dict[str, Any] = {}
    if data is not None:
        for rm in data.resource_metrics:
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    for point in metric.data.data_points:
                        if tuple(sorted((point.attributes or {}).items())) == QUEUE_KEY:
                            found[metric.name] = point.value
    return found.get("commandbus.queue.depth"), found.get("commandbus.queue.oldest_age")


async def test_the_gauges_follow_the_queue(
    dsn: str, bus: CommandBus, recorded: Recorded, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HEARTBEAT_SECONDS", "0.1")
    release = asyncio.Event()
    registry = HandlerRegistry()

    @registry.handler(DOMAIN, "Hold")
    async def hold(cmd: Command, ctx: HandlerContext) -> None:
        await release.wait()

    for _ in range(6):
        (await bus.send(DOMAIN, "Hold", {})).unwrap()
    worker = Worker(dsn, registry, domain=DOMAIN, concurrency=1, batch_size=1, config=FAST)
    async with worker, await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        # one handler holds its command and the worker has read what it may: the
        # rest waits, and the gauge says how many (as the queue table does)
        async def settled() -> bool:
            [(ready,)] = await fetch(conn, READY)
            depth, age = reading(recorded)
            return bool(ready) and depth == ready and age is not None and age > 0

        await wait_for(settled, timeout=10)
        _, first_age = reading(recorded)

        async def older() -> bool:
            _, age = reading(recorded)
            return age is not None and age > first_age + 0.1

        await wait_for(older, timeout=10)
        release.set()

        async def drained() -> bool:
            return reading(recorded) == (0, 0.0)

        await wait_for(drained, timeout=10)
    # the worker stopped: its queue is no longer reported
    assert reading(recorded) == (None, None)


async def test_no_reading_without_a_meter_provider(
    dsn: str, bus: CommandBus, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without metrics the heartbeat does not read the queue at all."""
    from commandbus.engine.observability import tracing

    monkeypatch.setenv("HEARTBEAT_SECONDS", "0.05")
    registry = HandlerRegistry()

    @registry.handler(DOMAIN, "Hold")
    async def noop(cmd: Command, ctx: HandlerContext) -> None:
        return None

    assert not tracing.metrics_active()
    async with Worker(dsn, registry, domain=DOMAIN, config=FAST):
        await asyncio.sleep(0.3)
        assert DOMAIN not in tracing.queue_readings.snapshot()
