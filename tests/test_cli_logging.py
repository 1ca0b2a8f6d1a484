"""``--log-level`` and ``--log-format`` of the long-running commands, as real processes:
the application's own loggers print under them, with the command's ids inside a
handler and no ``None`` outside one; an unexpected error comes with its traceback;
the summary is printed once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any
from uuid import UUID

import psycopg
import pytest

from commandbus import CommandBus
from support import run_cli, scalar, wait_for

Conn = psycopg.AsyncConnection[Any]
TESTS = Path(__file__).parent

pytestmark = pytest.mark.slow


def env_for(dsn: str) -> dict[str, str | None]:
    return {
        "DATABASE_URL": dsn,
        "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
        "COMMANDBUS_OTEL": None,
    }


def stop(proc: subprocess.Popen[str]) -> tuple[int, str]:
    proc.send_signal(signal.SIGTERM)
    try:
        _out, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        _out, err = proc.communicate()
    return proc.returncode, err


async def final(conn: Conn, *ids: UUID) -> bool:
    n = await scalar(
        conn,
        "SELECT count(*) FROM commandbus.command WHERE command_id = ANY(%s)"
        " AND status IN ('COMPLETED', 'IN_TROUBLESHOOTING_QUEUE')",
        list(ids),
    )
    return int(n) == len(ids)


async def run_mail_worker(
    dsn: str, bus: CommandBus, conn: Conn, *options: str
) -> tuple[str, UUID, UUID, UUID]:
    """Serve 'mail' with ``options`` until a Send and a Broken command are final.

    Returns stderr, the Send's correlation and command ids, and the Broken's id.
    """
    proc = run_cli(
        "worker", "--app", "worker_apps:registry", "--domain", "mail", *options, env=env_for(dsn)
    )
    try:
        sent = (await bus.send("mail", "Send", {"to": "ada"})).unwrap()
        broken = (await bus.send("mail", "Broken", {}, max_attempts=3)).unwrap()
        await wait_for(lambda: final(conn, sent.command_id, broken.command_id), timeout=60)
    finally:
        code, err = stop(proc)
    assert code == 0, err
    return err, sent.correlation_id, sent.command_id, broken.command_id


async def test_text_logs_of_the_application_carry_the_ids_and_no_none(
    dsn: str, bus: CommandBus, conn: Conn
) -> None:
    err, correlation_id, command_id, broken_id = await run_mail_worker(dsn, bus, conn)
    ids = f"correlation_id={correlation_id} command_id={command_id}"
    lines = err.splitlines()
    [sending] = [line for line in lines if "sending mail to ada" in line]
    assert f" INFO myapp.handlers {ids} sending mail to ada" in sending
    # a task the handler started logs with the command's ids too
    [slow] = [line for line in lines if "is slow" in line]
    assert f" WARNING myapp.handlers {ids} delivery of mail to ada is slow" in slow
    assert not [line for line in lines if "mail debug detail" in line]  # below --log-level info
    assert "None" not in err
    # the mistake: at ERROR, with its traceback, sent to the TSQ at once (not retried)
    [failed] = [line for line in lines if " ERROR commandbus.worker " in line]
    assert f"command_id={broken_id}" in failed and "programming_error" in failed
    assert "Traceback (most recent call last):" in err and "in broken_mail" in err
    assert "AttributeError: 'dict' object has no attribute 'recipient'" in err
    attempts = await scalar(
        conn, "SELECT attempts FROM commandbus.command WHERE command_id = %s", broken_id
    )
    assert attempts == 1
    # the banner and the summary, once each; the summary last
    assert err.count("serving domain 'mail': Broken, Send (concurrency 10)") == 1
    assert err.count("processed in") == 1
    assert "worker mail: 2 processed" in lines[-1], lines[-1]


async def test_json_logs_at_debug_are_json_lines_of_every_logger(
    dsn: str, bus: CommandBus, conn: Conn
) -> None:
    err, correlation_id, command_id, broken_id = await run_mail_worker(
        dsn, bus, conn, "--log-level", "DEBUG", "--log-format", "json"
    )
    records = [json.loads(line) for line in err.splitlines()]  # every line is JSON
    mine = [r for r in records if r["logger"] == "myapp.handlers"]
    assert [(r["level"], r["message"]) for r in mine] == [
        ("INFO", "sending mail to ada"),
        ("DEBUG", "mail debug detail for ada"),
        ("WARNING", "delivery of mail to ada is slow"),
    ]
    for r in mine:
        assert (r["correlation_id"], r["command_id"]) == (str(correlation_id), str(command_id))
    [failed] = [r for r in records if r["level"] == "ERROR" and r["logger"] == "commandbus.worker"]
    assert failed["command_id"] == str(broken_id)
    assert "in broken_mail" in failed["exception"] and "AttributeError" in failed["exception"]
    outside = [r for r in records if r["logger"] == "commandbus.cli"]
    assert outside and all(r["command_id"] is None for r in outside)
    summaries = [r for r in records if "processed in" in r["message"]]
    assert len(summaries) == 1 and summaries[0] is records[-1]


async def test_warning_level_leaves_out_the_info_lines(
    dsn: str, bus: CommandBus, conn: Conn
) -> None:
    err, *_ = await run_mail_worker(dsn, bus, conn, "--log-level", "warning")
    assert "sending mail" not in err and "serving domain" not in err and "processed" not in err
    assert "delivery of mail to ada is slow" in err
    assert " ERROR commandbus.worker " in err


def test_a_bad_log_level_is_one_line(dsn: str) -> None:
    for command in (
        ("worker", "--app", "worker_apps:registry", "--domain", "mail"),
        ("coordinator", "--app", "commandbus.cli.demo_app:sagas"),
    ):
        proc = run_cli(*command, "--log-level", "loud", env=env_for(dsn))
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 2, err
        assert err.count("\n") == 1 and err.startswith("error: ") and "--log-level" in err, err
        assert "loud" in err and out == ""


async def test_the_coordinator_logs_json_at_the_level_asked(dsn: str) -> None:
    proc = run_cli(
        "coordinator",
        *("--app", "commandbus.cli.demo_app:sagas", "--log-level", "debug"),
        *("--log-format", "json"),
        env=env_for(dsn),
    )
    try:

        async def listening() -> bool:
            async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as c:
                n = await scalar(
                    c,
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                    " AND query LIKE 'LISTEN%%'",
                )
            return int(n) >= 1

        await wait_for(listening, timeout=60)
    finally:
        code, err = stop(proc)
    assert code == 0, err
    records = [json.loads(line) for line in err.splitlines()]
    assert any(r["message"].startswith("coordinating sagas order v1") for r in records), err
    assert sum("sagas completed" in r["message"] for r in records) == 1
    assert "sagas completed" in records[-1]["message"]


def json_worker(app: str, dsn: str, **env: str) -> subprocess.Popen[str]:
    """``commandbus worker --app APP --domain jobs --log-format json`` against ``dsn``."""
    return run_cli(
        "worker",
        "--app",
        app,
        "--domain",
        "jobs",
        "--log-format",
        "json",
        env={**env_for(dsn), **env},
    )


def test_a_worker_that_cannot_reach_its_database_says_so_and_fails_when_stopped() -> None:
    """Not silence for minutes: a warning while it retries, JSON like every other line,
    and a non-zero exit when it is stopped before it ever connected."""
    proc = json_worker("worker_apps:registry", "postgresql://nobody@127.0.0.1:1/none")
    assert proc.stderr is not None
    records: list[dict[str, Any]] = []
    while not any("unavailable" in r["message"] for r in records):
        line = proc.stderr.readline()
        assert line, (proc.poll(), records)
        records.append(json.loads(line))
    code, err = stop(proc)
    records += [json.loads(line) for line in err.splitlines()]  # all JSON
    [warning] = [r for r in records if "unavailable" in r["message"]]
    assert warning["level"] == "WARNING" and warning["logger"] == "commandbus.db"
    assert "trying again for up to" in warning["message"]
    assert code == 1
    assert (
        records[-1]["message"]
        == "error: stopped before it was ready (connected to the database and listening)"
    )


def test_with_json_logs_start_up_errors_and_warnings_are_json_too(dsn: str, empty_dsn: str) -> None:
    """Every stderr line of a worker run with --log-format json is a JSON record:
    a deprecation warning (once) and the start-up error that ends it."""
    proc = json_worker("worker_apps:nothere", dsn, MAX_RETRIES="3")
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, err
    records = [json.loads(line) for line in err.splitlines()]  # every line is JSON
    assert records[-1]["level"] == "ERROR" and records[-1]["logger"] == "commandbus.cli"
    assert records[-1]["message"].startswith("error: module 'worker_apps' has no attribute")
    proc = json_worker("worker_apps:registry", empty_dsn, MAX_RETRIES="3")
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, err
    records = [json.loads(line) for line in err.splitlines()]
    deprecated = [r for r in records if "MAX_RETRIES is deprecated" in r["message"]]
    assert len(deprecated) == 1, records
    assert records[-1]["message"].startswith("error: the commandbus schema is not installed")
