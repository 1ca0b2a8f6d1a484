"""Operations the scenarios share: filling queues, raw PGMQ calls, waiting for completion."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import psycopg

from benchmarks.core import COMMAND_TYPE, DOMAIN, RAW_QUEUE
from benchmarks.procs import WorkerProcess
from commandbus.engine.commands.bus import CommandBus
from commandbus.models import CommandRequest

Conn = psycopg.AsyncConnection[Any]

RAW_SEND = "SELECT pgmq.send(queue_name => %s::text, msg => %s::jsonb)"
RAW_SEND_BATCH = "SELECT pgmq.send_batch(queue_name => %s::text, msgs => %b::jsonb[])"
RAW_READ = (
    "SELECT msg_id FROM pgmq.read(queue_name => %s::text, vt => %s::integer, qty => %s::integer)"
)
RAW_DELETE = "SELECT pgmq.delete(queue_name => %s::text, msg_ids => %b::bigint[])"

COUNT_COMPLETED = (
    "SELECT count(*) FROM commandbus.command WHERE domain = %s AND status = 'COMPLETED'"
)


def command_data(i: int) -> dict[str, Any]:
    """The data of the i-th benchmark command (small, like a typical command)."""
    return {"i": i, "note": "benchmark"}


def raw_message(i: int) -> str:
    """A raw PGMQ message the size and shape of a commandbus envelope, serialised."""
    cid = str(uuid.uuid4())
    return json.dumps(
        {
            "command_id": cid,
            "command_type": COMMAND_TYPE,
            "correlation_id": cid,
            "causation_id": None,
            "reply_to": None,
            "saga_id": None,
            "batch_id": None,
            "max_attempts": 3,
            "data": command_data(i),
        },
        separators=(",", ":"),
    )


def requests(start: int, count: int) -> list[CommandRequest]:
    return [
        CommandRequest(domain=DOMAIN, command_type=COMMAND_TYPE, data=command_data(i))
        for i in range(start, start + count)
    ]


@contextlib.asynccontextmanager
async def open_bus(url: str, *, connections: int = 1) -> AsyncIterator[CommandBus]:
    bus = CommandBus(url, min_connections=connections, max_connections=connections)
    async with bus:
        await bus.create_domain(DOMAIN)
        yield bus


async def connect(url: str) -> Conn:
    return await psycopg.AsyncConnection.connect(url, autocommit=True)


async def create_raw_queue(conn: Conn, queue: str = RAW_QUEUE) -> None:
    await conn.execute("SELECT pgmq.create(queue_name => %s::text)", (queue,))


async def fill_library(bus: CommandBus, total: int, *, start: int = 0, chunk: int = 1000) -> None:
    """Queue ``total`` no-op commands with ``send_batch`` (not timed by callers)."""
    for first in range(start, start + total, chunk):
        result = await bus.send_batch(requests(first, min(chunk, start + total - first)))
        if not result.ok:
            raise RuntimeError(f"send_batch failed: {result}")


async def fill_raw(conn: Conn, total: int, *, chunk: int = 1000) -> None:
    for first in range(0, total, chunk):
        msgs = [raw_message(i) for i in range(first, min(first + chunk, total))]
        await conn.execute(RAW_SEND_BATCH, (RAW_QUEUE, msgs))


async def run_concurrently(
    total: int, concurrency: int, op: Callable[[int, int], Awaitable[None]]
) -> float:
    """Run ``op(worker_index, item)`` for ``total`` items split over ``concurrency``
    tasks; returns elapsed seconds."""
    shares = [range(w, total, concurrency) for w in range(concurrency)]

    async def lane(w: int) -> None:
        for i in shares[w]:
            await op(w, i)

    started = time.perf_counter()
    await asyncio.gather(*(lane(w) for w in range(concurrency)))
    return time.perf_counter() - started


async def wait_completed(
    conn: Conn,
    expected: int,
    workers: list[WorkerProcess],
    *,
    poll: float = 0.05,
    give_up_after: float = 600,
) -> None:
    """Poll the projection until ``expected`` commands are COMPLETED."""
    deadline = time.monotonic() + give_up_after
    while True:
        cur = await conn.execute(COUNT_COMPLETED, (DOMAIN,))
        row = await cur.fetchone()
        done = int(row[0]) if row else 0
        if done >= expected:
            return
        for w in workers:
            w.check_alive()
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"only {done} of {expected} commands completed in {give_up_after:g}s"
            )
        await asyncio.sleep(poll)
