"""An operator cancels a command that has not run yet: ``bus.cancel_command``."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from datetime import timedelta
from typing import Any
from uuid import UUID, uuid4

import psycopg
import pytest

from commandbus import (
    Command,
    CommandBus,
    CommandNotFoundError,
    CommandRequest,
    CommandStatus,
    Compensation,
    Config,
    Coordinator,
    HandlerContext,
    HandlerRegistry,
    InvalidStateError,
    PermanentCommandError,
    Saga,
    SagaClient,
    SagaRegistry,
    SagaStatus,
    Step,
    TransientCommandError,
    ValidationError,
    Worker,
)
from support import FAST, assert_streams_contiguous, fetch, scalar, wait_for

Conn = psycopg.AsyncConnection[Any]


async def _messages(conn: Conn, domain: str = "payments") -> int:
    return int(await scalar(conn, f'SELECT count(*) FROM pgmq."q_{domain}"'))  # noqa: S608


async def _events(bus: CommandBus, cid: UUID, domain: str = "payments") -> list[str]:
    return [e.event_type for e in await bus.command_history(domain, cid)]


async def _status(bus: CommandBus, cid: UUID, domain: str = "payments") -> CommandStatus:
    record = await bus.get_command(domain, cid)
    assert record is not None
    return record.status


async def test_a_pending_command_is_cancelled_with_its_message(bus: CommandBus, conn: Conn) -> None:
    cid = (await bus.send("payments", "Charge", {"n": 1})).unwrap().command_id
    keep = (await bus.send("payments", "Charge", {"n": 2})).unwrap().command_id
    assert await _messages(conn) == 2

    was = await bus.cancel_command("payments", str(cid).upper(), reason="dup", operator="ana")

    assert was is CommandStatus.PENDING
    assert await _status(bus, cid) is CommandStatus.CANCELLED
    assert await _status(bus, keep) is CommandStatus.PENDING
    history = await bus.command_history("payments", cid)
    assert [e.event_type for e in history] == ["CommandSent", "CommandCancelledByOperator"]
    assert history[-1].data == {"reason": "dup", "operator": "ana", "source": "api"}
    assert history[-1].causation_id == cid
    assert await _messages(conn) == 1  # only the other command's message is left
    assert (await bus.verify_projection()).ok
    await assert_streams_contiguous(conn)

    # nothing runs it afterwards
    ran: list[UUID] = []
    reg = HandlerRegistry()

    @reg.handler("payments", "Charge")
    async def charge(cmd: Command, ctx: HandlerContext) -> None:
        ran.append(cmd.command_id)

    async with Worker(bus.url, reg, domain="payments", config=FAST):
        await wait_for(lambda: len(ran) == 1)
    assert ran == [keep]
    assert await _status(bus, cid) is CommandStatus.CANCELLED


async def test_a_delayed_command_is_cancelled(bus: CommandBus, conn: Conn) -> None:
    cid = (await bus.send("payments", "Charge", {}, delay=3600)).unwrap().command_id
    assert await bus.cancel_command("payments", cid) is CommandStatus.PENDING
    assert await _messages(conn) == 0
    assert await _events(bus, cid) == ["CommandSent", "CommandCancelledByOperator"]


async def test_refused_when_unknown_final_or_given_bad_arguments(bus: CommandBus) -> None:
    with pytest.raises(CommandNotFoundError, match=r"no command .* in domain 'payments'"):
        await bus.cancel_command("payments", uuid4())
    cid = (await bus.send("payments", "Charge", {})).unwrap().command_id
    with pytest.raises(CommandNotFoundError):
        await bus.cancel_command("billing", cid)  # the id exists, in another domain
    await bus.cancel_command("payments", cid)
    with pytest.raises(InvalidStateError, match="it is already CANCELLED"):
        await bus.cancel_command("payments", cid)
    with pytest.raises(ValidationError, match="command_id"):
        await bus.cancel_command("payments", "not-a-uuid")
    with pytest.raises(ValidationError, match="reason"):
        await bus.cancel_command("payments", cid, reason=5)  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        await bus.cancel_command("Bad Domain!", cid)
    assert await _events(bus, cid) == ["CommandSent", "CommandCancelledByOperator"]


async def test_in_flight_is_refused_then_completed_is_final(bus: CommandBus, dsn: str) -> None:
    started, release = asyncio.Event(), asyncio.Event()
    reg = HandlerRegistry()

    @reg.handler("payments", "Charge")
    async def charge(cmd: Command, ctx: HandlerContext) -> dict[str, int]:
        started.set()
        await release.wait()
        return {"ok": 1}

    cid = (await bus.send("payments", "Charge", {})).unwrap().command_id
    async with Worker(dsn, reg, domain="payments", config=FAST):
        await asyncio.wait_for(started.wait(), 15)
        with pytest.raises(InvalidStateError, match="in flight") as refused:
            await bus.cancel_command("payments", cid, operator="ana")
        assert refused.value.details["in_flight"] is True
        assert await _events(bus, cid) == ["CommandSent"]  # nothing recorded
        release.set()

        async def completed() -> bool:
            return await _status(bus, cid) is CommandStatus.COMPLETED

        await wait_for(completed)
    with pytest.raises(InvalidStateError, match="already COMPLETED"):
        await bus.cancel_command("payments", cid)
    assert await _events(bus, cid) == ["CommandSent", "CommandCompleted"]
    assert (await bus.verify_projection()).ok


async def test_a_command_waiting_for_its_retry_is_cancelled(dsn: str, conn: Conn) -> None:
    slow_retry = Config(backoff_base=timedelta(hours=1), backoff_max=timedelta(hours=1))
    attempts: list[int] = []
    reg = HandlerRegistry()

    @reg.handler("payments", "Charge")
    async def charge(cmd: Command, ctx: HandlerContext) -> None:
        attempts.append(ctx.attempt)
        raise TransientCommandError("busy", code="BUSY")

    async with CommandBus(dsn, config=slow_retry) as bus:
        cid = (await bus.send("payments", "Charge", {})).unwrap().command_id
        async with Worker(dsn, reg, domain="payments", config=slow_retry):

            async def retry_scheduled() -> bool:
                return await _status(bus, cid) is CommandStatus.RETRY_SCHEDULED

            await wait_for(retry_scheduled)
            was = await bus.cancel_command("payments", cid, reason="give up")
        assert was is CommandStatus.RETRY_SCHEDULED
        assert await _events(bus, cid) == [
            "CommandSent",
            "CommandRetryScheduled",
            "CommandCancelledByOperator",
        ]
        assert await _messages(conn) == 0
        assert attempts == [1]
        record = await bus.get_command("payments", cid)
        assert record is not None and record.last_error is not None  # kept for the record
        assert (await bus.verify_projection()).ok


async def test_a_command_in_the_tsq_is_cancelled_as_the_tsq_does(bus: CommandBus, dsn: str) -> None:
    reg = HandlerRegistry()

    @reg.handler("payments", "Charge")
    async def charge(cmd: Command, ctx: HandlerContext) -> None:
        raise PermanentCommandError("declined", code="DECLINED")

    cid = (await bus.send("payments", "Charge", {}, reply_to="replies")).unwrap().command_id
    async with Worker(dsn, reg, domain="payments", config=FAST):

        async def in_tsq() -> bool:
            return await _status(bus, cid) is CommandStatus.IN_TROUBLESHOOTING_QUEUE

        await wait_for(in_tsq)
    was = await bus.cancel_command("payments", cid, reason="refunded by hand", operator="bo")
    assert was is CommandStatus.IN_TROUBLESHOOTING_QUEUE
    history = await bus.command_history("payments", cid)
    assert history[-1].event_type == "CommandCancelledByOperator"
    assert history[-1].data == {"reason": "refunded by hand", "operator": "bo", "source": "api"}
    async with bus.pool.connection() as c:
        outcomes = [r[0] for r in await fetch(c, "SELECT message->>'outcome' FROM pgmq.q_replies")]
    assert outcomes == ["TROUBLESHOOTING", "CANCELLED"]


async def test_the_reply_says_cancelled(bus: CommandBus, conn: Conn) -> None:
    cid = (await bus.send("payments", "Charge", {}, reply_to="replies")).unwrap().command_id
    await bus.cancel_command("payments", cid, operator="ana")
    rows = await fetch(conn, "SELECT message FROM pgmq.q_replies")
    assert len(rows) == 1
    reply = rows[0][0]
    assert reply["command_id"] == str(cid) and reply["outcome"] == "CANCELLED"


async def test_in_the_callers_transaction_a_rollback_undoes_it(dsn: str, bus: CommandBus) -> None:
    cid = (await bus.send("payments", "Charge", {})).unwrap().command_id
    async with await psycopg.AsyncConnection.connect(dsn) as conn:  # not autocommit
        await bus.cancel_command("payments", cid, conn=conn)
        seen = await bus.get_command("payments", cid, conn=conn)
        assert seen is not None and seen.status is CommandStatus.CANCELLED
        # a refusal undoes only its own work
        with pytest.raises(InvalidStateError):
            await bus.cancel_command("payments", cid, conn=conn)
        seen = await bus.get_command("payments", cid, conn=conn)
        assert seen is not None and seen.status is CommandStatus.CANCELLED
        await conn.rollback()
    assert await _status(bus, cid) is CommandStatus.PENDING
    assert await _events(bus, cid) == ["CommandSent"]
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as c:
        assert await _messages(c) == 1


async def test_cancelling_everything_while_a_worker_runs_loses_nothing(
    dsn: str, bus: CommandBus, conn: Conn
) -> None:
    """Each command ends either cancelled (its handler never ran) or completed by the
    worker (never cancelled): never both, never neither, and the projection equals
    a replay."""
    n = 300
    ran: Counter[UUID] = Counter()
    reg = HandlerRegistry()

    @reg.handler("payments", "Charge")
    async def charge(cmd: Command, ctx: HandlerContext) -> dict[str, int]:
        ran[cmd.command_id] += 1
        await asyncio.sleep(random.uniform(0, 0.01))
        return {"n": cmd.data["n"]}

    batch = (
        await bus.send_batch(
            [
                CommandRequest(domain="payments", command_type="Charge", data={"n": i})
                for i in range(n)
            ]
        )
    ).unwrap()
    ids = list(batch.command_ids)
    cancelled: set[UUID] = set()
    refusals = Counter[str]()

    async def cancel_all() -> None:
        pending = list(ids)
        random.shuffle(pending)
        while pending:
            retry = []
            for cid in pending:
                try:
                    await bus.cancel_command("payments", cid, operator="race")
                    cancelled.add(cid)
                except InvalidStateError as exc:
                    if "in flight" in str(exc):
                        refusals["in flight"] += 1
                        retry.append(cid)
                    else:
                        assert "already COMPLETED" in str(exc), exc
                        refusals["completed"] += 1
            pending = retry
            await asyncio.sleep(0)

    async with Worker(dsn, reg, domain="payments", config=FAST, concurrency=8, batch_size=10):
        await cancel_all()

        async def all_final() -> bool:
            page = await bus.list_commands(limit=1000)
            return all(r.status.is_final for r in page.items)

        await wait_for(all_final, timeout=30)

    page = await bus.list_commands(limit=1000)
    statuses = {r.command_id: r.status for r in page.items}
    assert set(statuses) == set(ids)
    completed = {cid for cid, s in statuses.items() if s is CommandStatus.COMPLETED}
    assert {cid for cid, s in statuses.items() if s is CommandStatus.CANCELLED} == cancelled
    assert completed | cancelled == set(ids) and not completed & cancelled
    assert set(ran) == completed  # a cancelled command's handler never ran
    assert all(times == 1 for times in ran.values())
    finals = await fetch(
        conn,
        "SELECT stream_id, count(*) FROM commandbus.event"
        " WHERE event_type IN ('CommandCompleted', 'CommandCancelledByOperator')"
        " GROUP BY stream_id",
    )
    assert len(finals) == n and all(count == 1 for _s, count in finals)
    assert await _messages(conn) == 0
    assert (await bus.verify_projection()).ok
    await assert_streams_contiguous(conn)
    # both sides won some: the race was real
    assert cancelled and completed, (len(cancelled), len(completed), refusals)


LINE = Saga(
    "line",
    steps=[
        Step(
            "reserve",
            domain="inventory",
            command="Reserve",
            data={},
            compensation=Compensation("Release"),
        ),
        Step("charge", domain="payments", command="Charge", data={}),
    ],
)


async def test_a_sagas_pending_step_cancelled_makes_the_saga_compensate(
    dsn: str, bus: CommandBus
) -> None:
    calls: list[str] = []
    reg = HandlerRegistry()

    @reg.handler("inventory", "Reserve")
    async def reserve(cmd: Command, ctx: HandlerContext) -> dict[str, str]:
        calls.append("Reserve")
        return {"r": "1"}

    @reg.handler("inventory", "Release")
    async def release(cmd: Command, ctx: HandlerContext) -> None:
        calls.append("Release")

    sagas = SagaClient(bus)
    # no worker serves payments: the charge waits, PENDING, until an operator acts
    async with (
        Worker(dsn, reg, domain="inventory", config=FAST),
        Coordinator(dsn, SagaRegistry([LINE]), config=FAST),
    ):
        sid = (await sagas.start_saga(LINE, {})).saga_id

        async def charge_sent() -> bool:
            page = await bus.list_commands(limit=10)
            return any(r.command_type == "Charge" for r in page.items)

        await wait_for(charge_sent)
        page = await bus.list_commands(limit=10)
        charge = next(r for r in page.items if r.command_type == "Charge")
        assert charge.status is CommandStatus.PENDING and charge.saga_id == sid
        await bus.cancel_command("payments", charge.command_id, reason="out of stock")

        async def ended() -> bool:
            saga = await sagas.get_saga(sid)
            return saga is not None and saga.status.is_final

        await wait_for(ended)
    saga = await sagas.get_saga(sid)
    assert saga is not None and saga.status is SagaStatus.COMPENSATED
    assert calls == ["Reserve", "Release"]
    assert await _status(bus, charge.command_id) is CommandStatus.CANCELLED
    assert (await sagas.verify_projection()).ok
    assert (await bus.verify_projection()).ok
