"""The status projection equals a replay of the events, and verify proves it."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg

from commandbus import (
    BusinessRuleError,
    Command,
    CommandBus,
    CommandRequest,
    CommandStatus,
    HandlerContext,
    HandlerRegistry,
    PermanentCommandError,
    TransientCommandError,
    Worker,
)
from engine_fixtures import FAST, RunningWorker, assert_streams_contiguous, fetch, scalar, wait_for

Conn = psycopg.AsyncConnection[Any]


async def mixed_workload(dsn: str, bus: CommandBus) -> None:
    reg = HandlerRegistry()

    @reg.handler("payments", "Charge")
    async def charge(cmd: Command, ctx: HandlerContext) -> Any:
        kind = cmd.data["kind"]
        if kind == "ok":
            return {"n": cmd.data["n"]}
        if kind == "flaky" and ctx.attempt < 2:
            raise TransientCommandError("try again")
        if kind == "flaky":
            return "second time lucky"
        if kind == "rule":
            raise BusinessRuleError("no")
        raise PermanentCommandError("broken")

    kinds = ["ok", "flaky", "rule", "broken"]
    for n in range(12):
        assert (await bus.send("payments", "Charge", {"kind": kinds[n % 4], "n": n})).ok
    batch = await bus.send_batch(
        [
            CommandRequest(domain="payments", command_type="Charge", data={"kind": "ok", "n": i})
            for i in range(20)
        ]
    )
    assert batch.ok
    async with RunningWorker(Worker(dsn, reg, domain="payments", config=FAST, concurrency=4)):

        async def settled() -> bool:
            open_ = await bus.list_commands(domain="payments", status="PENDING")
            retrying = await bus.list_commands(domain="payments", status="RETRY_SCHEDULED")
            return not open_.items and not retrying.items

        await wait_for(settled)
    tsq = (await bus.troubleshooting.list()).items
    assert len(tsq) == 3
    await bus.troubleshooting.cancel("payments", tsq[0].command_id)
    await bus.troubleshooting.complete("payments", tsq[1].command_id, result=[1, 2])
    await bus.troubleshooting.retry("payments", tsq[2].command_id)
    b = await bus.get_batch(batch.value.batch_id)
    assert b is not None and b.is_complete and b.counts == {"COMPLETED": 20}


async def test_projection_equals_a_replay_after_a_mixed_workload(
    dsn: str, bus: CommandBus, conn: Conn
) -> None:
    await mixed_workload(dsn, bus)
    await assert_streams_contiguous(conn)
    report = await bus.verify_projection()
    assert report.ok, [str(d) for d in report.differences]
    assert report.checked == 32
    statuses = dict(
        await fetch(conn, "SELECT status, count(*) FROM commandbus.command GROUP BY status")
    )
    assert statuses == {"COMPLETED": 27, "FAILED": 3, "CANCELLED": 1, "PENDING": 1}

    n = await bus.rebuild_projection()
    assert n == 32
    diff = await scalar(
        conn,
        """
        SELECT count(*) FROM (
            (SELECT * FROM commandbus.command EXCEPT SELECT * FROM commandbus.command_rebuild)
            UNION ALL
            (SELECT * FROM commandbus.command_rebuild EXCEPT SELECT * FROM commandbus.command)
        ) d
        """,
    )
    assert diff == 0


async def test_verify_reports_every_difference_and_rebuild_repairs(
    dsn: str, bus: CommandBus, conn: Conn
) -> None:
    await mixed_workload(dsn, bus)
    victim = (await bus.list_commands(status=CommandStatus.FAILED)).items[0]
    await conn.execute(
        "UPDATE commandbus.command SET status = 'COMPLETED', attempts = 9 WHERE command_id = %s",
        (victim.command_id,),
    )
    await conn.execute("DELETE FROM commandbus.command WHERE status = 'CANCELLED'")
    report = await bus.verify_projection()
    assert not report.ok
    found = {(d.command_id, d.field) for d in report.differences}
    assert (victim.command_id, "status") in found
    assert (victim.command_id, "attempts") in found
    assert any(d.field == "<row>" and d.live == "missing" for d in report.differences)
    assert len(report.differences) == 3

    await bus.rebuild_projection(replace_live=True)
    assert (await bus.verify_projection()).ok


async def test_projection_never_moves_backwards(bus: CommandBus, conn: Conn) -> None:
    from commandbus.engine import command_store
    from commandbus.engine.command_store import Transition
    from commandbus.engine.models import NewEvent

    sent = (await bus.send("payments", "Charge", {})).value
    done = Transition(
        domain="payments",
        command_id=sent.command_id,
        expected_version=1,
        events=[NewEvent(event_type="CommandCompleted", data={"attempt": 1, "result": 1})],
    )
    assert await command_store.record_transitions(conn, [done])
    # a stale transition (same expected version) records nothing and changes nothing
    stale = Transition(
        domain="payments",
        command_id=sent.command_id,
        expected_version=1,
        events=[
            NewEvent(
                event_type="CommandFailed",
                data={"attempt": 1, "error": {"type": "X", "code": "X", "message": "x"}},
            )
        ],
    )
    results = await asyncio.gather(
        command_store.record_transitions(conn, [stale]),
    )
    assert results == [set()]
    record = await bus.get_command("payments", sent.command_id)
    assert record is not None and record.status is CommandStatus.COMPLETED and record.version == 2


# -- the worker's read falls back to the stream when a status row is missing -------------------


async def _states(conn: Conn) -> dict[Any, tuple[int, int, str]]:
    rows = await fetch(conn, "SELECT command_id, version, attempts, status FROM commandbus.command")
    return {r[0]: (r[1], r[2], r[3]) for r in rows}


async def test_the_read_reports_a_command_whose_status_row_is_missing(
    bus: CommandBus, conn: Conn
) -> None:
    """The version, attempts and status read are the command's, row or no row."""
    from commandbus.engine import command_store
    from commandbus.engine.command_store import Transition
    from commandbus.engine.models import NewEvent

    error = {"type": "X", "code": "X", "message": "x"}
    pending, retrying, retried = [
        (await bus.send("payments", "Charge", {"n": n}, max_attempts=5)).unwrap() for n in range(3)
    ]
    # retrying: attempt 1 lost, attempt 2 failed transiently, message visible again
    # retried: moved to the TSQ at attempt 1, then retried by an operator (attempts 0)
    first = {
        m.msg_id: m for m in await command_store.read_batch(conn, "payments", qty=10, vt_seconds=0)
    }
    again = {
        m.msg_id: m for m in await command_store.read_batch(conn, "payments", qty=10, vt_seconds=60)
    }
    assert first.keys() == again.keys() == {pending.msg_id, retrying.msg_id, retried.msg_id}
    assert again[retrying.msg_id].read_ct == 2
    lost = NewEvent(event_type="CommandAttemptLost", data={"attempt": 1, "reason": "vt"})
    failed = NewEvent(
        event_type="CommandRetryScheduled", data={"attempt": 2, "error": error, "delay": 0}
    )
    moved = NewEvent(
        event_type="CommandMovedToTroubleshootingQueue", data={"attempt": 2, "error": error}
    )
    recorded = await command_store.record_transitions(
        conn,
        [
            Transition(
                domain="payments",
                command_id=retrying.command_id,
                expected_version=1,
                events=[lost, failed],
                msg_id=retrying.msg_id,
                queue_op="retry",
                retry_delay=0,
            ),
            Transition(
                domain="payments",
                command_id=retried.command_id,
                expected_version=1,
                events=[moved],
                msg_id=retried.msg_id,
                queue_op="archive",
            ),
        ],
    )
    assert len(recorded) == 2
    await bus.troubleshooting.retry("payments", retried.command_id)
    await conn.execute("UPDATE pgmq.q_payments SET vt = now() - interval '1 second'")
    expected = await _states(conn)
    assert expected[retrying.command_id] == (3, 2, "RETRY_SCHEDULED")
    assert expected[retried.command_id] == (3, 0, "PENDING")
    assert expected[pending.command_id] == (1, 0, "PENDING")

    await conn.execute("DELETE FROM commandbus.command")
    read = await command_store.read_batch(conn, "payments", qty=10, vt_seconds=60)
    by_command = {m.message["command_id"]: (m.version, m.attempts, m.status) for m in read}
    assert by_command == {str(k): v for k, v in expected.items()}


async def test_a_worker_runs_commands_whose_status_rows_are_missing(
    dsn: str, bus: CommandBus, conn: Conn
) -> None:
    reg = HandlerRegistry()

    @reg.handler("payments", "Charge")
    async def charge(cmd: Command, ctx: HandlerContext) -> Any:
        return cmd.data["n"]

    ids = [(await bus.send("payments", "Charge", {"n": n})).unwrap().command_id for n in range(4)]
    await conn.execute("DELETE FROM commandbus.command WHERE command_id = ANY(%s)", (ids[:3],))
    worker = Worker(dsn, reg, domain="payments", config=FAST)
    async with RunningWorker(worker):

        async def all_completed() -> bool:
            n = await scalar(
                conn, "SELECT count(*) FROM commandbus.event WHERE event_type = 'CommandCompleted'"
            )
            return bool(n == 4)

        await wait_for(all_completed)
    assert worker.stats.quarantined == 0
    quarantined = "SELECT count(*) FROM commandbus.event WHERE event_type = 'MessageQuarantined'"
    assert await scalar(conn, quarantined) == 0
    for cid in ids:
        history = [e.event_type for e in await bus.command_history("payments", cid)]
        assert history == ["CommandSent", "CommandCompleted"]
    # the missing rows are the events' to restore
    assert not (await bus.verify_projection()).ok
    await bus.rebuild_projection(replace_live=True)
    assert (await bus.verify_projection()).ok
    for cid in ids:
        record = await bus.get_command("payments", cid)
        assert record is not None and record.status is CommandStatus.COMPLETED
