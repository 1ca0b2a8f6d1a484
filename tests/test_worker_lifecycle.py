"""Worker defects from acceptance testing: bounded redelivery, pools, stop and cancel."""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import timedelta
from typing import Any

import psycopg
import pytest

from commandbus import (
    Command,
    CommandBus,
    CommandStatus,
    HandlerContext,
    HandlerRegistry,
    Worker,
)
from proxy import Proxy
from support import FAST, fetch, scalar, wait_for

Conn = psycopg.AsyncConnection[Any]


def make_worker(dsn: str, registry: HandlerRegistry, **kw: Any) -> Worker:
    kw.setdefault("config", FAST)
    return Worker(dsn, registry, domain="payments", **kw)


def live_worker_tasks() -> list[str]:
    return sorted(
        t.get_name()
        for t in asyncio.all_tasks()
        if t.get_name().startswith("commandbus-") and not t.done()
    )


async def until_status(bus: CommandBus, command_id: Any, status: CommandStatus) -> None:
    async def check() -> bool:
        record = await bus.get_command("payments", command_id)
        return record is not None and record.status is status

    await wait_for(check)


async def history(bus: CommandBus, command_id: Any) -> list[tuple[str, dict[str, Any]]]:
    return [(e.event_type, e.data) for e in await bus.command_history("payments", command_id)]


# -- every delivery counts: max_attempts holds whatever path failed --------------------------


async def test_a_handler_that_swallows_a_failed_statement_is_retried_then_tsqd(
    dsn: str, bus: CommandBus
) -> None:
    """Its transaction is aborted, so success cannot be recorded: a failed attempt."""
    reg = HandlerRegistry()
    calls: list[int] = []

    @reg.handler("payments", "Charge")
    async def charge(cmd: Command, ctx: HandlerContext) -> str:
        calls.append(ctx.attempt)
        db = await ctx.connection()
        with contextlib.suppress(psycopg.errors.DivisionByZero):
            await db.execute("SELECT 1/0")  # caught, but the transaction is now aborted
        return "done"

    sent = (await bus.send("payments", "Charge", {}, max_attempts=2)).unwrap()
    async with make_worker(dsn, reg, visibility_timeout=timedelta(seconds=1)):
        await until_status(bus, sent.command_id, CommandStatus.IN_TROUBLESHOOTING_QUEUE)
    assert calls == [1, 2]
    events = await history(bus, sent.command_id)
    assert [t for t, _ in events] == [
        "CommandSent",
        "CommandRetryScheduled",
        "CommandMovedToTroubleshootingQueue",
    ]
    assert "aborted" in events[1][1]["error"]["message"]
    assert events[2][1]["reason"] == "attempts_exhausted"
    record = await bus.get_command("payments", sent.command_id)
    assert record is not None and record.attempts == 2


async def test_a_handler_transaction_whose_reply_queue_is_gone_lands_in_the_tsq(
    dsn: str, bus: CommandBus, conn: Conn
) -> None:
    reg = HandlerRegistry()
    calls: list[int] = []

    @reg.handler("payments", "Charge")
    async def charge(cmd: Command, ctx: HandlerContext) -> str:
        calls.append(ctx.attempt)
        db = await ctx.connection()
        await db.execute("SELECT 1")
        return "charged"

    sent = (await bus.send("payments", "Charge", {}, reply_to="gone", max_attempts=3)).unwrap()
    await conn.execute("SELECT pgmq.drop_queue('gone')")
    async with make_worker(dsn, reg, visibility_timeout=timedelta(seconds=1)):
        await until_status(bus, sent.command_id, CommandStatus.IN_TROUBLESHOOTING_QUEUE)
    assert calls == [1]
    events = await history(bus, sent.command_id)
    assert [t for t, _ in events] == ["CommandSent", "CommandMovedToTroubleshootingQueue"]
    assert events[-1][1]["reason"] == "unrecordable_outcome"
    assert "could not be recorded" in events[-1][1]["error"]["message"]


async def test_a_cancelled_inner_task_is_a_failed_attempt_not_a_lost_one(
    dsn: str, bus: CommandBus
) -> None:
    reg = HandlerRegistry()
    calls: list[int] = []

    @reg.handler("payments", "Charge")
    async def charge(cmd: Command, ctx: HandlerContext) -> str:
        calls.append(ctx.attempt)
        inner = asyncio.ensure_future(asyncio.sleep(10))
        asyncio.get_running_loop().call_soon(inner.cancel)
        await inner  # raises CancelledError, though nobody cancelled the handler
        return "unreachable"

    sent = (await bus.send("payments", "Charge", {}, max_attempts=2)).unwrap()
    async with make_worker(dsn, reg, visibility_timeout=timedelta(seconds=1)):
        await until_status(bus, sent.command_id, CommandStatus.IN_TROUBLESHOOTING_QUEUE)
    assert calls == [1, 2]
    events = await history(bus, sent.command_id)
    assert [t for t, _ in events][1:] == [
        "CommandRetryScheduled",
        "CommandMovedToTroubleshootingQueue",
    ]
    assert events[1][1]["error"]["type"] == "CancelledError"


async def test_deliveries_past_max_attempts_go_to_the_tsq_without_running_the_handler(
    dsn: str, bus: CommandBus, conn: Conn
) -> None:
    """Two deliveries died without an outcome (say the handler crashes the process)."""
    reg = HandlerRegistry()
    calls: list[int] = []

    @reg.handler("payments", "Charge")
    async def charge(cmd: Command, ctx: HandlerContext) -> str:
        calls.append(ctx.attempt)
        return "ok"

    sent = (await bus.send("payments", "Charge", {}, max_attempts=2)).unwrap()
    for _ in range(2):  # read and lost, as by a worker killed mid-handler
        await conn.execute("SELECT * FROM pgmq.read('payments', 0, 1)")
    async with make_worker(dsn, reg):
        await until_status(bus, sent.command_id, CommandStatus.IN_TROUBLESHOOTING_QUEUE)
    assert calls == []
    events = await history(bus, sent.command_id)
    assert [t for t, _ in events] == [
        "CommandSent",
        "CommandAttemptLost",
        "CommandAttemptLost",
        "CommandMovedToTroubleshootingQueue",
    ]
    assert [d["attempt"] for _, d in events[1:3]] == [1, 2]
    assert events[-1][1]["reason"] == "attempts_exhausted"
    assert events[-1][1]["attempt"] == 2
    record = await bus.get_command("payments", sent.command_id)
    assert record is not None and record.attempts == 2
    assert await scalar(conn, "SELECT count(*) FROM pgmq.q_payments") == 0


# -- connections ----------------------------------------------------------------------------


async def test_handler_transactions_and_extend_visibility_never_starve_the_pool(
    dsn: str, bus: CommandBus
) -> None:
    """Every running handler holds a transaction, then asks for more time."""
    reg = HandlerRegistry()
    both_hold_one = asyncio.Barrier(2)

    @reg.handler("payments", "Charge")
    async def charge(cmd: Command, ctx: HandlerContext) -> str:
        db = await ctx.connection()
        await db.execute("SELECT 1")
        await both_hold_one.wait()
        await ctx.extend_visibility(60)
        return "ok"

    sent = [(await bus.send("payments", "Charge", {})).unwrap() for _ in range(2)]
    started = time.monotonic()
    async with make_worker(dsn, reg, concurrency=2):
        for s in sent:
            await until_status(bus, s.command_id, CommandStatus.COMPLETED)
    assert time.monotonic() - started < 5


# -- stopping -------------------------------------------------------------------------------


async def test_graceful_stop_returns_as_soon_as_handlers_finish(dsn: str, bus: CommandBus) -> None:
    reg = HandlerRegistry()
    started = asyncio.Event()

    @reg.handler("payments", "Charge")
    async def charge(cmd: Command, ctx: HandlerContext) -> str:
        started.set()
        await asyncio.sleep(0.5)
        return "done"

    sent = [(await bus.send("payments", "Charge", {})).unwrap() for _ in range(4)]
    worker = make_worker(dsn, reg, flushers=2)
    task = asyncio.create_task(worker.run())
    await asyncio.wait_for(started.wait(), 10)  # all four are read in one batch
    t0 = time.monotonic()
    await worker.stop(timeout=timedelta(seconds=20))
    stats = await task
    assert time.monotonic() - t0 < 2.0  # the handlers' 0.5 s, not a hidden 30 s wait
    assert stats.completed == 4
    for s in sent:
        record = await bus.get_command("payments", s.command_id)
        assert record is not None and record.status is CommandStatus.COMPLETED
    assert live_worker_tasks() == []


async def test_a_stop_during_a_read_hands_back_what_the_read_took(
    dsn: str, bus: CommandBus, conn: Conn, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A stop that cancelled the reader after its statement had run on the server but
    # before the rows reached the worker left those messages invisible until their
    # vt (found by an adversarial review: a stopped coordinator's batch waited 30 s).
    # The read's result is delayed here, after the real statement, to hold that moment.
    from commandbus.engine.worker.domain import DomainConsumer

    real_read = DomainConsumer.read
    reading = asyncio.Event()

    async def slow_read(self: DomainConsumer, c: Any, qty: int) -> Any:
        msgs = await real_read(self, c, qty)
        if msgs:
            reading.set()
            await asyncio.sleep(0.2)  # the rows are taken; the worker has not seen them
        return msgs

    monkeypatch.setattr(DomainConsumer, "read", slow_read)
    reg = HandlerRegistry()
    reg.register("payments", "Charge", _noop)
    worker = make_worker(dsn, reg)
    task = asyncio.create_task(worker.run())
    await asyncio.wait_for(worker.ready.wait(), 10)
    for _ in range(5):
        (await bus.send("payments", "Charge", {})).unwrap()
    await asyncio.wait_for(reading.wait(), 10)
    t0 = time.monotonic()
    await worker.stop(timeout=timedelta(seconds=5))
    await task
    assert time.monotonic() - t0 < 2.0
    invisible = await scalar(
        conn, "SELECT count(*) FROM pgmq.q_payments WHERE vt > clock_timestamp() + interval '1s'"
    )
    assert invisible == 0  # handed back at once (or handled), none held for the vt
    assert live_worker_tasks() == []


async def _noop(cmd: Command, ctx: HandlerContext) -> None:
    return None


async def test_cancelling_run_stops_gracefully_and_leaves_no_task(
    dsn: str, bus: CommandBus, conn: Conn
) -> None:
    reg = HandlerRegistry()
    started = asyncio.Event()
    finished: list[str] = []

    @reg.handler("payments", "Charge")
    async def charge(cmd: Command, ctx: HandlerContext) -> None:
        started.set()
        try:
            await asyncio.sleep(60)
        finally:
            finished.append("handler")

    sent = (await bus.send("payments", "Charge", {})).unwrap()
    worker = make_worker(dsn, reg, visibility_timeout=timedelta(seconds=300))
    task = asyncio.create_task(worker.run())
    await asyncio.wait_for(started.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)
    assert finished == ["handler"]  # the handler was ended before run() returned
    assert live_worker_tasks() == []
    # its message is visible again at once, not after the 300 s visibility timeout
    visible = await scalar(
        conn,
        "SELECT count(*) FROM pgmq.q_payments WHERE msg_id = %s AND vt <= clock_timestamp()",
        sent.msg_id,
    )
    assert visible == 1


async def test_a_stop_interrupts_reconnecting_and_returns_within_the_grace(
    dsn: str, bus: CommandBus
) -> None:
    reg = HandlerRegistry()

    @reg.handler("payments", "Charge")
    async def charge(cmd: Command, ctx: HandlerContext) -> None:
        return None

    proxy = await Proxy(dsn).start()
    try:
        worker = make_worker(proxy.url, reg, reconnect_timeout=timedelta(minutes=10))
        task = asyncio.create_task(worker.run())
        await asyncio.wait_for(worker.ready.wait(), 10)
        await proxy.cut()  # the database is gone, for good
        await asyncio.sleep(0.5)  # let the worker notice and start reconnecting
        assert not task.done()
        t0 = time.monotonic()
        await worker.stop(timeout=timedelta(seconds=1))
        await asyncio.wait_for(task, 10)
        assert time.monotonic() - t0 < 2.5
        assert live_worker_tasks() == []
    finally:
        await proxy.close()


async def test_a_second_stop_request_cuts_the_grace_while_the_database_is_down(
    dsn: str, bus: CommandBus
) -> None:
    reg = HandlerRegistry()
    started = asyncio.Event()

    @reg.handler("payments", "Charge")
    async def charge(cmd: Command, ctx: HandlerContext) -> None:
        started.set()
        await asyncio.sleep(60)

    (await bus.send("payments", "Charge", {})).unwrap()
    proxy = await Proxy(dsn).start()
    try:
        worker = make_worker(proxy.url, reg, reconnect_timeout=timedelta(minutes=10))
        task = asyncio.create_task(worker.run())
        await asyncio.wait_for(started.wait(), 10)
        await proxy.cut()
        worker.request_stop(timedelta(seconds=60))  # the handler may take its time ...
        await asyncio.sleep(0.3)
        assert not task.done()
        t0 = time.monotonic()
        worker.request_stop(timedelta(0))  # ... until a second request: now
        stats = await asyncio.wait_for(task, 5)
        assert time.monotonic() - t0 < 1.5
        assert stats.released == 0  # the database is gone: the message returns after vt
        assert live_worker_tasks() == []
    finally:
        await proxy.close()


async def test_a_worker_rides_out_a_short_outage_behind_the_proxy(
    dsn: str, bus: CommandBus, conn: Conn
) -> None:
    """The proxy itself is sound: cut, restore, and the worker carries on."""
    reg = HandlerRegistry()

    @reg.handler("payments", "Charge")
    async def charge(cmd: Command, ctx: HandlerContext) -> str:
        return "ok"

    proxy = await Proxy(dsn).start()
    try:
        async with make_worker(proxy.url, reg) as worker:
            await asyncio.wait_for(worker.ready.wait(), 10)
            await proxy.cut()
            sent = (await bus.send("payments", "Charge", {})).unwrap()
            await asyncio.sleep(0.3)
            await proxy.restore()
            await until_status(bus, sent.command_id, CommandStatus.COMPLETED)
    finally:
        await proxy.close()
    rows = await fetch(conn, "SELECT count(*) FROM pgmq.q_payments")
    assert rows == [(0,)]


@pytest.mark.slow
async def test_the_cli_worker_stops_on_sigint_while_its_database_is_down(
    dsn: str, bus: CommandBus
) -> None:
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    proxy = await Proxy(dsn).start()
    env = dict(os.environ, DATABASE_URL=proxy.url)
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent), env.get("PYTHONPATH", "")])
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "commandbus.cli", "worker", "--app", "worker_apps:registry"),
        *("--domain", "jobs", "--grace", "2"),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stderr is not None
        line = await asyncio.wait_for(proc.stderr.readline(), 20)
        assert b"connected for domain" in line, line
        await asyncio.sleep(0.5)  # connected: reader, flushers and listener
        await proxy.cut()
        await asyncio.sleep(1.0)  # it notices and keeps trying to reconnect
        assert proc.returncode is None
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _out, err = await asyncio.wait_for(proc.communicate(), 10)
        assert time.monotonic() - t0 < 3.5, err  # the 2 s grace plus a second, at most
        assert b"Traceback" not in err, err.decode()
        assert proc.returncode == 0, err.decode()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await proxy.close()


async def test_async_with_runs_the_worker_for_the_block(dsn: str, bus: CommandBus) -> None:
    reg = HandlerRegistry()

    @reg.handler("payments", "Charge")
    async def charge(cmd: Command, ctx: HandlerContext) -> str:
        return "ok"

    sent = (await bus.send("payments", "Charge", {})).unwrap()
    async with make_worker(dsn, reg) as worker:
        await until_status(bus, sent.command_id, CommandStatus.COMPLETED)
    assert worker.stats.completed == 1 and worker.stats.stopped_at is not None
    assert live_worker_tasks() == []


@pytest.mark.parametrize(
    ("kw", "names"),
    [
        ({"concurrency": 0}, "concurrency"),
        ({"concurrency": "4"}, "concurrency"),
        ({"concurrency": True}, "concurrency"),
        ({"batch_size": 10**9}, "batch_size"),
        ({"flushers": 0}, "flushers"),
        ({"visibility_timeout": timedelta(milliseconds=10)}, "visibility_timeout"),
        ({"visibility_timeout": 30}, "visibility_timeout"),
        ({"visibility_timeout": timedelta(0)}, "visibility_timeout"),
        ({"config": "x"}, "config"),
        ({"archive_completed": "no"}, "archive_completed"),
        ({"reconnect_timeout": 5}, "reconnect_timeout"),
    ],
)
async def test_bad_worker_arguments_are_validation_errors(
    dsn: str, kw: dict[str, Any], names: str
) -> None:
    from commandbus import ValidationError

    reg = HandlerRegistry()

    @reg.handler("payments", "Charge")
    async def charge(cmd: Command, ctx: HandlerContext) -> None:
        return None

    with pytest.raises(ValidationError, match=names):
        make_worker(dsn, reg, **kw)


@pytest.mark.parametrize(
    "grace", [-1, float("nan"), float("inf"), "5", timedelta(seconds=-1), 10**400, True]
)
async def test_bad_stop_timeouts_are_validation_errors(dsn: str, grace: Any) -> None:
    from commandbus import ValidationError

    reg = HandlerRegistry()

    @reg.handler("payments", "Charge")
    async def charge(cmd: Command, ctx: HandlerContext) -> None:
        return None

    worker = make_worker(dsn, reg)
    with pytest.raises(ValidationError, match="timeout"):
        await worker.stop(grace)


async def test_a_worker_on_an_unmigrated_database_says_run_migrate(empty_dsn: str) -> None:
    from commandbus import SchemaNotReadyError

    reg = HandlerRegistry()

    @reg.handler("payments", "Charge")
    async def charge(cmd: Command, ctx: HandlerContext) -> None:
        return None

    worker = make_worker(empty_dsn, reg)
    with pytest.raises(SchemaNotReadyError, match="commandbus migrate"):
        await asyncio.wait_for(worker.run(), 10)
    assert live_worker_tasks() == []


async def test_a_send_whose_wakeup_was_throttled_is_read_without_waiting_for_the_poll(
    dsn: str, bus: CommandBus, conn: Conn
) -> None:
    """B commits within the throttle interval after A's NOTIFY, so B sends none."""
    from commandbus import Config

    reg = HandlerRegistry()
    done: dict[str, float] = {}

    @reg.handler("payments", "Charge")
    async def charge(cmd: Command, ctx: HandlerContext) -> None:
        done[cmd.data["n"]] = time.monotonic()

    from commandbus.engine.queues.tables import QueueRegistry

    await QueueRegistry().ensure(conn, "payments")
    await conn.execute("SELECT commandbus.install_queue_wakeup('payments', 500)")
    slow_poll = Config(poll_interval=timedelta(seconds=20))
    worker = Worker(dsn, reg, domain="payments", config=slow_poll)
    async with worker:
        await asyncio.wait_for(worker.ready.wait(), 10)
        await asyncio.sleep(0.1)  # the start-up read has come and gone
        (await bus.send("payments", "Charge", {"n": "a"})).unwrap()
        await asyncio.sleep(0.1)  # well inside A's 500 ms throttle window
        sent_b = time.monotonic()
        (await bus.send("payments", "Charge", {"n": "b"})).unwrap()

        async def both() -> bool:
            return len(done) == 2

        await wait_for(both, timeout=5)
    assert done["b"] - sent_b < 2.0  # the settle read, not the 20 s poll


async def test_a_stop_ends_promptly_when_the_database_hangs(dsn: str, bus: CommandBus) -> None:
    """A server that stops answering (no refusal, no reset) must not hold the stop."""
    reg = HandlerRegistry()
    started = asyncio.Event()

    @reg.handler("payments", "Charge")
    async def charge(cmd: Command, ctx: HandlerContext) -> str:
        started.set()
        await asyncio.sleep(0.5)
        return "done"

    for _ in range(3):
        (await bus.send("payments", "Charge", {})).unwrap()
    proxy = await Proxy(dsn).start()
    try:
        worker = make_worker(proxy.url, reg, reconnect_timeout=timedelta(minutes=10))
        task = asyncio.create_task(worker.run())
        await asyncio.wait_for(started.wait(), 10)
        await proxy.freeze()  # the handlers finish, but nothing can be recorded
        t0 = time.monotonic()
        worker.request_stop(timedelta(seconds=2))
        await asyncio.wait_for(task, 15)  # returns, no InvalidStateError
        elapsed = time.monotonic() - t0
        assert elapsed < 4.5, elapsed  # the 2 s grace plus bounded clean-up
        assert live_worker_tasks() == []
    finally:
        await proxy.close()


@pytest.mark.parametrize("registry", [None, {}, "registry"])
async def test_a_worker_needs_a_registry_and_a_url(dsn: str, registry: Any) -> None:
    from commandbus import ValidationError

    with pytest.raises(ValidationError, match="registry"):
        Worker(dsn, registry, domain="payments", config=FAST)
    reg = HandlerRegistry()

    @reg.handler("payments", "Charge")
    async def charge(cmd: Command, ctx: HandlerContext) -> None:
        return None

    with pytest.raises(ValidationError, match="url"):
        Worker(5, reg, domain="payments", config=FAST)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "seconds", [float("nan"), float("inf"), 10**12, True, "5", -1, 0, timedelta(days=8)]
)
async def test_extend_visibility_refuses_bad_durations_and_the_handler_is_not_run_twice(
    dsn: str, bus: CommandBus, seconds: Any
) -> None:
    from commandbus import ValidationError

    reg = HandlerRegistry()
    runs: list[str] = []

    @reg.handler("payments", "Charge")
    async def charge(cmd: Command, ctx: HandlerContext) -> str:
        runs.append(type(seconds).__name__)
        with pytest.raises(ValidationError, match="seconds"):
            await ctx.extend_visibility(seconds)
        return "ok"

    sent = (await bus.send("payments", "Charge", {})).unwrap()
    async with make_worker(dsn, reg):
        await until_status(bus, sent.command_id, CommandStatus.COMPLETED)
    assert len(runs) == 1


@pytest.mark.slow
@pytest.mark.parametrize(
    ("poisons", "max_attempts", "batch_size", "concurrency", "before", "crash_after"),
    [
        (1, 3, 100, 4, 5, 0.2),
        (2, 2, 1, 1, 0, 0.2),
        (2, 2, 1, 1, 5, 0.2),
        (2, 2, 100, 8, 5, 0.2),
        (2, 2, 1, 1, 10, 0.0),  # at once: the crash races the read-ahead
    ],
)
async def test_a_poison_command_that_kills_the_worker_takes_no_other_command_s_attempts(
    dsn: str,
    bus: CommandBus,
    conn: Conn,
    poisons: int,
    max_attempts: int,
    batch_size: int,
    concurrency: int,
    before: int,
    crash_after: float,
) -> None:
    """Each crash counts a delivery of everything the worker held; suspects run alone."""
    import os
    import sys
    from pathlib import Path

    from commandbus import CommandRequest

    await conn.execute("CREATE TABLE public.effects (command_id uuid, attempt int)")
    work = [
        CommandRequest(domain="jobs", command_type="Work", data={"i": i}, max_attempts=max_attempts)
        for i in range(20)
    ]
    crash = [
        CommandRequest(domain="jobs", command_type="Crash", data={}, max_attempts=max_attempts)
        for _ in range(poisons)
    ]
    requests = work[:before] + crash + work[before:]  # the poisons next to each other
    (await bus.send_batch(requests)).unwrap()
    env = dict(os.environ, DATABASE_URL=dsn, TEST_HANDLER_SLEEP="0.02")
    env["TEST_CRASH_AFTER"] = str(crash_after)
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent), env.get("PYTHONPATH", "")])

    async def statuses() -> dict[str, str]:
        rows = await fetch(
            conn, "SELECT command_type, status FROM commandbus.command WHERE domain = 'jobs'"
        )
        return {f"{t}:{i}": s for i, (t, s) in enumerate(rows)}

    async def settled() -> bool:
        rows = await fetch(
            conn,
            "SELECT count(*) FROM commandbus.command WHERE domain = 'jobs'"
            " AND status NOT IN ('COMPLETED', 'IN_TROUBLESHOOTING_QUEUE')",
        )
        return rows == [(0,)]

    crashes = 0
    for _ in range(4 + poisons * max_attempts):  # bounded: each round may crash
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            *("-m", "commandbus.cli", "worker", "--app", "worker_apps:registry"),
            *("--domain", "jobs", "--vt", "1", "--concurrency", str(concurrency)),
            *("--batch-size", str(batch_size)),
            env=env,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        round_ends = time.monotonic() + 20  # bounded: a round never waits longer
        while proc.returncode is None and not await settled() and time.monotonic() < round_ends:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 0.1)
        if proc.returncode is None:  # alive, and every command is final
            proc.terminate()
            await proc.wait()
            break
        crashes += proc.returncode == 3
    final = await statuses()
    crash_status = [s for k, s in final.items() if k.startswith("Crash")]
    work_status = [s for k, s in final.items() if k.startswith("Work")]
    assert crash_status == ["IN_TROUBLESHOOTING_QUEUE"] * poisons
    assert work_status == ["COMPLETED"] * 20, final
    assert crashes <= poisons * max_attempts  # each poison ran at most max_attempts times


async def test_async_with_raises_a_start_up_failure_at_once(empty_dsn: str) -> None:
    from commandbus import SchemaNotReadyError

    reg = HandlerRegistry()

    @reg.handler("payments", "Charge")
    async def charge(cmd: Command, ctx: HandlerContext) -> None:
        return None

    t0 = time.monotonic()
    with pytest.raises(SchemaNotReadyError):
        async with make_worker(empty_dsn, reg):
            raise AssertionError("the block must not run")
    assert time.monotonic() - t0 < 5
    assert live_worker_tasks() == []


async def test_a_stop_is_not_held_by_a_first_connection_that_hangs(dsn: str) -> None:
    reg = HandlerRegistry()

    @reg.handler("payments", "Charge")
    async def charge(cmd: Command, ctx: HandlerContext) -> None:
        return None

    proxy = await Proxy(dsn).start()
    try:
        await proxy.freeze()  # connections are accepted and never answered
        worker = make_worker(proxy.url, reg)
        task = asyncio.create_task(worker.run())
        await asyncio.sleep(0.5)  # connecting
        t0 = time.monotonic()
        await worker.stop(timedelta(seconds=1))
        await asyncio.wait_for(task, 10)
        assert time.monotonic() - t0 < 2.5
        assert live_worker_tasks() == []
    finally:
        await proxy.close()


async def test_a_lock_timeout_recording_in_the_handler_transaction_is_a_retried_attempt(
    dsn: str, bus: CommandBus, conn: Conn
) -> None:
    """Transient, not a lost connection: retried with backoff, not left to the vt."""
    reg = HandlerRegistry()
    ran = asyncio.Event()

    @reg.handler("payments", "Charge")
    async def charge(cmd: Command, ctx: HandlerContext) -> str:
        db = await ctx.connection()
        if ctx.attempt == 1:
            await db.execute("SET LOCAL lock_timeout = '100ms'")
            ran.set()
        return "ok"

    sent = (await bus.send("payments", "Charge", {}, max_attempts=3)).unwrap()
    async with await psycopg.AsyncConnection.connect(dsn) as locker:
        await locker.execute(
            "SELECT 1 FROM commandbus.command"
            " WHERE domain = 'payments' AND command_id = %s FOR UPDATE",
            (sent.command_id,),
        )
        async with make_worker(dsn, reg, visibility_timeout=timedelta(seconds=60)):
            await asyncio.wait_for(ran.wait(), 10)
            await asyncio.sleep(0.5)  # the recording timed out waiting for the lock
            await locker.rollback()
            await until_status(bus, sent.command_id, CommandStatus.COMPLETED)
    events = await history(bus, sent.command_id)
    assert [t for t, _ in events] == ["CommandSent", "CommandRetryScheduled", "CommandCompleted"]
    assert events[1][1]["error"]["type"] == "LockNotAvailable"


# -- ready comes before any work ---------------------------------------------------------------


def held_listeners(monkeypatch: pytest.MonkeyPatch, *, free: int = 0) -> asyncio.Event:
    """Listeners' connections (after the first ``free``) wait until the event returned
    is set: a listener slower to connect than its reader, for as long as a test likes."""
    from commandbus.engine.queues import listener

    real = listener.connect
    release = asyncio.Event()
    calls = 0

    async def held(url: str) -> Any:
        nonlocal calls
        calls += 1
        if calls > free:
            await release.wait()
        return await real(url)

    monkeypatch.setattr(listener, "connect", held)
    return release


async def at_the_gate(domains: int) -> None:
    """Until every domain's reader is connected and waits to be let read."""

    async def waiting() -> bool:
        gates = [n for n in live_worker_tasks() if n.startswith("commandbus-gate-")]
        return len(gates) == domains

    await wait_for(waiting)


async def unread(conn: Conn, queue: str) -> int:
    sql = "SELECT count(*) FROM pgmq.q_" + queue + " WHERE read_ct = 0"  # noqa: S608 (a test's name)
    return int(await scalar(conn, sql))


def ok_handlers(*types: tuple[str, str]) -> HandlerRegistry:
    reg = HandlerRegistry()

    async def ok(cmd: Command, ctx: HandlerContext) -> str:
        return "ok"

    for domain, command_type in types:
        reg.register(domain, command_type, ok)
    return reg


async def unread_until_ready(
    conn: Conn, worker: Worker, sent: dict[str, int], release: asyncio.Event
) -> None:
    """Run ``worker`` (a listener held back until ``release``): nothing is read before
    it is ready, then everything ``sent`` (per domain) is handled."""
    task = asyncio.create_task(worker.run())
    await at_the_gate(len(sent))
    assert not worker.ready.is_set()
    assert {d: await unread(conn, d) for d in sent} == sent
    release.set()
    await asyncio.wait_for(worker.ready.wait(), 10)
    total = sum(sent.values())

    async def done() -> bool:
        return worker.stats.completed == total

    await wait_for(done)
    await worker.stop()
    assert (await task).completed == total


async def test_a_worker_reads_nothing_before_it_is_ready(
    dsn: str, bus: CommandBus, conn: Conn, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The CLI took a stop right after the first read for a stop "before it was ready"
    # (exit 1): the reader had read while the listener was still connecting.
    for _ in range(3):
        assert (await bus.send("payments", "Charge", {})).ok
    release = held_listeners(monkeypatch)
    worker = make_worker(dsn, ok_handlers(("payments", "Charge")))
    await unread_until_ready(conn, worker, {"payments": 3}, release)


async def test_no_domain_of_a_worker_reads_before_all_are_ready(
    dsn: str, bus: CommandBus, conn: Conn, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert (await bus.send("payments", "Charge", {})).ok
    assert (await bus.send("shipping", "Ship", {})).ok
    release = held_listeners(monkeypatch, free=1)  # one domain listens at once, one late
    reg = ok_handlers(("payments", "Charge"), ("shipping", "Ship"))
    worker = Worker(dsn, reg, domains=["payments", "shipping"], config=FAST)
    await unread_until_ready(conn, worker, {"payments": 1, "shipping": 1}, release)


async def test_a_stop_before_ready_hands_nothing_to_a_handler(
    dsn: str, bus: CommandBus, conn: Conn, monkeypatch: pytest.MonkeyPatch
) -> None:
    reg = HandlerRegistry()
    ran: list[Any] = []

    @reg.handler("payments", "Charge")
    async def charge(cmd: Command, ctx: HandlerContext) -> str:
        ran.append(cmd.command_id)
        return "ok"

    assert (await bus.send("payments", "Charge", {})).ok
    held_listeners(monkeypatch)  # never released
    worker = make_worker(dsn, reg)
    task = asyncio.create_task(worker.run())
    await at_the_gate(1)
    started = time.monotonic()
    await worker.stop()
    stats = await task
    assert time.monotonic() - started < 3
    assert (ran, stats.processed, worker.ready.is_set()) == ([], 0, False)
    assert await unread(conn, "payments") == 1
    assert live_worker_tasks() == []


async def test_a_listener_that_cannot_connect_does_not_hold_the_queue(
    dsn: str,
    bus: CommandBus,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Only the listener's connection is refused (a connection limit, say): after the
    # grace the worker serves by polling, and its listener still gets through later.
    from commandbus.engine.queues import listener

    monkeypatch.setattr(listener, "LISTEN_GRACE_SECONDS", 0.5)
    real = listener.connect
    refusing = True

    async def refused(url: str) -> Any:
        if refusing:
            raise psycopg.OperationalError("connection refused (test)")
        return await real(url)

    monkeypatch.setattr(listener, "connect", refused)
    for _ in range(2):
        assert (await bus.send("payments", "Charge", {})).ok
    worker = make_worker(dsn, ok_handlers(("payments", "Charge")))
    started = time.monotonic()
    task = asyncio.create_task(worker.run())
    await asyncio.wait_for(worker.ready.wait(), 10)
    assert 0.4 < time.monotonic() - started < 5

    async def handled(n: int) -> bool:
        return worker.stats.completed == n

    await wait_for(lambda: handled(2))
    assert "not listening yet (its listener cannot connect)" in caplog.text
    refusing = False  # the listener gets through on its next try; sends wake the worker
    assert (await bus.send("payments", "Charge", {})).ok
    await wait_for(lambda: handled(3))
    await worker.stop()
    assert (await task).completed == 3
    assert live_worker_tasks() == []


async def test_one_domain_s_listener_that_cannot_connect_holds_no_domain(
    dsn: str, bus: CommandBus, monkeypatch: pytest.MonkeyPatch
) -> None:
    from commandbus.engine.queues import listener

    monkeypatch.setattr(listener, "LISTEN_GRACE_SECONDS", 0.5)
    real = listener.connect
    calls = 0

    async def one_refused(url: str) -> Any:
        nonlocal calls
        calls += 1
        if calls > 1:  # the first listener connects; the other never does
            raise psycopg.OperationalError("connection refused (test)")
        return await real(url)

    monkeypatch.setattr(listener, "connect", one_refused)
    assert (await bus.send("payments", "Charge", {})).ok
    assert (await bus.send("shipping", "Ship", {})).ok
    reg = ok_handlers(("payments", "Charge"), ("shipping", "Ship"))
    worker = Worker(dsn, reg, domains=["payments", "shipping"], config=FAST)
    task = asyncio.create_task(worker.run())
    await asyncio.wait_for(worker.ready.wait(), 10)

    async def both() -> bool:
        return worker.stats.completed == 2

    await wait_for(both)
    await worker.stop()
    assert (await task).completed == 2
    assert live_worker_tasks() == []
