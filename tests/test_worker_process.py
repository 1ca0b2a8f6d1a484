"""The CLI worker as a real subprocess: SIGKILL, SIGTERM and lost connections."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from commandbus import CommandBus, CommandRequest, Config
from support import fetch, scalar, wait_for

Conn = psycopg.AsyncConnection[Any]
TESTS = Path(__file__).parent

pytestmark = pytest.mark.slow


def start_worker(dsn: str, *args: str, sleep: float = 0.1) -> subprocess.Popen[str]:
    env = dict(os.environ)
    env["DATABASE_URL"] = dsn
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")])
    env["TEST_HANDLER_SLEEP"] = str(sleep)
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "commandbus.cli",
            "worker",
            "--app",
            "worker_apps:registry",
            "--domain",
            "jobs",
            *args,
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


async def completed(conn: Conn) -> int:
    return int(
        await scalar(conn, "SELECT count(*) FROM commandbus.command WHERE status = 'COMPLETED'")
    )


async def send_jobs(bus: CommandBus, n: int) -> None:
    result = await bus.send_batch(
        [CommandRequest(domain="jobs", command_type="Work", data={"i": i}) for i in range(n)]
    )
    assert result.ok


async def assert_each_completed_once(conn: Conn, n: int) -> None:
    per_command = await fetch(
        conn,
        "SELECT stream_id, count(*) FILTER (WHERE event_type = 'CommandCompleted')"
        "  FROM commandbus.event WHERE stream_id LIKE 'command:jobs:%%' GROUP BY stream_id",
    )
    assert len(per_command) == n
    assert {c for _s, c in per_command} == {1}
    # the handlers' own writes committed exactly once per command
    effects = await fetch(conn, "SELECT command_id, count(*) FROM public.effects GROUP BY 1")
    assert len(effects) == n and {c for _i, c in effects} == {1}


def stop(proc: subprocess.Popen[str], sig: int = signal.SIGTERM) -> tuple[int, str]:
    proc.send_signal(sig)
    try:
        _out, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        _out, err = proc.communicate()
    return proc.returncode, err


async def test_sigkill_mid_run_loses_nothing_and_completes_once(
    dsn: str, bus: CommandBus, conn: Conn
) -> None:
    await conn.execute("CREATE TABLE public.effects (command_id uuid, attempt int)")
    n = 40
    await send_jobs(bus, n)
    first = start_worker(dsn, "--vt", "2", "--concurrency", "4")
    try:
        await wait_for(lambda: _at_least(conn, 6), timeout=60)
    finally:
        first.kill()  # SIGKILL: no cleanup at all
        first.communicate()  # reap it and close its pipes
    done_at_kill = await completed(conn)
    assert done_at_kill < n
    second = start_worker(dsn, "--vt", "2", "--concurrency", "8")
    try:
        await wait_for(lambda: _at_least(conn, n), timeout=90)
    finally:
        code, err = stop(second)
    assert code == 0, err
    assert "processed" in err  # the one-line summary
    await assert_each_completed_once(conn, n)
    lost = await scalar(
        conn, "SELECT count(*) FROM commandbus.event WHERE event_type = 'CommandAttemptLost'"
    )
    assert lost >= 1  # the attempts the killed worker had in flight show in the streams
    assert (await bus.verify_projection()).ok


async def _at_least(conn: Conn, n: int) -> bool:
    return await completed(conn) >= n


async def test_sigterm_finishes_in_flight_work_and_exits_zero(
    dsn: str, bus: CommandBus, conn: Conn
) -> None:
    await conn.execute("CREATE TABLE public.effects (command_id uuid, attempt int)")
    await send_jobs(bus, 10)
    proc = start_worker(dsn, "--concurrency", "2", sleep=0.5)
    await wait_for(
        lambda: _true(
            scalar(conn, "SELECT count(*) FROM pgmq.q_jobs WHERE read_ct > 0"), at_least=1
        ),
        timeout=30,
    )
    code, err = stop(proc, signal.SIGTERM)
    assert code == 0, err
    # nothing is left invisible: what was not done is visible again right away
    invisible = await scalar(conn, "SELECT count(*) FROM pgmq.q_jobs WHERE vt > clock_timestamp()")
    assert invisible == 0
    done = await completed(conn)
    assert done >= 1
    assert done + await scalar(conn, "SELECT count(*) FROM pgmq.q_jobs") == 10


async def _true(value: Any, *, at_least: int) -> bool:
    return int(await value) >= at_least


async def test_terminated_backends_do_not_stop_the_run(
    dsn: str, bus: CommandBus, conn: Conn
) -> None:
    await conn.execute("CREATE TABLE public.effects (command_id uuid, attempt int)")
    n = 120
    await send_jobs(bus, n)
    proc = start_worker(dsn, "--concurrency", "8", "--vt", "5", sleep=0.05)
    try:
        for threshold in (10, 50):
            await wait_for(lambda t=threshold: _at_least(conn, t), timeout=60)
            killed = await scalar(
                conn,
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                "   AND backend_type = 'client backend'",
            )
            assert killed >= 2
        await wait_for(lambda: _at_least(conn, n), timeout=90)
        assert proc.poll() is None  # still running
    finally:
        code, err = stop(proc)
    assert code == 0, err
    await assert_each_completed_once(conn, n)


def test_worker_cli_rejects_bad_apps(dsn: str) -> None:
    for app, message in (
        ("nonsense", "--app must look like"),
        ("no_such_module:registry", "cannot import"),
        ("worker_apps:not_a_registry", "is not a HandlerRegistry"),
    ):
        env = dict(os.environ, DATABASE_URL=dsn, PYTHONPATH=str(TESTS))
        started = time.monotonic()
        proc = subprocess.run(
            [sys.executable, "-m", "commandbus.cli", "worker", "--app", app, "--domain", "jobs"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode != 0
        assert message in proc.stderr
        assert "Traceback" not in proc.stderr
        assert time.monotonic() - started < 30


def test_worker_cli_refuses_a_domain_without_handlers(dsn: str) -> None:
    env = dict(os.environ, DATABASE_URL=dsn, PYTHONPATH=str(TESTS))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "commandbus.cli",
            "worker",
            "--app",
            "worker_apps:registry",
            "--domain",
            "nobody",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert "no handlers are registered for domain 'nobody'" in proc.stderr


async def test_a_second_sigterm_forces_the_stop(dsn: str, bus: CommandBus, conn: Conn) -> None:
    await conn.execute("CREATE TABLE public.effects (command_id uuid, attempt int)")
    await send_jobs(bus, 2)
    proc = start_worker(dsn, "--grace", "60", sleep=60)
    await wait_for(
        lambda: _true(
            scalar(conn, "SELECT count(*) FROM pgmq.q_jobs WHERE read_ct > 0"), at_least=2
        ),
        timeout=30,
    )
    await asyncio.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    await asyncio.sleep(0.5)
    assert proc.poll() is None  # waiting for its handlers, as asked
    started = time.monotonic()
    code, err = stop(proc, signal.SIGTERM)
    assert code == 0, err
    assert time.monotonic() - started < 15
    assert "forcing" in err
    invisible = await scalar(conn, "SELECT count(*) FROM pgmq.q_jobs WHERE vt > clock_timestamp()")
    assert invisible == 0


def run_worker_cli(dsn: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``commandbus worker`` for the jobs domain, to completion (for refusals)."""
    env = dict(os.environ, DATABASE_URL=dsn, PYTHONPATH=str(TESTS))
    return subprocess.run(
        [
            *(sys.executable, "-m", "commandbus.cli", "worker"),
            *("--app", "worker_apps:registry", "--domain", "jobs", *args),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def assert_one_error_line(proc: subprocess.CompletedProcess[str], *expected: str) -> None:
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: "), proc.stderr
    for text in expected:
        assert text in proc.stderr
    assert proc.stdout == ""


def test_the_worker_refuses_a_database_that_was_never_migrated(empty_dsn: str) -> None:
    proc = run_worker_cli(empty_dsn)
    assert_one_error_line(proc, "not installed", "run `commandbus migrate`")


async def test_the_worker_refuses_a_database_with_a_pending_migration(dsn: str, conn: Conn) -> None:
    last = await scalar(conn, "SELECT max(version) FROM commandbus.schema_migrations")
    name = await scalar(
        conn, "DELETE FROM commandbus.schema_migrations WHERE version = %s RETURNING name", last
    )
    proc = await asyncio.to_thread(run_worker_cli, dsn)
    assert_one_error_line(proc, "pending", name, "run `commandbus migrate`")


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("--vt", "nan"), "--vt"),
        (("--vt", "inf"), "--vt"),
        (("--vt", "1e14"), "--vt"),
        (("--vt", "0.5"), "--vt"),
        (("--vt", "soon"), "--vt"),
        (("--grace", "nan"), "--grace"),
        (("--grace", "-1"), "--grace"),
        (("--concurrency", "0"), "--concurrency"),
        (("--concurrency", "1" + "0" * 20), "--concurrency"),
        (("--batch-size", "1" + "0" * 20), "--batch-size"),
        (("--batch-size", "1.5"), "--batch-size"),
    ],
)
def test_bad_worker_options_are_one_line_errors(
    dsn: str, args: tuple[str, ...], expected: str
) -> None:
    proc = run_worker_cli(dsn, *args)
    assert_one_error_line(proc, expected, args[1][:10])


def test_vt_and_vt_seconds_take_the_same_range(dsn: str) -> None:
    """One range, 1 s to 7 days, for the option and the variable (and Worker)."""
    for value in ("0.5", "604801"):
        option = run_worker_cli(dsn, "--vt", value)
        assert_one_error_line(
            option, f"--vt must be a number from 1 to 604800 seconds, got '{value}'"
        )
        env = dict(os.environ, DATABASE_URL=dsn, PYTHONPATH=str(TESTS), VT_SECONDS=value)
        variable = subprocess.run(
            [
                *(sys.executable, "-m", "commandbus.cli", "worker"),
                *("--app", "worker_apps:registry", "--domain", "jobs"),
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert_one_error_line(variable, "VT_SECONDS must be a number of seconds from 1 to 604800")
    assert Config.from_env({"VT_SECONDS": "1"}).visibility_timeout == timedelta(seconds=1)
    assert Config.from_env({"VT_SECONDS": "604800"}).visibility_timeout == timedelta(days=7)


def test_app_refusals_say_what_is_missing_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "needs_a_dependency.py").write_text("import surely_not_installed_dependency\n")
    (tmp_path / "raises_on_import.py").write_text("raise RuntimeError('no config file')\n")
    nowhere = "postgresql://nobody@127.0.0.1:1/none"  # refused before any database is used
    env = dict(
        os.environ, DATABASE_URL=nowhere, PYTHONPATH=os.pathsep.join([str(TESTS), str(tmp_path)])
    )
    cases = {
        "worker_apps:registy": "error: module 'worker_apps' has no attribute 'registy' "
        "(--app 'worker_apps:registy'); did you mean 'registry'?",
        "nosuchmodule:x": "error: cannot import 'nosuchmodule' for --app: no module named "
        "'nosuchmodule' (looked in the current directory and on the Python path)",
        "nosuchpackage.handlers:registry": "error: cannot import 'nosuchpackage.handlers' for "
        "--app: no module named 'nosuchpackage' (looked in the current directory and on the "
        "Python path)",
        "needs_a_dependency:registry": "error: importing 'needs_a_dependency' for --app failed: "
        "ModuleNotFoundError: No module named 'surely_not_installed_dependency'",
        "raises_on_import:registry": "error: importing 'raises_on_import' for --app failed: "
        "RuntimeError: no config file",
        "worker_apps:registry.nothing": "error: 'worker_apps.registry' has no attribute "
        "'nothing' (--app 'worker_apps:registry.nothing')",
        "worker_apps:not_a_registry": "error: 'worker_apps:not_a_registry' is not a "
        "HandlerRegistry (got object)",
    }
    for app, line in cases.items():
        proc = subprocess.run(
            [sys.executable, "-m", "commandbus.cli", "worker", "--app", app, "--domain", "jobs"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 1, proc.stderr
        assert proc.stderr == line + "\n", proc.stderr
