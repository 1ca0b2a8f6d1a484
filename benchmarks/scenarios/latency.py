"""Scenario ``latency``: send -> completion at a steady 50 commands/s, idle worker.

A worker subprocess (concurrency 4) waits on an empty queue; the parent sends one
command every 20 ms (``CommandBus.send``, scheduled against a fixed timetable).
Latency per command, on the server clock: the projection's ``updated_at`` (when
the statement recording the completion began) minus the ``recorded_at`` of the
``CommandSent`` event (when the sending statement began). It therefore includes
the send's commit, the wake-up, the read, the handler and the wait for the
grouped write, not the final commit.

Raw baseline: ``pgmq.send`` at the same pace; a consumer subprocess polls
``pgmq.read(qty => 100)`` every 1 ms while the queue is empty and ``pgmq.archive``s
what it read; latency = ``archived_at - enqueued_at`` (both the start of their
statements), the same span as above.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

from benchmarks.core import COMMAND_TYPE, DOMAIN, RAW_QUEUE, Context, Row, scenario, settle
from benchmarks.ops import (
    RAW_SEND,
    command_data,
    connect,
    create_raw_queue,
    open_bus,
    raw_message,
    wait_completed,
)
from benchmarks.procs import WorkerProcess

RATE = 50.0
CONCURRENCY = 4
WARMUP = 25
TARGETS_MS = {"p50": 2.0, "p99": 5.0}

LIBRARY_LATENCIES = """
SELECT extract(epoch FROM c.updated_at - e.recorded_at) * 1000
  FROM commandbus.command c
  JOIN commandbus.event e
    ON e.stream_id = 'command:' || c.domain || ':' || c.command_id
   AND e.event_type = 'CommandSent'
 WHERE c.domain = %s AND c.status = 'COMPLETED' AND c.command_id = ANY(%s)
"""
RAW_LATENCIES = f"""
SELECT extract(epoch FROM archived_at - enqueued_at) * 1000
  FROM pgmq.a_{RAW_QUEUE} WHERE msg_id = ANY(%s)
"""  # noqa: S608 - a constant queue name


async def paced(count: int, op: Callable[[int], Awaitable[Any]]) -> list[Any]:
    """Call ``op(i)`` ``count`` times at RATE per second, on a fixed timetable."""
    out = []
    start = time.perf_counter()
    for i in range(count):
        delay = start + i / RATE - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        out.append(await op(i))
    return out


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def summary(values: list[float]) -> dict[str, float]:
    return {
        "p50": percentile(values, 0.50),
        "p90": percentile(values, 0.90),
        "p99": percentile(values, 0.99),
        "max": max(values),
    }


async def library_latencies(url: str, count: int) -> list[float]:
    worker: WorkerProcess | None = None
    async with open_bus(url) as bus:
        await settle(url)
        try:
            worker = await WorkerProcess.start(url, concurrency=CONCURRENCY)
            await worker.go()

            async def one(i: int) -> Any:
                result = await bus.send(DOMAIN, COMMAND_TYPE, command_data(i))
                return result.unwrap().command_id  # raises on a Failure

            await paced(WARMUP, one)
            await asyncio.sleep(0.5)  # idle again
            ids = await paced(count, one)
            async with await connect(url) as conn:
                await wait_completed(conn, WARMUP + count, [worker], poll=0.1)
                cur = await conn.execute(LIBRARY_LATENCIES, (DOMAIN, ids))
                values = [float(r[0]) for r in await cur.fetchall()]
            await worker.stop()
        finally:
            if worker is not None:
                await worker.kill()
    if len(values) != count:
        raise RuntimeError(f"latency: {len(values)} of {count} commands found completed")
    return values


async def raw_latencies(url: str, count: int) -> list[float]:
    worker: WorkerProcess | None = None
    async with await connect(url) as conn:
        await create_raw_queue(conn)
        await settle(url)
        try:
            worker = await WorkerProcess.start(url, mode="raw", poll_ms=1)
            await worker.go()

            async def one(i: int) -> int:
                cur = await conn.execute(RAW_SEND, (RAW_QUEUE, raw_message(i)))
                row = await cur.fetchone()
                assert row is not None
                return int(row[0])

            await paced(WARMUP, one)
            await asyncio.sleep(0.5)
            ids = await paced(count, one)
            deadline = time.monotonic() + 60
            while True:
                cur = await conn.execute(RAW_LATENCIES, (ids,))
                values = [float(r[0]) for r in await cur.fetchall()]
                if len(values) == count or time.monotonic() > deadline:
                    break
                worker.check_alive()
                await asyncio.sleep(0.1)
            await worker.stop()
        finally:
            if worker is not None:
                await worker.kill()
    if len(values) != count:
        raise RuntimeError(f"raw latency: {len(values)} of {count} messages archived")
    return values


@scenario(
    "latency",
    description=f"send -> completion at {RATE:g} commands/s, idle worker (concurrency "
    f"{CONCURRENCY}) vs raw consumer polling pgmq.read every 1 ms",
    n_meaning=f"measured commands (sent at {RATE:g}/s)",
    default_n=500,
    smoke_n=100,
)
async def latency(ctx: Context) -> list[Row]:
    async with ctx.databases.fresh() as url:
        raw = summary(await raw_latencies(url, ctx.n))
    async with ctx.databases.fresh() as url:
        lib = summary(await library_latencies(url, ctx.n))
    ctx.log(
        "latency: library "
        + ", ".join(f"{k} {v:.2f}" for k, v in lib.items())
        + " ms; raw "
        + ", ".join(f"{k} {v:.2f}" for k, v in raw.items())
        + " ms"
    )
    rows = []
    for key in ("p50", "p90", "p99", "max"):
        limit = TARGETS_MS.get(key)
        rows.append(
            Row(
                scenario="latency",
                case=f"send -> completed, {key}",
                unit="ms",
                library=lib[key],
                raw=raw[key],
                ratio=lib[key] / raw[key] if raw[key] else None,
                target=f"<= {limit:g} ms" if limit is not None else "(info)",
                met=lib[key] <= limit if limit is not None else None,
                details={"n": ctx.n, "rate": RATE, "seconds": ctx.n / RATE},
            )
        )
    return rows
