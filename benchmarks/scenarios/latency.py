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

Where the time goes: both consumers stamp each message's steps
(:mod:`benchmarks.timeline`: the NOTIFY taken, the read, the handler, the outcome
statement), the sender stamps when it saw its commit, and the table gets one row
per step with the median of that step over the commands (the library's counts
only commands read after a NOTIFY, which is all of them unless a poll came
first). The steps' medians need not add up to the median of the whole.
"""

from __future__ import annotations

import asyncio
import json
import math
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
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
from benchmarks.timeline import STEPS, library_steps, median, raw_steps

RATE = 50.0
CONCURRENCY = 4
WARMUP = 25
#: p50: at most this multiple of raw PGMQ's p50 in the same run
TARGET_P50_RATIO = 1.3
TARGETS_MS = {"p99": 5.0}

# per command: id, when its send statement started (epoch s), latency (ms)
LIBRARY_LATENCIES = """
SELECT c.command_id::text, extract(epoch FROM e.recorded_at),
       extract(epoch FROM c.updated_at - e.recorded_at) * 1000
  FROM commandbus.command c
  JOIN commandbus.event e
    ON e.stream_id = 'command:' || c.domain || ':' || c.command_id
   AND e.event_type = 'CommandSent'
 WHERE c.domain = %s AND c.status = 'COMPLETED' AND c.command_id = ANY(%s)
"""
RAW_LATENCIES = f"""
SELECT msg_id::text, extract(epoch FROM enqueued_at),
       extract(epoch FROM archived_at - enqueued_at) * 1000
  FROM pgmq.a_{RAW_QUEUE} WHERE msg_id = ANY(%s)
"""  # noqa: S608 - a constant queue name


@dataclass
class Measured:
    """One side's latencies (ms) and the durations (ms) of each step."""

    values: list[float]
    steps: dict[str, list[float]]


async def paced(
    count: int, op: Callable[[int], Awaitable[Any]], *, rate: float = RATE
) -> list[Any]:
    """Call ``op(i)`` ``count`` times at ``rate`` per second, on a fixed timetable."""
    out = []
    start = time.perf_counter()
    for i in range(count):
        delay = start + i / rate - time.perf_counter()
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


async def library_latencies(url: str, count: int) -> Measured:
    worker: WorkerProcess | None = None
    sent: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="cb-latency-") as tmp:
        path = str(Path(tmp) / "timeline.json")
        async with open_bus(url) as bus:
            await settle(url)
            try:
                worker = await WorkerProcess.start(url, concurrency=CONCURRENCY, timeline=path)
                await worker.go()

                async def one(i: int) -> Any:
                    result = await bus.send(DOMAIN, COMMAND_TYPE, command_data(i))
                    cid = result.unwrap().command_id  # raises on a Failure
                    sent[str(cid)] = time.time()
                    return cid

                await paced(WARMUP, one)
                await asyncio.sleep(0.5)  # idle again
                ids = await paced(count, one)
                async with await connect(url) as conn:
                    await wait_completed(conn, WARMUP + count, [worker], poll=0.1)
                    cur = await conn.execute(LIBRARY_LATENCIES, (DOMAIN, ids))
                    rows = await cur.fetchall()
                await worker.stop()
            finally:
                if worker is not None:
                    await worker.kill()
        data = json.loads(await asyncio.to_thread(Path(path).read_text))
    if len(rows) != count:
        raise RuntimeError(f"latency: {len(rows)} of {count} commands found completed")
    started = {r[0]: float(r[1]) for r in rows}
    return Measured([float(r[2]) for r in rows], library_steps(started, sent, data))


async def raw_latencies(url: str, count: int) -> Measured:
    worker: WorkerProcess | None = None
    sent: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="cb-latency-") as tmp:
        path = str(Path(tmp) / "timeline.json")
        async with await connect(url) as conn:
            await create_raw_queue(conn)
            await settle(url)
            try:
                worker = await WorkerProcess.start(url, mode="raw", poll_ms=1, timeline=path)
                await worker.go()

                async def one(i: int) -> int:
                    cur = await conn.execute(RAW_SEND, (RAW_QUEUE, raw_message(i)))
                    row = await cur.fetchone()
                    assert row is not None
                    sent[str(row[0])] = time.time()
                    return int(row[0])

                await paced(WARMUP, one)
                await asyncio.sleep(0.5)
                ids = await paced(count, one)
                deadline = time.monotonic() + 60
                while True:
                    cur = await conn.execute(RAW_LATENCIES, (ids,))
                    rows = await cur.fetchall()
                    if len(rows) == count or time.monotonic() > deadline:
                        break
                    worker.check_alive()
                    await asyncio.sleep(0.1)
                await worker.stop()
            finally:
                if worker is not None:
                    await worker.kill()
        data = json.loads(await asyncio.to_thread(Path(path).read_text))
    if len(rows) != count:
        raise RuntimeError(f"raw latency: {len(rows)} of {count} messages archived")
    started = {r[0]: float(r[1]) for r in rows}
    return Measured([float(r[2]) for r in rows], raw_steps(started, sent, data))


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
        raw_run = await raw_latencies(url, ctx.n)
    async with ctx.databases.fresh() as url:
        lib_run = await library_latencies(url, ctx.n)
    raw, lib = summary(raw_run.values), summary(lib_run.values)
    ctx.log(
        "latency: library "
        + ", ".join(f"{k} {v:.2f}" for k, v in lib.items())
        + " ms; raw "
        + ", ".join(f"{k} {v:.2f}" for k, v in raw.items())
        + " ms"
    )
    ctx.log(
        f"latency: steps of {len(lib_run.steps['read'])} library commands read after a "
        f"NOTIFY and {len(raw_run.steps['read'])} raw messages"
    )
    details = {"n": ctx.n, "rate": RATE, "seconds": ctx.n / RATE}
    rows = []
    for key in ("p50", "p90", "p99", "max"):
        ratio = lib[key] / raw[key] if raw[key] else None
        if key == "p50":
            target = f"<= {TARGET_P50_RATIO:g}x raw"
            met = ratio is not None and ratio <= TARGET_P50_RATIO
        elif key in TARGETS_MS:
            target, met = f"<= {TARGETS_MS[key]:g} ms", lib[key] <= TARGETS_MS[key]
        else:
            target, met = "(info)", None
        rows.append(
            Row(
                scenario="latency",
                case=f"send -> completed, {key}",
                unit="ms",
                library=lib[key],
                raw=raw[key],
                ratio=ratio,
                target=target,
                met=met,
                details=details,
            )
        )
    for key, label, library_only in STEPS:
        lib_step = median(lib_run.steps[key])
        raw_step = None if library_only else median(raw_run.steps[key])
        rows.append(
            Row(
                scenario="latency",
                case=f"p50 step: {label}",
                unit="ms",
                library=lib_step,
                raw=raw_step,
                ratio=None,  # a step's ratio says little: compare the times
                target="(info)",
                details={
                    "commands": len(lib_run.steps[key]),
                    "raw_messages": None if library_only else len(raw_run.steps[key]),
                },
            )
        )
    return rows
