"""Scenario ``drain``: pre-queued no-op commands drained by worker subprocesses.

The commands are queued with ``send_batch`` before the clock starts. The workers
(``python -m benchmarks.worker_proc``) are started and imported first, then told
to go; the time is on the server clock, up to the last completion
(``max(updated_at)`` of the command projection). The parent
polls the COMPLETED count every 200 ms only to know when to stop the workers
(SIGTERM, graceful). The queued messages are held invisible until a moment t0
a few seconds ahead, so the clock starts with started, connected, idle workers
(as the raw loop is timed after connecting); the figure is from t0 to the last
completion. The raw baseline is one loop in one process:
``pgmq.read(qty => 100)`` then ``pgmq.delete(msg_ids)``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from benchmarks.core import DOMAIN, RAW_QUEUE, Context, Row, ratio, scenario, server_now, settle
from benchmarks.ops import (
    RAW_DELETE,
    RAW_READ,
    connect,
    create_raw_queue,
    fill_library,
    fill_raw,
    open_bus,
    wait_completed,
)
from benchmarks.procs import WorkerProcess

#: (processes, concurrency per process)
CASES = ((1, 4), (1, 16), (1, 64), (2, 16))
BATCH_SIZE = 100
#: of raw PGMQ's read+delete drain in the same run
TARGET_SHARE = 0.35
#: Seconds between the parent's COMPLETED counts (each costs ~3 ms of server time
#: at 20,000 rows); the figure comes from the server clock, not from this.
POLL = 0.2


async def library_drain(
    url: str, n: int, processes: int, concurrency: int, *, env: Mapping[str, str] | None = None
) -> float:
    """Commands/s of ``processes`` workers draining ``n`` pre-queued no-op commands
    (``env``: extra environment for the worker processes)."""
    async with open_bus(url) as bus:
        await fill_library(bus, n)
    await settle(url)
    workers: list[WorkerProcess] = []
    try:
        async with await connect(url) as conn:
            # Hold the queue back for a moment so the clock starts with connected,
            # idle workers (like the raw loop, which is timed after connecting):
            # they wake up when the messages become visible at t0.
            cur = await conn.execute(
                f"UPDATE pgmq.q_{DOMAIN} SET vt = now() + interval '3 seconds'"  # noqa: S608
                " RETURNING vt"
            )
            t0 = max(r[0] for r in await cur.fetchall())
            for _ in range(processes):
                workers.append(
                    await WorkerProcess.start(
                        url, concurrency=concurrency, batch_size=BATCH_SIZE, env=env
                    )
                )
            for w in workers:
                await w.go()
            if await server_now(conn) >= t0:
                raise RuntimeError("workers took longer than 3 s to start; the figure would lie")
            await wait_completed(conn, n, workers, poll=POLL)
            cur = await conn.execute(
                "SELECT max(updated_at) FROM commandbus.command"
                " WHERE domain = %s AND status = 'COMPLETED'",
                (DOMAIN,),
            )
            row = await cur.fetchone()
            assert row is not None
            elapsed = float((row[0] - t0).total_seconds())
        completed = 0
        for w in workers:
            completed += (await w.stop())["processed"]
        if completed != n:
            raise RuntimeError(f"workers report {completed} completions, expected {n}")
    finally:
        for w in workers:
            await w.kill()
    return n / elapsed


async def raw_drain(url: str, n: int) -> float:
    async with await connect(url) as conn:
        await create_raw_queue(conn)
        await fill_raw(conn, n)
    await settle(url)
    done = 0
    async with await connect(url) as conn:
        started = time.perf_counter()
        while True:
            cur = await conn.execute(RAW_READ, (RAW_QUEUE, 30, BATCH_SIZE))
            ids = [r[0] for r in await cur.fetchall()]
            if not ids:
                break
            await conn.execute(RAW_DELETE, (RAW_QUEUE, ids))
            done += len(ids)
        elapsed = time.perf_counter() - started
    if done != n:
        raise RuntimeError(f"raw drain read {done} messages, expected {n}")
    return n / elapsed


@scenario(
    "drain",
    description="no-op commands drained by worker subprocesses vs a raw read+delete loop",
    n_meaning="pre-queued commands per case",
    default_n=20_000,
    smoke_n=1_000,
)
async def drain(ctx: Context) -> list[Row]:
    async with ctx.databases.fresh() as url:
        raw = await raw_drain(url, ctx.n)
    ctx.log(f"drain: raw read(qty={BATCH_SIZE})+delete {raw:,.0f}/s")
    rows = []
    for processes, concurrency in CASES:
        async with ctx.databases.fresh() as url:
            lib = await library_drain(url, ctx.n, processes, concurrency)
        share = ratio(lib, raw)
        label = (
            f"{processes} worker process, concurrency {concurrency}"
            if processes == 1
            else f"{processes} worker processes, concurrency {concurrency} each"
        )
        ctx.log(f"drain {label}: {lib:,.0f}/s")
        rows.append(
            Row(
                scenario="drain",
                case=label,
                unit="cmd/s",
                library=lib,
                raw=raw,
                ratio=share,
                target=f">= {TARGET_SHARE:.0%} of raw",
                met=share is not None and share >= TARGET_SHARE,
                details={
                    "n": ctx.n,
                    "processes": processes,
                    "concurrency": concurrency,
                    "batch_size": BATCH_SIZE,
                },
            )
        )
    return rows
