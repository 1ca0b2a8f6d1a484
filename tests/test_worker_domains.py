"""One worker, several domains: ``Worker(domains=[...])`` and ``--domain a --domain b``."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from commandbus import (
    Command,
    CommandBus,
    CommandStatus,
    HandlerContext,
    HandlerRegistrationError,
    HandlerRegistry,
    InvalidNameError,
    ValidationError,
    Worker,
)
from support import FAST, run_cli, scalar, wait_for

Conn = psycopg.AsyncConnection[Any]
TESTS = Path(__file__).parent


def two_domains() -> tuple[HandlerRegistry, dict[str, list[Any]]]:
    """Handlers for payments and shipping; what each saw (its pool, its domain)."""
    reg = HandlerRegistry()
    seen: dict[str, list[Any]] = {"payments": [], "shipping": []}

    @reg.handler("payments", "Charge")
    async def charge(cmd: Command, ctx: HandlerContext) -> str:
        conn = await ctx.connection()  # a handler transaction, from the shared pool
        await conn.execute("SELECT 1")
        seen["payments"].append(ctx._pool)
        return "charged"

    @reg.handler("shipping", "Ship")
    async def ship(cmd: Command, ctx: HandlerContext) -> str:
        seen["shipping"].append(ctx._pool)
        await asyncio.sleep(float(cmd.data.get("sleep", 0)))
        return "shipped"

    return reg, seen


async def count_status(conn: Conn, status: str) -> int:
    sql = "SELECT count(*) FROM commandbus.command WHERE status = %s"
    return int(await scalar(conn, sql, status))


async def test_one_worker_serves_several_domains_with_one_pool(
    dsn: str, bus: CommandBus, conn: Conn
) -> None:
    reg, seen = two_domains()
    for i in range(5):
        assert (await bus.send("payments", "Charge", {"i": i})).ok
        assert (await bus.send("shipping", "Ship", {"i": i})).ok
    worker = Worker(dsn, reg, domains=["payments", "shipping"], config=FAST, concurrency=3)
    assert worker.domains == ("payments", "shipping")
    async with worker:

        async def all_done() -> bool:
            return await count_status(conn, "COMPLETED") == 10

        await wait_for(all_done, timeout=30)
    stats = worker.stats
    assert (stats.completed, stats.processed) == (10, 10)
    assert {d: s.completed for d, s in stats.by_domain.items()} == {"payments": 5, "shipping": 5}
    assert stats.stopped_at is not None
    summary = stats.summary()
    assert summary.startswith("worker payments,shipping: 10 processed")
    assert summary.endswith("; payments: 5 processed, shipping: 5 processed")
    pools = {id(p) for handler_pools in seen.values() for p in handler_pools}
    assert len(pools) == 1  # every domain's handlers draw on one pool
    [pool] = {p for handler_pools in seen.values() for p in handler_pools}
    assert pool.max_size == 3 * 2 + 2  # concurrency per domain, plus two
    assert (await bus.verify_projection()).ok


async def test_domain_still_serves_one(dsn: str, bus: CommandBus) -> None:
    reg, _seen = two_domains()
    sent = (await bus.send("shipping", "Ship", {})).unwrap()
    worker = Worker(dsn, reg, domain="shipping", config=FAST)
    assert worker.domains == ("shipping",) and worker.domain == "shipping"
    async with worker:

        async def done() -> bool:
            record = await bus.get_command("shipping", sent.command_id)
            return record is not None and record.status is CommandStatus.COMPLETED

        await wait_for(done, timeout=30)
    assert worker.stats.by_domain == {} and worker.stats.domain == "shipping"
    assert worker.stats.summary().startswith("worker shipping: 1 processed")


@pytest.mark.parametrize(
    ("kw", "error", "text"),
    [
        ({}, ValidationError, "give the domain to serve"),
        ({"domain": "payments", "domains": ["shipping"]}, ValidationError, "not both"),
        ({"domains": "payments"}, ValidationError, "a list of domain names"),
        ({"domains": 7}, ValidationError, "a list of domain names"),
        ({"domains": []}, ValidationError, "at least one"),
        ({"domains": ["payments", "payments"]}, ValidationError, "'payments' is given twice"),
        ({"domains": ["payments", "billing"]}, HandlerRegistrationError, "domain 'billing'"),
        ({"domains": ["payments", "Bad Name"]}, InvalidNameError, "Bad Name"),
        ({"domains": ["payments", None]}, InvalidNameError, "None"),
    ],
)
def test_bad_domains_are_refused_when_the_worker_is_built(
    dsn: str, kw: dict[str, Any], error: type[Exception], text: str
) -> None:
    reg, _seen = two_domains()
    with pytest.raises(error, match=text):
        Worker(dsn, reg, config=FAST, **kw)


def test_an_unknown_domain_names_the_domains_that_have_handlers() -> None:
    reg, _seen = two_domains()
    with pytest.raises(HandlerRegistrationError) as info:
        # refused before any database is reached (this URL leads nowhere)
        Worker("postgresql://nobody@127.0.0.1:1/none", reg, domains=["shipping", "billing"])
    assert str(info.value) == (
        "no handlers are registered for domain 'billing' "
        "(domains with handlers: payments, shipping)"
    )


async def test_a_stop_ends_every_domain_and_hands_back_what_did_not_finish(
    dsn: str, bus: CommandBus, conn: Conn
) -> None:
    from test_worker_lifecycle import live_worker_tasks

    reg, _seen = two_domains()
    assert (await bus.send("shipping", "Ship", {"sleep": 60})).ok
    assert (await bus.send("payments", "Charge", {})).ok
    worker = Worker(dsn, reg, domains=["payments", "shipping"], config=FAST)
    run = asyncio.create_task(worker.run())
    await asyncio.wait_for(worker.ready.wait(), 30)
    await wait_for(lambda: _is(count_status(conn, "COMPLETED"), 1), timeout=30)
    await wait_for(
        lambda: _is(scalar(conn, "SELECT count(*) FROM pgmq.q_shipping WHERE read_ct > 0"), 1)
    )
    started = time.monotonic()
    await worker.stop(timeout=0.2)
    stats = await asyncio.wait_for(run, 10)
    assert time.monotonic() - started < 3
    assert stats.by_domain["shipping"].released == 1 and stats.released == 1
    assert stats.by_domain["payments"].completed == 1
    assert live_worker_tasks() == []
    visible = "SELECT count(*) FROM pgmq.q_shipping WHERE vt <= clock_timestamp()"
    assert await scalar(conn, visible) == 1


async def test_cancelling_run_stops_every_domain_then_re_raises(
    dsn: str, bus: CommandBus, conn: Conn
) -> None:
    from test_worker_lifecycle import live_worker_tasks

    reg, _seen = two_domains()
    assert (await bus.send("shipping", "Ship", {"sleep": 60})).ok
    worker = Worker(dsn, reg, domains=["payments", "shipping"], config=FAST)
    run = asyncio.create_task(worker.run())
    await asyncio.wait_for(worker.ready.wait(), 30)
    await wait_for(
        lambda: _is(scalar(conn, "SELECT count(*) FROM pgmq.q_shipping WHERE read_ct > 0"), 1)
    )
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(run, 10)
    assert live_worker_tasks() == []
    assert worker.stats.by_domain["shipping"].released == 1


async def test_a_domain_that_cannot_start_stops_the_others_and_is_raised(
    dsn: str, conn: Conn
) -> None:
    """Its queue cannot be created (a table of that name is in the way): the worker
    does not go on serving half of what it was asked to."""
    from test_worker_lifecycle import live_worker_tasks

    reg, _seen = two_domains()
    await conn.execute("CREATE TABLE pgmq.q_shipping (not_a_queue int)")
    await conn.execute("CREATE TABLE pgmq.a_shipping (not_a_queue int)")
    worker = Worker(dsn, reg, domains=["payments", "shipping"], config=FAST)
    with pytest.raises(Exception) as info:  # whatever the database says
        await asyncio.wait_for(worker.run(), 30)
    assert not isinstance(info.value, TimeoutError | asyncio.CancelledError)
    assert live_worker_tasks() == []
    assert worker.stats.stopped_at is not None


async def _is(value: Any, n: int) -> bool:
    return int(await value) == n


# -- the command line ---------------------------------------------------------------------


def cli_env(dsn: str) -> dict[str, str | None]:
    return {
        "DATABASE_URL": dsn,
        "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
        "TEST_HANDLER_SLEEP": "0",
        "COMMANDBUS_OTEL": None,
    }


@pytest.mark.slow
@pytest.mark.parametrize(
    "domains", [("--domain", "jobs", "--domain", "mail"), ("--domain", "jobs,mail")]
)
async def test_the_cli_worker_serves_several_domains_and_stops_on_sigint(
    dsn: str, bus: CommandBus, conn: Conn, domains: tuple[str, ...]
) -> None:
    await conn.execute("CREATE TABLE public.effects (command_id uuid, attempt int)")
    env = {**cli_env(dsn), "TEST_MAIL_SLEEP": "60"}
    proc = run_cli("worker", "--app", "worker_apps:registry", *domains, "--grace", "1", env=env)
    try:
        assert (await bus.send("jobs", "Work", {})).ok
        assert (await bus.send("mail", "Send", {"to": "bob"})).ok  # still running at the stop
        await wait_for(lambda: _is(count_status(conn, "COMPLETED"), 1), timeout=60)
        await wait_for(
            lambda: _is(scalar(conn, "SELECT count(*) FROM pgmq.q_mail WHERE read_ct > 0"), 1),
            timeout=30,
        )
        started = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=30)
        assert time.monotonic() - started < 5, err  # the 1 s grace, then the hand-back
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    banner = "serving domains 'jobs': Crash, Work; 'mail': Broken, Send (concurrency 10 per domain)"
    assert err.count(banner) == 1, err
    assert err.count("worker connected for domain jobs") == 1
    assert err.count("worker connected for domain mail") == 1
    [summary] = [line for line in err.splitlines() if "processed in" in line]
    assert "worker jobs,mail: 1 processed" in summary and "released 1" in summary
    assert summary.endswith("; jobs: 1 processed, mail: 0 processed")
    assert err.splitlines()[-1] == summary


def refusal(dsn: str, *args: str) -> str:
    """Run ``commandbus worker ARGS``: it must refuse in one line; return that line."""
    proc = subprocess.run(
        [sys.executable, "-m", "commandbus.cli", "worker", *args],
        env={k: v for k, v in {**os.environ, **cli_env(dsn)}.items() if v is not None},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: "), proc.stderr
    assert proc.stdout == ""
    return proc.stderr.strip()


def test_the_cli_refuses_duplicate_and_unknown_domains_before_reaching_the_database() -> None:
    nowhere = "postgresql://nobody@127.0.0.1:1/none"
    app = ("--app", "worker_apps:registry")
    assert refusal(nowhere, *app, "--domain", "jobs", "--domain", "jobs") == (
        "error: --domain 'jobs' is given twice"
    )
    assert refusal(nowhere, *app, "--domain", "mail,jobs", "--domain", "mail") == (
        "error: --domain 'mail' is given twice"
    )
    assert refusal(nowhere, *app, "--domain", "jobs", "--domain", "nobody") == (
        "error: no handlers are registered for domain 'nobody' (domains with handlers: jobs, mail)"
    )
    assert (
        refusal(nowhere, *app, "--domain", "jobs,")
        == "error: --domain must name a domain, got 'jobs,'"
    )
    assert "invalid" in refusal(nowhere, *app, "--domain", "Jobs Two")
