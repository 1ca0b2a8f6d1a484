"""Scenario ``batch``: send_batch of 1000 commands per call, one sender."""

from __future__ import annotations

import time

from benchmarks.core import RAW_QUEUE, Context, Row, ratio, scenario, settle
from benchmarks.ops import RAW_SEND_BATCH, connect, create_raw_queue, open_bus, raw_message
from benchmarks.ops import requests as make_requests

BATCH = 1000
TARGET_SHARE = 0.50


async def library_rate(url: str, n: int) -> float:
    async with open_bus(url) as bus:
        await bus.send_batch(make_requests(0, BATCH))  # warm-up
        await settle(url)
        started = time.perf_counter()
        for first in range(0, n, BATCH):
            result = await bus.send_batch(make_requests(first, min(BATCH, n - first)))
            if not result.ok:
                raise RuntimeError(f"send_batch failed: {result}")
        return n / (time.perf_counter() - started)


async def raw_rate(url: str, n: int) -> float:
    async with await connect(url) as conn:
        await create_raw_queue(conn)
        await conn.execute(RAW_SEND_BATCH, (RAW_QUEUE, [raw_message(i) for i in range(BATCH)]))
        await settle(url)
        started = time.perf_counter()
        for first in range(0, n, BATCH):
            msgs = [raw_message(i) for i in range(first, min(first + BATCH, n))]
            await conn.execute(RAW_SEND_BATCH, (RAW_QUEUE, msgs))
        return n / (time.perf_counter() - started)


@scenario(
    "batch",
    description=f"CommandBus.send_batch ({BATCH} per call) vs raw pgmq.send_batch",
    n_meaning="commands in total",
    default_n=20_000,
    smoke_n=2_000,
)
async def batch(ctx: Context) -> list[Row]:
    async with ctx.databases.fresh() as url:
        raw = await raw_rate(url, ctx.n)
    async with ctx.databases.fresh() as url:
        lib = await library_rate(url, ctx.n)
    share = ratio(lib, raw)
    ctx.log(f"batch: library {lib:,.0f}/s, raw {raw:,.0f}/s")
    return [
        Row(
            scenario="batch",
            case=f"send_batch of {BATCH}",
            unit="cmd/s",
            library=lib,
            raw=raw,
            ratio=share,
            target=f">= {TARGET_SHARE:.0%} of raw",
            met=share is not None and share >= TARGET_SHARE,
            details={"n": ctx.n, "batch": BATCH},
        )
    ]
