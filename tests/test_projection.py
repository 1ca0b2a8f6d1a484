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
