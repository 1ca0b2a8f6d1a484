"""The status snapshot (``system_status``) against a real database, real workers and
a real coordinator: queues, in-flight messages, counts, heartbeats, attention lines."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from datetime import timedelta
from typing import Any

import psycopg
import pytest

from commandbus import (
    Command,
    CommandBus,
    Config,
    Coordinator,
    DatabaseError,
    HandlerContext,
    HandlerRegistry,
    PermanentCommandError,
    Saga,
    SagaClient,
    SagaRegistry,
    Step,
    TransientCommandError,
    ValidationError,
    Worker,
)
from commandbus.monitoring import SystemStatus, age_text, system_status
from commandbus.sagas import SAGA_QUEUE
from support import FAST, wait_for

Conn = psycopg.AsyncConnection[Any]


@pytest.fixture(autouse=True)
def fast_heartbeats(monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers and coordinators built in these tests beat every 0.1 s."""
    monkeypatch.setenv("HEARTBEAT_SECONDS", "0.1")


async def until(bus: CommandBus, check: Any, timeout: float = 10.0) -> SystemStatus:  # noqa: ASYNC109
    """The first snapshot for which ``check(snapshot)`` holds."""
    found: list[SystemStatus] = []

    async def holds() -> bool:
        s = await system_status(bus)
        found[:] = [s]
        return bool(check(s))

    await wait_for(holds, timeout=timeout)
    return found[0]


def registry_with(domain: str, gate: asyncio.Event, started: asyncio.Event) -> HandlerRegistry:
    reg = HandlerRegistry()

    @reg.handler(domain, "Slow")
    async def slow(cmd: Command, ctx: HandlerContext) -> None:
        started.set()
        await gate.wait()

    @reg.handler(domain, "Fast")
    async def fast(cmd: Command, ctx: HandlerContext) -> str:
        return "done"

    @reg.handler(domain, "Busy")
    async def busy(cmd: Command, ctx: HandlerContext) -> None:
        raise TransientCommandError("busy, try later", code="BUSY")

    @reg.handler(domain, "Broken")
    async def broken(cmd: Command, ctx: HandlerContext) -> None:
        raise PermanentCommandError("broken for good", code="BROKEN")

    return reg


async def test_an_empty_database_has_nothing_to_show(bus: CommandBus, dsn: str) -> None:
    s = await system_status(bus)
    assert s.domains == () and s.processes == () and s.attention == ()
    assert set(s.sagas.sagas.counts.values()) == {0} and s.sagas.queue is None
    assert s.sagas.live_coordinators == 0
    assert s.database == psycopg.conninfo.conninfo_to_dict(dsn)["dbname"]
    assert s.taken_at.tzinfo is not None


async def test_pending_commands_no_live_worker_serves_are_flagged(bus: CommandBus) -> None:
    for _ in range(2):
        (await bus.send("shipping", "Ship", {})).unwrap()
    (await bus.send("shipping", "Ship", {}, delay=timedelta(minutes=5))).unwrap()
    await asyncio.sleep(1.1)  # old enough to show an age
    s = await system_status(bus)
    shipping = s.domain("shipping")
    assert shipping is not None
    assert (shipping.queue.ready, shipping.queue.in_flight, shipping.queue.scheduled) == (2, 0, 1)
    assert shipping.commands.counts["PENDING"] == 3
    assert shipping.live_workers == 0 and shipping.concurrency == 0
    assert shipping.queue.oldest_ready_at is not None
    age = s.age(shipping.queue.oldest_ready_at)
    assert timedelta(seconds=1) <= age < timedelta(seconds=30)
    assert s.attention == (f"domain shipping: 3 pending, oldest {age_text(age)}, NO live worker",)


async def test_a_slow_handler_is_in_flight_and_its_worker_live(dsn: str, bus: CommandBus) -> None:
    gate, started = asyncio.Event(), asyncio.Event()
    reg = registry_with("payments", gate, started)
    async with Worker(dsn, reg, domain="payments", concurrency=3, config=FAST):
        slow = (await bus.send("payments", "Slow", {})).unwrap()
        for _ in range(2):
            (await bus.send("payments", "Fast", {})).unwrap()
        await asyncio.wait_for(started.wait(), 10)
        s = await until(
            bus,
            lambda s: s.processes and s.domain("payments").commands.counts["COMPLETED"] == 2,
        )
        payments = s.domain("payments")
        assert payments is not None
        assert (payments.queue.ready, payments.queue.in_flight, payments.queue.scheduled) == (
            0,
            1,
            0,
        )
        assert payments.commands.counts["PENDING"] == 1
        assert (payments.live_workers, payments.concurrency) == (1, 3)
        [process] = s.processes
        assert (process.state, process.kind, process.queues) == ("live", "worker", ("payments",))
        assert (process.pid, process.host, process.concurrency) == (
            os.getpid(),
            socket.gethostname(),
            3,
        )
        assert process.consumers[0].heartbeat_seconds == 0.1
        assert s.attention == ()  # a served domain, however busy, needs no look
        gate.set()
        s = await until(bus, lambda s: s.domain("payments").commands.counts["COMPLETED"] == 3)
        assert s.domain("payments").queue.in_flight == 0  # type: ignore[union-attr]
        assert (await bus.get_command("payments", slow.command_id)) is not None
    s = await system_status(bus)  # stopped gracefully: at once, not after going stale
    [process] = s.processes
    assert process.state == "stopped" and process.stopped_at is not None
    assert s.domain("payments").live_workers == 0  # type: ignore[union-attr]
    assert s.attention == ()  # nothing is pending there


async def test_a_retry_waiting_out_its_backoff_is_scheduled_not_in_flight(dsn: str) -> None:
    config = Config(backoff_base=timedelta(minutes=10), backoff_max=timedelta(minutes=10))
    gate, started = asyncio.Event(), asyncio.Event()
    reg = registry_with("payments", gate, started)
    async with CommandBus(dsn, config=config) as bus:
        async with Worker(dsn, reg, domain="payments", config=config):
            (await bus.send("payments", "Busy", {})).unwrap()
            s = await until(
                bus, lambda s: s.domain("payments").commands.counts["RETRY_SCHEDULED"] == 1
            )
            payments = s.domain("payments")
            assert payments is not None
            assert (payments.queue.ready, payments.queue.in_flight) == (0, 0)
            assert payments.queue.scheduled == 1
            assert s.attention == ()
        s = await system_status(bus)
        # waiting for a retry that no worker will run: pending, with no ready message yet
        assert s.attention == ("domain payments: 1 pending, NO live worker",)


async def test_the_troubleshooting_queue_and_counts_past_the_limit(
    dsn: str, bus: CommandBus
) -> None:
    gate, started = asyncio.Event(), asyncio.Event()
    reg = registry_with("payments", gate, started)
    async with Worker(dsn, reg, domain="payments", config=FAST):
        (await bus.send("payments", "Broken", {})).unwrap()
        s = await until(bus, lambda s: s.domain("payments").troubleshooting == 1)
    for _ in range(3):
        (await bus.send("inventory", "Reserve", {})).unwrap()
    s = await system_status(bus, count_limit=2)
    assert s.count_limit == 2
    inventory = s.domain("inventory")
    assert inventory is not None
    assert inventory.commands.counts["PENDING"] == 2
    assert inventory.commands.over_limit == ("PENDING",)
    assert inventory.commands.text("PENDING") == "2+"
    assert inventory.queue.ready == 3  # the queue's figures are exact
    assert s.attention[0].startswith("domain inventory: 2+ pending, oldest ")
    assert s.attention[1:] == (
        "domain payments: 1 in the troubleshooting queue (commandbus tsq list --domain payments)",
    )
    exact = await system_status(bus)
    assert exact.domain("inventory").commands.counts["PENDING"] == 3  # type: ignore[union-attr]
    assert exact.domain("inventory").commands.over_limit == ()  # type: ignore[union-attr]


SHIP = Saga("ship_it", steps=[Step("ship", domain="couriers", command="Ship")])


async def test_sagas_by_status_and_the_coordinators_alive(dsn: str, bus: CommandBus) -> None:
    sagas = SagaClient(bus)
    for _ in range(2):
        await sagas.start_saga(SHIP, {})
    async with Coordinator(dsn, SagaRegistry([SHIP]), config=FAST):
        s = await until(bus, lambda s: s.sagas.live_coordinators == 1)
        assert s.sagas.sagas.counts["RUNNING"] == 2
        [process] = s.processes
        assert (process.kind, process.queues, process.state) == (
            "coordinator",
            (SAGA_QUEUE,),
            "live",
        )
        assert s.sagas.queue is not None  # the coordinator made sure its queue exists
        assert s.domain(SAGA_QUEUE) is None  # the saga queue is not a domain
        # the step's domain has no worker: that is what holds the sagas up
        assert len(s.attention) == 1
        assert s.attention[0].startswith("domain couriers: 2 pending, oldest ")
        assert s.attention[0].endswith(", NO live worker")

        reg = HandlerRegistry()

        @reg.handler("couriers", "Ship")
        async def ship(cmd: Command, ctx: HandlerContext) -> dict[str, str]:
            return {"tracking": "T-1"}

        async with Worker(dsn, reg, domain="couriers", config=FAST):
            s = await until(bus, lambda s: s.sagas.sagas.counts["COMPLETED"] == 2)
            [process] = [p for p in s.processes if p.state == "live"]  # one process: this one
            assert process.kind == "worker+coordinator"
            assert process.queues == tuple(sorted([SAGA_QUEUE, "couriers"]))
            assert s.attention == ()
    await sagas.start_saga(SHIP, {})
    s = await system_status(bus)
    assert s.sagas.live_coordinators == 0
    assert "sagas: 1 running or compensating, NO live coordinator" in s.attention


async def test_every_consumer_of_a_process_is_one_process(dsn: str, bus: CommandBus) -> None:
    gate, started = asyncio.Event(), asyncio.Event()
    one = registry_with("alpha", gate, started)
    two = registry_with("beta", gate, started)
    async with (
        Worker(dsn, one, domain="alpha", concurrency=2, config=FAST),
        Worker(dsn, two, domain="beta", concurrency=5, config=FAST),
    ):
        s = await until(bus, lambda s: sum(len(p.consumers) for p in s.processes) == 2)
    [process] = s.processes
    assert process.queues == ("alpha", "beta")
    assert process.concurrency == 7
    assert {c.queue: c.concurrency for c in process.consumers} == {"alpha": 2, "beta": 5}
    assert [d.live_workers for d in s.domains] == [1, 1]


INSERT_BEAT = """
INSERT INTO commandbus.heartbeat (consumer_id, process_id, host, pid, queue, concurrency,
                                  interval_ms, started_at, last_seen_at, stopped_at)
VALUES (gen_random_uuid(), gen_random_uuid(), %s, %s, %s, 4, %s,
        now() - interval '3 hours', now() - %s::interval, now() - %s::interval)
"""


async def test_staleness_comes_from_each_consumer_s_own_interval(
    bus: CommandBus, conn: Conn
) -> None:
    await bus.create_queues(["payments"])
    rows = [
        ("h1", 1, "payments", 10_000, "20 seconds", None),  # 2 of its beats missed: live
        ("h2", 2, "payments", 10_000, "40 seconds", None),  # 4 missed: gone
        ("h3", 3, "payments", 1_000, "5 seconds", None),  # beats each second: gone
        ("h4", 4, "payments", 10_000, "10 minutes", "10 minutes"),  # stopped
        ("h5", 5, "payments", 10_000, "2 hours", "2 hours"),  # stopped long ago: not shown
        ("h6", 6, "payments", 10_000, "2 hours", None),  # silent long ago: not shown
        ("h7", 7, SAGA_QUEUE, 10_000, "50 seconds", None),  # a coordinator, gone
    ]
    for row in rows:
        await conn.execute(INSERT_BEAT, row)
    s = await system_status(bus)
    states = {p.host: (p.state, p.kind) for p in s.processes}
    assert states == {
        "h1": ("live", "worker"),
        "h2": ("gone", "worker"),
        "h3": ("gone", "worker"),
        "h4": ("stopped", "worker"),
        "h7": ("gone", "coordinator"),
    }
    assert [p.host for p in s.processes] == ["h1", "h2", "h3", "h7", "h4"]  # live, gone, stopped
    assert s.domain("payments").live_workers == 1  # type: ignore[union-attr]
    assert s.sagas.live_coordinators == 0
    gone = [line for line in s.attention if " gone: " in line]
    assert gone == [
        "worker h2:2 (payments) gone: last seen 40s ago and never stopped",
        "worker h3:3 (payments) gone: last seen 5s ago and never stopped",
        f"coordinator h7:7 ({SAGA_QUEUE}) gone: last seen 50s ago and never stopped",
    ]


async def test_a_snapshot_that_takes_too_long_is_one_database_error(
    dsn: str, bus: CommandBus
) -> None:
    (await bus.send("payments", "Charge", {})).unwrap()
    async with await psycopg.AsyncConnection.connect(dsn) as locker:
        await locker.execute("LOCK TABLE commandbus.command IN ACCESS EXCLUSIVE MODE")
        t0 = time.monotonic()
        with pytest.raises(DatabaseError, match=r"took longer than 0\.2s") as info:
            await system_status(bus, statement_timeout=timedelta(milliseconds=200))
        assert time.monotonic() - t0 < 3
        assert "\n" not in str(info.value)
        await locker.rollback()
    assert (await system_status(bus)).domain("payments") is not None  # the pool is fine


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"statement_timeout": timedelta(0)}, "statement_timeout"),
        ({"statement_timeout": timedelta(seconds=-1)}, "statement_timeout"),
        ({"statement_timeout": timedelta(minutes=11)}, "statement_timeout"),
        ({"statement_timeout": 5}, "statement_timeout"),
        ({"statement_timeout": None}, "statement_timeout"),
        ({"count_limit": 0}, "count_limit"),
        ({"count_limit": True}, "count_limit"),
        ({"count_limit": "10"}, "count_limit"),
        ({"count_limit": 2**70}, "count_limit"),
    ],
)
async def test_bad_arguments_are_validation_errors(
    bus: CommandBus, kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        await system_status(bus, **kwargs)


@pytest.mark.parametrize("not_a_bus", [None, "postgresql://x", object()])
async def test_the_snapshot_needs_a_bus(not_a_bus: Any) -> None:
    with pytest.raises(ValidationError, match="bus must be a CommandBus"):
        await system_status(not_a_bus)
