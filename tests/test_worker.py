"""Worker outcomes against a real PostgreSQL, each with its events."""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import attrs
import psycopg
import pytest

from commandbus import (
    BusinessRuleError,
    Command,
    CommandBus,
    CommandFilter,
    CommandStatus,
    HandlerContext,
    HandlerRegistry,
    PermanentCommandError,
    TransientCommandError,
    Worker,
)
from commandbus.engine.commands import recording
from commandbus.engine.commands import store as command_store
from commandbus.errors import HandlerRegistrationError
from support import FAST, fetch, scalar, wait_for

Conn = psycopg.AsyncConnection[Any]


def make_worker(dsn: str, registry: HandlerRegistry, **kw: Any) -> Worker:
    return Worker(dsn, registry, domain="payments", config=FAST, **kw)


async def status_of(bus: CommandBus, command_id: UUID) -> CommandStatus | None:
    record = await bus.get_command("payments", command_id)
    return None if record is None else record.status


async def until_status(bus: CommandBus, command_id: UUID, *statuses: CommandStatus) -> None:
    async def check() -> bool:
        return await status_of(bus, command_id) in statuses

    await wait_for(check)


async def event_types(bus: CommandBus, command_id: UUID) -> list[str]:
    return [e.event_type for e in await bus.command_history("payments", command_id)]


async def test_success_records_result_deletes_message_and_replies(
    dsn: str, bus: CommandBus, conn: Conn
) -> None:
    reg = HandlerRegistry()

    @reg.handler("payments", "Charge")
    async def charge(cmd: Command, ctx: HandlerContext) -> dict[str, Any]:
        assert ctx.attempt == 1 and ctx.command_id == cmd.command_id
        return {"charged": cmd.data["amount"]}

    sent = (await bus.send("payments", "Charge", {"amount": 5}, reply_to="replies")).value
    async with make_worker(dsn, reg):
        await until_status(bus, sent.command_id, CommandStatus.COMPLETED)
    record = await bus.get_command("payments", sent.command_id)
    assert record is not None
    assert record.result == {"charged": 5} and record.attempts == 1 and record.version == 2
    history = await bus.command_history("payments", sent.command_id)
    assert [e.event_type for e in history] == ["CommandSent", "CommandCompleted"]
    assert history[1].data == {"attempt": 1, "result": {"charged": 5}}
    assert history[1].correlation_id == sent.correlation_id
    assert await scalar(conn, "SELECT count(*) FROM pgmq.q_payments") == 0
    replies = await fetch(conn, "SELECT message FROM pgmq.q_replies")
    assert len(replies) == 1
    assert replies[0][0]["outcome"] == "SUCCESS"
    assert replies[0][0]["result"] == {"charged": 5}
    assert replies[0][0]["command_id"] == str(sent.command_id)


async def test_archive_completed_keeps_the_message(dsn: str, bus: CommandBus, conn: Conn) -> None:
    reg = HandlerRegistry()

    @reg.handler("payments", "Charge")
    async def charge(cmd: Command, ctx: HandlerContext) -> None:
        return None

    sent = (await bus.send("payments", "Charge", {})).value
    async with make_worker(dsn, reg, archive_completed=True):
        await until_status(bus, sent.command_id, CommandStatus.COMPLETED)
    assert await scalar(conn, "SELECT count(*) FROM pgmq.q_payments") == 0
    assert await scalar(conn, "SELECT msg_id FROM pgmq.a_payments") == sent.msg_id


async def test_transient_failures_retry_with_the_configured_backoff(
    dsn: str, bus: CommandBus, conn: Conn
) -> None:
    reg = HandlerRegistry()
    calls: list[int] = []

    @reg.handler("payments", "Charge")
    async def charge(cmd: Command, ctx: HandlerContext) -> str:
        calls.append(ctx.attempt)
        if ctx.attempt < 3:
            raise TransientCommandError("gateway timeout")
        return "ok"

    sent = (await bus.send("payments", "Charge", {}, max_attempts=3)).value
    async with make_worker(dsn, reg):
        await until_status(bus, sent.command_id, CommandStatus.COMPLETED)
    assert calls == [1, 2, 3]
    history = await bus.command_history("payments", sent.command_id)
    assert [e.event_type for e in history] == [
        "CommandSent",
        "CommandRetryScheduled",
        "CommandRetryScheduled",
        "CommandCompleted",
    ]
    # base 0.2 s, multiplier 2: 0.2 s after attempt 1, 0.4 s after attempt 2
    for event, attempt, delay in ((history[1], 1, 0.2), (history[2], 2, 0.4)):
        assert event.data["attempt"] == attempt
        assert event.data["delay_seconds"] == pytest.approx(delay)
        assert event.data["error"]["code"] == "TRANSIENT"
        retry_at = datetime.fromisoformat(event.data["retry_at"])
        planned = (retry_at - event.recorded_at).total_seconds()
        assert delay <= planned < delay + 0.5
    # and the next attempt really waited for it (durably, via the message's vt)
    assert history[2].recorded_at >= datetime.fromisoformat(history[1].data["retry_at"])
    assert history[3].recorded_at >= datetime.fromisoformat(history[2].data["retry_at"])


async def test_exhausted_attempts_land_in_the_tsq(dsn: str, bus: CommandBus, conn: Conn) -> None:
    reg = HandlerRegistry()

    @reg.handler("payments", "Charge")
    async def charge(cmd: Command, ctx: HandlerContext) -> None:
        raise ConnectionError("bank unreachable")

    sent = (await bus.send("payments", "Charge", {}, max_attempts=2)).value
    async with make_worker(dsn, reg):
        await until_status(bus, sent.command_id, CommandStatus.IN_TROUBLESHOOTING_QUEUE)
    history = await bus.command_history("payments", sent.command_id)
    assert [e.event_type for e in history] == [
        "CommandSent",
        "CommandRetryScheduled",
        "CommandMovedToTroubleshootingQueue",
    ]
    assert history[-1].data["reason"] == "attempts_exhausted"
    assert history[-1].data["error"]["type"] == "ConnectionError"
    assert await scalar(conn, "SELECT count(*) FROM pgmq.q_payments") == 0
    assert await scalar(conn, "SELECT count(*) FROM pgmq.a_payments") == 1
    tsq = await bus.troubleshooting.list(CommandFilter(domain="payments"))
    assert [c.command_id for c in tsq.items] == [sent.command_id]
    assert tsq.items[0].last_error is not None
    assert tsq.items[0].last_error["message"] == "bank unreachable"


async def test_permanent_failure_goes_straight_to_the_tsq(dsn: str, bus: CommandBus) -> None:
    reg = HandlerRegistry()

    @reg.handler("payments", "Charge")
    async def charge(cmd: Command, ctx: HandlerContext) -> None:
        raise PermanentCommandError("card number invalid", code="BAD_CARD")

    sent = (await bus.send("payments", "Charge", {}, max_attempts=5)).value
    async with make_worker(dsn, reg):
        await until_status(bus, sent.command_id, CommandStatus.IN_TROUBLESHOOTING_QUEUE)
    history = await bus.command_history("payments", sent.command_id)
    assert [e.event_type for e in history] == ["CommandSent", "CommandMovedToTroubleshootingQueue"]
    assert history[-1].data["reason"] == "permanent"
    assert history[-1].data["error"]["code"] == "BAD_CARD"


async def test_business_rule_failure_is_final_without_tsq(
    dsn: str, bus: CommandBus, conn: Conn
) -> None:
    reg = HandlerRegistry()

    @reg.handler("payments", "Charge")
    async def charge(cmd: Command, ctx: HandlerContext) -> None:
        raise BusinessRuleError("insufficient funds", code="NO_FUNDS")

    sent = (await bus.send("payments", "Charge", {}, reply_to="replies")).value
    async with make_worker(dsn, reg):
        await until_status(bus, sent.command_id, CommandStatus.FAILED)
    assert await event_types(bus, sent.command_id) == ["CommandSent", "CommandFailed"]
    assert (await bus.troubleshooting.list()).items == ()
    reply = await scalar(conn, "SELECT message FROM pgmq.q_replies")
    assert reply["outcome"] == "FAILED" and reply["error"]["code"] == "NO_FUNDS"


async def test_unknown_command_type_goes_to_the_tsq(dsn: str, bus: CommandBus) -> None:
    reg = HandlerRegistry()

    @reg.handler("payments", "Charge")
    async def charge(cmd: Command, ctx: HandlerContext) -> None:
        return None

    sent = (await bus.send("payments", "Refund", {})).value
    async with make_worker(dsn, reg):
        await until_status(bus, sent.command_id, CommandStatus.IN_TROUBLESHOOTING_QUEUE)
    history = await bus.command_history("payments", sent.command_id)
    assert history[-1].data["reason"] == "unknown_command_type"
    assert history[-1].data["error"]["type"] == "UnknownCommandTypeError"
    assert "Refund" in history[-1].data["error"]["message"]


async def test_poison_messages_are_quarantined_and_the_worker_goes_on(
    dsn: str, bus: CommandBus, conn: Conn
) -> None:
    reg = HandlerRegistry()

    @reg.handler("payments", "Charge")
    async def charge(cmd: Command, ctx: HandlerContext) -> str:
        return "fine"

    await bus.create_domain("payments")
    for junk in (
        '"just a string"',
        '{"command_id": "not-a-uuid", "data": {}}',
        '{"command_id": "6f1c9e4e-1111-4b5b-9c55-000000000000", "command_type": "Charge",'
        ' "correlation_id": "6f1c9e4e-1111-4b5b-9c55-000000000000", "data": {}}',
    ):
        await conn.execute(
            "SELECT pgmq.send(queue_name => 'payments'::text, msg => %s::jsonb)", (junk,)
        )
    good = (await bus.send("payments", "Charge", {})).value
    worker = make_worker(dsn, reg)
    async with worker:
        await until_status(bus, good.command_id, CommandStatus.COMPLETED)
        await wait_for(lambda: _true_when(worker.stats.quarantined == 3))
    assert await scalar(conn, "SELECT count(*) FROM pgmq.a_payments") == 3
    events = await fetch(
        conn,
        "SELECT data->>'reason' FROM commandbus.event WHERE event_type = 'MessageQuarantined'"
        " ORDER BY position",
    )
    reasons = sorted(r for (r,) in events)
    assert len(reasons) == 3
    assert sum("undecodable" in r for r in reasons) == 2
    assert sum("no command 6f1c9e4e-1111-4b5b-9c55-000000000000" in r for r in reasons) == 1


async def _true_when(value: bool) -> bool:
    return value


async def test_handler_transaction_commits_with_the_completion(
    dsn: str, bus: CommandBus, conn: Conn
) -> None:
    await conn.execute("CREATE TABLE public.ledger (command_id uuid PRIMARY KEY, amount int)")
    reg = HandlerRegistry()

    @reg.handler("payments", "Charge")
    async def charge(cmd: Command, ctx: HandlerContext) -> str:
        db = await ctx.connection()
        await db.execute(
            "INSERT INTO public.ledger VALUES (%s, %s)", (cmd.command_id, cmd.data["amount"])
        )
        if cmd.data["amount"] < 0:
            raise BusinessRuleError("negative amount")
        return "booked"

    ok = (await bus.send("payments", "Charge", {"amount": 7})).value
    bad = (await bus.send("payments", "Charge", {"amount": -1})).value
    async with make_worker(dsn, reg):
        await until_status(bus, ok.command_id, CommandStatus.COMPLETED)
        await until_status(bus, bad.command_id, CommandStatus.FAILED)
    rows = await fetch(conn, "SELECT command_id, amount FROM public.ledger")
    assert rows == [(ok.command_id, 7)]  # the failed handler's write was rolled back


async def test_a_losing_duplicate_delivery_rolls_back_its_handler_writes(
    dsn: str, bus: CommandBus, conn: Conn
) -> None:
    """Another delivery records first: this one's completion and its writes are dropped."""
    await conn.execute("CREATE TABLE public.ledger (command_id uuid, attempt int)")
    reg = HandlerRegistry()

    @reg.handler("payments", "Charge")
    async def charge(cmd: Command, ctx: HandlerContext) -> str:
        db = await ctx.connection()
        await db.execute("INSERT INTO public.ledger VALUES (%s, %s)", (cmd.command_id, 1))
        # meanwhile an operator (or a twin delivery) moves the command on
        from commandbus.engine.commands.store import Transition
        from commandbus.models import NewEvent

        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as other:
            recorded = await recording.record_transitions(
                other,
                [
                    Transition(
                        domain="payments",
                        command_id=cmd.command_id,
                        expected_version=1,
                        events=[
                            NewEvent(
                                event_type="CommandCompleted", data={"attempt": 1, "result": "twin"}
                            )
                        ],
                        msg_id=ctx.msg_id,
                        queue_op="delete",
                    )
                ],
            )
            assert recorded
        return "mine"

    sent = (await bus.send("payments", "Charge", {})).value
    worker = make_worker(dsn, reg)
    async with worker:
        await wait_for(lambda: _true_when(worker.stats.conflicts == 1))
    record = await bus.get_command("payments", sent.command_id)
    assert record is not None and record.result == "twin"
    assert await event_types(bus, sent.command_id) == ["CommandSent", "CommandCompleted"]
    assert await scalar(conn, "SELECT count(*) FROM public.ledger") == 0


async def test_an_attempt_lost_to_a_crash_is_recorded(
    dsn: str, bus: CommandBus, conn: Conn
) -> None:
    reg = HandlerRegistry()

    @reg.handler("payments", "Charge")
    async def charge(cmd: Command, ctx: HandlerContext) -> int:
        return ctx.attempt

    sent = (await bus.send("payments", "Charge", {})).value
    # a "worker" takes the message for one second and dies without an outcome
    taken = await command_store.read_batch(conn, "payments", qty=10, vt_seconds=1)
    assert [m.msg_id for m in taken] == [sent.msg_id]
    async with make_worker(dsn, reg):
        await until_status(bus, sent.command_id, CommandStatus.COMPLETED)
    history = await bus.command_history("payments", sent.command_id)
    assert [e.event_type for e in history] == [
        "CommandSent",
        "CommandAttemptLost",
        "CommandCompleted",
    ]
    assert history[1].data["attempt"] == 1
    assert history[2].data == {"attempt": 2, "result": 2}


async def test_extend_visibility(dsn: str, bus: CommandBus, conn: Conn) -> None:
    reg = HandlerRegistry()
    seen: list[Any] = []

    @reg.handler("payments", "Charge")
    async def charge(cmd: Command, ctx: HandlerContext) -> None:
        seen.append(await ctx.extend_visibility(120))
        seen.append(
            await scalar(conn, "SELECT vt FROM pgmq.q_payments WHERE msg_id = %s", ctx.msg_id)
        )

    sent = (await bus.send("payments", "Charge", {})).value
    async with make_worker(dsn, reg):
        await until_status(bus, sent.command_id, CommandStatus.COMPLETED)
    assert seen[0] == seen[1]
    assert (seen[0] - datetime.now(seen[0].tzinfo)) > timedelta(seconds=100)


async def test_graceful_stop_lets_handlers_finish(dsn: str, bus: CommandBus) -> None:
    reg = HandlerRegistry()
    started = asyncio.Event()

    @reg.handler("payments", "Charge")
    async def charge(cmd: Command, ctx: HandlerContext) -> str:
        started.set()
        await asyncio.sleep(0.5)
        return "done"

    worker = make_worker(dsn, reg)
    task = asyncio.create_task(worker.run())
    await asyncio.wait_for(worker.ready.wait(), 10)  # connected and listening
    sent = (await bus.send("payments", "Charge", {})).value
    await asyncio.wait_for(started.wait(), 10)
    await worker.stop(timeout=5)
    stats = await task
    assert stats.completed == 1
    assert await status_of(bus, sent.command_id) is CommandStatus.COMPLETED
    await worker.stop()  # idempotent


async def test_stop_timeout_releases_unfinished_messages_at_once(
    dsn: str, bus: CommandBus, conn: Conn
) -> None:
    reg = HandlerRegistry()
    started = asyncio.Event()

    @reg.handler("payments", "Charge")
    async def charge(cmd: Command, ctx: HandlerContext) -> None:
        started.set()
        await asyncio.sleep(60)

    first = (await bus.send("payments", "Charge", {})).value
    second = (await bus.send("payments", "Charge", {})).value
    worker = make_worker(dsn, reg, concurrency=1, visibility_timeout=timedelta(seconds=300))
    task = asyncio.create_task(worker.run())
    await asyncio.wait_for(started.wait(), 10)
    await worker.stop(timeout=0.2)
    stats = await asyncio.wait_for(task, 10)
    assert stats.released == 2
    rows = dict(
        await fetch(
            conn,
            "SELECT msg_id, read_ct FROM pgmq.q_payments WHERE vt <= clock_timestamp()",
        )
    )
    # both visible again now, not in 300 s; the unstarted one gave back its read
    assert rows == {first.msg_id: 1, second.msg_id: 0}
    assert await status_of(bus, first.command_id) is CommandStatus.PENDING


async def test_stop_before_run_returns_at_once(dsn: str) -> None:
    reg = HandlerRegistry()

    @reg.handler("payments", "Charge")
    async def charge(cmd: Command, ctx: HandlerContext) -> None:
        return None

    worker = make_worker(dsn, reg)
    await worker.stop()
    stats = await asyncio.wait_for(worker.run(), 5)
    assert stats.processed == 0


async def test_registry_rejects_duplicates_and_unserved_domains(dsn: str) -> None:
    reg = HandlerRegistry()

    @reg.handler("payments", "Charge")
    async def charge(cmd: Command, ctx: HandlerContext) -> None:
        return None

    with pytest.raises(HandlerRegistrationError, match="already registered"):
        reg.register("payments", "Charge", charge)
    with pytest.raises(HandlerRegistrationError, match="async"):
        reg.register("payments", "Sync", lambda c, x: None)  # type: ignore[arg-type,return-value]
    with pytest.raises(HandlerRegistrationError, match="no handlers"):
        Worker(dsn, reg, domain="shipping")


async def test_log_lines_carry_the_correlation_id(
    dsn: str, bus: CommandBus, caplog: pytest.LogCaptureFixture
) -> None:
    from commandbus.engine.observability.logging import CorrelationFilter

    reg = HandlerRegistry()
    app_log = logging.getLogger("commandbus.tests.app")

    @reg.handler("payments", "Charge")
    async def charge(cmd: Command, ctx: HandlerContext) -> None:
        app_log.info("charging")

    caplog.handler.addFilter(CorrelationFilter())
    caplog.set_level(logging.INFO, logger="commandbus")
    sent = (await bus.send("payments", "Charge", {})).value
    async with make_worker(dsn, reg):
        await until_status(bus, sent.command_id, CommandStatus.COMPLETED)
    lines = [r for r in caplog.records if r.getMessage() == "charging"]
    assert len(lines) == 1
    assert lines[0].correlation_id == str(sent.correlation_id)  # type: ignore[attr-defined]
    assert lines[0].command_id == str(sent.command_id)  # type: ignore[attr-defined]


async def test_an_outcome_the_database_refuses_goes_to_the_tsq_alone(
    dsn: str, bus: CommandBus, conn: Conn
) -> None:
    """Its reply queue was dropped: that command lands in the TSQ, the rest complete."""
    reg = HandlerRegistry()

    @reg.handler("payments", "Charge")
    async def charge(cmd: Command, ctx: HandlerContext) -> str:
        return "charged"

    doomed = (await bus.send("payments", "Charge", {}, reply_to="gone")).unwrap()
    fine = [(await bus.send("payments", "Charge", {})).unwrap() for _ in range(5)]
    await conn.execute("SELECT pgmq.drop_queue('gone')")
    worker = make_worker(dsn, reg)
    async with worker:
        await until_status(bus, doomed.command_id, CommandStatus.IN_TROUBLESHOOTING_QUEUE)
        for s in fine:
            await until_status(bus, s.command_id, CommandStatus.COMPLETED)
    history = await bus.command_history("payments", doomed.command_id)
    assert history[-1].data["reason"] == "unrecordable_outcome"
    assert "could not be recorded" in history[-1].data["error"]["message"]
    assert worker.stats.completed == 5 and worker.stats.troubleshooting == 1


async def test_results_postgres_cannot_store_are_refused_cleanly(dsn: str, bus: CommandBus) -> None:
    reg = HandlerRegistry()

    @reg.handler("payments", "Charge")
    async def charge(cmd: Command, ctx: HandlerContext) -> Any:
        return {"nul": "a\x00b"} if cmd.data["n"] == 0 else "x\ud800"

    a = (await bus.send("payments", "Charge", {"n": 0})).unwrap()
    b = (await bus.send("payments", "Charge", {"n": 1})).unwrap()
    async with make_worker(dsn, reg):
        await until_status(bus, a.command_id, CommandStatus.IN_TROUBLESHOOTING_QUEUE)
        await until_status(bus, b.command_id, CommandStatus.IN_TROUBLESHOOTING_QUEUE)
    ra = await bus.get_command("payments", a.command_id)
    assert ra is not None and ra.last_error is not None
    assert "NUL" in ra.last_error["message"]
    from commandbus import PayloadError

    with pytest.raises(PayloadError, match="NUL"):
        await bus.send("payments", "Charge", {"bad": "\x00"})


async def test_a_result_larger_than_max_payload_bytes_is_refused(dsn: str, bus: CommandBus) -> None:
    # a result goes into the command's events, its reply and its saga's state: it is
    # capped like command data (before: a 50 MB result was stored)
    reg = HandlerRegistry()

    @reg.handler("payments", "Charge")
    async def charge(cmd: Command, ctx: HandlerContext) -> Any:
        size = cmd.data["size"]
        return int("7" * -size) if size < 0 else "r" * size  # an int of 4001 digits too

    small = (await bus.send("payments", "Charge", {"size": 900})).unwrap()
    big = (await bus.send("payments", "Charge", {"size": 5000})).unwrap()
    long_int = (await bus.send("payments", "Charge", {"size": -4001})).unwrap()
    config = attrs.evolve(FAST, max_payload_bytes=1000)
    async with Worker(dsn, reg, domain="payments", config=config):
        await until_status(bus, small.command_id, CommandStatus.COMPLETED)
        await until_status(bus, big.command_id, CommandStatus.IN_TROUBLESHOOTING_QUEUE)
        await until_status(bus, long_int.command_id, CommandStatus.IN_TROUBLESHOOTING_QUEUE)
    rb = await bus.get_command("payments", big.command_id)
    assert rb is not None and rb.last_error is not None and rb.result is None
    assert rb.last_error["type"] == "PermanentCommandError"
    assert "handler result" in rb.last_error["message"]
    assert "1000" in rb.last_error["message"], rb.last_error


async def test_completions_are_grouped_into_few_transactions(
    dsn: str, bus: CommandBus, conn: Conn
) -> None:
    reg = HandlerRegistry()

    @reg.handler("payments", "Charge")
    async def charge(cmd: Command, ctx: HandlerContext) -> None:
        await asyncio.sleep(0.001)

    from commandbus import CommandRequest

    n = 300
    sent = await bus.send_batch(
        [CommandRequest(domain="payments", command_type="Charge") for _ in range(n)]
    )
    batch_id = sent.unwrap().batch_id
    async with make_worker(dsn, reg, concurrency=16):

        async def all_done() -> bool:
            b = await bus.get_batch(batch_id)
            return b is not None and b.is_complete

        await wait_for(all_done)
    completed_in = await scalar(
        conn,
        "SELECT count(DISTINCT transaction_id) FROM commandbus.event"
        " WHERE event_type = 'CommandCompleted'",
    )
    sent_in = await scalar(
        conn,
        "SELECT count(DISTINCT transaction_id) FROM commandbus.event"
        " WHERE event_type IN ('CommandSent', 'BatchCreated')",
    )
    assert sent_in == 1  # the whole batch: one transaction
    assert completed_in <= n // 5, completed_in  # grouped, not one commit per command


async def test_a_second_stop_request_can_cut_the_grace_short(
    dsn: str, bus: CommandBus, conn: Conn
) -> None:
    reg = HandlerRegistry()
    started = asyncio.Event()

    @reg.handler("payments", "Charge")
    async def charge(cmd: Command, ctx: HandlerContext) -> None:
        started.set()
        await asyncio.sleep(60)

    sent = (await bus.send("payments", "Charge", {})).unwrap()
    worker = make_worker(dsn, reg)
    task = asyncio.create_task(worker.run())
    await asyncio.wait_for(started.wait(), 10)
    worker.request_stop(30)  # generous grace ...
    await asyncio.sleep(0.2)
    assert not task.done()
    worker.request_stop(0)  # ... then: now
    stats = await asyncio.wait_for(task, 5)
    assert stats.released == 1
    visible = await scalar(
        conn,
        "SELECT count(*) FROM pgmq.q_payments WHERE msg_id = %s AND vt <= clock_timestamp()",
        sent.msg_id,
    )
    assert visible == 1
