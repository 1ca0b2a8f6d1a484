"""Fixtures: a real PostgreSQL, a migrated template database, a fresh database per test.

The suite uses ``DATABASE_URL`` when it is set (its database is only the
maintenance database: every test gets its own), else an embedded PostgreSQL in a
temporary directory deleted at the end of the session. Every database created
here is dropped again.
"""

from __future__ import annotations

import itertools
import os
import secrets
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from commandbus import CommandBus
from commandbus.engine.db.embedded import EmbeddedServer, stop_embedded
from commandbus.migrations import migrate
from support import with_dbname

_RUN_ID = f"cbtest_{os.getpid()}_{secrets.token_hex(3)}"
_counter = itertools.count(1)


async def _admin(server_url: str, statement: sql.Composable) -> None:
    async with await psycopg.AsyncConnection.connect(server_url, autocommit=True) as conn:
        await conn.execute(statement)


async def create_database(server_url: str, template: str | None = None) -> str:
    """Create a uniquely named database (from ``template``); return its name."""
    name = f"{_RUN_ID}_{next(_counter)}"
    statement = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
    if template is not None:
        statement = sql.SQL("{} TEMPLATE {}").format(statement, sql.Identifier(template))
    await _admin(server_url, statement)
    return name


async def drop_database(server_url: str, name: str) -> None:
    async with await psycopg.AsyncConnection.connect(server_url, autocommit=True) as conn:
        force = sql.SQL(" WITH (FORCE)" if conn.info.server_version >= 130000 else "")
        await conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {}{}").format(sql.Identifier(name), force)
        )


@pytest.fixture(scope="session")
def server_url() -> Iterator[str]:
    """URL of the maintenance database of the server the suite runs against."""
    url = os.environ.get("DATABASE_URL", "").strip()
    if url:
        yield url
        return
    tmp = Path(tempfile.mkdtemp(prefix="commandbus-tests-"))
    try:
        with EmbeddedServer(tmp / "pgdata") as server:
            assert server.url is not None
            yield server.url
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="session")
async def template_url(server_url: str) -> AsyncIterator[str]:
    """A database migrated once per session; the template of every ``dsn``."""
    name = f"{_RUN_ID}_tpl"
    await _admin(server_url, sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        url = with_dbname(server_url, name)
        await migrate(url)
        yield url
    finally:
        await drop_database(server_url, name)


@pytest.fixture
async def dsn(server_url: str, template_url: str) -> AsyncIterator[str]:
    """URL of a fresh, migrated database, dropped after the test."""
    name = await create_database(server_url, template=conninfo_to_dict(template_url)["dbname"])
    try:
        yield with_dbname(server_url, name)
    finally:
        await drop_database(server_url, name)


@pytest.fixture
async def empty_dsn(server_url: str) -> AsyncIterator[str]:
    """URL of a fresh database without PGMQ or migrations, dropped after the test."""
    name = await create_database(server_url, template="template0")
    try:
        yield with_dbname(server_url, name)
    finally:
        await drop_database(server_url, name)


@pytest.fixture
async def conn(dsn: str) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    """An autocommit connection to ``dsn``."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as connection:
        yield connection


@pytest.fixture
def embedded_dir() -> Iterator[Path]:
    """A data directory for an embedded server of the test's own; stopped and removed after."""
    tmp = Path(tempfile.mkdtemp(prefix="commandbus-embedded-"))
    data_dir = tmp / "pgdata"
    try:
        yield data_dir
    finally:
        stop_embedded(data_dir)
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
async def bus(dsn: str) -> AsyncIterator[CommandBus]:
    """An open CommandBus on ``dsn`` with short backoff and poll settings."""
    from support import FAST

    async with CommandBus(dsn, config=FAST) as b:
        yield b


@pytest.fixture(params=[False, True], ids=["coordinator", "inline"])
def saga_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Runs a saga test twice: replies moved by the coordinator, then by the workers
    in their outcomes' transactions (``Worker(..., sagas=registry)``)."""
    import saga_apps

    monkeypatch.setattr(saga_apps, "INLINE", request.param)
    return bool(request.param)
