"""The status projection equals a replay of the events, and verify proves it."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg

from commandbus import (
    BusinessRuleError,
    Command,
    CommandBus,
    CommandFilter,
    CommandRequest,
    CommandStatus,
    HandlerContext,
    HandlerRegistry,
    PermanentCommandError,
    TransientCommandError,
    Worker,
)
from support import FAST, assert_streams_contiguous, fetch, scalar, wait_for

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
    async with Worker(dsn, reg, domain="payments", config=FAST, concurrency=4):

        async def settled() -> bool:
            open_ = await bus.list_commands(CommandFilter(domain="payments", status="PENDING"))
            retrying = await bus.list_commands(
                CommandFilter(domain="payments", status="RETRY_SCHEDULED")
            )
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
    victim = (await bus.list_commands(CommandFilter(status=CommandStatus.FAILED))).items[0]
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
    from commandbus.engine.commands import recording
    from commandbus.engine.commands.store import Transition
    from commandbus.models import NewEvent

    sent = (await bus.send("payments", "Charge", {})).value
    done = Transition(
        domain="payments",
        command_id=sent.command_id,
        expected_version=1,
        events=[NewEvent(event_type="CommandCompleted", data={"attempt": 1, "result": 1})],
    )
    assert await recording.record_transitions(conn, [done])
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
        recording.record_transitions(conn, [stale]),
    )
    assert results == [set()]
    record = await bus.get_command("payments", sent.command_id)
    assert record is not None and record.status is CommandStatus.COMPLETED and record.version == 2


# -- rebuild under concurrent writes (issue 8, item 1) -----------------------------------------


async def _lock_waiters(conn: Conn, table: str) -> int:
    """How many lock requests on ``commandbus.<table>`` are waiting."""
    return int(
        await scalar(
            conn,
            "SELECT count(*) FROM pg_locks WHERE relation = to_regclass(%s) AND NOT granted",
            f"commandbus.{table}",
        )
    )


async def test_rebuild_keeps_sends_that_commit_while_it_waits(
    dsn: str, bus: CommandBus, conn: Conn
) -> None:
    """Sends in a caller's open transaction: the rebuild waits for them and keeps them."""
    (await bus.send("payments", "Charge", {"n": 0})).unwrap()
    async with await psycopg.AsyncConnection.connect(dsn) as caller:
        async with caller.transaction():
            sent = (await bus.send("payments", "Charge", {"n": 1}, conn=caller)).unwrap()
            rebuild = asyncio.create_task(bus.rebuild_projection(replace_live=True))

            async def rebuild_waits() -> bool:
                return await _lock_waiters(conn, "command") > 0

            await wait_for(rebuild_waits)
            # the caller goes on writing while the rebuild waits (no lock cycle)
            req = CommandRequest(domain="payments", command_type="Charge", data={"n": 2})
            batch = (await bus.send_batch([req], name="late", conn=caller)).unwrap()
            assert not rebuild.done()
        assert await rebuild == 3
    record = await bus.get_command("payments", sent.command_id)
    assert record is not None and record.status is CommandStatus.PENDING
    late = await bus.get_batch(batch.batch_id)
    assert late is not None and late.total == 1 and late.counts == {"PENDING": 1}
    report = await bus.verify_projection()
    assert report.ok, [str(d) for d in report.differences]


async def test_replace_live_rebuilds_under_concurrent_senders_lose_nothing(
    dsn: str, bus: CommandBus, conn: Conn
) -> None:
    senders, per_sender, rebuilds = 3, 40, 4
    sent_ids: list[Any] = []
    progress = asyncio.Condition()

    async def sender(n: int) -> None:
        for i in range(per_sender):
            if i % 10 == 5:  # now and then a batch, in a caller's transaction
                reqs = [
                    CommandRequest(domain="payments", command_type="Charge", data={"s": n})
                    for _ in range(3)
                ]
                async with bus.pool.connection() as c, c.transaction():
                    result = (await bus.send_batch(reqs, conn=c)).unwrap()
                sent_ids.extend(result.command_ids)
            else:
                sent_ids.append(
                    (await bus.send("payments", "Charge", {"s": n})).unwrap().command_id
                )
            async with progress:
                progress.notify_all()

    async def rebuilder() -> None:
        total = senders * per_sender
        for k in range(1, rebuilds + 1):
            # each rebuild starts while the senders are still sending
            async with progress:
                await progress.wait_for(lambda k=k: len(sent_ids) >= k * total // (rebuilds + 2))
            await bus.rebuild_projection(replace_live=True)

    await asyncio.gather(rebuilder(), *(sender(n) for n in range(senders)))
    live = {r[0] for r in await fetch(conn, "SELECT command_id FROM commandbus.command")}
    assert set(sent_ids) <= live, f"{len(set(sent_ids) - live)} status rows lost"
    assert len(live) == len(sent_ids)
    report = await bus.verify_projection()
    assert report.ok, [str(d) for d in report.differences]

    # and a worker runs every one of them: none is taken for a foreign message
    reg = HandlerRegistry()

    @reg.handler("payments", "Charge")
    async def charge(cmd: Command, ctx: HandlerContext) -> Any:
        return None

    worker = Worker(dsn, reg, domain="payments", config=FAST, concurrency=8)
    async with worker:

        async def all_completed() -> bool:
            done = await bus.list_commands(
                CommandFilter(status=CommandStatus.COMPLETED), limit=1000
            )
            return len(done.items) == len(sent_ids)

        await wait_for(all_completed)
    assert worker.stats.quarantined == 0


# -- the worker's read falls back to the stream when a status row is missing -------------------


async def _states(conn: Conn) -> dict[Any, tuple[int, int, str]]:
    rows = await fetch(conn, "SELECT command_id, version, attempts, status FROM commandbus.command")
    return {r[0]: (r[1], r[2], r[3]) for r in rows}


async def test_the_read_reports_a_command_whose_status_row_is_missing(
    bus: CommandBus, conn: Conn
) -> None:
    """The version, attempts and status read are the command's, row or no row."""
    from commandbus.engine.commands import recording
    from commandbus.engine.commands import store as command_store
    from commandbus.engine.commands.store import Transition
    from commandbus.models import NewEvent

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
    recorded = await recording.record_transitions(
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
    async with worker:

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


# -- only a dedicated rebuild target is ever dropped (issue 8, item 2) -------------------------

SCHEMA_SHAPE = """
SELECT c.relname, c.relkind, obj_description(c.oid, 'pg_class'),
       (SELECT array_agg(a.attname::text ORDER BY a.attnum) FROM pg_attribute a
         WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped),
       (SELECT array_agg(t.tgname::text ORDER BY t.tgname) FROM pg_trigger t
         WHERE t.tgrelid = c.oid),
       c.reltuples, c.oid
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname IN ('commandbus', 'pgmq') AND c.relkind IN ('r', 'v', 'p', 'u')
 ORDER BY c.relname
"""

LIBRARY_TABLES = (
    "event",
    "stream",
    "batch",
    "command",
    "queue",
    "queue_wakeup",
    "schema_migrations",
    "pgmq_install",
)


async def test_rebuild_refuses_every_table_but_a_rebuild_target(
    dsn: str, bus: CommandBus, conn: Conn
) -> None:
    from commandbus.errors import ValidationError

    await mixed_workload(dsn, bus)
    await conn.execute("CREATE TABLE commandbus.mine_rebuild (x int)")
    await conn.execute("INSERT INTO commandbus.mine_rebuild VALUES (1)")
    before = await fetch(conn, SCHEMA_SHAPE)
    events = await scalar(conn, "SELECT count(*) FROM commandbus.event")
    bad = [
        *LIBRARY_TABLES,
        *(f"{t}_rebuild" for t in ("mine",)),  # exists, but rebuild did not create it
        "Command_rebuild",
        "command_rebuild; DROP TABLE commandbus.event",
        "pgmq.q_payments",
        "q_payments",
        "_rebuild",
        "",
        "x" * 70 + "_rebuild",
    ]
    for name in bad:
        # with replace_live the target is unused, but a bad name is still refused
        for replace_live in (False, True) if name != "mine_rebuild" else (False,):
            try:
                await bus.rebuild_projection(table=name, replace_live=replace_live)
            except ValidationError as exc:
                assert name in str(exc) or not name
            else:
                raise AssertionError(f"table={name!r} was accepted")
    assert await fetch(conn, SCHEMA_SHAPE) == before
    assert await scalar(conn, "SELECT count(*) FROM commandbus.event") == events
    assert await scalar(conn, "SELECT x FROM commandbus.mine_rebuild") == 1
    # a command_rebuild made before rebuild targets were marked: replaced if it is
    # shaped like the live table, refused otherwise
    await conn.execute("CREATE TABLE commandbus.command_rebuild (LIKE commandbus.command)")
    assert await bus.rebuild_projection() == 32
    await conn.execute("DROP TABLE commandbus.command_rebuild")
    await conn.execute("CREATE TABLE commandbus.command_rebuild (x int)")
    try:
        await bus.rebuild_projection()
    except ValidationError as exc:
        assert "was not created by a rebuild" in str(exc)
    else:
        raise AssertionError("replaced a command_rebuild of another shape")
    assert await fetch(conn, "SELECT * FROM commandbus.command_rebuild") == []
    # a table rebuild created is a rebuild target: rebuilding into it again replaces it
    assert await bus.rebuild_projection(table="other_rebuild") == 32
    assert await bus.rebuild_projection(table="other_rebuild") == 32
    assert await scalar(conn, "SELECT count(*) FROM commandbus.other_rebuild") == 32


def _cli(dsn: str, *args: str) -> Any:
    import os
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-m", "commandbus.cli", *args],
        env=dict(os.environ, DATABASE_URL=dsn),
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_the_cli_refuses_a_bad_rebuild_table_in_one_line(
    dsn: str, bus: CommandBus, conn: Conn
) -> None:
    (await bus.send("payments", "Charge", {})).unwrap()
    events = await scalar(conn, "SELECT count(*) FROM commandbus.event")
    for name in ("event", "command"):
        bad = _cli(dsn, "projection", "rebuild", "--table", name)
        assert bad.returncode == 1, bad.stderr
        assert bad.stdout == ""
        lines = bad.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), bad.stderr
        assert repr(name) in lines[0]
    assert await scalar(conn, "SELECT count(*) FROM commandbus.event") == events
    good = _cli(dsn, "projection", "rebuild", "--table", "mine_rebuild")
    assert good.returncode == 0, good.stderr
    assert "rebuilt 1 commands into commandbus.mine_rebuild" in good.stdout


# -- batches are verified and rebuilt too (issue 8, item 18) -----------------------------------


async def test_verify_catches_a_tampered_batch_and_rebuild_restores_it(
    dsn: str, bus: CommandBus, conn: Conn
) -> None:
    await mixed_workload(dsn, bus)

    def reqs(n: int) -> list[CommandRequest]:
        return [CommandRequest(domain="payments", command_type="Charge", data={}) for _ in range(n)]

    named = (await bus.send_batch(reqs(2), name="nightly")).unwrap()
    gone = (await bus.send_batch(reqs(3))).unwrap()
    all_batches = "SELECT * FROM commandbus.batch ORDER BY batch_id"
    original = await fetch(conn, all_batches)
    assert len(original) == 3
    report = await bus.verify_projection()
    assert report.ok and report.checked == 37 and report.checked_batches == 3

    # the rebuild target holds the same batches
    await bus.rebuild_projection()
    assert await fetch(conn, "SELECT * FROM commandbus.batch_rebuild ORDER BY batch_id") == original

    await conn.execute(
        "UPDATE commandbus.batch SET total = 99, name = 'renamed' WHERE batch_id = %s",
        (named.batch_id,),
    )
    await conn.execute("DELETE FROM commandbus.batch WHERE batch_id = %s", (gone.batch_id,))
    await conn.execute(
        "INSERT INTO commandbus.batch"
        " VALUES (gen_random_uuid(), 'bogus', 1, gen_random_uuid(), now(), 1)"
    )
    report = await bus.verify_projection()
    assert not report.ok
    found = {(d.table, d.batch_id, d.field, d.live, d.replayed) for d in report.differences}
    assert (("batch", named.batch_id, "total", 99, 2)) in found
    assert (("batch", named.batch_id, "name", "renamed", "nightly")) in found
    assert (("batch", gone.batch_id, "<row>", "missing", "present")) in found
    assert any(
        d.table == "batch" and d.field == "<row>" and d.replayed == "missing"
        for d in report.differences
    )
    assert len(report.differences) == 4
    assert all(d.table == "batch" and d.domain is None for d in report.differences)
    assert f"batch {named.batch_id} total: live=99 replayed=2" in [
        str(d) for d in report.differences
    ]

    await bus.rebuild_projection(replace_live=True)
    assert (await bus.verify_projection()).ok
    assert await fetch(conn, all_batches) == original
    record = await bus.get_batch(gone.batch_id)
    assert record is not None and record.total == 3


# -- maintenance functions run their own transaction, never inside the caller's ---------------


async def test_rebuild_and_verify_refuse_a_connection_inside_a_transaction(
    dsn: str, bus: CommandBus
) -> None:
    from commandbus.engine.commands import replay
    from commandbus.errors import ValidationError

    (await bus.send("payments", "Charge", {})).unwrap()
    async with await psycopg.AsyncConnection.connect(dsn) as c:
        await c.execute("SELECT 1")  # a transaction is open now
        for call in (
            lambda: replay.rebuild(c),
            lambda: replay.rebuild(c, replace_live=True),
            lambda: replay.verify(c),
        ):
            try:
                await call()
            except ValidationError as exc:
                assert "own transaction" in str(exc)
            else:
                raise AssertionError("accepted a connection inside a transaction")
        # the caller's transaction is untouched and still usable
        assert await scalar(c, "SELECT 2") == 2
        await c.rollback()
        # idle, not autocommit: they run (and commit) their own transaction
        assert await replay.rebuild(c, replace_live=True) == 1
        assert c.info.transaction_status is psycopg.pq.TransactionStatus.IDLE
        assert (await replay.verify(c)).ok
        assert c.info.transaction_status is psycopg.pq.TransactionStatus.IDLE
        assert len(await replay.replay(c)) == 1
