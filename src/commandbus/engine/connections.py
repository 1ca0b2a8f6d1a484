"""Connection plumbing shared by the stores: use the caller's connection or borrow one."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import psycopg
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from commandbus.errors import DatabaseUnavailableError

Conn = AsyncConnection[Any]


@asynccontextmanager
async def borrow(pool: AsyncConnectionPool[Conn], conn: Conn | None) -> AsyncIterator[Conn]:
    """Yield ``conn`` if given (the caller's transaction), else a pooled connection."""
    if conn is not None:
        yield conn
        return
    try:
        async with pool.connection() as c:
            yield c
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailableError(f"database unavailable: {exc}") from exc
