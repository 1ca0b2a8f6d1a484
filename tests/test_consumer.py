"""The queue consumer on its own, over a plain PGMQ queue: what the saga coordinator uses."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
from collections.abc import Sequence
from typing import Any

import attrs
import psycopg
import pytest

from commandbus import CommandBusError, ConfigError, ValidationError
from commandbus.engine.db.connect import Conn, ResilientConnection
from commandbus.engine.queues.consumer import QueueConsumer
from commandbus.engine.queues.heartbeat import interval_from_env
from commandbus.engine.queues.tables import QueueRegistry, wakeup_channel
from proxy import Proxy
from support import fetch, scalar, wait_for


@attrs.frozen
class Msg:
    msg_id: int
    read_ct: int
    body: Any


class Doubler:
    """A consumer app: reads numbers, doubles them, records sums in groups."""

    def __init__(self, queue: str, *, fail_record: bool = False) -> None:
        self.queue = queue
        self.groups: list[list[int]] = []
        self.fail_record = fail_record

    async def prepare(self, conn: Conn) -> None:
        await QueueRegistry().ensure(conn, self.queue)

    async def read(self, conn: Conn, qty: int) -> Sequence[Msg]:
        cur = await conn.execute(
            "SELECT msg_id, read_ct, message FROM pgmq.read(%s::text, 30, %s::integer)",
            (self.queue, qty),
        )
        return [Msg(*row) for row in await cur.fetchall()]

    async def next_visible(self, conn: Conn) -> float | None:
        return None

    async def handle(self, msg: Msg) -> int | None:
        await asyncio.sleep(0)
        return int(msg.body["n"]) * 2

    async def record(self, flusher: ResilientConnection, group: list[tuple[int, Msg]]) -> None:
        if self.fail_record:
            raise RuntimeError("the recording went wrong")
        ids = [m.msg_id for _o, m in group]

        async def op(conn: Conn) -> None:
            await conn.execute("SELECT pgmq.delete(%s::text, %s::bigint[])", (self.queue, ids))

        await flusher.run(op)
        self.groups.append([o for o, _m in group])

    async def release(self, conn: Conn, started: list[int], unstarted: list[int]) -> None:
        await conn.execute(
            "SELECT pgmq.set_vt(%s::text, %s::bigint[], 0)", (self.queue, started + unstarted)
        )

    def suspect(self, msg: Msg) -> bool:
        return False

    async def postpone(self, conn: Conn, msg_ids: list[int], seconds: float) -> None:
        raise AssertionError("no suspects here")


def consumer(dsn: str, app: Doubler) -> QueueConsumer[Msg, int]:
    return QueueConsumer(
        dsn,
        app,
        name=app.queue,
        wakeup_channel=wakeup_channel(app.queue),
        concurrency=4,
        batch_size=10,
        flushers=2,
        poll_interval=0.2,
        reconnect_timeout=5,
    )


async def send(conn: psycopg.AsyncConnection[Any], queue: str, n: int) -> None:
    await QueueRegistry().ensure(conn, queue)
    for i in range(n):
        await conn.execute("SELECT pgmq.send(%s::text, %s::jsonb)", (queue, json.dumps({"n": i})))


async def test_a_consumer_reads_handles_and_records_in_groups(dsn: str, conn: Conn) -> None:
    await send(conn, "numbers", 50)
    app = Doubler("numbers")
    c = consumer(dsn, app)
    task = asyncio.create_task(c.run())

    def all_recorded() -> bool:
        return sum(len(g) for g in app.groups) == 50

    await wait_for(all_recorded)
    await c.stop(5)
    await task
    assert sorted(o for g in app.groups for o in g) == [2 * i for i in range(50)]
    assert len(app.groups) < 50  # grouped, not one record per message
    assert await fetch(conn, "SELECT count(*) FROM pgmq.q_numbers") == [(0,)]


async def test_a_side_task_that_dies_stops_everything_as_one_commandbus_error(
    dsn: str, conn: Conn
) -> None:
    await send(conn, "numbers", 3)
    c = consumer(dsn, Doubler("numbers", fail_record=True))
    with pytest.raises(CommandBusError, match="the recording went wrong") as info:
        await asyncio.wait_for(c.run(), 10)
    assert isinstance(info.value.__cause__, RuntimeError)
    assert [t for t in asyncio.all_tasks() if t.get_name().startswith("commandbus-")] == []
    # nothing was lost: the messages come back (released at once)
    rows = await fetch(
        conn, "SELECT count(*) FROM pgmq.q_numbers WHERE vt <= clock_timestamp() + interval '1s'"
    )
    assert rows == [(3,)]


# -- heartbeats --------------------------------------------------------------------------------

BEAT = 0.1  # seconds between beats in these tests

HEARTBEAT_ROW = (
    "SELECT queue, pid, host, concurrency, interval_ms, started_at, last_seen_at, stopped_at"
    "  FROM commandbus.heartbeat WHERE consumer_id = %s"
)


def beating(dsn: str, app: Doubler, *, interval: float = BEAT) -> QueueConsumer[Msg, int]:
    return QueueConsumer(
        dsn,
        app,
        name=app.queue,
        wakeup_channel=wakeup_channel(app.queue),
        concurrency=3,
        batch_size=10,
        flushers=1,
        poll_interval=0.2,
        reconnect_timeout=5,
        heartbeat_interval=interval,
    )


async def last_seen(conn: Conn, c: QueueConsumer[Msg, int]) -> Any:
    rows = await fetch(
        conn,
        "SELECT last_seen_at FROM commandbus.heartbeat WHERE consumer_id = %s",
        c._heartbeat.consumer_id,
    )
    return rows[0][0] if rows else None


async def seen_after(conn: Conn, c: QueueConsumer[Msg, int], moment: Any) -> bool:
    seen = await last_seen(conn, c)
    return seen is not None and seen > moment


async def test_a_running_consumer_beats_and_a_graceful_stop_marks_it_stopped(
    dsn: str, conn: Conn
) -> None:
    await send(conn, "numbers", 5)
    app = Doubler("numbers")
    c = beating(dsn, app)
    task = asyncio.create_task(c.run())
    await wait_for(lambda: sum(len(g) for g in app.groups) == 5)
    await wait_for(lambda: last_seen(conn, c))
    rows = await fetch(conn, HEARTBEAT_ROW, c._heartbeat.consumer_id)
    queue, pid, host, concurrency, interval_ms, started, first_seen, stopped = rows[0]
    assert (queue, pid, host, concurrency, interval_ms) == (
        "numbers",
        os.getpid(),
        socket.gethostname(),
        3,
        100,
    )
    assert stopped is None and started <= first_seen
    # it keeps beating: last_seen_at moves on, the start stays
    await wait_for(lambda: seen_after(conn, c, first_seen), timeout=5)
    await c.stop(5)
    await task
    rows = await fetch(conn, HEARTBEAT_ROW, c._heartbeat.consumer_id)
    assert rows[0][5] == started
    assert rows[0][7] is not None  # stopped_at
    assert [t for t in asyncio.all_tasks() if t.get_name().startswith("commandbus-")] == []
    # and it beats no more
    stopped_row = await fetch(conn, HEARTBEAT_ROW, c._heartbeat.consumer_id)
    await asyncio.sleep(3 * BEAT)
    assert await fetch(conn, HEARTBEAT_ROW, c._heartbeat.consumer_id) == stopped_row


async def test_a_heartbeat_that_fails_never_stops_the_consumer(
    dsn: str, conn: Conn, caplog: pytest.LogCaptureFixture
) -> None:
    """The heartbeat table gone (and back), its session terminated: messages are
    still consumed, the failure is logged once, and the beats come back."""
    app = Doubler("numbers")
    c = beating(dsn, app)
    task = asyncio.create_task(c.run())
    await wait_for(lambda: last_seen(conn, c))
    caplog.set_level(logging.INFO, logger="commandbus.consumer")
    await conn.execute("ALTER TABLE commandbus.heartbeat RENAME TO heartbeat_away")
    try:
        await asyncio.sleep(6 * BEAT)  # several beats fail
        await send(conn, "numbers", 4)
        await wait_for(lambda: sum(len(g) for g in app.groups) == 4)
        assert not task.done()
    finally:
        await conn.execute("ALTER TABLE commandbus.heartbeat_away RENAME TO heartbeat")
    failed = [r for r in caplog.records if "heartbeat failed" in r.getMessage()]
    assert len(failed) == 1, [r.getMessage() for r in failed]  # once, not every beat
    back = await scalar(conn, "SELECT now()")
    await wait_for(lambda: seen_after(conn, c, back), timeout=5)
    await wait_for(lambda: any("heartbeat written again" in r.getMessage() for r in caplog.records))

    # its session terminated: the next beat reconnects
    killed = await scalar(
        conn,
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
        " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        "   AND backend_type = 'client backend'",
    )
    assert killed >= 1
    after = await scalar(conn, "SELECT now()")
    await wait_for(lambda: seen_after(conn, c, after), timeout=5)
    await send(conn, "numbers", 2)
    await wait_for(lambda: sum(len(g) for g in app.groups) == 6)
    assert not task.done()
    await c.stop(5)
    await task
    assert (await fetch(conn, HEARTBEAT_ROW, c._heartbeat.consumer_id))[0][7] is not None


async def test_heartbeats_resume_after_the_database_was_away(dsn: str, conn: Conn) -> None:
    """The server gone for several beats (as in a restart): the consumer rides it out
    and beats again; a stop while the server is gone is as prompt as without beats."""
    proxy = await Proxy(dsn).start()
    try:
        app = Doubler("numbers")
        c = QueueConsumer(
            proxy.url,
            app,
            name="numbers",
            wakeup_channel=wakeup_channel("numbers"),
            concurrency=2,
            batch_size=10,
            flushers=1,
            poll_interval=0.2,
            reconnect_timeout=60,
            heartbeat_interval=BEAT,
        )
        task = asyncio.create_task(c.run())
        await wait_for(lambda: last_seen(conn, c))
        await proxy.cut()
        await asyncio.sleep(10 * BEAT)
        assert not task.done()
        silent = await last_seen(conn, c)
        assert await scalar(conn, "SELECT now() - %s > interval '0.5 seconds'", silent)
        await proxy.restore()
        await wait_for(lambda: seen_after(conn, c, silent), timeout=10)
        await send(conn, "numbers", 3)
        await wait_for(lambda: sum(len(g) for g in app.groups) == 3)
        await proxy.cut()
        t0 = time.monotonic()
        await c.stop(1)
        await asyncio.wait_for(task, 10)
        assert time.monotonic() - t0 < 2.5
        assert [t for t in asyncio.all_tasks() if t.get_name().startswith("commandbus-")] == []
    finally:
        await proxy.close()


async def test_old_heartbeats_are_pruned_when_a_consumer_starts(dsn: str, conn: Conn) -> None:
    insert = (
        "INSERT INTO commandbus.heartbeat (consumer_id, process_id, host, pid, queue,"
        " concurrency, interval_ms, started_at, last_seen_at, stopped_at)"
        " VALUES (gen_random_uuid(), gen_random_uuid(), 'old-host', %s, 'numbers', 1, 10000,"
        "         now() - %s::interval, now() - %s::interval, now() - %s::interval)"
    )
    await conn.execute(insert, (1, "3 days", "2 days", "2 days"))  # stopped 2 days ago
    await conn.execute(insert, (2, "3 days", "25 hours", None))  # silent for 25 hours
    await conn.execute(insert, (3, "3 days", "23 hours", "23 hours"))  # stopped 23 h ago
    await conn.execute(insert, (4, "3 days", "1 minute", None))  # gone a minute ago
    c = beating(dsn, Doubler("numbers"))
    task = asyncio.create_task(c.run())
    await wait_for(lambda: last_seen(conn, c))

    async def pruned() -> bool:
        rows = await fetch(conn, "SELECT pid FROM commandbus.heartbeat WHERE host = 'old-host'")
        return sorted(r[0] for r in rows) == [3, 4]

    await wait_for(pruned, timeout=5)
    await c.stop(5)
    await task


def test_the_heartbeat_interval_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    assert interval_from_env({}) == 10.0
    assert interval_from_env({"HEARTBEAT_SECONDS": " 0.5 "}) == 0.5
    for bad in ("0", "-1", "nan", "inf", "abc", "3601", "1e400"):
        with pytest.raises(ConfigError, match="HEARTBEAT_SECONDS") as info:
            interval_from_env({"HEARTBEAT_SECONDS": bad})
        assert "\n" not in str(info.value)
    for value in (0, 0.01, -1, float("nan"), True, "10", 4000):
        with pytest.raises(ValidationError, match="heartbeat_interval"):
            beating("dbname=unused", Doubler("numbers"), interval=value)  # type: ignore[arg-type]
    monkeypatch.setenv("HEARTBEAT_SECONDS", "oops")
    with pytest.raises(ConfigError, match="HEARTBEAT_SECONDS"):
        consumer("dbname=unused", Doubler("numbers"))
    monkeypatch.setenv("HEARTBEAT_SECONDS", "2.5")
    assert consumer("dbname=unused", Doubler("numbers"))._heartbeat.interval == 2.5
