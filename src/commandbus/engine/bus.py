"""The command bus: send commands (one or a batch) atomically with their first event."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import timedelta
from types import TracebackType
from typing import Any, Self
from uuid import UUID, uuid4

from psycopg_pool import AsyncConnectionPool

from commandbus.config import Config
from commandbus.engine import command_store
from commandbus.engine.codec import dumps, dumps_limited
from commandbus.engine.command_store import OutgoingCommand
from commandbus.engine.connections import Conn, atomic, borrow
from commandbus.engine.event_store import EventStore, read_stream
from commandbus.engine.models import (
    BatchRecord,
    BatchResult,
    CommandRecord,
    CommandRequest,
    CommandStatus,
    Page,
    SendResult,
    StoredEvent,
)
from commandbus.engine.names import (
    batch_stream_id,
    command_stream_id,
    validate_command_type,
    validate_domain,
    validate_queue_name,
)
from commandbus.engine.queues import QueueRegistry
from commandbus.engine.telemetry import current_trace_headers
from commandbus.engine.troubleshooting import TroubleshootingQueue
from commandbus.errors import DuplicateCommandError, ValidationError
from commandbus.projections import queries as pq
from commandbus.projections import replay
from commandbus.results import Failure, Result, Success


class _Rollback(Exception):
    """Raised inside a transaction block to undo it."""


def _embed(envelope: dict[str, Any], data_json: str) -> str:
    """``envelope`` as JSON with ``"data": <data_json>`` added (data serialised once)."""
    head = dumps(envelope)
    return head[:-1] + ',"data":' + data_json + "}"


class CommandBus:
    """Sends commands to their domain's PGMQ queue, recording each as an event.

    Use it as ``async with CommandBus(url) as bus:`` or call :meth:`open` and
    :meth:`close`. ``url=None`` resolves the database like the CLI does
    (``DATABASE_URL``, else the embedded server).
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
        self.config = config or Config.from_env()
        self._url = url
        self._own_pool = pool is None
        self._pool: AsyncConnectionPool[Conn] | None = pool
        self._pool_sizes = (min_connections, max_connections)
        self.queues = QueueRegistry()
        self._events: EventStore | None = None
        self._valid_names: set[tuple[str, str]] = set()

    # -- lifecycle ---------------------------------------------------------------------

    @property
    def url(self) -> str:
        if self._url is None:
            from commandbus.database import resolve_database_url

            self._url = resolve_database_url(self.config)
        return self._url

    @property
    def pool(self) -> AsyncConnectionPool[Conn]:
        if self._pool is None:
            raise RuntimeError("CommandBus is not open: use 'async with' or await open()")
        return self._pool

    @property
    def events(self) -> EventStore:
        if self._events is None:
            self._events = EventStore(self.pool)
        return self._events

    async def open(self) -> None:
        """Check the database (reachable, migrated), then open the connection pool.

        Raises :class:`~commandbus.errors.DatabaseUnavailableError` when the server
        cannot be reached and :class:`~commandbus.errors.SchemaNotReadyError` when
        migrations are pending; migrations never run as a side effect.
        """
        from commandbus.database import connect
        from commandbus.migrations import ensure_schema_current

        probe = await connect(self.url)
        try:
            await ensure_schema_current(probe)
        finally:
            await probe.close()
        if self._pool is None:
            self._pool = AsyncConnectionPool(
                self.url,
                min_size=self._pool_sizes[0],
                max_size=self._pool_sizes[1],
                kwargs={"autocommit": True},
                open=False,
            )
        if self._own_pool:
            await self._pool.open(wait=True, timeout=30)

    async def close(self) -> None:
        if self._pool is not None and self._own_pool:
            await self._pool.close()
            self._pool = None
            self._events = None

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

    async def create_domain(self, domain: str) -> None:
        """Create the domain's queue now (sending creates it on first use anyway)."""
        validate_domain(domain)
        await self._ensure_queues((domain,))

    async def _ensure_queues(self, queues: Sequence[str]) -> None:
        # Queues are created in their own committed transaction, never in a caller's
        # transaction: a rollback there must not undo a queue this process remembers.
        missing = [q for q in queues if not self.queues.is_known(q)]
        if missing:
            async with borrow(self.pool, None) as c:
                for q in missing:
                    await self.queues.ensure(c, q)

    # -- sending -----------------------------------------------------------------------

    def _outgoing(
        self,
        domain: str,
        command_type: str,
        data: Mapping[str, Any],
        *,
        command_id: UUID | None,
        correlation_id: UUID | None,
        causation_id: UUID | None,
        reply_to: str | None,
        saga_id: UUID | None,
        batch_id: UUID | None,
        max_attempts: int | None,
        delay: timedelta | None,
        trace: dict[str, str],
    ) -> OutgoingCommand:
        if (domain, command_type) not in self._valid_names:
            validate_domain(domain)
            validate_command_type(command_type)
            if len(self._valid_names) < 10_000:
                self._valid_names.add((domain, command_type))
        if reply_to is not None and not self.queues.is_known(reply_to):
            validate_queue_name(reply_to, what="reply_to queue")
        if not isinstance(data, Mapping):
            raise ValidationError(f"command data must be a mapping, got {type(data).__name__}")
        attempts = self.config.max_retries if max_attempts is None else max_attempts
        if not isinstance(attempts, int) or attempts < 1:
            raise ValidationError(f"max_attempts must be an integer >= 1, got {attempts!r}")
        delay_s = 0.0 if delay is None else delay.total_seconds()
        if delay_s < 0:
            raise ValidationError(f"delay must not be negative, got {delay!r}")
        data_json = dumps_limited(dict(data), self.config.max_payload_bytes, what="command data")
        cid = command_id or uuid4()
        corr = correlation_id or cid
        cid_s, corr_s = str(cid), str(corr)
        saga_s = None if saga_id is None else str(saga_id)
        batch_s = None if batch_id is None else str(batch_id)
        message = _embed(
            {
                "command_id": cid_s,
                "command_type": command_type,
                "correlation_id": corr_s,
                "causation_id": None if causation_id is None else str(causation_id),
                "reply_to": reply_to,
                "saga_id": saga_s,
                "batch_id": batch_s,
                "max_attempts": attempts,
            },
            data_json,
        )
        return OutgoingCommand(
            domain=domain,
            command_id=cid,
            command_type=command_type,
            correlation_id=corr,
            causation_id=causation_id,
            reply_to=reply_to,
            saga_id=saga_id,
            max_attempts=attempts,
            delay_seconds=delay_s,
            message=message,
            headers=dumps(trace) if trace else "{}",
            metadata=dumps({"trace": trace}) if trace else "{}",
        )

    async def send(
        self,
        domain: str,
        command_type: str,
        data: Mapping[str, Any] | None = None,
        *,
        command_id: UUID | None = None,
        correlation_id: UUID | None = None,
        causation_id: UUID | None = None,
        reply_to: str | None = None,
        saga_id: UUID | None = None,
        max_attempts: int | None = None,
        delay: timedelta | None = None,
        conn: Conn | None = None,
    ) -> Result[SendResult]:
        """Send one command: ``CommandSent`` event, queue message and status row, atomically.

        With ``conn=`` the command joins the caller's transaction and is exactly as
        durable as the caller's commit. Returns ``Failure(code="DUPLICATE_COMMAND")``
        when the domain already has a command with this id (nothing is written).
        Raises :class:`~commandbus.errors.ValidationError` subclasses for bad names,
        data that is not JSON or too large, before anything is written.
        """
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
            trace=current_trace_headers(),
        )
        await self._ensure_queues((domain,) if reply_to is None else (domain, reply_to))
        async with borrow(self.pool, conn) as c:
            msg_id = await command_store.send_one(c, out)
        if msg_id is None:
            return Failure(
                code=DuplicateCommandError.code,
                message=f"command {out.command_id} already exists in domain {domain!r}",
                details={"domain": domain, "command_id": str(out.command_id)},
            )
        return Success(
            value=SendResult(
                command_id=out.command_id, msg_id=msg_id, correlation_id=out.correlation_id
            )
        )

    async def send_batch(
        self,
        commands: Sequence[CommandRequest],
        *,
        batch_id: UUID | None = None,
        name: str | None = None,
        correlation_id: UUID | None = None,
        conn: Conn | None = None,
    ) -> Result[BatchResult]:
        """Send many commands and their batch in ONE transaction and one statement.

        All or nothing: if any command id already exists in its domain, nothing is
        written and ``Failure(code="DUPLICATE_COMMAND")`` lists the ids.
        """
        if not commands:
            raise ValidationError("send_batch needs at least one command")
        bid = batch_id or uuid4()
        corr = correlation_id or bid
        trace = current_trace_headers()
        outs = [
            self._outgoing(
                r.domain,
                r.command_type,
                r.data,
                command_id=r.command_id,
                correlation_id=r.correlation_id or corr,
                causation_id=r.causation_id,
                reply_to=r.reply_to,
                saga_id=r.saga_id,
                batch_id=bid,
                max_attempts=r.max_attempts,
                delay=r.delay,
                trace=trace,
            )
            for r in commands
        ]
        seen: set[tuple[str, UUID]] = set()
        repeated = []
        for o in outs:
            key = (o.domain, o.command_id)
            if key in seen:
                repeated.append(str(o.command_id))
            seen.add(key)
        if repeated:
            return Failure(
                code=DuplicateCommandError.code,
                message=f"command ids repeated within the batch: {', '.join(repeated)}",
                details={"command_ids": repeated},
            )
        batch_data = dumps(
            {
                "batch_id": str(bid),
                "name": name,
                "total": len(outs),
                "domains": sorted({o.domain for o in outs}),
            }
        )
        queues_needed = {o.domain for o in outs} | {o.reply_to for o in outs if o.reply_to}
        duplicates: list[str] = []
        rows: list[tuple[UUID, int | None, bool]] = []
        await self._ensure_queues(sorted(queues_needed))
        async with borrow(self.pool, conn) as c:
            try:
                async with atomic(c):
                    rows = await command_store.send_many(
                        c,
                        outs,
                        batch_id=bid,
                        batch_stream=batch_stream_id(bid),
                        batch_name=name,
                        batch_data=batch_data,
                        batch_correlation_id=corr,
                        metadata=dumps({"trace": trace}) if trace else "{}",
                    )
                    duplicates = [str(cid) for cid, _m, is_new in rows if not is_new]
                    if duplicates or any(m is None for _c, m, _n in rows):
                        raise _Rollback
            except _Rollback:
                pass
        if duplicates or not rows or any(m is None for _c, m, _n in rows):
            return Failure(
                code=DuplicateCommandError.code,
                message=(
                    f"{len(duplicates)} command id(s) already exist: {', '.join(duplicates)}"
                    if duplicates
                    else f"batch {bid} already exists"
                ),
                details={"command_ids": duplicates, "batch_id": str(bid)},
            )
        by_id = {cid: m for cid, m, _n in rows}
        return Success(
            value=BatchResult(
                batch_id=bid,
                command_ids=tuple(o.command_id for o in outs),
                msg_ids=tuple(int(by_id[o.command_id] or 0) for o in outs),
            )
        )

    # -- queries ---------------------------------------------------------------------

    @property
    def troubleshooting(self) -> TroubleshootingQueue:
        """Operator actions on the troubleshooting queue (list, retry, cancel, complete)."""
        return TroubleshootingQueue(self.pool)

    async def get_command(
        self, domain: str, command_id: UUID, *, conn: Conn | None = None
    ) -> CommandRecord | None:
        """Where is command X: its row of the status projection (None if unknown)."""
        async with borrow(self.pool, conn) as c:
            return await pq.get_command(c, domain, command_id)

    async def list_commands(
        self,
        *,
        domain: str | None = None,
        status: CommandStatus | str | None = None,
        correlation_id: UUID | None = None,
        command_type: str | None = None,
        batch_id: UUID | None = None,
        limit: int = 100,
        cursor: str | None = None,
        conn: Conn | None = None,
    ) -> Page:
        """Commands by domain / status / correlation id, oldest first, keyset-paged."""
        async with borrow(self.pool, conn) as c:
            return await pq.list_commands(
                c,
                domain=domain,
                status=status,
                correlation_id=correlation_id,
                command_type=command_type,
                batch_id=batch_id,
                limit=limit,
                cursor=cursor,
            )

    async def command_history(
        self, domain: str, command_id: UUID, *, conn: Conn | None = None
    ) -> list[StoredEvent]:
        """Every event of one command, in order."""
        async with borrow(self.pool, conn) as c:
            return await read_stream(c, command_stream_id(domain, command_id))

    async def get_batch(self, batch_id: UUID, *, conn: Conn | None = None) -> BatchRecord | None:
        """A batch with its progress counted by status."""
        async with borrow(self.pool, conn) as c:
            return await pq.get_batch(c, batch_id)

    async def rebuild_projection(
        self, *, table: str = "command_rebuild", replace_live: bool = False
    ) -> int:
        """Recompute the command projection from the events (see projections.replay)."""
        async with borrow(self.pool, None) as c:
            return await replay.rebuild(c, table=table, replace_live=replace_live)

    async def verify_projection(self) -> replay.VerifyReport:
        """Compare the live command projection with a replay of the events."""
        async with borrow(self.pool, None) as c:
            return await replay.verify(c)
