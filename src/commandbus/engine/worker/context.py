"""What a handler gets besides its command."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING
from uuid import UUID

from commandbus.arguments import delay_arg
from commandbus.config import MAX_VISIBILITY_TIMEOUT, MIN_VISIBILITY_TIMEOUT
from commandbus.engine.commands import store as command_store
from commandbus.engine.db.connect import Conn
from commandbus.errors import ValidationError
from commandbus.models import Command

if TYPE_CHECKING:
    from psycopg_pool import AsyncConnectionPool


class HandlerContext:
    """Per-attempt context: ids, the attempt number, visibility and a transaction.

    ``await ctx.connection()`` returns a connection inside an open transaction; the
    worker records the command's outcome in that same transaction and commits it,
    so the handler's database writes and the completion commit together (or not at
    all, e.g. when a duplicate delivery loses the race).
    """

    def __init__(
        self,
        *,
        command: Command,
        attempt: int,
        msg_id: int,
        pool: AsyncConnectionPool[Conn],
    ) -> None:
        self.command = command
        self.attempt = attempt
        self.msg_id = msg_id
        self._pool = pool
        self._conn: Conn | None = None

    @property
    def command_id(self) -> UUID:
        return self.command.command_id

    @property
    def correlation_id(self) -> UUID:
        return self.command.correlation_id

    @property
    def saga_id(self) -> UUID | None:
        return self.command.saga_id

    @property
    def max_attempts(self) -> int:
        return self.command.max_attempts

    @property
    def is_last_attempt(self) -> bool:
        return self.attempt >= self.command.max_attempts

    async def extend_visibility(self, seconds: timedelta | float) -> datetime | None:
        """Keep the message invisible for ``seconds`` from now (for long handlers).

        A ``timedelta`` or a number of seconds, from 1 s to 7 days; returns the
        new visibility time (``None`` if the message is no longer in the queue).
        """
        value = delay_arg(seconds, "seconds")
        low, high = MIN_VISIBILITY_TIMEOUT.total_seconds(), MAX_VISIBILITY_TIMEOUT.total_seconds()
        if not low <= value <= high:
            raise ValidationError(f"seconds must be from 1 s to 7 days, got {seconds!r}")
        async with self._pool.connection() as conn:
            return await command_store.extend_visibility(
                conn, self.command.domain, self.msg_id, value
            )

    async def connection(self) -> Conn:
        """A connection in a transaction that commits with the command's outcome."""
        if self._conn is None:
            conn = await self._pool.getconn()
            try:
                await conn.execute("BEGIN")
            except BaseException:
                await self._pool.putconn(conn)
                raise
            self._conn = conn
        return self._conn

    # -- used by the worker ----------------------------------------------------------------

    @property
    def transaction(self) -> Conn | None:
        return self._conn

    async def finish(self, *, commit: bool) -> None:
        """Commit or roll back the handler's transaction and return its connection."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            await conn.execute("COMMIT" if commit else "ROLLBACK")
        finally:
            await self._pool.putconn(conn)
