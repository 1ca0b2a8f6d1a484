"""``commandbus status`` as an operator runs it: the real executable against a real
database, with workers in real processes (killed, stopped, cut off) and in this one."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from commandbus import (
    Command,
    CommandBus,
    CommandRequest,
    Coordinator,
    HandlerContext,
    HandlerRegistry,
    PermanentCommandError,
    Saga,
    SagaClient,
    SagaRegistry,
    Step,
    Worker,
)
from commandbus.monitoring import SystemStatus, system_status
from support import FAST, run_cli, scalar, wait_for

Conn = psycopg.AsyncConnection[Any]
TESTS = Path(__file__).parent
HOST = socket.gethostname()


def status_cli(dsn: str, *args: str) -> tuple[int, str, str]:
    """``commandbus status ARGS`` against ``dsn``: exit status, stdout, stderr."""
    proc = run_cli("status", *args, env={"DATABASE_URL": dsn})
    out, err = proc.communicate(timeout=60)
    return proc.returncode, out, err


async def status_of(dsn: str, *args: str) -> tuple[int, str, str]:
    """:func:`status_cli` from an async test (the workers of this process keep running)."""
    return await asyncio.to_thread(status_cli, dsn, *args)


def assert_one_error_line(result: tuple[int, str, str], *expected: str, code: int = 1) -> None:
    status, out, err = result
    assert status == code, (status, out, err)
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err and out == ""
    for text in expected:
        assert text in lines[0], (text, lines[0])


@contextmanager
def worker_process(dsn: str, *args: str, sleep: float) -> Iterator[subprocess.Popen[str]]:
    """``commandbus worker`` for the jobs domain (tests/worker_apps.py), beating every
    0.2 s; killed at the end if still running."""
    env = dict(os.environ, DATABASE_URL=dsn, HEARTBEAT_SECONDS="0.2")
    env.update(BACKOFF_BASE_SECONDS="0.2", BACKOFF_MAX_SECONDS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")])
    env["TEST_HANDLER_SLEEP"] = str(sleep)
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "commandbus.cli", "worker", "--app", "worker_apps:registry"),
            *("--domain", "jobs", *args),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        if proc.stdout is not None and not proc.stdout.closed:
            proc.communicate()


async def until(bus: CommandBus, check: Any, timeout: float = 30.0) -> SystemStatus:  # noqa: ASYNC109
    found: list[SystemStatus] = []

    async def holds() -> bool:
        s = await system_status(bus)
        found[:] = [s]
        return bool(check(s))

    await wait_for(holds, timeout=timeout, interval=0.05)
    return found[0]


def process_of(s: SystemStatus, pid: int) -> Any:
    return next((p for p in s.processes if p.pid == pid and p.host == HOST), None)


def state_of(s: SystemStatus, pid: int) -> str | None:
    p = process_of(s, pid)
    return None if p is None else str(p.state)


async def send_jobs(bus: CommandBus, conn: Conn, n: int) -> None:
    await conn.execute("CREATE TABLE IF NOT EXISTS public.effects (command_id uuid, attempt int)")
    result = await bus.send_batch(
        [CommandRequest(domain="jobs", command_type="Work", data={"i": i}) for i in range(n)]
    )
    assert result.ok


# -- a fresh database, and the refusals ---------------------------------------------------


def test_status_of_a_fresh_database(dsn: str) -> None:
    code, out, err = status_cli(dsn)
    assert code == 0 and err == "", err
    lines = out.splitlines()
    assert lines[0].startswith("commandbus status of database cbtest_")
    assert "No domains yet: nothing was sent and no worker has run." in lines
    assert "SAGAS  none yet" in lines
    assert "PROCESSES  none seen in the last hour (no heartbeats)" in lines
    assert lines[-1] == "Nothing needs a look."
    code, out, err = status_cli(dsn, "--json")
    assert code == 0 and err == ""
    doc = json.loads(out)
    assert (doc["domains"], doc["processes"], doc["attention"]) == ([], [], [])
    assert set(doc["sagas"]["sagas"]["counts"].values()) == {0}


def test_status_of_an_unmigrated_database_says_run_migrate(empty_dsn: str) -> None:
    for args in ((), ("--json",)):
        assert_one_error_line(
            status_cli(empty_dsn, *args), "schema is not installed", "run `commandbus migrate`"
        )


async def test_status_before_the_heartbeat_migration_says_run_migrate(dsn: str, conn: Conn) -> None:
    await conn.execute("DROP TABLE commandbus.heartbeat")
    await conn.execute("DELETE FROM commandbus.schema_migrations WHERE name = '0007_heartbeats'")
    assert_one_error_line(
        await status_of(dsn), "1 migration(s) pending", "0007_heartbeats", "commandbus migrate"
    )


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("--timeout", "soon"), "--timeout"),
        (("--timeout", "0"), "--timeout"),
        (("--timeout", "11m"), "--timeout"),
        (("--timeout", "-5s"), "--timeout"),
        (("--count",), "--count"),
    ],
)
def test_bad_options_are_one_line_errors(dsn: str, args: tuple[str, ...], expected: str) -> None:
    code, out, err = status_cli(dsn, *args)
    assert code != 0 and out == ""
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and expected in err, err


def test_an_unreachable_server_is_one_line() -> None:
    assert_one_error_line(
        status_cli("postgresql://postgres@127.0.0.1:1/postgres"), "cannot connect", "127.0.0.1:1"
    )


# -- workers in real processes ----------------------------------------------------------------


@pytest.mark.slow
async def test_a_killed_worker_goes_gone_and_its_pending_work_is_flagged(
    dsn: str, bus: CommandBus, conn: Conn
) -> None:
    await send_jobs(bus, conn, 3)
    with worker_process(dsn, "--concurrency", "1", sleep=60) as proc:
        # one batch read them all: one runs, two wait in the worker; all are in flight
        s = await until(
            bus,
            lambda s: state_of(s, proc.pid) == "live" and s.domain("jobs").queue.in_flight == 3,
        )
        jobs = s.domain("jobs")
        assert jobs is not None and (jobs.live_workers, jobs.concurrency) == (1, 1)
        assert (jobs.queue.ready, jobs.queue.scheduled) == (0, 0)
        assert not any(line.startswith("domain jobs") for line in s.attention)
        code, out, err = await status_of(dsn, "--json")
        assert code == 0, err
        doc = json.loads(out)
        [p] = [p for p in doc["processes"] if p["pid"] == proc.pid]
        assert (p["state"], p["kind"], p["queues"], p["host"]) == ("live", "worker", ["jobs"], HOST)
        assert p["consumers"][0]["heartbeat_seconds"] == 0.2
        [d] = doc["domains"]
        assert (d["domain"], d["queue"]["in_flight"], d["live_workers"]) == ("jobs", 3, 1)

        proc.kill()  # SIGKILL: no stop, no last heartbeat
        proc.communicate()
        s = await until(bus, lambda s: state_of(s, proc.pid) == "gone", timeout=10)
        assert s.domain("jobs").live_workers == 0  # type: ignore[union-attr]
        code, out, err = await status_of(dsn)
    assert code == 0, err
    assert f"worker {HOST}:{proc.pid} (jobs) gone: last seen " in out
    # still invisible (their vt has not passed): pending, none ready yet
    assert "  ! domain jobs: 3 pending, NO live worker" in out.splitlines()
    [row] = [line for line in out.splitlines() if line.startswith("  gone ")]
    assert row.split()[:3] == ["gone", "worker", f"{HOST}:{proc.pid}"]


@pytest.mark.slow
async def test_a_gracefully_stopped_worker_shows_stopped_at_once(
    dsn: str, bus: CommandBus, conn: Conn
) -> None:
    await send_jobs(bus, conn, 2)
    with worker_process(dsn, sleep=0.01) as proc:
        await until(
            bus,
            lambda s: (
                state_of(s, proc.pid) == "live"
                and s.domain("jobs").commands.counts["COMPLETED"] == 2
            ),
        )
        proc.send_signal(signal.SIGTERM)
        _out, err = await asyncio.to_thread(proc.communicate, timeout=30)
        assert proc.returncode == 0, err
    s = await system_status(bus)  # no waiting: the stop marked it
    assert state_of(s, proc.pid) == "stopped"
    assert s.attention == ()
    code, out, err = await status_of(dsn)
    assert code == 0, err
    [row] = [line for line in out.splitlines() if f"{HOST}:{proc.pid}" in line]
    assert row.split()[:2] == ["stopped", "worker"] and "stopped " in row and " ago" in row
    assert out.splitlines()[-1] == "Nothing needs a look."


@pytest.mark.slow
async def test_heartbeats_outlive_terminated_sessions_without_stopping_the_worker(
    dsn: str, conn: Conn
) -> None:
    # this test's own sessions are named, so that only the worker's are terminated
    bus = await CommandBus(make_conninfo(dsn, application_name=OBSERVER), config=FAST).__aenter__()
    try:
        await _terminated_sessions(dsn, bus, conn)
    finally:
        await bus.close()


OBSERVER = "status-test-observer"


async def _terminated_sessions(dsn: str, bus: CommandBus, conn: Conn) -> None:
    await send_jobs(bus, conn, 20)
    with worker_process(dsn, "--concurrency", "4", "--vt", "2", sleep=0.05) as proc:
        await until(bus, lambda s: state_of(s, proc.pid) == "live")
        for _ in range(3):
            killed = await scalar(
                conn,
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                "   AND backend_type = 'client backend' AND application_name <> %s",
                OBSERVER,
            )
            assert killed >= 1
            cut = await scalar(conn, "SELECT now()")
            await until(
                bus,
                lambda s, cut=cut: (
                    state_of(s, proc.pid) == "live" and process_of(s, proc.pid).last_seen_at > cut
                ),
            )
            assert proc.poll() is None  # the worker carried on
        # and it still works: everything sent is done (a command whose attempts the
        # terminations took may have landed in the TSQ)
        await send_jobs(bus, conn, 10)
        s = await until(
            bus,
            lambda s: (
                sum(s.domain("jobs").commands.counts[k] for k in ("PENDING", "RETRY_SCHEDULED"))
                == 0
            ),
        )
        assert s.domain("jobs").commands.counts["COMPLETED"] >= 10
        assert proc.poll() is None and state_of(s, proc.pid) == "live"
        proc.send_signal(signal.SIGTERM)
        _out, err = await asyncio.to_thread(proc.communicate, timeout=30)
    assert proc.returncode == 0, err
    assert state_of(await system_status(bus), proc.pid) == "stopped"


# -- the whole screen ---------------------------------------------------------------------------

SHIP = Saga("ship_order", steps=[Step("ship", domain="shipping", command="Ship")])


async def test_the_screen_shows_workers_pending_domains_the_tsq_and_sagas(
    dsn: str, bus: CommandBus, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A served domain, an unserved one with pending commands, a TSQ entry, sagas by
    status and a live coordinator, all in one screen (and the same in JSON)."""
    monkeypatch.setenv("HEARTBEAT_SECONDS", "0.2")
    reg = HandlerRegistry()

    @reg.handler("payments", "Charge")
    async def charge(cmd: Command, ctx: HandlerContext) -> dict[str, str]:
        if cmd.data.get("card") == "broken":
            raise PermanentCommandError("the card reader is broken", code="READER_BROKEN")
        return {"charge": "ch-1"}

    sagas = SagaClient(bus)
    async with (
        Worker(dsn, reg, domain="payments", concurrency=4, config=FAST),
        Coordinator(dsn, SagaRegistry([SHIP]), config=FAST),
    ):
        for card in ("good", "good", "broken"):
            (await bus.send("payments", "Charge", {"card": card})).unwrap()
        for _ in range(2):
            await sagas.start_saga(SHIP, {})
        await until(
            bus,
            lambda s: (
                s.domain("payments").commands.counts["COMPLETED"] == 2
                and s.domain("payments").troubleshooting == 1
                and s.sagas.live_coordinators == 1
            ),
        )
        code, out, err = await status_of(dsn)
        code_j, out_j, err_j = await status_of(dsn, "--json")
    assert code == 0 and code_j == 0, err + err_j
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("DOMAIN"))
    assert lines[header].split() == [
        *("DOMAIN", "READY", "OLDEST", "IN", "FLIGHT", "SCHEDULED", "PENDING", "RETRYING"),
        *("TSQ", "COMPLETED", "FAILED", "CANCELLED", "WORKERS"),
    ]
    rows = {line.split()[0]: line.split() for line in lines[header + 1 : header + 3]}
    assert rows["payments"] == [
        *("payments", "0", "-", "0", "0"),  # nothing ready or in flight
        *("0", "0", "1", "2", "0", "0"),  # one in the TSQ, two completed
        *("1", "(x4)"),  # one live worker, 4 handlers at once
    ]
    assert rows["shipping"][1] == "2" and rows["shipping"][-1] == "NONE"
    assert rows["shipping"][5:7] == ["2", "0"]  # PENDING, RETRYING
    assert "SAGAS  2 RUNNING" in lines
    assert "  coordinators alive: 1" in lines
    [me] = [line for line in lines if f"{HOST}:{os.getpid()}" in line]
    assert me.split()[:2] == ["live", "worker+coordinator"]
    assert "commandbus_sagas" not in me and "(sagas), payments" in me
    attention = lines[lines.index("ATTENTION") + 1 :]
    assert attention[0].startswith("  ! domain payments: 1 in the troubleshooting queue")
    assert attention[1].startswith("  ! domain shipping: 2 pending, oldest ")
    assert attention[1].endswith(", NO live worker")
    assert len(attention) == 2
    doc = json.loads(out_j)
    assert [d["domain"] for d in doc["domains"]] == ["payments", "shipping"]
    assert doc["sagas"]["sagas"]["counts"]["RUNNING"] == 2
    assert doc["sagas"]["live_coordinators"] == 1
    # the same lines (two snapshots apart: the ages differ)
    assert [line.strip()[2:].split(", oldest")[0] for line in attention] == [
        line.split(", oldest")[0] for line in doc["attention"]
    ]
