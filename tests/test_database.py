"""Database resolution: explicit DSNs, unreachable servers, and the embedded PostgreSQL."""

from __future__ import annotations

import fcntl
import os
import shutil
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from commandbus import (
    Command,
    CommandBus,
    Coordinator,
    HandlerContext,
    HandlerRegistry,
    SagaRegistry,
    SchemaNotReadyError,
    Worker,
    migrate,
)
from commandbus.config import Config
from commandbus.engine.db import pgdata
from commandbus.engine.db.connect import check_connection, connect, describe_url
from commandbus.engine.db.embedded import (
    EmbeddedServer,
    embedded_status,
    open_database,
    resolve_database_url,
    start_embedded,
    stop_embedded,
)
from commandbus.errors import (
    ConfigError,
    DatabaseUnavailableError,
    EmbeddedDatabaseError,
    ValidationError,
)
from support import run_cli, with_dbname

UNREACHABLE = "postgresql://carol:s3cret-pw@127.0.0.1:1/ledger"


def _registry() -> HandlerRegistry:
    registry = HandlerRegistry()

    @registry.handler("payments", "Charge")
    async def charge(cmd: Command, ctx: HandlerContext) -> None:
        return None

    return registry


# -- explicit DSN -------------------------------------------------------------------------


def test_an_explicit_url_wins_and_starts_nothing(tmp_path: Path) -> None:
    config = Config(database_url="postgresql://u@db.example/x", data_dir=tmp_path / "pgdata")
    assert CommandBus(config=config).url == "postgresql://u@db.example/x"
    with open_database(config) as url:
        assert url == "postgresql://u@db.example/x"
    assert resolve_database_url(None, config) == "postgresql://u@db.example/x"
    assert resolve_database_url("postgresql://v@other/y", config) == "postgresql://v@other/y"
    Worker(None, _registry(), domain="payments", config=config)
    Coordinator(None, SagaRegistry([]), config=config)
    assert not (tmp_path / "pgdata").exists()


async def test_migrate_without_a_url_uses_the_configured_one() -> None:
    with pytest.raises(DatabaseUnavailableError, match=r"127\.0\.0\.1:1/ledger"):
        await migrate(config=Config(database_url=UNREACHABLE))


@pytest.mark.parametrize("url", ["", "  ", 5])
def test_an_empty_url_is_refused_everywhere(url: Any) -> None:
    with pytest.raises(ValidationError, match="url must be a connection string or None"):
        Worker(url, HandlerRegistry(), domain="payments")
    with pytest.raises(ValidationError, match="url must be a connection string or None"):
        Coordinator(url, SagaRegistry([]))
    with pytest.raises(ValidationError, match="url must be a connection string or None"):
        CommandBus(url)


async def test_migrate_refuses_an_empty_url() -> None:
    with pytest.raises(ValidationError, match="url must be a connection string or None"):
        await migrate("")


async def test_check_connection_accepts_a_live_server(server_url: str) -> None:
    await check_connection(server_url)


async def test_unreachable_url_raises_database_unavailable_without_the_password() -> None:
    with pytest.raises(DatabaseUnavailableError) as info:
        await check_connection(UNREACHABLE)
    message = str(info.value)
    assert "127.0.0.1:1/ledger" in message
    assert "carol" in message
    assert "s3cret-pw" not in message
    assert "\n" not in message
    assert info.value.retryable
    assert isinstance(info.value.__cause__, psycopg.OperationalError)


async def test_unknown_database_is_unavailable(server_url: str) -> None:
    with pytest.raises(DatabaseUnavailableError, match="cbtest_no_such_db"):
        await connect(with_dbname(server_url, "cbtest_no_such_db"))


async def test_malformed_url_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="DATABASE_URL"):
        await connect("postgresql://h/db?nonsense_option=1")


def test_describe_url_never_shows_the_password() -> None:
    assert describe_url(UNREACHABLE) == "carol@127.0.0.1:1/ledger"
    assert describe_url("host=/run/pg dbname=x password=pw") == "/run/pg:5432/x"
    assert describe_url("not a dsn") == "<invalid connection string>"


# -- unusable data directories --------------------------------------------------------------


def _assert_one_line_naming(exc: EmbeddedDatabaseError, path: Path) -> None:
    message = str(exc)
    assert str(path) in message
    assert "COMMANDBUS_DATA_DIR" in message
    assert "\n" not in message


def test_data_dir_that_is_a_file(tmp_path: Path) -> None:
    target = tmp_path / "pgdata"
    target.write_text("not a directory")
    with pytest.raises(EmbeddedDatabaseError, match="is not a directory") as info:
        EmbeddedServer(target).start()
    _assert_one_line_naming(info.value, target)
    with pytest.raises(EmbeddedDatabaseError, match="is not a directory"):
        start_embedded(target)


def test_data_dir_under_a_file(tmp_path: Path) -> None:
    (tmp_path / "blocker").write_text("")
    target = tmp_path / "blocker" / "sub" / "pgdata"
    with pytest.raises(EmbeddedDatabaseError, match="cannot be created") as info:
        EmbeddedServer(target).start()
    _assert_one_line_naming(info.value, target)


def test_non_empty_directory_that_is_not_a_cluster(tmp_path: Path) -> None:
    target = tmp_path / "pgdata"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    with pytest.raises(EmbeddedDatabaseError, match="not a PostgreSQL data directory") as info:
        EmbeddedServer(target).start()
    _assert_one_line_naming(info.value, target)
    assert (target / "notes.txt").read_text() == "mine"


def test_cluster_of_another_major_version(tmp_path: Path) -> None:
    target = tmp_path / "pgdata"
    target.mkdir()
    (target / "PG_VERSION").write_text("9\n")
    with pytest.raises(EmbeddedDatabaseError, match="created by PostgreSQL 9") as info:
        EmbeddedServer(target).start()
    _assert_one_line_naming(info.value, target)


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_data_dir_in_a_read_only_directory(tmp_path: Path) -> None:
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o500)
    try:
        with pytest.raises(EmbeddedDatabaseError, match="not writable"):
            EmbeddedServer(parent / "pgdata").start()
    finally:
        parent.chmod(0o700)


# -- the embedded server --------------------------------------------------------------------


async def test_embedded_server_starts_and_stops_when_its_starter_leaves(
    embedded_dir: Path,
) -> None:
    assert not embedded_status(embedded_dir).initialized
    with EmbeddedServer(embedded_dir) as server:
        assert server.url is not None
        await check_connection(server.url)
        status = embedded_status(embedded_dir)
        assert status.running and status.initialized and not status.keep_running
        assert status.url == server.url
    status = embedded_status(embedded_dir)
    assert status.initialized and not status.running


async def test_embedded_server_keeps_its_data_between_starts(embedded_dir: Path) -> None:
    with EmbeddedServer(embedded_dir) as server:
        assert server.url is not None
        async with await connect(server.url) as conn:
            await conn.execute("CREATE TABLE kept (v int)")
            await conn.execute("INSERT INTO kept VALUES (42)")
    assert not embedded_status(embedded_dir).running
    with EmbeddedServer(embedded_dir) as server:
        assert server.url is not None
        async with await connect(server.url) as conn:
            cur = await conn.execute("SELECT v FROM kept")
            assert await cur.fetchall() == [(42,)]


def test_last_user_of_a_shared_server_stops_it(embedded_dir: Path) -> None:
    first, second = EmbeddedServer(embedded_dir), EmbeddedServer(embedded_dir)
    url = first.start()
    assert second.start() == url
    pid = embedded_status(embedded_dir).pid
    first.close()  # the starter leaves while another user remains
    status = embedded_status(embedded_dir)
    assert status.running and status.pid == pid
    second.close()
    assert not embedded_status(embedded_dir).running
    second.close()  # idempotent


def test_db_start_keeps_the_server_for_everyone(embedded_dir: Path) -> None:
    url = start_embedded(embedded_dir)
    assert embedded_status(embedded_dir).keep_running
    with EmbeddedServer(embedded_dir) as server:
        assert server.url == url
    assert embedded_status(embedded_dir).running  # joined and left: still up
    assert start_embedded(embedded_dir) == url  # starting again reuses it
    assert stop_embedded(embedded_dir) is True
    status = embedded_status(embedded_dir)
    assert not status.running and not status.keep_running
    assert stop_embedded(embedded_dir) is False


async def test_the_library_joins_the_embedded_server_at_open_for_the_process(
    embedded_dir: Path,
) -> None:
    config = Config(data_dir=embedded_dir)
    bus = CommandBus(config=config)
    with pytest.raises(RuntimeError, match="open"):
        _ = bus.url
    assert not embedded_status(embedded_dir).initialized  # reading url started nothing
    with pytest.raises(SchemaNotReadyError) as info:
        await bus.open()  # started it and found it unmigrated
    message = str(info.value)
    assert f"of the embedded PostgreSQL in {embedded_dir}" in message
    assert f"run `commandbus migrate` with COMMANDBUS_DATA_DIR={embedded_dir}" in message
    assert "\n" not in message
    status = embedded_status(embedded_dir)
    assert status.running and not status.keep_running  # this process holds it until exit
    assert len(await migrate(config=config)) > 0  # the same server, joined once
    async with bus:
        assert bus.url == embedded_status(embedded_dir).url
        assert (await bus.send("payments", "Charge", {})).ok
    assert embedded_status(embedded_dir).pid == status.pid  # never restarted
    with pytest.raises(RuntimeError, match="open"):
        _ = bus.url
    # (the fixture stops it; tests/test_data_dir.py sees a process stop it when it exits)


def _blocked_on_lock(lock_path: Path, pids: set[int]) -> set[int]:
    """The processes among ``pids`` waiting for an flock on ``lock_path`` (Linux /proc/locks)."""
    inode = lock_path.stat().st_ino
    waiting = set()
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        # "1: -> FLOCK  ADVISORY  WRITE 8018 fe:00:2146386 0 EOF": a blocked request
        if len(fields) >= 6 and fields[1] == "->" and fields[2] == "FLOCK":
            pid, device_inode = int(fields[5]), fields[6]
            if pid in pids and int(device_inode.rsplit(":", 1)[1]) == inode:
                waiting.add(pid)
    return waiting


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/locks").exists(), reason="needs Linux /proc/locks")
def test_processes_arriving_during_initdb_wait_for_it_and_share_one_server(
    embedded_dir: Path,
) -> None:
    """Starters that arrive while another one runs initdb wait on the start lock.

    The test is that first starter: it holds the start lock with the data directory
    half written (initdb creates directories before PG_VERSION), starts two
    ``commandbus db start`` processes, and finishes initdb (and starts the server)
    only once both are provably blocked on the lock. None may judge the directory
    before it holds the lock.
    """
    env: dict[str, str | None] = {"COMMANDBUS_DATA_DIR": str(embedded_dir), "DATABASE_URL": None}
    embedded_dir.mkdir(parents=True)
    (embedded_dir / "global").mkdir()  # initdb at work: no PG_VERSION yet
    lock_path = embedded_dir.parent / f".{embedded_dir.name}.lock"
    with lock_path.open("ab") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        procs = [run_cli("db", "start", env=env) for _ in range(2)]
        pids = {proc.pid for proc in procs}
        deadline = time.monotonic() + 60
        while _blocked_on_lock(lock_path, pids) != pids:
            if any(proc.poll() is not None for proc in procs) or time.monotonic() > deadline:
                break  # one judged the directory without waiting: the asserts below say how
            time.sleep(0.01)
        # initdb completes and the server starts, all under the lock the others wait for
        shutil.rmtree(embedded_dir)
        url = pgdata.launch(embedded_dir)
    results = [proc.communicate(timeout=60) for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], results
    assert {out.strip() for out, _ in results} == {url}
    status = embedded_status(embedded_dir)
    assert status.url == url and status.running and status.keep_running


def test_a_data_directory_with_white_space_is_refused_clearly(tmp_path: Path) -> None:
    data_dir = tmp_path / "with space" / "pgdata"
    with pytest.raises(EmbeddedDatabaseError, match="white space"):
        start_embedded(data_dir)
    assert not (data_dir / "PG_VERSION").exists()


def test_a_config_built_in_code_keeps_the_environments_database(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Tuning in code (Config(max_attempts=5)) must not drop DATABASE_URL for a silent
    embedded server; a config naming a URL or a data directory is taken as it is."""
    monkeypatch.setenv("DATABASE_URL", UNREACHABLE)
    tuned = Config(max_attempts=5)
    assert CommandBus(config=tuned).url == UNREACHABLE
    assert resolve_database_url(None, tuned) == UNREACHABLE
    with open_database(tuned) as url:
        assert url == UNREACHABLE
    Worker(None, _registry(), domain="payments", config=tuned)
    # COMMANDBUS_EMBEDDED=off is about the embedded server: the URL still serves
    monkeypatch.setenv("COMMANDBUS_EMBEDDED", "off")
    assert resolve_database_url(None, tuned) == UNREACHABLE
    # a config that names its own target keeps it
    named = Config(database_url="postgresql://u@db.example/x")
    assert resolve_database_url(None, named) == "postgresql://u@db.example/x"
    with pytest.raises(ConfigError, match="COMMANDBUS_EMBEDDED=off forbids"):
        resolve_database_url(None, Config(data_dir=tmp_path / "pgdata"))
    assert not (tmp_path / "pgdata").exists()


async def test_migrate_with_a_tuned_config_uses_the_environments_url(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DATABASE_URL", UNREACHABLE)
    with pytest.raises(DatabaseUnavailableError, match=r"127\.0\.0\.1:1/ledger"):
        await migrate(config=Config(max_attempts=5))
