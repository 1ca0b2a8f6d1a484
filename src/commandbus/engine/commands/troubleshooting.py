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

from typing import Any
from uuid import UUID

import attrs
from psycopg_pool import AsyncConnectionPool

from commandbus import event_types as ev
from commandbus.arguments import operator_arg, reason_arg, uuid_arg
from commandbus.codec import dumps
from commandbus.engine.commands import store as command_store
from commandbus.engine.commands.envelope import (
    REPLY_CANCELLED,
    REPLY_SUCCESS,
    encode_headers,
    message_from_sent,
    reply_for,
    trace_context,
)
from commandbus.engine.commands.read import (
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
    ok = await command_store.record_transitions(conn, [transition])
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
        operator: str | None = None,
        conn: Conn | None = None,
    ) -> int:
        """Re-queue a TSQ command with fresh attempts; returns its new message id."""
        domain, cid = target(domain, command_id)
        operator = operator_arg(operator)
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
        conn: Conn | None = None,
    ) -> None:
        """Cancel a TSQ command for good (its reply, if any, says CANCELLED)."""
        domain, cid = target(domain, command_id)
        reason = reason_arg(reason)
        operator = operator_arg(operator)
        await self._finish(
            conn,
            domain,
            cid,
            action="cancel",
            event_type=ev.COMMAND_CANCELLED_BY_OPERATOR,
            data={"reason": reason, "operator": operator},
            outcome=REPLY_CANCELLED,
        )

    async def complete(
        self,
        domain: str,
        command_id: UUID | str,
        *,
        result: Any = None,
        operator: str | None = None,
        conn: Conn | None = None,
    ) -> None:
        """Mark a TSQ command completed by hand with ``result`` (its reply says SUCCESS)."""
        domain, cid = target(domain, command_id)
        operator = operator_arg(operator)
        dumps(result, what="result")
        await self._finish(
            conn,
            domain,
            cid,
            action="complete",
            event_type=ev.COMMAND_COMPLETED_BY_OPERATOR,
            data={"result": result, "operator": operator},
            outcome=REPLY_SUCCESS,
            result=result,
        )

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
