"""The command line: help, version, one-line errors, migrate, demo and db."""

from __future__ import annotations

import logging
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result
from psycopg.conninfo import conninfo_to_dict

from commandbus.cli.main import cli
from commandbus.engine.db.embedded import embedded_status
from commandbus.migrations import available_migrations
from support import run_cli

NAMES = [m.name for m in available_migrations()]


def invoke(*args: str, env: dict[str, str | None] | None = None) -> Result:
    return CliRunner().invoke(cli, list(args), env=env, prog_name="commandbus")


def assert_one_error_line(result: Result, *expected: str) -> None:
    assert result.exit_code == 1, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    for text in expected:
        assert text in lines[0]
    assert "Traceback" not in result.output


def _command_paths(command: click.Command, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = [path]
    if isinstance(command, click.Group):
        for name, sub in sorted(command.commands.items()):
            paths += _command_paths(sub, (*path, name))
    return paths


@pytest.mark.parametrize("args", _command_paths(cli), ids=lambda p: " ".join(p) or "commandbus")
def test_help_everywhere(args: tuple[str, ...]) -> None:
    result = invoke(*args, "--help", env={"MAX_ATTEMPTS": "broken"})  # help needs no config
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("Usage: commandbus")


def test_commandbus_alone_prints_its_help() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "commandbus.cli"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("Usage: commandbus") and "saga" in proc.stdout
    assert proc.stderr == ""


def test_version() -> None:
    result = invoke("version")
    assert result.exit_code == 0
    assert result.stdout == f"commandbus {version('commandbus')}\n"


def test_unknown_command_fails() -> None:
    assert invoke("no-such-command").exit_code == 2


def test_bad_config_is_one_line() -> None:
    result = invoke("migrate", env={"VT_SECONDS": "0", "DATABASE_URL": "postgresql://x@h/db"})
    assert_one_error_line(result, "VT_SECONDS", "0")


def test_unreachable_database_is_one_line() -> None:
    url = "postgresql://dave:hunter2@127.0.0.1:1/orders"
    result = invoke("migrate", env={"DATABASE_URL": url})
    assert_one_error_line(result, "cannot connect", "127.0.0.1:1/orders")
    assert "hunter2" not in result.stderr


def test_unreachable_database_from_a_real_process() -> None:
    proc = run_cli("demo", env={"DATABASE_URL": "postgresql://postgres@127.0.0.1:1/postgres"})
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert out == ""
    assert err.startswith("error: cannot connect") and err.count("\n") == 1, err


def test_unusable_data_dir_is_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "pgdata"
    blocker.write_text("")
    result = invoke("migrate", env={"DATABASE_URL": None, "COMMANDBUS_DATA_DIR": str(blocker)})
    assert_one_error_line(result, str(blocker), "COMMANDBUS_DATA_DIR")
    result = invoke("--data-dir", str(blocker), "db", "start", env={"DATABASE_URL": None})
    assert_one_error_line(result, str(blocker))


def test_migrate_then_up_to_date(empty_dsn: str) -> None:
    first = invoke("migrate", env={"DATABASE_URL": empty_dsn})
    assert first.exit_code == 0, first.output
    assert first.stdout.splitlines() == [f"applied {name}" for name in NAMES]
    second = invoke("--database-url", empty_dsn, "migrate", env={"DATABASE_URL": None})
    assert second.exit_code == 0, second.output
    assert second.stdout == "schema is up to date\n"


@pytest.mark.slow
def test_two_migrate_processes_at_once(empty_dsn: str) -> None:
    procs = [run_cli("migrate", env={"DATABASE_URL": empty_dsn}) for _ in range(2)]
    outputs = [proc.communicate(timeout=60) for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], outputs
    applied = [
        line.removeprefix("applied ")
        for out, _ in outputs
        for line in out.splitlines()
        if line.startswith("applied ")
    ]
    assert sorted(applied) == NAMES  # each migration applied exactly once
    assert sorted(out for out, _ in outputs)[-1] == "schema is up to date\n"
    check = invoke("migrate", env={"DATABASE_URL": empty_dsn})
    assert check.stdout == "schema is up to date\n"


def test_demo_migrates_the_database_it_is_given(empty_dsn: str) -> None:
    before = logging.getLogger("commandbus.worker").level
    # --database: the demo runs in the database it is named, not a commandbus_demo of its own
    name = conninfo_to_dict(empty_dsn)["dbname"]
    result = invoke("demo", "--database", str(name), env={"DATABASE_URL": empty_dsn})
    assert result.exit_code == 0, result.output
    # run in this process, it leaves the worker's log level as it found it
    assert logging.getLogger("commandbus.worker").level == before
    assert all(name in result.stdout for name in NAMES)
    assert invoke("migrate", env={"DATABASE_URL": empty_dsn}).stdout == "schema is up to date\n"


@pytest.mark.slow
def test_db_start_status_url_stop(embedded_dir: Path) -> None:
    env: dict[str, str | None] = {"COMMANDBUS_DATA_DIR": str(embedded_dir), "DATABASE_URL": None}

    def run(*args: str) -> tuple[int, str, str]:
        proc = run_cli(*args, env=env)
        out, err = proc.communicate(timeout=60)
        return proc.returncode, out, err

    code, out, _ = run("db", "status")
    assert code == 3 and "not initialised" in out
    code, url, err = run("db", "start")
    assert code == 0, err
    assert embedded_status(embedded_dir).running  # outlives the process that started it
    assert run("db", "url") == (0, url, "")
    code, out, _ = run("db", "status")
    assert code == 0 and f"url: {url}" in out and "until `commandbus db stop`" in out
    code, out, _ = run("migrate")  # joins the running server and leaves it running
    assert code == 0 and out.splitlines() == [f"applied {name}" for name in NAMES]
    assert embedded_status(embedded_dir).running
    code, out, _ = run("db", "stop")
    assert code == 0 and "stopped" in out
    assert not embedded_status(embedded_dir).running
    code, _, err = run("db", "url")
    assert code == 1 and err.startswith("error: ") and "not running" in err
    code, out, _ = run("db", "status")
    assert code == 3 and "state: stopped" in out


def test_demo_on_embedded_server_stops_what_it_started(embedded_dir: Path) -> None:
    result = invoke("demo", env={"COMMANDBUS_DATA_DIR": str(embedded_dir), "DATABASE_URL": None})
    assert result.exit_code == 0, result.output
    assert all(name in result.stdout for name in NAMES)  # a fresh cluster got migrated
    status = embedded_status(embedded_dir)
    assert status.initialized and not status.running


@pytest.mark.parametrize(
    "args", [("nosuch",), ("tsq", "list", "--limit", "abc"), ("show", "command"), ("worker",)]
)
def test_usage_errors_are_one_line_too(args: tuple[str, ...]) -> None:
    proc = run_cli(*args)
    _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 2
    assert err.count("\n") == 1 and err.startswith("error: "), err
    assert "--help" in err
