"""Scenario ``send``: one command per call, at concurrency 1 and 8.

Each concurrent sender is a task of one process; raw senders each own a connection,
the bus gets a pool of as many connections as senders.
"""

from __future__ import annotations

from benchmarks.core import COMMAND_TYPE, DOMAIN, RAW_QUEUE, Context, Row, ratio, scenario, settle
from benchmarks.ops import (
    RAW_SEND,
    command_data,
    connect,
    create_raw_queue,
    open_bus,
    raw_message,
    run_concurrently,
)

CONCURRENCIES = (1, 8)
TARGET_SHARE = 0.60  # of raw, at concurrency 8
WARMUP = 50


async def library_rate(url: str, n: int, concurrency: int) -> float:
    async with open_bus(url, connections=concurrency) as bus:

        async def one(_lane: int, i: int) -> None:
            result = await bus.send(DOMAIN, COMMAND_TYPE, command_data(i))
            if not result.ok:
                raise RuntimeError(f"send failed: {result}")

        await run_concurrently(WARMUP, concurrency, one)
        await settle(url)
        return n / await run_concurrently(n, concurrency, one)


async def raw_rate(url: str, n: int, concurrency: int) -> float:
    async with await connect(url) as conn:
        await create_raw_queue(conn)
    conns = [await connect(url) for _ in range(concurrency)]
    try:

        async def one(lane: int, i: int) -> None:
            await conns[lane].execute(RAW_SEND, (RAW_QUEUE, raw_message(i)))

        await run_concurrently(WARMUP, concurrency, one)
        await settle(url)
        return n / await run_concurrently(n, concurrency, one)
    finally:
        for c in conns:
            await c.close()


@scenario(
    "send",
    description="CommandBus.send one by one vs raw pgmq.send (own connection per sender)",
    n_meaning="commands per concurrency level",
    default_n=4000,
    smoke_n=200,
)
async def send(ctx: Context) -> list[Row]:
    rows = []
    for concurrency in CONCURRENCIES:
        async with ctx.databases.fresh() as url:
            raw = await raw_rate(url, ctx.n, concurrency)
        async with ctx.databases.fresh() as url:
            lib = await library_rate(url, ctx.n, concurrency)
        share = ratio(lib, raw)
        gated = concurrency == 8
        rows.append(
            Row(
                scenario="send",
                case=f"send, concurrency {concurrency}",
                unit="cmd/s",
                library=lib,
                raw=raw,
                ratio=share,
                target=f">= {TARGET_SHARE:.0%} of raw" if gated else "(info)",
                met=(share is not None and share >= TARGET_SHARE) if gated else None,
                details={"n": ctx.n, "concurrency": concurrency},
            )
        )
        ctx.log(f"send c={concurrency}: library {lib:,.0f}/s, raw {raw:,.0f}/s")
    return rows
