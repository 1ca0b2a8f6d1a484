"""The troubleshooting queue (TSQ): commands that need a person.

A command lands here on a permanent failure, when its attempts run out, or when no
handler knows its type; its queue message is archived. Operators list them and
retry (re-queue with fresh attempts), cancel, or complete them by hand. Each
action is an event on the command's stream, recorded only if the command is
still in the TSQ at that moment.

:class:`TroubleshootingQueue` (``bus.troubleshooting``) is the one place these
operations live; each takes an optional ``conn=`` and so can join the caller's
transaction (a rollback there leaves no trace of the action), never committing
behind it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal
from uuid import UUID

import attrs
from psycopg_pool import AsyncConnectionPool

from commandbus import event_types as ev
from commandbus.arguments import int_arg, operator_arg, reason_arg, source_arg, uuid_arg
from commandbus.codec import dumps
from commandbus.engine.commands import recording
from commandbus.engine.commands.envelope import (
    REPLY_CANCELLED,
    REPLY_SUCCESS,
    encode_headers,
    message_from_sent,
    reply_for,
    trace_context,
)
from commandbus.engine.commands.read import (
    MAX_PAGE,
    CommandFilter,
    fetch_command,
    fetch_page,
    filter_arg,
    page_args,
)
from commandbus.engine.commands.store import Transition
from commandbus.engine.db.connect import Conn, atomic, borrow
from commandbus.engine.eventstore.store import EventStore
from commandbus.engine.queues import sql as queue_sql
from commandbus.engine.queues.tables import with_queue
from commandbus.errors import CommandNotFoundError, InvalidStateError, ValidationError
from commandbus.models import Command, CommandRecord, CommandStatus, NewEvent, Page
from commandbus.names import command_stream_id, validate_domain

_IN_TSQ = CommandStatus.IN_TROUBLESHOOTING_QUEUE
#: The most commands one "all matching" action may name.
MAX_MATCHING = 10_000

Action = Literal["retry", "cancel", "complete"]
#: (domain, command id) of commands in the TSQ
Targets = list[tuple[str, UUID]]


@attrs.frozen(kw_only=True)
class BulkOutcome:
    """What an action on many TSQ commands did: each acted on, or refused and why."""

    done: tuple[tuple[str, UUID], ...]
    #: (domain, command id, why): gone from the TSQ meanwhile, unknown...
    refused: tuple[tuple[str, UUID, str], ...]


def target(domain: object, command_id: object) -> tuple[str, UUID]:
    """The (domain, command id) an operator action names, checked and normalised."""
    return validate_domain(domain), uuid_arg(command_id, "command_id")


async def _in_tsq(conn: Conn, domain: str, command_id: UUID, action: str) -> CommandRecord:
    record = await fetch_command(conn, domain, command_id)
    if record is None:
        raise CommandNotFoundError(f"no command {command_id} in domain {domain!r}")
    if record.status is not _IN_TSQ:
        raise InvalidStateError(
            f"cannot {action} command {command_id}: it is {record.status.value}, "
            "not in the troubleshooting queue"
        )
    return record


def command_of(record: CommandRecord, sent: dict[str, Any], trace: dict[str, str]) -> Command:
    """The command as sent (for its reply), from its status row and ``CommandSent`` data."""
    return Command(
        domain=record.domain,
        command_id=record.command_id,
        command_type=record.command_type,
        data=sent.get("data") or {},
        correlation_id=record.correlation_id,
        reply_to=record.reply_to,
        saga_id=record.saga_id,
        batch_id=record.batch_id,
        max_attempts=record.max_attempts,
        trace_context=trace,
    )


async def record_one(conn: Conn, transition: Transition, action: str) -> None:
    """Record an operator's transition; InvalidStateError if the command moved meanwhile."""
    ok = await recording.record_transitions(conn, [transition])
    if not ok:
        raise InvalidStateError(
            f"cannot {action} command {transition.command_id}: it changed meanwhile"
        )


def operator_event(record: CommandRecord, event_type: str, data: dict[str, Any]) -> NewEvent:
    """An operator's event on a command's stream (caused by the command)."""
    return NewEvent(
        event_type=event_type,
        data=data,
        correlation_id=record.correlation_id,
        causation_id=record.command_id,
    )


class TroubleshootingQueue:
    """The troubleshooting queue (``bus.troubleshooting``): list, retry, cancel, complete.

    Every method takes an optional ``conn=``: on the caller's connection an action
    joins the caller's transaction (explicit or implicit) and is committed or
    rolled back by the caller; on an idle autocommit connection, or without one, it
    is atomic on its own. A refused action (:class:`InvalidStateError`,
    :class:`CommandNotFoundError`) undoes only its own work.
    """

    def __init__(self, pool: AsyncConnectionPool[Conn]) -> None:
        self._pool = pool
        self._events = EventStore(pool)

    async def list(
        self,
        where: CommandFilter | None = None,
        *,
        limit: int = 100,
        cursor: str | None = None,
        conn: Conn | None = None,
    ) -> Page:
        """Commands waiting in the troubleshooting queue matching ``where``, oldest first.

        ``where.status`` may be left out (or be ``IN_TROUBLESHOOTING_QUEUE``).
        """
        criteria = filter_arg(where)
        if criteria.status not in (None, _IN_TSQ):
            raise ValidationError(
                f"where.status must be None or {_IN_TSQ.value} for the troubleshooting "
                f"queue, got {criteria.status.value}"
            )
        limit, cursor = page_args(limit, cursor)
        async with borrow(self._pool, conn) as c:
            return await fetch_page(c, attrs.evolve(criteria, status=_IN_TSQ), limit, cursor)

    async def retry(
        self,
        domain: str,
        command_id: UUID | str,
        *,
        reason: str | None = None,
        operator: str | None = None,
        source: str = "api",
        conn: Conn | None = None,
    ) -> int:
        """Re-queue a TSQ command with fresh attempts; returns its new message id.

        ``operator``, ``reason`` and ``source`` (``api``, ``cli`` or ``web``) are
        recorded in the event: who, why and from where.
        """
        domain, cid = target(domain, command_id)
        reason = reason_arg(reason)
        operator = operator_arg(operator)
        source = source_arg(source)
        async with borrow(self._pool, conn) as c, atomic(c):
            record = await _in_tsq(c, domain, cid, "retry")
            sent, trace = await sent_event(self._events, c, domain, cid)
            cur = await c.execute(
                with_queue(queue_sql.SEND_MESSAGE, domain),
                {"message": message_from_sent(sent), "headers": encode_headers(trace)},
            )
            row = await cur.fetchone()
            assert row is not None
            msg_id = int(row[0])
            await record_one(
                c,
                Transition(
                    domain=domain,
                    command_id=cid,
                    expected_version=record.version,
                    events=[
                        operator_event(
                            record,
                            ev.COMMAND_RETRIED_BY_OPERATOR,
                            {
                                "msg_id": msg_id,
                                "previous_msg_id": record.msg_id,
                                "operator": operator,
                                "reason": reason,
                                "source": source,
                            },
                        )
                    ],
                ),
                "retry",
            )
            return msg_id

    async def cancel(
        self,
        domain: str,
        command_id: UUID | str,
        *,
        reason: str | None = None,
        operator: str | None = None,
        source: str = "api",
        conn: Conn | None = None,
    ) -> None:
        """Cancel a TSQ command for good (its reply, if any, says CANCELLED)."""
        domain, cid = target(domain, command_id)
        reason = reason_arg(reason)
        operator = operator_arg(operator)
        source = source_arg(source)
        await self._finish(
            conn,
            domain,
            cid,
            action="cancel",
            event_type=ev.COMMAND_CANCELLED_BY_OPERATOR,
            data={"reason": reason, "operator": operator, "source": source},
            outcome=REPLY_CANCELLED,
        )

    async def complete(
        self,
        domain: str,
        command_id: UUID | str,
        *,
        result: Any = None,
        reason: str | None = None,
        operator: str | None = None,
        source: str = "api",
        conn: Conn | None = None,
    ) -> None:
        """Mark a TSQ command completed by hand with ``result`` (its reply says SUCCESS)."""
        domain, cid = target(domain, command_id)
        reason = reason_arg(reason)
        operator = operator_arg(operator)
        source = source_arg(source)
        dumps(result, what="result")
        await self._finish(
            conn,
            domain,
            cid,
            action="complete",
            event_type=ev.COMMAND_COMPLETED_BY_OPERATOR,
            data={"result": result, "operator": operator, "reason": reason, "source": source},
            outcome=REPLY_SUCCESS,
            result=result,
        )

    async def matching(
        self,
        where: CommandFilter | None = None,
        *,
        most: int = MAX_MATCHING,
        conn: Conn | None = None,
    ) -> Targets:
        """The (domain, command id) of every TSQ command matching ``where``, oldest first.

        The set an "all matching" action acts on, read once (index range scans, a
        page at a time): act on exactly these with :meth:`act_on`, after checking
        that it is the set the operator confirmed. More than ``most`` matching is a
        :class:`ValidationError` (narrow the filter).
        """
        most = int_arg(most, "most", low=1, high=1_000_000)
        criteria = filter_arg(where)
        found: Targets = []
        cursor: str | None = None
        async with borrow(self._pool, conn) as c:
            while True:
                page = await self.list(criteria, limit=MAX_PAGE, cursor=cursor, conn=c)
                found.extend((r.domain, r.command_id) for r in page.items)
                if len(found) > most:
                    raise ValidationError(
                        f"more than {most} commands in the troubleshooting queue match: "
                        "narrow the filter"
                    )
                cursor = page.next_cursor
                if cursor is None:
                    return found

    async def act_on(
        self,
        action: Action,
        targets: Iterable[tuple[str, UUID | str]],
        *,
        reason: str | None = None,
        operator: str | None = None,
        source: str = "api",
        result: Any = None,
    ) -> BulkOutcome:
        """Retry, cancel or complete (with ``result``) each of ``targets``: (domain, id).

        Each command is acted on in a transaction of its own, as :meth:`retry`,
        :meth:`cancel` or :meth:`complete` do: one that left the TSQ meanwhile (or
        is unknown) is refused and listed in ``refused`` while the others go on, and
        no lock is held on more than one command at a time. Arguments are checked
        first, for all of them, before anything is written.
        """
        if action not in ("retry", "cancel", "complete"):
            raise ValidationError(f"action must be retry, cancel or complete, got {action!r}")
        if isinstance(targets, str | bytes):
            raise ValidationError("targets must be (domain, command id) pairs, got a string")
        checked: list[tuple[str, UUID]] = []
        for i, item in enumerate(targets):
            if not isinstance(item, tuple | list) or len(item) != 2:
                raise ValidationError(f"targets[{i}] must be a (domain, command id) pair")
            checked.append(target(item[0], item[1]))
        reason = reason_arg(reason)
        operator = operator_arg(operator)
        source = source_arg(source)
        if action == "complete":
            dumps(result, what="result")
        done: list[tuple[str, UUID]] = []
        refused: list[tuple[str, UUID, str]] = []
        for domain, cid in checked:
            try:
                if action == "retry":
                    await self.retry(domain, cid, reason=reason, operator=operator, source=source)
                elif action == "cancel":
                    await self.cancel(domain, cid, reason=reason, operator=operator, source=source)
                else:
                    await self.complete(
                        domain, cid, result=result, reason=reason, operator=operator, source=source
                    )
            except (InvalidStateError, CommandNotFoundError) as exc:
                refused.append((domain, cid, exc.message))
            else:
                done.append((domain, cid))
        return BulkOutcome(done=tuple(done), refused=tuple(refused))

    async def _finish(
        self,
        conn: Conn | None,
        domain: str,
        command_id: UUID,
        *,
        action: str,
        event_type: str,
        data: dict[str, Any],
        outcome: str,
        result: Any = None,
    ) -> None:
        """Record an operator's final word on a TSQ command, with its reply if any."""
        async with borrow(self._pool, conn) as c, atomic(c):
            record = await _in_tsq(c, domain, command_id, action)
            sent, trace = await sent_event(self._events, c, domain, command_id)
            await record_one(
                c,
                Transition(
                    domain=domain,
                    command_id=command_id,
                    expected_version=record.version,
                    events=[operator_event(record, event_type, data)],
                    reply=reply_for(command_of(record, sent, trace), outcome, result=result),
                ),
                action,
            )


async def sent_event(
    events: EventStore, conn: Conn, domain: str, command_id: UUID
) -> tuple[dict[str, Any], dict[str, str]]:
    """A command's ``CommandSent`` data and the trace context it was sent with."""
    stream = await events.read_stream(command_stream_id(domain, command_id), conn=conn)
    for e in stream:
        if e.event_type == ev.COMMAND_SENT:
            return e.data, trace_context(e.metadata.get("trace"))
    raise CommandNotFoundError(f"command {command_id} has no {ev.COMMAND_SENT} event")
