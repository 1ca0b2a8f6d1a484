"""Driver errors from a real server go through the one translation, keyed on SQLSTATE.

A lost connection (pooled or the caller's) is a ``DatabaseUnavailableError`` raised
from the psycopg error; an error of a server that is there (a lock timeout, say)
comes through as the psycopg error it is, even though psycopg files it under
``OperationalError`` too; a failed migration is a ``MigrationError`` carrying the
SQLSTATE.
"""

from __future__ import annotations

from typing import Any
from uuid import uuid4

import psycopg
import pytest
from psycopg import errors as pg
from psycopg_pool import AsyncConnectionPool

from commandbus import CommandBus, DatabaseUnavailableError, MigrationError
from commandbus.migrations import Migration, migrate
from support import FAST

Conn = psycopg.AsyncConnection[Any]


async def test_a_terminated_pooled_connection_is_unavailable(dsn: str, conn: Conn) -> None:
    async with CommandBus(dsn, config=FAST, min_connections=1, max_connections=1) as bus:
        async with bus.pool.connection() as pooled:
            pid = pooled.info.backend_pid
        await conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
        with pytest.raises(DatabaseUnavailableError, match="SQLSTATE 57P01") as info:
            await bus.get_command("payments", uuid4())
        assert info.value.retryable
        assert isinstance(info.value.__cause__, pg.AdminShutdown)
        assert info.value.details == {"sqlstate": "57P01"}
        assert await bus.get_command("payments", uuid4()) is None  # the pool replaced it


async def test_a_lost_caller_connection_is_unavailable(dsn: str, bus: CommandBus) -> None:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as mine:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as other:
            await other.execute("SELECT pg_terminate_backend(%s)", (mine.info.backend_pid,))
        with pytest.raises(DatabaseUnavailableError) as info:
            await bus.send("payments", "Charge", {}, conn=mine)
        assert isinstance(info.value.__cause__, psycopg.OperationalError)


async def test_a_lock_timeout_is_not_an_unavailable_database(dsn: str, conn: Conn) -> None:
    pool: AsyncConnectionPool[Conn] = AsyncConnectionPool(
        dsn,
        min_size=1,
        max_size=1,
        kwargs={"autocommit": True, "options": "-c lock_timeout=100"},
        open=False,
    )
    await pool.open()
    try:
        async with CommandBus(dsn, config=FAST, pool=pool) as bus:
            async with conn.transaction():
                await conn.execute("LOCK TABLE commandbus.command IN ACCESS EXCLUSIVE MODE")
                with pytest.raises(pg.LockNotAvailable):  # the server is there
                    await bus.get_command("payments", uuid4())
            assert await bus.get_command("payments", uuid4()) is None
    finally:
        await pool.close()


async def test_a_failed_migration_carries_its_sqlstate(dsn: str) -> None:
    broken = Migration(version=9999, name="9999_broken", sql="SELECT 1/0")
    with pytest.raises(MigrationError, match="9999_broken") as info:
        await migrate(dsn, migrations=[broken])
    assert type(info.value) is MigrationError
    assert info.value.details == {"sqlstate": "22012"}
    assert "SQLSTATE 22012" in str(info.value) and "\n" not in str(info.value)
    assert isinstance(info.value.__cause__, pg.DivisionByZero)
