"""Scenario ``dashboard``: every page of ``commandbus web`` at size (issue 13, item 10).

Target: each page answers in under 200 ms (p95 of its repetitions) with N
commands and 10 x N events in the database (the full run: 100,000 commands,
1,000,000 events).

**Seeding** (not timed), all through the library's public API into a fresh
database: N/20 three-step sagas started with ``SagaClient.start_sagas`` (one in
ten is refused at its last step and compensates: two more commands); N/100
plain commands whose handler fails for good (they wait in the troubleshooting
queue); the rest plain commands sent with ``send_batch`` in batches of 500. One
in-process :class:`~commandbus.Worker` (every domain, no-op handlers) and a
:class:`~commandbus.Coordinator` process them all. Then the event log is topped
up to 10 x N events with application streams of 20 events each
(``bus.events.append``), as an application's own domain events would be.

**Timing**: after ``VACUUM ANALYZE`` (not in a smoke run), the dashboard's ASGI
app (``create_app``, as ``commandbus web`` builds it, with its 5 s statement
timeout) is driven in-process through httpx; each page is fetched twice to warm
up, then R times (20; 3 in a smoke run), one request at a time, and timed from
request to the last byte of the body. Reported: p50 and p95 per page (the row's
figure is the p95, the details hold p50, max and the page's size).
"""

from __future__ import annotations

import asyncio
import logging
import statistics
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import timedelta
from typing import Any

import httpx

from benchmarks.core import Context, Row, scenario, settle
from commandbus import (
    BusinessRuleError,
    Command,
    CommandBus,
    CommandFilter,
    CommandRequest,
    Compensation,
    Config,
    Coordinator,
    HandlerContext,
    HandlerRegistry,
    NewEvent,
    PermanentCommandError,
    Saga,
    SagaClient,
    SagaFilter,
    SagaRegistry,
    SagaStart,
    Step,
    StreamAppend,
    Worker,
)
from commandbus.monitoring import list_batches

TARGET_MS = 200.0
EVENTS_PER_COMMAND = 10
PLAIN_DOMAIN = "dash_shop"
STEPS = (
    ("reserve", "dash_inventory", "Reserve", "Release"),
    ("charge", "dash_payments", "Charge", "Refund"),
    ("ship", "dash_shipping", "Ship", None),
)
DOMAINS = (PLAIN_DOMAIN, *(d for _s, d, _c, _u in STEPS))
BATCH = 500
START_CHUNK = 250
APP_STREAM_EVENTS = 20
APP_CHUNK = 500  # streams per append
CONFIG = Config(poll_interval=timedelta(milliseconds=100))


def _data(ctx: Any) -> dict[str, Any]:
    return {"order": ctx.input.get("i"), "refuse": ctx.input.get("refuse", False)}


SAGA = Saga(
    "dash_order",
    steps=[
        Step(
            name,
            domain=domain,
            command=command,
            data=_data,
            compensation=None if undo is None else Compensation(undo, data=_data),
        )
        for name, domain, command, undo in STEPS
    ],
)


def handlers() -> HandlerRegistry:
    reg = HandlerRegistry()

    async def noop(cmd: Command, ctx: HandlerContext) -> dict[str, Any]:
        return {"ok": True}

    async def broken(cmd: Command, ctx: HandlerContext) -> None:
        raise PermanentCommandError("the card network is down", code="NETWORK")

    async def ship(cmd: Command, ctx: HandlerContext) -> dict[str, Any]:
        if cmd.data.get("refuse"):
            raise BusinessRuleError("address refused", code="ADDRESS")
        return {"tracking": f"t-{cmd.data.get('order')}"}

    reg.register(PLAIN_DOMAIN, "Noop", noop)
    reg.register(PLAIN_DOMAIN, "Broken", broken)
    for _name, domain, command, undo in STEPS:
        reg.register(domain, command, ship if command == "Ship" else noop)
        if undo is not None:
            reg.register(domain, undo, noop)
    return reg


# -- seeding ------------------------------------------------------------------------------


async def _scalar(bus: CommandBus, query: str, *params: Any) -> int:
    async with bus.pool.connection() as c:
        cur = await c.execute(query, params or None)
        row = await cur.fetchone()
    assert row is not None
    return int(row[0])


async def _wait(bus: CommandBus, query: str, expected: int, what: str, ctx: Context) -> None:
    deadline = time.monotonic() + (120 if ctx.smoke else 1800)
    last_log = time.monotonic()
    while (done := await _scalar(bus, query)) < expected:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: {done:,} of {expected:,} after the deadline")
        if time.monotonic() - last_log > 15:
            ctx.log(f"  {what}: {done:,} of {expected:,}")
            last_log = time.monotonic()
        await asyncio.sleep(0.25)


@asynccontextmanager
async def _processing(url: str) -> AsyncIterator[None]:
    """A worker for every domain and a coordinator, in this process (the worker's
    warning for each command it puts in the troubleshooting queue is not shown)."""
    quiet = logging.getLogger("commandbus.worker")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    async with AsyncExitStack() as stack:
        stack.callback(quiet.setLevel, level)
        worker = await stack.enter_async_context(
            Worker(url, handlers(), domains=DOMAINS, concurrency=64, config=CONFIG)
        )
        coordinator = await stack.enter_async_context(
            Coordinator(url, SagaRegistry([SAGA]), config=CONFIG)
        )
        try:
            yield
        finally:
            worker.request_stop(1)
            coordinator.request_stop(1)


async def seed(bus: CommandBus, url: str, n: int, ctx: Context) -> dict[str, Any]:
    """N commands (sagas, the TSQ, plain batches) processed, then 10 x N events in all."""
    sagas = max(2, n // 20)
    refused = max(1, sagas // 10)
    tsq = max(1, n // 100)
    saga_commands = 3 * sagas + 2 * refused
    plain = max(1, n - saga_commands - tsq)
    await bus.create_queues(list(DOMAINS))
    client = SagaClient(bus)
    t0 = time.perf_counter()
    async with _processing(url):
        for first in range(0, sagas, START_CHUNK):
            starts = [
                SagaStart(input={"i": i, "refuse": i % (sagas // refused) == 0})
                for i in range(first, min(sagas, first + START_CHUNK))
            ]
            await client.start_sagas(SAGA, starts)
        broken = [
            CommandRequest(domain=PLAIN_DOMAIN, command_type="Broken", data={"i": i})
            for i in range(tsq)
        ]
        for first in range(0, tsq, BATCH):
            (await bus.send_batch(broken[first : first + BATCH], name="broken")).unwrap()
        for first in range(0, plain, BATCH):
            requests = [
                CommandRequest(domain=PLAIN_DOMAIN, command_type="Noop", data={"i": i})
                for i in range(first, min(plain, first + BATCH))
            ]
            (await bus.send_batch(requests, name=f"plain-{first // BATCH}")).unwrap()
        ctx.log(f"  sent {sagas:,} sagas and {tsq + plain:,} plain commands; processing")
        await _wait(
            bus,
            "SELECT count(*) FROM commandbus.command WHERE status IN "
            "('COMPLETED', 'FAILED', 'IN_TROUBLESHOOTING_QUEUE')",
            tsq + plain + saga_commands,
            "commands settled",
            ctx,
        )
        await _wait(
            bus,
            "SELECT count(*) FROM commandbus.saga WHERE ended_at IS NOT NULL",
            sagas,
            "sagas ended",
            ctx,
        )
    ctx.log(f"  processed in {time.perf_counter() - t0:.0f} s")
    events = await _scalar(bus, "SELECT count(*) FROM commandbus.event")
    wanted = EVENTS_PER_COMMAND * n
    streams = max(0, -(-(wanted - events) // APP_STREAM_EVENTS))  # rounded up: >= 10 x N
    for first in range(0, streams, APP_CHUNK):
        await bus.events.append(
            [
                StreamAppend(
                    stream_id=f"dash_account-{i}",
                    stream_type="dash_account",
                    expected_version=0,
                    events=[
                        NewEvent(event_type="AmountDeposited", data={"account": i, "n": k})
                        for k in range(APP_STREAM_EVENTS)
                    ],
                )
                for i in range(first, min(streams, first + APP_CHUNK))
            ]
        )
    commands = await _scalar(bus, "SELECT count(*) FROM commandbus.command")
    events = await _scalar(bus, "SELECT count(*) FROM commandbus.event")
    ctx.log(f"  seeded: {commands:,} commands, {events:,} events")
    return {"commands": commands, "events": events, "sagas": sagas, "tsq": tsq}


# -- the pages ----------------------------------------------------------------------------


async def _deep_command_cursor(bus: CommandBus, skip: int) -> str | None:
    """The cursor of the commands list (newest first, as the page lists) ``skip`` rows in."""
    cursor, seen = None, 0
    while seen < skip:
        page = await bus.list_commands(limit=1000, cursor=cursor, newest_first=True)
        if page.next_cursor is None:
            break
        seen += len(page.items)
        cursor = page.next_cursor
    return cursor


async def _deep_saga_cursor(client: SagaClient, skip: int) -> str | None:
    cursor, seen = None, 0
    while seen < skip:
        page = await client.list_sagas(limit=1000, cursor=cursor)
        if page.next_cursor is None:
            break
        seen += len(page.items)
        cursor = page.next_cursor
    return cursor


async def pages(bus: CommandBus) -> dict[str, str]:
    """The URL of each page to time, with ids from the library's reads."""
    client = SagaClient(bus)
    comp = await client.list_sagas(SagaFilter(status="COMPENSATED"), limit=1)
    done = await client.list_sagas(SagaFilter(status="COMPLETED"), limit=1)
    saga = (comp.items or done.items)[0]
    tsq = await bus.troubleshooting.list(limit=1)
    failed = tsq.items[0]
    plain = await bus.list_commands(
        CommandFilter(domain=PLAIN_DOMAIN, command_type="Noop"), limit=1, newest_first=True
    )
    recent = plain.items[0]
    assert recent.batch_id is not None
    total = await _scalar(bus, "SELECT count(*) FROM commandbus.command")
    deep = await _deep_command_cursor(bus, total // 2)
    sagas = await _scalar(bus, "SELECT count(*) FROM commandbus.saga")
    saga_deep = await _deep_saga_cursor(client, sagas // 2)
    batches = await list_batches(bus, limit=50)
    urls = {
        "overview": "/",
        "overview (live refresh)": "/overview/live",
        "commands, first page": "/commands",
        "commands, page half-way (keyset)": f"/commands?cursor={deep}" if deep else "/commands",
        "commands, by domain and status": f"/commands?domain={PLAIN_DOMAIN}&status=COMPLETED",
        "commands, failed in a domain": f"/commands?domain={PLAIN_DOMAIN}&status=FAILED",
        "command detail (in the TSQ)": f"/commands/{failed.domain}/{failed.command_id}",
        "command detail (completed)": f"/commands/{recent.domain}/{recent.command_id}",
        f"batch detail ({BATCH} commands)": f"/batches/{recent.batch_id}",
        "batches, first page": "/batches",
        "batches, next page (keyset)": (
            f"/batches?cursor={batches.next_cursor}" if batches.next_cursor else "/batches"
        ),
        "sagas, first page": "/sagas",
        "sagas, later page (keyset)": f"/sagas?cursor={saga_deep}" if saga_deep else "/sagas",
        "sagas, compensated": "/sagas?status=COMPENSATED",
        "saga detail": f"/sagas/{saga.saga_id}",
        "troubleshooting queue": "/tsq",
        "TSQ, filtered": f"/tsq?domain={PLAIN_DOMAIN}&type=Broken&error=network",
        "TSQ, confirm all matching": "/tsq/confirm?action=retry&all_matching=1",
        "trace of a saga's flow": f"/trace/{saga.correlation_id}",
        f"trace of a batch's flow ({BATCH} commands)": f"/trace/{recent.batch_id}",
        "search: a command id": f"/search?q={recent.command_id}",
        "search: a saga id": f"/search?q={saga.saga_id}",
        "search: a correlation id": f"/search?q={saga.correlation_id}",
    }
    return urls


async def time_pages(
    bus: CommandBus, urls: dict[str, str], reps: int, ctx: Context
) -> list[tuple[str, list[float], int]]:
    from commandbus.web import create_app

    app = create_app(bus, local_user="bench")
    transport = httpx.ASGITransport(app=app)
    out = []
    async with httpx.AsyncClient(transport=transport, base_url="http://bench") as http:
        for name, url in urls.items():
            samples: list[float] = []
            size = 0
            for i in range(2 + reps):
                t0 = time.perf_counter()
                r = await http.get(url)
                body = r.content
                elapsed = (time.perf_counter() - t0) * 1000
                if r.status_code not in (200, 303):
                    raise RuntimeError(f"{name}: {url} answered {r.status_code}: {r.text[:300]}")
                if i >= 2:
                    samples.append(elapsed)
                size = len(body)
            out.append((name, samples, size))
            ctx.log(
                f"  {name}: p50 {statistics.median(samples):.1f} ms, "
                f"p95 {_p95(samples):.1f} ms ({size:,} bytes)"
            )
    return out


def _p95(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


@scenario(
    "dashboard",
    description="every dashboard page at size: p95 per page under 200 ms",
    n_meaning="commands (events: 10 x N)",
    default_n=100_000,
    smoke_n=300,
)
async def run(ctx: Context) -> list[Row]:
    reps = 3 if ctx.smoke else 20
    async with AsyncExitStack() as stack:
        url = await stack.enter_async_context(ctx.databases.fresh())
        bus = await stack.enter_async_context(
            CommandBus(url, config=CONFIG, min_connections=1, max_connections=6)
        )
        held = await seed(bus, url, ctx.n, ctx)
        if not ctx.smoke:
            await settle(url)
        urls = await pages(bus)
        timed = await time_pages(bus, urls, reps, ctx)
    rows = []
    for name, samples, size in timed:
        p95 = _p95(samples)
        rows.append(
            Row(
                scenario="dashboard",
                case=name,
                unit="ms",
                library=p95,
                target=f"p95 < {TARGET_MS:.0f} ms",
                met=p95 < TARGET_MS,
                details={
                    "p50_ms": statistics.median(samples),
                    "p95_ms": p95,
                    "max_ms": max(samples),
                    "repetitions": len(samples),
                    "bytes": size,
                    **held,
                },
            )
        )
    return rows
