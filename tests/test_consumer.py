"""The queue consumer on its own, over a plain PGMQ queue: what the saga coordinator uses."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any

import attrs
import psycopg
import pytest

from commandbus import CommandBusError
from commandbus.engine.db.connect import Conn, ResilientConnection
from commandbus.engine.queues.consumer import QueueConsumer
from commandbus.engine.queues.tables import QueueRegistry, wakeup_channel
from support import fetch, wait_for


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
