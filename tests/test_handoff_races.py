"""Hand-over of a saga's next step under pressure: a worker is never handed more than
it has room for, a suspect still runs alone, two workers of one domain share the
steps, and a worker stopping (or cancelled) again and again loses nothing.

A worker "in another process" is a worker given another URL string for the same
database: hand-over never crosses URLs (engine/worker/handoff.py).
"""

from __future__ import annotations

import asyncio
import random
import time
from contextlib import AsyncExitStack
from datetime import timedelta
from typing import Any

import pytest
from psycopg.conninfo import make_conninfo

from commandbus import CommandBus, HandlerRegistry, SagaClient, SagaRegistry, Worker
from handoff_apps import TWO, Runs, all_final
from support import FAST, wait_for

REGISTRY = SagaRegistry([TWO])


def _handlers(runs: Runs) -> HandlerRegistry:
    reg = HandlerRegistry()

    async def one(cmd: Any, ctx: Any) -> None:
        return None

    reg.register("a", "One", one)
    reg.register("b", "Two", runs.two)
    return reg


async def test_a_worker_is_handed_no_more_than_it_has_room_for(dsn: str) -> None:
    """A group of 40 outcomes sends 40 next steps to a domain whose worker here holds
    at most 4 (concurrency 1, batches of 2) and whose handler takes 0.4 s: it takes
    what it has room for, the rest is sent as usual and shared with a worker
    elsewhere; each step runs once (none waits in a backlog past its 4 s vt)."""
    runs = Runs(seconds=0.4)
    reg = _handlers(runs)
    narrow: dict[str, Any] = {
        "concurrency": 1,
        "batch_size": 2,
        "visibility_timeout": timedelta(seconds=4),
        "config": FAST,
        "sagas": REGISTRY,
    }
    async with AsyncExitStack() as stack:
        bus = await stack.enter_async_context(CommandBus(dsn, config=FAST))
        await bus.create_queues(["a", "b"])
        await stack.enter_async_context(Worker(dsn, reg, domain="b", **narrow))
        elsewhere = make_conninfo(dsn, application_name="another-process")
        await stack.enter_async_context(Worker(elsewhere, reg, domain="b", **narrow))
        sagas = SagaClient(bus)
        ids = [(await sagas.start_saga(TWO, {"n": i})).saga_id for i in range(40)]
        # a's worker starts once they are queued: its first read takes them all
        await stack.enter_async_context(
            Worker(dsn, reg, domain="a", concurrency=50, batch_size=50, config=FAST, sagas=REGISTRY)
        )
        await wait_for(lambda: all_final(sagas, ids), timeout=120, interval=0.2)
        await wait_for(lambda: sum(runs.running.values()) == 0, timeout=30)
    assert len(runs.runs) == 40
    assert runs.twice() == {}, f"{len(runs.twice())} ran twice ({runs.overlaps} at once)"


async def test_a_suspect_still_runs_alone(dsn: str) -> None:
    """While a suspect (a message whose earlier delivery ended without an outcome)
    runs alone, a step claimed for its worker is not taken: it waits its turn."""
    events: list[str] = []
    gate = asyncio.Event()

    async def one(cmd: Any, ctx: Any) -> None:
        return None

    async def two(cmd: Any, ctx: Any) -> None:
        events.append("two started")

    async def poison(cmd: Any, ctx: Any) -> None:
        events.append("suspect started")
        await gate.wait()
        events.append("suspect ended")

    reg = HandlerRegistry()
    reg.register("a", "One", one)
    reg.register("b", "Two", two)
    reg.register("b", "Poison", poison)
    async with AsyncExitStack() as stack:
        bus = await stack.enter_async_context(CommandBus(dsn, config=FAST))
        await bus.create_queues(["a", "b"])
        await bus.send("b", "Poison", {"x": 1})
        async with bus.pool.connection() as c:
            await c.execute("UPDATE pgmq.q_b SET read_ct = 1")  # as if its process died
        await stack.enter_async_context(
            Worker(dsn, reg, domain="b", concurrency=4, config=FAST, sagas=REGISTRY)
        )
        await wait_for(lambda: "suspect started" in events, timeout=10)
        await stack.enter_async_context(Worker(dsn, reg, domain="a", config=FAST, sagas=REGISTRY))
        sagas = SagaClient(bus)
        sid = (await sagas.start_saga(TWO, {"n": 1})).saga_id
        await asyncio.sleep(1.5)  # the suspect still runs
        assert events == ["suspect started"]
        gate.set()
        await wait_for(lambda: all_final(sagas, [sid]), timeout=10)
    assert events == ["suspect started", "suspect ended", "two started"]


async def test_two_workers_of_one_domain_share_the_steps(dsn: str) -> None:
    """The steps go to the worker with the most room: both get their share."""
    runs = Runs(seconds=0.2)
    reg = _handlers(runs)
    async with AsyncExitStack() as stack:
        bus = await stack.enter_async_context(CommandBus(dsn, config=FAST))
        await bus.create_queues(["a", "b"])
        b1, b2 = [
            await stack.enter_async_context(
                Worker(
                    dsn, reg, domain="b", concurrency=2, batch_size=5, config=FAST, sagas=REGISTRY
                )
            )
            for _ in range(2)
        ]
        sagas = SagaClient(bus)
        ids = [(await sagas.start_saga(TWO, {"n": i})).saga_id for i in range(40)]
        await stack.enter_async_context(
            Worker(dsn, reg, domain="a", concurrency=50, batch_size=50, config=FAST, sagas=REGISTRY)
        )
        await wait_for(lambda: all_final(sagas, ids), timeout=60, interval=0.1)
    assert min(b1.stats.completed, b2.stats.completed) >= 10, (b1.stats, b2.stats)
    assert runs.twice() == {}


@pytest.mark.parametrize("how", ["request_stop", "stop_grace", "cancel"])
async def test_a_worker_stopping_again_and_again_loses_no_step(dsn: str, how: str) -> None:
    """Twelve times a worker of the domain is stopped (or its run() cancelled) while
    steps are handed to it, and a new one started: every step runs (none is left
    invisible until its 60 s vt), none twice at once, and each stop ends in time."""
    rnd = random.Random(7)
    runs = Runs(rnd=rnd)
    reg = _handlers(runs)
    vt = timedelta(seconds=60)
    stop_times: list[float] = []
    ids: list[Any] = []
    async with CommandBus(dsn, config=FAST) as bus:
        await bus.create_queues(["a", "b"])
        sagas = SagaClient(bus)
        async with Worker(dsn, reg, domain="a", config=FAST, sagas=REGISTRY, concurrency=8):
            for round_ in range(12):
                wb = Worker(
                    dsn, reg, domain="b", config=FAST, sagas=REGISTRY, visibility_timeout=vt
                )
                task = asyncio.create_task(wb.run())
                await wb.ready.wait()
                for i in range(15):
                    ids.append((await sagas.start_saga(TWO, {"n": f"{round_}-{i}"})).saga_id)
                    await asyncio.sleep(rnd.random() * 0.01)
                await asyncio.sleep(rnd.random() * 0.05)
                t0 = time.monotonic()
                if how == "request_stop":
                    wb.request_stop(0.1)
                elif how == "stop_grace":
                    await wb.stop(0.1)
                else:
                    task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    assert how == "cancel"
                stop_times.append(time.monotonic() - t0)
            async with Worker(
                dsn, reg, domain="b", config=FAST, sagas=REGISTRY, visibility_timeout=vt
            ):
                await wait_for(lambda: all_final(sagas, ids), timeout=25, interval=0.2)
    assert len(runs.runs) == len(ids)
    assert runs.overlaps == 0
    assert max(stop_times) < 0.1 + 1.0
