"""Connections: use the caller's or borrow one, make a block atomic, come back when lost.

The stores take a caller's connection or borrow one from a pool
(:func:`borrow`), and make multi-statement work one unit without ever
committing behind the caller (:func:`atomic`). The worker's and consumer's
dedicated connections reconnect with tenacity backoff when the server restarts
or a backend is terminated (:class:`ResilientConnection`, :func:`retrying`),
for up to ``retry_for`` seconds, or until a stop gives up on them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager, suppress
from typing import Any, LiteralString, TypeVar

import psycopg
import tenacity
from psycopg import AsyncConnection
from psycopg.pq import TransactionStatus
from psycopg_pool import AsyncConnectionPool

from commandbus.arguments import conn_arg
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


# -- reconnecting --------------------------------------------------------------------------

T = TypeVar("T")


async def retrying(
    fn: Callable[[], Awaitable[T]],
    *,
    retry_for: float,
    what: str,
    give_up: asyncio.Event | None = None,
) -> T:
    """``await fn()``, retried on lost connections with exponential backoff.

    Setting ``give_up`` (a worker's stop request) ends the waiting at once: the
    next failure is final instead of being retried for up to ``retry_for``.
    """
    stop: tenacity.stop.stop_base = tenacity.stop_after_delay(retry_for)
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    if give_up is not None:
        event = give_up
        stop = stop | tenacity.stop_when_event_set(event)  # type: ignore[arg-type]

        async def sleep(seconds: float) -> None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), seconds)

    try:
        async for attempt in tenacity.AsyncRetrying(
            retry=tenacity.retry_if_exception_type(psycopg.OperationalError),
            wait=tenacity.wait_exponential(multiplier=0.1, max=5),
            stop=stop,
            sleep=sleep,
            reraise=True,
        ):
            with attempt:
                return await fn()
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailableError(f"{what}: database lost: {exc}") from exc
    raise AssertionError("unreachable")  # pragma: no cover


async def connect(url: str, *, prepare_threshold: int | None = 5) -> Conn:
    """An autocommit connection (``prepare_threshold=0``: prepare on first use)."""
    return await psycopg.AsyncConnection.connect(
        url, autocommit=True, prepare_threshold=prepare_threshold
    )


class ResilientConnection:
    """One dedicated connection, replaced whenever it breaks."""

    def __init__(
        self,
        url: str,
        *,
        what: str,
        retry_for: float,
        setup: Sequence[LiteralString] = (),
        prepare_threshold: int | None = 0,
        give_up: asyncio.Event | None = None,
    ) -> None:
        self._url = url
        self._give_up = give_up
        self._what = what
        self._retry_for = retry_for
        self._setup = tuple(setup)
        self._prepare_threshold = prepare_threshold
        self._conn: Conn | None = None

    async def _fresh(self) -> Conn:
        conn = await connect(self._url, prepare_threshold=self._prepare_threshold)
        for statement in self._setup:
            await conn.execute(statement)
        return conn

    async def run(self, op: Callable[[Conn], Awaitable[T]]) -> T:
        """Run ``op`` on the connection, reconnecting and retrying if it was lost."""

        async def attempt() -> T:
            if self._conn is None or self._conn.closed or self._conn.broken:
                self._conn = await self._fresh()
            return await op(self._conn)

        return await retrying(
            attempt, retry_for=self._retry_for, what=self._what, give_up=self._give_up
        )

    async def open(self) -> None:
        """Connect now (with the same retries), so start-up problems show at once."""
        await self.run(_noop)

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()


async def _noop(_conn: Conn) -> None:
    return None
