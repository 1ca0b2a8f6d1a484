"""Connection plumbing shared by the stores: use the caller's connection or borrow one."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any

import psycopg
from psycopg import AsyncConnection
from psycopg.pq import TransactionStatus
from psycopg_pool import AsyncConnectionPool

from commandbus.engine.arguments import conn_arg
from commandbus.errors import DatabaseUnavailableError

Conn = AsyncConnection[Any]


@asynccontextmanager
async def borrow(pool: AsyncConnectionPool[Conn], conn: Conn | None) -> AsyncIterator[Conn]:
    """Yield ``conn`` if given (the caller's transaction), else a pooled connection."""
    if conn is not None:
        conn_arg(conn)
        yield conn
        return
    try:
        async with pool.connection() as c:
            yield c
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailableError(f"database unavailable: {exc}") from exc


@asynccontextmanager
async def atomic(conn: Conn) -> AsyncIterator[None]:
    """Make the statements of the block one unit, never committing behind the caller.

    - in a transaction (the caller's, explicit or implicit): a savepoint, so a
      failure in the block undoes only the block's work and the caller's
      transaction goes on; the caller commits or rolls back the rest;
    - autocommit and idle: a transaction of its own, committed when the block ends;
    - not autocommit and idle: the block's first statement opens the caller's
      implicit transaction, which stays open for the caller to commit; if the block
      fails that transaction (holding only the block's work) is rolled back.
    """
    if conn.autocommit or conn.info.transaction_status is not TransactionStatus.IDLE:
        async with conn.transaction():
            yield
        return
    try:
        yield
    except BaseException:
        with suppress(psycopg.Error):  # a broken connection has nothing left to undo
            await conn.rollback()
        raise
