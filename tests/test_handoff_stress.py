"""Hand-over at the edges of a consumer's bookkeeping (a second adversarial review):
a hand-over that lands as the last runner ends, a read under way while steps are
handed over, and a worker of two domains handing over between them while suspects
(messages whose earlier delivery ended without an outcome) keep arriving.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import AsyncExitStack
from datetime import timedelta
from typing import Any

import psycopg
from psycopg.conninfo import make_conninfo

from commandbus import CommandBus, HandlerRegistry, Saga, SagaClient, SagaRegistry, Step, Worker
from commandbus.engine.commands import store as command_store
from commandbus.engine.db.script import Script, run_all_applied_rows
from commandbus.engine.queues import runners as runners_mod
from commandbus.engine.worker import domain as domain_mod
from commandbus.engine.worker.handoff import Claims
from handoff_apps import TWO, Runs, all_final, outgoing
from support import FAST, wait_for

CHAIN = Saga(
    "chain",
    steps=[
        Step("s1", domain="a", command="A", data=lambda ctx: {"n": ctx.input["n"]}),
        Step("s2", domain="b", command="B", data=lambda ctx: {"n": ctx.input["n"]}),
        Step("s3", domain="b", command="B", data=lambda ctx: {"n": ctx.input["n"]}),
        Step("s4", domain="a", command="A", data=lambda ctx: {"n": ctx.input["n"]}),
    ],
)


async def test_a_hand_over_as_the_last_runner_ends_gets_a_runner(
    dsn: str, monkeypatch: Any
) -> None:
    """Pinned: the hand-over runs right after the worker's only runner left its loop.
    The message runs at once (it used to sit in the backlog until the next read, and,
    with a suspect read next, for good: the domain hung)."""
    armed: list[Any] = []
    run = runners_mod.Runners._run

    async def run_then_hand_over(self: Any) -> None:
        await run(self)
        while armed:
            asyncio.get_running_loop().call_soon(armed.pop())

    monkeypatch.setattr(runners_mod.Runners, "_run", run_then_hand_over)
    ran: list[tuple[str, float]] = []
    t0 = time.monotonic()
    box: dict[str, Claims] = {}

    async def first(cmd: Any, ctx: Any) -> None:
        ran.append(("first", time.monotonic() - t0))
        await asyncio.sleep(0.2)
        claims = box["claims"]
        armed.append(lambda: claims.hand_over(*claims.sent))  # type: ignore[misc]

    async def note(cmd: Any, ctx: Any) -> None:
        ran.append((cmd.command_type.lower(), time.monotonic() - t0))

    reg = HandlerRegistry()
    reg.register("payments", "First", first)
    reg.register("payments", "Second", note)
    reg.register("payments", "Third", note)
    async with CommandBus(dsn) as bus:
        await bus.create_queues(["payments"])
        async with Worker(
            dsn, reg, domain="payments", concurrency=1, visibility_timeout=timedelta(seconds=2)
        ) as w:
            claims = Claims(w._url)
            cmd = outgoing("payments", "Second")
            granted = claims.claim([cmd])
            script = Script()
            script.add(*command_store.send_commands_all_applied([cmd], granted))
            async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
                rows = await run_all_applied_rows(script, conn)
                assert not isinstance(rows, str)
                _n, command_ids, msg_ids = rows[0][0]
                claims.sent = (command_ids, msg_ids)
                box["claims"] = claims
                t0 = time.monotonic()
                # a suspect due in 0.6 s (as after a crash), then the first command
                suspect = (await bus.send("payments", "Third", {}, delay=0.6)).unwrap()
                await conn.execute(
                    "UPDATE pgmq.q_payments SET read_ct = 1 WHERE msg_id = %s", (suspect.msg_id,)
                )
            await bus.send("payments", "First", {})
            await wait_for(lambda: len(ran) == 3, timeout=10)
            await bus.send("payments", "Third", {})
            await wait_for(lambda: len(ran) == 4, timeout=10)
    assert [r[0] for r in ran] == ["first", "second", "third", "third"]
    assert ran[1][1] < 0.5, ran  # at once, not at the next read


async def test_a_read_under_way_keeps_its_room(dsn: str, monkeypatch: Any) -> None:
    """A read sized for an empty worker is under way (slow, 0.5 s) when a group of
    next steps is handed to the same worker: the hand-over leaves the read its room,
    so the worker never holds more than its capacity and no message outlives its
    visibility timeout in the backlog (none runs twice beside a worker elsewhere)."""
    armed = asyncio.Event()
    reading = asyncio.Event()
    read = domain_mod.DomainConsumer.read

    async def slow_read(self: Any, conn: Any, qty: int) -> Any:
        if self.domain == "b" and self._settings.url == dsn and armed.is_set():
            armed.clear()
            reading.set()
            await asyncio.sleep(0.5)
        return await read(self, conn, qty)

    monkeypatch.setattr(domain_mod.DomainConsumer, "read", slow_read)
    runs = Runs(seconds=0.25)

    async def one(cmd: Any, ctx: Any) -> None:
        return None

    reg = HandlerRegistry()
    reg.register("a", "One", one)
    reg.register("b", "Two", runs.two)
    registry = SagaRegistry([TWO])
    # capacity max(2 x 10, 1 + 10) = 20 messages at 0.25 s, one at a time: 5 s < vt
    narrow: dict[str, Any] = {
        "concurrency": 1,
        "batch_size": 10,
        "visibility_timeout": timedelta(seconds=6.5),
        "config": FAST,
        "sagas": registry,
    }
    peak = 0
    async with AsyncExitStack() as stack:
        bus = await stack.enter_async_context(CommandBus(dsn, config=FAST))
        await bus.create_queues(["a", "b"])
        sagas = SagaClient(bus)
        wb = await stack.enter_async_context(Worker(dsn, reg, domain="b", **narrow))
        ids = [(await sagas.start_saga(TWO, {"n": i})).saga_id for i in range(20)]
        armed.set()
        for i in range(10):
            await bus.send("b", "Two", {"n": i})
        await asyncio.wait_for(reading.wait(), 5)
        await stack.enter_async_context(
            Worker(dsn, reg, domain="a", concurrency=20, batch_size=20, config=FAST, sagas=registry)
        )
        consumer = wb._domains[0].consumer
        for _ in range(100):
            await asyncio.sleep(0.01)
            peak = max(peak, len(consumer._flights))
        elsewhere = make_conninfo(dsn, application_name="another-process")
        await stack.enter_async_context(Worker(elsewhere, reg, domain="b", **narrow))
        await wait_for(lambda: all_final(sagas, ids), timeout=120, interval=0.2)
        await wait_for(lambda: sum(runs.running.values()) == 0 and len(runs.runs) == 30, timeout=60)
        capacity = consumer._capacity
    assert peak <= capacity
    assert runs.twice() == {}, runs.overlaps


async def test_a_worker_of_two_domains_hands_over_between_them_among_suspects(
    dsn: str,
) -> None:
    """300 four-step sagas going a -> b -> b -> a through one worker of both domains,
    while 300 suspects arrive: every saga completes (no domain hangs)."""

    async def h(cmd: Any, ctx: Any) -> None:
        await asyncio.sleep(0)

    reg = HandlerRegistry()
    for domain, ctype in (("a", "A"), ("a", "Other"), ("b", "B"), ("b", "Other")):
        reg.register(domain, ctype, h)
    async with AsyncExitStack() as stack:
        bus = await stack.enter_async_context(CommandBus(dsn, config=FAST))
        await bus.create_queues(["a", "b"])
        sagas = SagaClient(bus)
        w = await stack.enter_async_context(
            Worker(
                dsn,
                reg,
                domains=["a", "b"],
                concurrency=3,
                batch_size=4,
                visibility_timeout=timedelta(seconds=2),
                config=FAST,
                sagas=SagaRegistry([CHAIN]),
            )
        )

        async def suspects() -> None:
            for i in range(150):
                for d in ("a", "b"):
                    sent = (await bus.send(d, "Other", {"i": i}, delay=0.2)).unwrap()
                    async with bus.pool.connection() as c:
                        await c.execute(
                            f"UPDATE pgmq.q_{d} SET read_ct = 1 WHERE msg_id = %s",  # noqa: S608
                            (sent.msg_id,),
                        )
                await asyncio.sleep(0.02)

        feeder = asyncio.create_task(suspects())
        started = []
        for r in range(60):
            started += await asyncio.gather(
                *(sagas.start_saga(CHAIN, {"n": f"{r}-{i}"}) for i in range(5))
            )
            await asyncio.sleep(0.03)
        await feeder

        async def done() -> bool:
            return (await sagas.status_counts()).get("COMPLETED", 0) == len(started)

        await wait_for(done, timeout=60, interval=0.2)
        assert w.stats.handed_over > 0
