"""Scenario ``sagas``: 3-step sagas across 3 domains against plain commands, same setup.

Every case runs one :mod:`benchmarks.saga_proc` subprocess: a worker for each of
the saga's three domains (no-op handlers, concurrency 16) and a coordinator. The
baselines are plain no-op commands in the first domain, served by the very same
process setup (the coordinator and the other workers idle), in the same run.

* **Throughput.** N sagas are started with ``SagaClient.start_sagas`` (chunks of
  250) before the process starts; their first commands are then held invisible.
  Once the process says every worker and the coordinator is connected and
  listening (``STARTED``, after ``GO``), the parent makes the held messages
  visible and wakes the workers (one transaction: the release, a NOTIFY); t0 is
  that moment on the server clock and the end is the last saga's ``ended_at``
  (all N must be COMPLETED). The baseline is 3 x N (at least 1,000) plain commands
  queued with ``send_batch``, held and released the same way, to the last
  completion (``max(updated_at)``). Target: sagas/s >= 25% of commands/s.
* **Latency.** One process, two phases. First the baseline: after a warm-up,
  single plain commands are sent at a steady 20/s (``send`` on a fixed
  timetable); latency is the latency scenario's measure, the projection's
  ``updated_at`` minus the ``CommandSent`` event's ``recorded_at``. Then sagas,
  after their own warm-up, started one at a time at 20/s (``start_saga``);
  latency per saga on the server clock is ``ended_at - created_at`` of its status
  row (both are the start of their transactions, like the command's stamps).
  N/5 of each are measured. Target: saga p50 <= 4x the command p50. The log also
  gives the median latency of each step's command, measured as the plain command's
  (send to outcome): where a saga's time goes, step by step.

A smoke run skips the VACUUM / CHECKPOINT before each phase (its figures mean
nothing; it only keeps the code from rotting).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import psycopg
from psycopg import sql

from benchmarks.core import Context, Row, ratio, scenario, settle
from benchmarks.ops import connect
from benchmarks.procs import WorkerProcess
from benchmarks.saga_proc import DOMAINS, PLAIN_COMMAND, PLAIN_DOMAIN, STEPS, build_saga
from benchmarks.scenarios.latency import paced, summary
from commandbus.engine.commands.bus import CommandBus
from commandbus.engine.queues.tables import queue_table, wakeup_channel
from commandbus.models import CommandRequest
from commandbus.sagas import SAGA_QUEUE, SagaClient

Conn = psycopg.AsyncConnection[Any]

CONCURRENCY = 16
BATCH_SIZE = 100
START_CHUNK = 250
#: plain commands drained by the baseline: 3 per saga (a saga sends 3), at least this
MIN_COMMANDS = 1_000
RATE = 20.0
TARGET_SHARE = 0.25
TARGET_P50_FACTOR = 4.0
POLL = 0.1

SAGA = build_saga()

COUNT_SAGAS = """
SELECT count(*) FILTER (WHERE status = 'COMPLETED'),
       count(*) FILTER (WHERE ended_at IS NOT NULL AND status <> 'COMPLETED')
  FROM commandbus.saga
"""
COUNT_COMMANDS = (
    "SELECT count(*) FILTER (WHERE status = 'COMPLETED'),"
    " count(*) FILTER (WHERE status NOT IN ('COMPLETED', 'PENDING'))"
    " FROM commandbus.command WHERE domain = %s"
)
SAGA_LATENCIES = """
SELECT extract(epoch FROM ended_at - created_at) * 1000
  FROM commandbus.saga WHERE status = 'COMPLETED' AND saga_id = ANY(%s)
"""
# A command's latency: its outcome's transaction (updated_at) after its send's
# (the CommandSent event's recorded_at), in ms.
_SENT_TO_DONE = """extract(epoch FROM c.updated_at - e.recorded_at) * 1000"""
_COMMANDS_SENT = """
  FROM commandbus.command c
  JOIN commandbus.event e
    ON e.stream_id = 'command:' || c.domain || ':' || c.command_id
   AND e.event_type = 'CommandSent'
"""
COMMAND_LATENCIES = (
    "SELECT "
    + _SENT_TO_DONE
    + _COMMANDS_SENT
    + " WHERE c.domain = %s AND c.status = 'COMPLETED' AND c.command_id = ANY(%s)"
)
# Where a saga's time goes: the median latency of each step's command, measured as
# the plain command's. A step's command is sent in the previous step's outcome
# transaction (the start's, for the first).
STEP_LATENCIES = (
    "SELECT c.command_type, percentile_cont(0.5) WITHIN GROUP (ORDER BY "
    + _SENT_TO_DONE
    + ")"
    + _COMMANDS_SENT
    + " WHERE c.saga_id = ANY(%s) AND c.status = 'COMPLETED' GROUP BY c.command_type"
)


# -- the subprocess -----------------------------------------------------------------------


@contextlib.asynccontextmanager
async def running(url: str) -> AsyncIterator[WorkerProcess]:
    """A started saga process (after GO and STARTED), killed if the block fails."""
    child = await WorkerProcess.start(
        url,
        mode=None,
        module="benchmarks.saga_proc",
        concurrency=CONCURRENCY,
        batch_size=BATCH_SIZE,
    )
    try:
        await child.go()
        yield child
    finally:
        await child.kill()


# -- helpers ------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def open_bus(url: str) -> AsyncIterator[CommandBus]:
    bus = CommandBus(url, min_connections=1, max_connections=1)
    async with bus:
        await bus.create_queues([SAGA_QUEUE, *DOMAINS])
        yield bus


def give_up(smoke: bool) -> float:
    """Seconds to wait for completions before failing (a smoke run has tiny N)."""
    return 60 if smoke else 600


async def settle_unless(smoke: bool, url: str) -> None:
    """Settle before a measured phase (not in a smoke run, whose figures mean nothing)."""
    if not smoke:
        await settle(url)


async def one_row(conn: Conn, query: str, params: Any = None) -> Any:
    cur = await conn.execute(query, params)
    row = await cur.fetchone()
    assert row is not None
    return row


async def hold(conn: Conn, queue: str) -> None:
    """Make every message of ``queue`` invisible for an hour (until :func:`release`)."""
    await conn.execute(
        sql.SQL("UPDATE pgmq.{} SET vt = now() + interval '1 hour'").format(queue_table(queue))
    )


async def release(conn: Conn, queue: str) -> Any:
    """Make the held messages visible and wake the queue's readers; returns t0."""
    async with conn.transaction():
        cur = await conn.execute(
            sql.SQL("UPDATE pgmq.{} SET vt = clock_timestamp() RETURNING vt").format(
                queue_table(queue)
            )
        )
        t0 = max(r[0] for r in await cur.fetchall())
        await conn.execute("SELECT pg_notify(%s, '')", (wakeup_channel(queue),))
    return t0


async def wait_until(
    conn: Conn,
    query: str,
    params: Any,
    expected: int,
    child: WorkerProcess,
    what: str,
    *,
    give_up_after: float = 600,
) -> None:
    """Poll ``query`` (done, failed) until ``expected`` are done; fail on a failure."""
    deadline = time.monotonic() + give_up_after
    while True:
        done, failed = await one_row(conn, query, params)
        if failed:
            raise RuntimeError(f"{failed} {what} ended otherwise than COMPLETED")
        if done >= expected:
            return
        child.check_alive()
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"only {done} of {expected} {what} completed in {give_up_after:g}s; "
                f"{child.label} stderr:\n{child.stderr_tail()}"
            )
        await asyncio.sleep(POLL)


def plain(i: int) -> CommandRequest:
    return CommandRequest(
        domain=PLAIN_DOMAIN, command_type=PLAIN_COMMAND, data={"i": i, "note": "benchmark"}
    )


# -- throughput ---------------------------------------------------------------------------


async def saga_throughput(url: str, n: int, *, smoke: bool) -> tuple[float, dict[str, int]]:
    async with open_bus(url) as bus:
        client = SagaClient(bus)
        for first in range(0, n, START_CHUNK):
            await client.start_sagas(
                SAGA, [{"i": i} for i in range(first, min(n, first + START_CHUNK))]
            )
    async with await connect(url) as conn:
        await hold(conn, DOMAINS[0])
        await settle_unless(smoke, url)
        async with running(url) as child:
            t0 = await release(conn, DOMAINS[0])
            await wait_until(
                conn, COUNT_SAGAS, None, n, child, "sagas", give_up_after=give_up(smoke)
            )
            (end,) = await one_row(conn, "SELECT max(ended_at) FROM commandbus.saga")
            figures = await child.stop()
    if figures["sagas"] != n:
        raise RuntimeError(f"the coordinator reports {figures['sagas']} sagas completed, not {n}")
    return n / (end - t0).total_seconds(), figures


async def command_throughput(url: str, m: int, *, smoke: bool) -> tuple[float, dict[str, int]]:
    async with open_bus(url) as bus:
        for first in range(0, m, 1000):
            result = await bus.send_batch([plain(i) for i in range(first, min(m, first + 1000))])
            if not result.ok:
                raise RuntimeError(f"send_batch failed: {result}")
    async with await connect(url) as conn:
        await hold(conn, PLAIN_DOMAIN)
        await settle_unless(smoke, url)
        async with running(url) as child:
            t0 = await release(conn, PLAIN_DOMAIN)
            await wait_until(
                conn,
                COUNT_COMMANDS,
                (PLAIN_DOMAIN,),
                m,
                child,
                "commands",
                give_up_after=give_up(smoke),
            )
            (end,) = await one_row(
                conn,
                "SELECT max(updated_at) FROM commandbus.command WHERE domain = %s",
                (PLAIN_DOMAIN,),
            )
            figures = await child.stop()
    if figures["processed"] != m:
        raise RuntimeError(f"the workers report {figures['processed']} completions, not {m}")
    return m / (end - t0).total_seconds(), figures


# -- latency ------------------------------------------------------------------------------


async def latencies(
    url: str, count: int, warmup: int, *, smoke: bool
) -> tuple[list[float], list[float], dict[str, float]]:
    """Command latencies, then saga latencies, with one process: (commands, sagas, the
    median latency of each step's command by command type)."""
    async with open_bus(url) as bus, await connect(url) as conn:
        client = SagaClient(bus)
        await settle_unless(smoke, url)
        async with running(url) as child:

            async def command(i: int) -> Any:
                r = plain(i)
                result = await bus.send(r.domain, r.command_type, r.data)
                return result.unwrap().command_id  # raises on a Failure

            async def saga(i: int) -> Any:
                return (await client.start_saga(SAGA, {"i": i})).saga_id

            await paced(warmup, command, rate=RATE)
            await asyncio.sleep(0.5)  # idle again
            ids = await paced(count, command, rate=RATE)
            await wait_until(
                conn,
                COUNT_COMMANDS,
                (PLAIN_DOMAIN,),
                warmup + count,
                child,
                "commands",
                give_up_after=give_up(smoke),
            )
            cur = await conn.execute(COMMAND_LATENCIES, (PLAIN_DOMAIN, ids))
            commands = [float(r[0]) for r in await cur.fetchall()]
            await asyncio.sleep(0.5)
            await paced(warmup, saga, rate=RATE)
            await asyncio.sleep(0.5)
            ids = await paced(count, saga, rate=RATE)
            await wait_until(
                conn,
                COUNT_SAGAS,
                None,
                warmup + count,
                child,
                "sagas",
                give_up_after=give_up(smoke),
            )
            cur = await conn.execute(SAGA_LATENCIES, (ids,))
            sagas = [float(r[0]) for r in await cur.fetchall()]
            cur = await conn.execute(STEP_LATENCIES, (ids,))
            steps = {str(r[0]): float(r[1]) for r in await cur.fetchall()}
            await child.stop()
    if len(commands) != count:
        raise RuntimeError(f"{len(commands)} of {count} commands found completed")
    if len(sagas) != count:
        raise RuntimeError(f"{len(sagas)} of {count} sagas found completed")
    return commands, sagas, steps


# -- the scenario -------------------------------------------------------------------------


def latency_counts(n: int, smoke: bool) -> tuple[int, int]:
    """(measured, warm-up) sagas of the latency case for a throughput N."""
    if smoke:
        return max(5, min(n, 10)), 5
    return max(20, n // 5), 20


@scenario(
    "sagas",
    description="3-step sagas across 3 domains (3 workers + a coordinator in one process) "
    f"vs plain no-op commands of the same setup: drain rate, and latency at {RATE:g}/s",
    n_meaning=f"sagas in the throughput case (N/5 sagas at {RATE:g}/s for latency)",
    default_n=1_000,
    smoke_n=20,
)
async def sagas(ctx: Context) -> list[Row]:
    n = ctx.n
    m = 3 * n if ctx.smoke else max(3 * n, MIN_COMMANDS)
    async with ctx.databases.fresh() as url:
        cmd_rate, cmd_fig = await command_throughput(url, m, smoke=ctx.smoke)
    ctx.log(f"sagas: plain commands drained {cmd_rate:,.0f}/s ({m:,}; {cmd_fig})")
    async with ctx.databases.fresh() as url:
        saga_rate, saga_fig = await saga_throughput(url, n, smoke=ctx.smoke)
    share = ratio(saga_rate, cmd_rate)
    ctx.log(
        f"sagas: {saga_rate:,.0f} sagas/s vs {cmd_rate:,.0f} commands/s = {share:.0%} ({saga_fig})"
    )
    count, warmup = latency_counts(n, ctx.smoke)
    async with ctx.databases.fresh() as url:
        cmd_values, saga_values, step_p50 = await latencies(url, count, warmup, smoke=ctx.smoke)
    cmd_lat, saga_lat = summary(cmd_values), summary(saga_values)
    ctx.log(
        "sagas: latency "
        + ", ".join(
            f"{k} {saga_lat[k]:.2f} ms vs {cmd_lat[k]:.2f} ms ({saga_lat[k] / cmd_lat[k]:.2f}x)"
            for k in ("p50", "p90", "p99")
        )
    )
    steps = {t: step_p50[t] for _s, _d, t, _u in STEPS if t in step_p50}
    ctx.log(
        "sagas: where a saga's time goes, p50 of each step's command (sent -> completed, "
        "sent in the previous step's outcome transaction): "
        + ", ".join(f"{t} {ms:.2f} ms" for t, ms in steps.items())
        + f" (sum {sum(steps.values()):.2f} ms); the plain command's {cmd_lat['p50']:.2f} ms"
    )
    per_saga = {
        "groups_per_saga": saga_fig["groups"] / n,
        "worker_groups_per_saga": saga_fig["worker_groups"] / n,
        "largest_group": saga_fig["max_group"],
        "conflicts": saga_fig["conflicts"],
    }
    setup = {"concurrency_per_worker": CONCURRENCY, "batch_size": BATCH_SIZE}
    rows = [
        Row(
            scenario="sagas",
            # "cmd/s" only sets the format (n/s, ratio in %): the figure is sagas/s
            case=f"{n:,} 3-step sagas/s vs plain commands/s, same process",
            unit="cmd/s",
            library=saga_rate,
            raw=cmd_rate,
            ratio=share,
            target=f">= {TARGET_SHARE:.0%} of the command rate",
            met=share is not None and share >= TARGET_SHARE,
            details={"n": n, "commands": m, **per_saga, **setup},
        ),
        Row(
            scenario="sagas",
            case=f"baseline: {m:,} plain no-op commands drained, same process",
            unit="cmd/s",
            library=cmd_rate,
            target="(info)",
            details={"commands": m, **setup},
        ),
    ]
    for key in ("p50", "p90", "p99"):
        is_p50 = key == "p50"
        rows.append(
            Row(
                scenario="sagas",
                case=f"saga created -> ended vs command send -> completed at {RATE:g}/s, {key}",
                unit="ms",
                library=saga_lat[key],
                raw=cmd_lat[key],
                ratio=saga_lat[key] / cmd_lat[key] if cmd_lat[key] else None,
                target=f"<= {TARGET_P50_FACTOR:g}x the command's" if is_p50 else "(info)",
                met=saga_lat[key] <= TARGET_P50_FACTOR * cmd_lat[key] if is_p50 else None,
                details={
                    "n": count,
                    "warmup": warmup,
                    "rate": RATE,
                    "saga_max": saga_lat["max"],
                    "command_max": cmd_lat["max"],
                    **({"step_p50_ms": steps} if is_p50 else {}),
                },
            )
        )
    return rows
