"""Starting sagas and asking about them: ``SagaClient(bus)``.

Starting a saga appends ``SagaStarted``, writes its status row and sends its first
command(s) in one transaction (the caller's with ``conn=``). Operators' requests
(cancel, pause, resume) are checked against the saga's state and queued for the
coordinator, which carries each out as a transition like any other (audited, and
serialized with the saga's replies).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable, Mapping
from typing import Any
from uuid import UUID

import attrs
import psycopg
from psycopg import sql

from commandbus.arguments import (
    bool_arg,
    conn_arg,
    mapping_arg,
    operator_arg,
    opt_text_arg,
    opt_uuid_arg,
    reason_arg,
    show,
    source_arg,
    text_arg,
    uuid_arg,
)
from commandbus.codec import MAX_STATEMENT_JSON_BYTES, dumps, dumps_limited
from commandbus.engine.commands.bus import CommandBus
from commandbus.engine.db.connect import Conn, atomic, borrow
from commandbus.engine.observability.logging import correlation_id_var
from commandbus.engine.observability.tracing import saga_span
from commandbus.engine.queues.tables import queue_table
from commandbus.errors import (
    CommandNotFoundError,
    InvalidStateError,
    PayloadTooLargeError,
    SagaNotFoundError,
    ValidationError,
)
from commandbus.ids import new_id
from commandbus.models import CommandStatus, StoredEvent
from commandbus.names import saga_stream_id
from commandbus.sagas import replay
from commandbus.sagas import sql as q
from commandbus.sagas.decide import SAGA_QUEUE, Decider
from commandbus.sagas.definition import MAX_NAME_CHARS, Saga, SagaRegistry
from commandbus.sagas.outgoing import saga_id_for_key
from commandbus.sagas.preview import (
    CancelPreview,
    cancel_refusal,
    failed_compensation,
    preview_cancel,
    request_refusal,
)
from commandbus.sagas.read import (
    SagaFilter,
    SagaPage,
    SagaRecord,
    fetch_counts,
    fetch_page,
    fetch_saga,
)
from commandbus.sagas.state import SagaState, StepStatus
from commandbus.sagas.store import Pending, commit, commit_at_once


@attrs.frozen(kw_only=True)
class SagaStart:
    """One saga to start with :meth:`SagaClient.start_sagas`."""

    input: Mapping[str, Any]
    saga_id: UUID | str | None = None
    idempotency_key: str | None = None
    correlation_id: UUID | str | None = None


@attrs.frozen(kw_only=True)
class StartedSaga:
    """A started saga; ``created`` is False when it existed already (same id or key)."""

    saga_id: UUID
    created: bool


async def _requests_on_their_way(conn: Conn, saga_id: UUID) -> bool:
    """Whether operators' requests for the saga wait in the saga queue (read by a
    coordinator or not, not carried out yet)."""
    cur = await conn.execute(
        sql.SQL(q.PENDING_CONTROL).format(queue=queue_table(SAGA_QUEUE)), {"saga_id": str(saga_id)}
    )
    row = await cur.fetchone()
    return bool(row and row[0])


class SagaClient:
    """Start sagas, read them, and ask the coordinator to cancel, pause or resume one
    (or to count a failed compensation as done by hand).

    Built on an open :class:`~commandbus.CommandBus` (its pool and settings):
    ``sagas = SagaClient(bus)``. Every method takes an optional ``conn=``.
    """

    def __init__(self, bus: CommandBus) -> None:
        if not isinstance(bus, CommandBus):
            raise ValidationError(f"bus must be a CommandBus, got {show(bus)}")
        self._bus = bus

    # -- starting -----------------------------------------------------------------------

    async def start_saga(
        self,
        definition: Saga,
        input: Mapping[str, Any] | None = None,
        *,
        saga_id: UUID | str | None = None,
        idempotency_key: str | None = None,
        correlation_id: UUID | str | None = None,
        conn: Conn | None = None,
    ) -> StartedSaga:
        """Start one saga: its first event, status row and first command(s), atomically.

        ``idempotency_key``: starting again with the same key (and definition name)
        returns the existing saga (``created=False``) and writes nothing; so does
        an existing ``saga_id``. With ``conn=`` it joins the caller's transaction and
        commits or rolls back with it.
        """
        started = await self.start_sagas(
            definition,
            [
                SagaStart(
                    input={} if input is None else input,
                    saga_id=saga_id,
                    idempotency_key=idempotency_key,
                    correlation_id=correlation_id,
                )
            ],
            conn=conn,
        )
        return started[0]

    async def start_sagas(
        self,
        definition: Saga,
        starts: Iterable[SagaStart | Mapping[str, Any]],
        *,
        conn: Conn | None = None,
    ) -> list[StartedSaga]:
        """Start many sagas of one definition in a constant number of statements.

        Each item is a :class:`SagaStart` or just the input mapping. Returns one
        :class:`StartedSaga` per item, in order.
        """
        if not isinstance(definition, Saga):
            raise ValidationError(f"definition must be a Saga, got {show(definition)}")
        if isinstance(starts, str | bytes | Mapping) or not isinstance(starts, Iterable):
            raise ValidationError(f"starts must be a list of SagaStart, got {show(starts)}")
        config = self._bus.config
        pending: list[Pending] = []
        seen: set[UUID] = set()
        ids: list[UUID] = []
        size = 0  # of the inputs: each is written about three times (event, state, step)
        for i, item in enumerate(starts):
            if isinstance(item, SagaStart):
                start = item
            elif isinstance(item, Mapping):
                start = SagaStart(input=item)
            else:
                raise ValidationError(
                    f"starts[{i}] must be a SagaStart or the input mapping, got {show(item)}"
                )
            # as stored: the first step is built from the same input as the later ones
            text = dumps_limited(
                dict(mapping_arg(start.input, "input")),
                config.max_payload_bytes,
                what="saga input",
            )
            data = json.loads(text)
            size += len(text)
            key = opt_text_arg(start.idempotency_key, "idempotency_key")
            sid = opt_uuid_arg(start.saga_id, "saga_id")
            if sid is None:
                sid = new_id() if key is None else saga_id_for_key(definition.name, key)
            # started from a handler, a saga joins the handled command's flow
            corr = opt_uuid_arg(start.correlation_id, "correlation_id") or (
                correlation_id_var.get() or sid
            )
            ids.append(sid)
            if sid in seen:
                continue  # the same saga twice in one call: started once
            seen.add(sid)
            with saga_span(
                f"start saga {definition.name}",
                saga_id=sid,
                correlation_id=corr,
                kind="producer",
                saga_name=definition.name,
            ) as span:
                decider = Decider(
                    definition,
                    None,
                    max_payload_bytes=config.max_payload_bytes,
                    default_max_attempts=config.max_attempts,
                    headers=span.headers,
                )
                decider.start(saga_id=sid, input=data, correlation_id=corr, idempotency_key=key)
            pending.append(Pending(sid, 0, decider))
        if not ids:
            return []
        if 3 * size > MAX_STATEMENT_JSON_BYTES:
            raise PayloadTooLargeError(
                f"the inputs of {len(pending)} sagas hold {size / 2**20:,.0f} MB; starting "
                f"them writes each about three times, and one call takes at most "
                f"{MAX_STATEMENT_JSON_BYTES // 2**20} MB: start them in parts"
            )
        if conn is not None:
            conn_arg(conn)
        await self._bus.create_queues(sorted({SAGA_QUEUE, *definition.domains}), conn=conn)
        try:
            async with borrow(self._bus.pool, conn) as c:
                # on a connection of its own, in one round trip if it can (the usual
                # case: new sagas); otherwise statement by statement, which tells
                # what exists (and never touches the state of a caller's connection)
                created = None if conn is not None else await commit_at_once(c, pending)
                if created is None:
                    async with atomic(c):
                        created = await commit(c, pending)
        except psycopg.errors.ProgramLimitExceeded as exc:  # (a guard, should the above miss)
            raise PayloadTooLargeError(
                f"{len(pending)} sagas are too large to start in one call "
                f"({exc.diag.message_primary}): start them in parts"
            ) from None
        first: set[UUID] = set()
        out = []
        for sid in ids:
            out.append(StartedSaga(saga_id=sid, created=sid in created and sid not in first))
            first.add(sid)
        return out

    # -- reading ------------------------------------------------------------------------

    async def get_saga(self, saga_id: UUID | str, *, conn: Conn | None = None) -> SagaRecord | None:
        """Where is saga X: its status row (None if unknown)."""
        sid = uuid_arg(saga_id, "saga_id")
        async with borrow(self._bus.pool, conn) as c:
            return await fetch_saga(c, sid)

    async def list_sagas(
        self,
        where: SagaFilter | None = None,
        *,
        limit: int = 100,
        cursor: str | None = None,
        conn: Conn | None = None,
    ) -> SagaPage:
        """Sagas matching ``where``, oldest first, keyset-paged (``cursor=page.next_cursor``)."""
        if where is None:
            where = SagaFilter()
        elif not isinstance(where, SagaFilter):
            raise ValidationError(f"where must be a SagaFilter, got {show(where)}")
        async with borrow(self._bus.pool, conn) as c:
            return await fetch_page(c, where, limit, cursor)

    async def saga_history(
        self, saga_id: UUID | str, *, conn: Conn | None = None
    ) -> list[StoredEvent]:
        """Every event of one saga, in order."""
        sid = uuid_arg(saga_id, "saga_id")
        return await self._bus.events.read_stream(saga_stream_id(sid), conn=conn)

    async def status_counts(self, *, conn: Conn | None = None) -> dict[str, int]:
        """How many sagas are in each status."""
        async with borrow(self._bus.pool, conn) as c:
            return await fetch_counts(c)

    # -- operators ----------------------------------------------------------------------

    async def cancel_saga(
        self,
        saga_id: UUID | str,
        *,
        reason: str | None = None,
        operator: str | None = None,
        source: str = "api",
        conn: Conn | None = None,
    ) -> None:
        """Compensate a running saga: the coordinator waits for the steps out, then
        compensates the completed ones in reverse. A step waiting on an operator has
        its troubleshooting-queue command cancelled now (in the same transaction).
        Refused (:class:`InvalidStateError`) once the saga ended or passed its pivot."""
        await self._request(saga_id, "cancel", reason, operator, source, conn)

    async def pause_saga(
        self,
        saga_id: UUID | str,
        *,
        reason: str | None = None,
        operator: str | None = None,
        source: str = "api",
        conn: Conn | None = None,
    ) -> None:
        """Hold a saga: outcomes are still recorded, nothing new is sent until resumed."""
        await self._request(saga_id, "pause", reason, operator, source, conn)

    async def resume_saga(
        self,
        saga_id: UUID | str,
        *,
        operator: str | None = None,
        source: str = "api",
        conn: Conn | None = None,
    ) -> None:
        """Let a paused saga go on (what it waited for is sent now)."""
        await self._request(saga_id, "resume", None, operator, source, conn)

    async def mark_compensated(
        self,
        saga_id: UUID | str,
        step: str,
        *,
        reason: str | None = None,
        operator: str | None = None,
        source: str = "api",
        conn: Conn | None = None,
    ) -> None:
        """The undo of ``step``, whose compensation failed for good, was done by hand:
        the coordinator records the step as compensated (``by_operator``) and goes
        on compensating the steps before it.

        For a saga ``COMPENSATION_FAILED`` whose failed compensation no operator
        action on its command can settle: it failed a business rule, was cancelled
        before it ran, or its data could not be built. If the compensation's
        command is in the troubleshooting queue it is cancelled there too, in the
        same transaction, so that it cannot run again. Refused
        (:class:`InvalidStateError`) unless that step's compensation failed and its
        command is not running again (an operator retried it: its outcome decides)."""
        step_name = text_arg(step, "step", most=MAX_NAME_CHARS)
        await self._request(saga_id, "mark_compensated", reason, operator, source, conn, step_name)

    async def _request(
        self,
        saga_id: object,
        action: str,
        reason: object,
        operator: object,
        source: object,
        conn: Conn | None,
        step_name: str | None = None,
    ) -> None:
        sid = uuid_arg(saga_id, "saga_id")
        why = reason_arg(reason)
        who = operator_arg(operator)
        where = source_arg(source)
        if conn is not None:
            conn_arg(conn)
        await self._bus.create_queues([SAGA_QUEUE], conn=conn)
        async with borrow(self._bus.pool, conn) as c, atomic(c):
            # first: a request carried out commits with the saga's row and leaves the
            # queue, so if none is on its way now, the row read next shows them all
            on_their_way = await _requests_on_their_way(c, sid)
            record = await fetch_saga(c, sid)
            if record is None:
                raise SagaNotFoundError(f"no saga {sid}")
            state = record.state
            refusal = cancel_refusal(state)  # an ended saga refuses every request
            if refusal is not None and (action == "cancel" or state.status.is_final):
                raise InvalidStateError(f"saga {sid} {refusal}")
            # the status row is the whole story when no request is on its way: one
            # that cannot apply is refused now (else the coordinator decides, after
            # those before it, and records one that no longer applies as refused)
            if not on_their_way and (why_not := request_refusal(state, action)) is not None:
                raise InvalidStateError(why_not)
            in_tsq = None
            if step_name is not None:
                in_tsq = await self._failed_compensation(c, state, step_name)
            if action == "cancel":
                for step in state.steps.values():
                    if step.status is StepStatus.WAITING_ON_OPERATOR:
                        # one an operator retried (or finished) meanwhile is left
                        # alone: its outcome comes back, then the saga compensates
                        with contextlib.suppress(InvalidStateError, CommandNotFoundError):
                            await self._bus.troubleshooting.cancel(
                                step.domain,
                                step.command_id,
                                reason=why or f"saga {sid} cancelled",
                                operator=who,
                                source=where,
                                conn=c,
                            )
            await c.execute(
                sql.SQL(q.SEND_CONTROL).format(queue=queue_table(SAGA_QUEUE)),
                {
                    "message": dumps(
                        {
                            "kind": "control",
                            "saga_id": str(sid),
                            "action": action,
                            "reason": why,
                            "operator": who,
                            "source": where,
                            **({} if step_name is None else {"step": step_name}),
                        }
                    )
                },
            )
            if in_tsq is not None:
                # after the request (the coordinator reads it first, so the saga's
                # event says who and why), the command leaves the TSQ: its reply
                # then finds the step settled
                await self._bus.troubleshooting.cancel(
                    in_tsq[0],
                    in_tsq[1],
                    reason=why or f"undone by hand (saga {sid}, step {step_name})",
                    operator=who,
                    source=where,
                    conn=c,
                )

    async def _failed_compensation(
        self, c: Conn, state: SagaState, step: str
    ) -> tuple[str, UUID] | None:
        """Check that ``step``'s compensation failed and nothing runs it again; its
        command (domain, id) when that waits in the troubleshooting queue."""
        cid = failed_compensation(state, step).compensation_id
        if cid is None:
            return None  # never sent: its data could not be built
        cur = await c.execute(q.SAGA_COMMAND, {"saga_id": state.saga_id, "command_id": cid})
        row = await cur.fetchone()
        if row is None or row[1] in (CommandStatus.FAILED.value, CommandStatus.CANCELLED.value):
            return None
        if row[1] == CommandStatus.IN_TROUBLESHOOTING_QUEUE.value:
            return str(row[0]), cid
        # an operator retried (or completed) it: its outcome is on its way to the saga
        raise InvalidStateError(
            f"the compensation of step {step!r} ({row[0]} command {cid}) is {row[1]} "
            "again: wait for its outcome"
        )

    async def cancel_preview(
        self,
        saga_id: UUID | str,
        definitions: Saga | SagaRegistry,
        *,
        conn: Conn | None = None,
    ) -> CancelPreview:
        """What :meth:`cancel_saga` would do now: the compensations, in the order
        the coordinator would run them (computed by the same function), and the
        steps it would wait for or withdraw. ``definitions``: the saga's definition
        (or a registry holding its name and version). :class:`SagaNotFoundError`
        for an unknown saga, :class:`ValidationError` when no definition matches."""
        sid = uuid_arg(saga_id, "saga_id")
        if isinstance(definitions, SagaRegistry):
            registry = definitions
        elif isinstance(definitions, Saga):
            registry = SagaRegistry([definitions])
        else:
            raise ValidationError(
                f"definitions must be a Saga or a SagaRegistry, got {show(definitions)}"
            )
        async with borrow(self._bus.pool, conn) as c:
            record = await fetch_saga(c, sid)
        if record is None:
            raise SagaNotFoundError(f"no saga {sid}")
        definition = registry.get(record.name, record.definition_version)
        if definition is None:
            raise ValidationError(
                f"no definition of saga {record.name!r} "
                f"version {record.definition_version} was given"
            )
        return preview_cancel(definition, record.state)

    # -- the projection -----------------------------------------------------------------

    async def verify_projection(self, *, conn: Conn | None = None) -> replay.SagaVerifyReport:
        """Compare every saga's status row with a replay of its events."""
        async with borrow(self._bus.pool, conn) as c:
            return await replay.verify(c)

    async def rebuild_projection(
        self, *, table: str = "saga_rebuild", replace_live: bool = False, conn: Conn | None = None
    ) -> int:
        """Recompute the saga rows from the events (see :func:`replay.rebuild`)."""
        replace_live = bool_arg(replace_live, "replace_live")
        async with borrow(self._bus.pool, conn) as c:
            return await replay.rebuild(c, table=table, replace_live=replace_live)
