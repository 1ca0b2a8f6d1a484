"""Connections that come back: retry with tenacity backoff when the database drops us.

The worker keeps a few dedicated connections (its reader and flushers). When the
server restarts or a backend is terminated, the operation that noticed is retried
on a fresh connection, with exponential backoff, for up to ``retry_for`` seconds;
after that :class:`~commandbus.errors.DatabaseUnavailableError` is raised and the
worker stops loudly.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from typing import LiteralString, TypeVar

import psycopg
import tenacity

from commandbus.engine.connections import Conn
from commandbus.errors import DatabaseUnavailableError

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
