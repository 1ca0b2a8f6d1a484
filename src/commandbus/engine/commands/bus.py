"""The command bus: send commands (one or a batch) atomically with their first event."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import timedelta
from types import TracebackType
from typing import Any, Self
from uuid import UUID

import psycopg
from psycopg_pool import AsyncConnectionPool

from commandbus.arguments import (
    bool_arg,
    conn_arg,
    int_arg,
    opt_text_arg,
    uuid_arg,
)
from commandbus.config import Config
from commandbus.engine.commands import replay
from commandbus.engine.commands import store as command_store
from commandbus.engine.commands.cancel import CommandCancels
from commandbus.engine.commands.outgoing import BatchParts, OutgoingRenderer
from commandbus.engine.commands.read import CommandReads
from commandbus.engine.commands.troubleshooting import TroubleshootingQueue
from commandbus.engine.db.connect import Conn, atomic, borrow, translated
from commandbus.engine.db.embedded import Database
from commandbus.engine.eventstore.store import EventStore
from commandbus.engine.observability import tracing
from commandbus.engine.observability.logging import correlation_id_var
from commandbus.engine.queues.tables import QueueRegistry, queue_exists
from commandbus.errors import ConcurrencyError, DuplicateCommandError, ValidationError
from commandbus.ids import new_id
from commandbus.models import BatchResult, CommandRequest, SendResult
from commandbus.names import (
    validate_domain,
    validate_queue_name,
)
from commandbus.results import Failure, Result, Success


class _Rollback(Exception):
    """Raised inside a transaction block to undo it."""


#: How long creating a queue waits for another transaction creating it too.
QUEUE_CREATION_WAIT_MS = 10_000


class CommandBus(CommandReads, CommandCancels):
    """Sends commands to their domain's PGMQ queue, recording each as an event.

    Use it as ``async with CommandBus(url) as bus:`` or call :meth:`open` and
    :meth:`close`. ``url=None`` resolves the database like ``migrate()``,
    ``Worker`` and ``Coordinator`` do (``DATABASE_URL``, else the embedded server,
    see :func:`~commandbus.engine.db.embedded.resolve_database_url`), at
    :meth:`open` and nowhere else; this process then keeps the embedded server
    until it exits. Every
    method takes an optional ``conn=`` (the caller's connection and transaction).
    The queries (``get_command``, ``list_commands``, ``command_history``,
    ``get_batch``) come from :class:`~commandbus.engine.commands.read.CommandReads`;
    ``bus.events`` is the event store and ``bus.troubleshooting`` the
    troubleshooting queue; ``cancel_command`` (from
    :class:`~commandbus.engine.commands.cancel.CommandCancels`) withdraws a command.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        config: Config | None = None,
        pool: AsyncConnectionPool[Conn] | None = None,
        min_connections: int = 1,
        max_connections: int = 10,
    ) -> None:
        if url is not None and (not isinstance(url, str) or not url.strip()):
            raise ValidationError(f"url must be a connection string or None, got {url!r:.60}")
        if config is not None and not isinstance(config, Config):
            raise ValidationError(f"config must be a Config, got {config!r:.60}")
        if pool is not None and not isinstance(pool, AsyncConnectionPool):
            raise ValidationError(f"pool must be an AsyncConnectionPool, got {pool!r:.60}")
        min_connections = int_arg(min_connections, "min_connections", low=0, high=10_000)
        max_connections = int_arg(max_connections, "max_connections", low=1, high=10_000)
        if min_connections > max_connections:
            raise ValidationError(
                f"min_connections ({min_connections}) must not exceed "
                f"max_connections ({max_connections})"
            )
        self.config = config or Config.from_env()
        self._db = Database(
            url, self.config, pool=pool, min_size=min_connections, max_size=max_connections
        )
        self.queues = QueueRegistry()
        self._events: EventStore | None = None
        self._troubleshooting: TroubleshootingQueue | None = None
        # checks and renders each command sent (tests render through it too)
        self._renderer = OutgoingRenderer(self.config, self.queues)
        self._outgoing = self._renderer.render

    # -- lifecycle ---------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The URL given (or ``DATABASE_URL``), else the embedded server's once open.

        Reading it never starts anything (``RuntimeError`` before :meth:`open`
        when there is no URL to read).
        """
        return self._db.url

    @property
    def pool(self) -> AsyncConnectionPool[Conn]:
        return self._db.pool

    @property
    def events(self) -> EventStore:
        """The event store (append, read_stream, read_all, stream_version)."""
        if self._events is None:
            self._events = EventStore(self.pool)
        return self._events

    @property
    def troubleshooting(self) -> TroubleshootingQueue:
        """Operator actions on the troubleshooting queue (list, retry, cancel, complete)."""
        if self._troubleshooting is None:
            self._troubleshooting = TroubleshootingQueue(self.pool)
        return self._troubleshooting

    async def open(self) -> None:
        """Resolve the database, check it (reachable, migrated), open the connection pool.

        Without a URL (and ``DATABASE_URL``) the embedded server is started or
        joined here, for the rest of the process. With ``COMMANDBUS_OTEL=1`` the
        OpenTelemetry SDK is set up first (see
        :func:`~commandbus.engine.observability.tracing.configure_tracing`). Raises
        :class:`~commandbus.errors.DatabaseUnavailableError` when the server cannot
        be reached and :class:`~commandbus.errors.SchemaNotReadyError` when
        migrations are pending; migrations never run as a side effect.
        """
        from commandbus.migrations import ensure_schema_current

        async def check(conn: Conn) -> None:
            with translated("checking the commandbus schema"):
                await ensure_schema_current(conn)

        tracing.configure_tracing_from_env(service_name="commandbus")
        await self._db.open(check)

    async def close(self) -> None:
        """Close the pool this bus opened (an embedded server stays until the process exits)."""
        await self._db.close()
        self._events = None
        self._troubleshooting = None

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- domains -----------------------------------------------------------------------

    async def create_domain(self, domain: str, *, conn: Conn | None = None) -> None:
        """Create the domain's queue now (sending creates it on first use anyway).

        With ``conn=`` the queue is created in the caller's transaction (and is
        gone again if the caller rolls back).
        """
        validate_domain(domain)
        if conn is None:
            await self._ensure_queues((domain,))
            return
        async with borrow(self.pool, conn) as c, atomic(c):
            await self.queues.ensure(c, domain, remember=False)

    async def create_queues(self, queues: Sequence[str], *, conn: Conn | None = None) -> None:
        """Create these queues now unless they exist, each in a transaction of its own
        (``conn=``: the caller's transaction, which may have created some already, is
        looked at first; see :meth:`_ensure_queues`)."""
        if conn is not None:
            conn_arg(conn)
        await self._ensure_queues([validate_queue_name(q) for q in queues], conn)

    async def _ensure_queues(self, queues: Sequence[str], conn: Conn | None = None) -> None:
        """Make sure the queues exist before a statement that writes to them.

        A missing queue is created on a pooled connection and committed at once:
        an empty queue holds no data, and creating it in a caller's transaction
        would hold its creation lock until that commits (other senders would wait,
        and two such transactions could deadlock). With ``conn=``, a queue the
        caller's own transaction created (``create_domain(conn=)``) is seen there
        first: creating it elsewhere would wait forever for the caller's lock.
        """
        missing = [q for q in queues if not self.queues.is_known(q)]
        if not missing:
            return
        if conn is not None:
            async with borrow(self.pool, conn) as c:
                missing = [q for q in missing if not await queue_exists(c, q)]
        if missing:
            async with borrow(self.pool, None) as c:
                for q in missing:
                    # bounded: a caller's open transaction may be creating it, and may
                    # itself wait for this call (two callers, two new domains)
                    await self.queues.ensure(c, q, lock_wait_ms=QUEUE_CREATION_WAIT_MS)

    # -- sending -----------------------------------------------------------------------

    async def send(
        self,
        domain: str,
        command_type: str,
        data: Mapping[str, Any] | None = None,
        *,
        command_id: UUID | str | None = None,
        correlation_id: UUID | str | None = None,
        causation_id: UUID | str | None = None,
        reply_to: str | None = None,
        saga_id: UUID | str | None = None,
        max_attempts: int | None = None,
        delay: timedelta | float | None = None,
        conn: Conn | None = None,
    ) -> Result[SendResult]:
        """Send one command: ``CommandSent`` event, queue message and status row, atomically.

        One statement. With ``conn=`` it joins the caller's transaction (explicit or
        implicit) and is committed or rolled back by the caller; nothing commits
        behind the caller. Ids may be ``UUID`` or any of their text forms (they are
        normalised to ``UUID``); ``delay`` is a ``timedelta`` or seconds. Sent from
        inside a handler, ``correlation_id`` defaults to the handled command's and
        ``causation_id`` to its id. The message carries the W3C context of this
        send's PRODUCER span (or of the current span when nothing records). Returns
        ``Failure(code="DUPLICATE_COMMAND")`` when the domain already has a command
        with this id (nothing is written). Raises
        :class:`~commandbus.errors.ValidationError` (naming the argument) for bad
        arguments and :class:`~commandbus.errors.PayloadError` for data that is not
        JSON or too large, before anything is written.
        """
        with tracing.producer() as span:
            out = self._outgoing(
                domain,
                command_type,
                {} if data is None else data,
                command_id=command_id,
                correlation_id=correlation_id,
                causation_id=causation_id,
                reply_to=reply_to,
                saga_id=saga_id,
                batch_id=None,
                max_attempts=max_attempts,
                delay=delay,
                trace=span.headers(),
            )
            span.describe(
                domains=(out.domain,),
                correlation_id=out.correlation_id,
                command_id=out.command_id,
                command_type=out.command_type,
                causation_id=out.causation_id,
                saga_id=out.saga_id,
            )
            if conn is not None:
                conn_arg(conn)
            await self._ensure_queues(
                (out.domain,) if out.reply_to is None else (out.domain, out.reply_to), conn
            )
            async with borrow(self.pool, conn) as c:
                msg_id = await command_store.send_one(c, out)
            if msg_id is None:
                failure = Failure(
                    code=DuplicateCommandError.code,
                    message=f"command {out.command_id} already exists in domain {out.domain!r}",
                    details={"domain": out.domain, "command_id": str(out.command_id)},
                )
                span.refused(failure.code, failure.message)
                return failure
            span.sent(msg_id)
        return Success(
            value=SendResult(
                command_id=out.command_id, msg_id=msg_id, correlation_id=out.correlation_id
            )
        )

    async def send_batch(
        self,
        commands: Iterable[CommandRequest],
        *,
        batch_id: UUID | str | None = None,
        name: str | None = None,
        correlation_id: UUID | str | None = None,
        conn: Conn | None = None,
    ) -> Result[BatchResult]:
        """Send many commands and their batch in ONE transaction.

        The commands go in parts of up to 100, each one statement, all in one
        pipeline: the server inserts a part while the next is checked and rendered;
        the batch follows them. All or nothing: if any command id already exists in
        its domain, nothing is written and ``Failure(code="DUPLICATE_COMMAND")``
        lists the ids. With ``conn=`` the batch joins the caller's transaction
        (explicit or implicit) and is committed or rolled back by the caller. The
        same id may be used in different domains.

        Arguments are checked as :meth:`send` checks them; an error names the
        command (``commands[i]``) and the argument, and nothing is written. The
        names (domain, command type, reply queue) of every command are checked
        first, the rest as each part is rendered: a bad name anywhere is reported
        before another bad argument. Two batches that send some of the same command
        ids in different orders may deadlock: PostgreSQL ends one, which raises
        :class:`~commandbus.errors.ConcurrencyError` (retryable; nothing written).
        Ids default as for :meth:`send` (inside a handler, the handled command's
        correlation id, else the batch id; its id as the cause); one PRODUCER span
        covers the batch.
        """
        if isinstance(commands, str | bytes | Mapping) or not isinstance(commands, Iterable):
            raise ValidationError(
                f"commands must be a sequence of CommandRequest, got {type(commands).__name__}"
            )
        requests = list(commands)
        if not requests:
            raise ValidationError("commands must hold at least one CommandRequest")
        bid = new_id() if batch_id is None else uuid_arg(batch_id, "batch_id")
        if correlation_id is None:  # sent from a handler: the handled command's
            corr = correlation_id_var.get() or bid
        else:
            corr = uuid_arg(correlation_id, "correlation_id")
        name = opt_text_arg(name, "name", empty=True)
        with tracing.producer() as span:
            result = await self._send_batch(requests, bid, corr, name, conn, span)
            if isinstance(result, Failure):
                span.refused(result.code, result.message)
            return result

    async def _send_batch(
        self,
        requests: list[CommandRequest],
        bid: UUID,
        corr: UUID,
        name: str | None,
        conn: Conn | None,
        span: tracing.SendSpan,
    ) -> Result[BatchResult]:
        queues: set[str] = set()  # names first: the queues must exist before a part goes
        for i, r in enumerate(requests):
            if not isinstance(r, CommandRequest):
                raise ValidationError(
                    f"commands[{i}] must be a CommandRequest, got {type(r).__name__}"
                )
            try:
                queues.update(self._renderer.queues(r.domain, r.command_type, r.reply_to))
            except ValidationError as exc:
                raise type(exc)(f"commands[{i}]: {exc.message}", details=exc.details) from None
        if conn is not None:
            conn_arg(conn)
        parts = BatchParts(
            self._outgoing,
            requests,
            batch_id=bid,
            correlation_id=corr,
            name=name,
            trace=span.headers(),
        )
        if not all(self.queues.is_known(q) for q in queues):
            parts.prepare()  # checked in full first: a refused batch creates no queue
            if not parts.repeated:
                await self._ensure_queues(sorted(queues), conn)
        rows: list[tuple[str, UUID, int | None, bool]] = []
        created = False
        if not parts.repeated:  # (known already only when prepared)
            try:
                async with borrow(self.pool, conn) as c:
                    try:
                        async with atomic(c):
                            rows, created = await command_store.send_many(
                                c, parts, bid, parts.batch
                            )
                            if not created or any(m is None for _d, _c, m, _n in rows):
                                raise _Rollback
                    except _Rollback:
                        pass
            except psycopg.errors.DeadlockDetected as exc:
                # another batch writing some of the same ids in another order
                raise ConcurrencyError(
                    f"batch {bid} deadlocked with another transaction sending some of the "
                    "same command ids; nothing was written: send it again",
                    details={"batch_id": str(bid), "sqlstate": exc.sqlstate},
                ) from exc
        outs = parts.outs
        span.describe(
            domains=[o.domain for o in outs],
            correlation_id=corr,
            batch_id=bid,
            count=len(outs),
            types=[(o.domain, o.command_type) for o in outs],
        )
        if parts.repeated:
            return Failure(
                code=DuplicateCommandError.code,
                message=f"command ids repeated within the batch: {', '.join(parts.repeated)}",
                details={"command_ids": parts.repeated},
            )
        duplicates = [(d, cid) for d, cid, _m, is_new in rows if not is_new]
        if duplicates or not created:
            return Failure(
                code=DuplicateCommandError.code,
                message=(
                    f"{len(duplicates)} command id(s) already exist: "
                    + ", ".join(f"{cid} in domain {d!r}" for d, cid in duplicates)
                    if duplicates
                    else f"batch {bid} already exists"
                ),
                details={"command_ids": [str(cid) for _d, cid in duplicates], "batch_id": str(bid)},
            )
        by_key = {(d, cid): m for d, cid, m, _n in rows}
        span.sent()
        return Success(
            value=BatchResult(
                batch_id=bid,
                command_ids=tuple(o.command_id for o in outs),
                msg_ids=tuple(int(by_key[o.domain, o.command_id] or 0) for o in outs),
            )
        )

    # -- the projection ---------------------------------------------------------------

    async def rebuild_projection(
        self,
        *,
        table: str = "command_rebuild",
        replace_live: bool = False,
        conn: Conn | None = None,
    ) -> int:
        """Recompute the status tables from the events (see :func:`replay.rebuild`).

        It runs its own transaction and commits it: a ``conn=`` must not be inside
        a transaction (:class:`~commandbus.errors.ValidationError` otherwise).
        """
        replace_live = bool_arg(replace_live, "replace_live")
        async with borrow(self.pool, conn) as c:
            return await replay.rebuild(c, table=table, replace_live=replace_live)

    async def verify_projection(self, *, conn: Conn | None = None) -> replay.VerifyReport:
        """Compare the status tables with a replay of the events (own read-only transaction).

        A ``conn=`` must not be inside a transaction, as for :meth:`rebuild_projection`.
        """
        async with borrow(self.pool, conn) as c:
            return await replay.verify(c)
