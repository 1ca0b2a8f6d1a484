"""An operator's cancel of a command: one waiting to run, or one in the TSQ.

A command waiting to run (PENDING, or RETRY_SCHEDULED between attempts) is
cancelled in ONE transaction that locks its status row, then its queue message
(the order in which a worker's outcome takes them), and refuses while a worker
holds the message: a delivery counted (``read_ct``) beyond the attempts recorded
whose visibility timeout has not run out. Otherwise the message is deleted and
``CommandCancelledByOperator`` (operator, reason) recorded at the version read,
with a ``CANCELLED`` reply to ``reply_to`` (a saga then compensates). A reader
skips the locked message and a read that took it first is seen once it commits,
so a command ends either cancelled without running or run by a worker, never
both. A command in the troubleshooting queue is cancelled as
:meth:`TroubleshootingQueue.cancel` does it (the same event and reply).
"""

from __future__ import annotations

from datetime import UTC
from typing import Any
from uuid import UUID

from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from commandbus import event_types as ev
from commandbus.arguments import operator_arg, reason_arg, source_arg
from commandbus.engine.commands import sql as q
from commandbus.engine.commands.envelope import REPLY_CANCELLED, reply_for
from commandbus.engine.commands.read import to_record
from commandbus.engine.commands.store import QueueOp, Transition
from commandbus.engine.commands.troubleshooting import (
    TroubleshootingQueue,
    command_of,
    operator_event,
    record_one,
    sent_event,
    target,
)
from commandbus.engine.db.connect import Conn, atomic, borrow
from commandbus.engine.eventstore.store import EventStore
from commandbus.engine.queues import sql as queue_sql
from commandbus.engine.queues.tables import with_queue
from commandbus.errors import CommandNotFoundError, InvalidStateError
from commandbus.models import CommandRecord, CommandStatus
from commandbus.names import validate_queue_name


async def _lock_command(conn: Conn, domain: str, command_id: UUID) -> CommandRecord | None:
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(q.LOCK_COMMAND, {"domain": domain, "command_id": command_id})
    row = await cur.fetchone()
    return None if row is None else to_record(row)


async def _lock_message(conn: Conn, record: CommandRecord) -> QueueOp:
    """Lock the command's queue message; refuse if a worker holds it.

    Returns what to do with the message: delete it, or nothing when there is none
    (deleted by hand, say: the command can never run then).
    """
    if record.msg_id is None:
        return "none"
    table = f"pgmq.q_{validate_queue_name(record.domain)}"
    cur = await conn.execute(queue_sql.QUEUE_TABLE_EXISTS, {"table": table})
    row = await cur.fetchone()
    if row is None or not row[0]:
        return "none"
    cur = await conn.execute(
        with_queue(queue_sql.LOCK_MESSAGE, record.domain), {"msg_id": record.msg_id}
    )
    message = await cur.fetchone()
    if message is None:
        return "none"
    invisible, read_ct, visible_at = message
    if invisible and read_ct > record.attempts:
        raise InvalidStateError(
            f"cannot cancel command {record.command_id}: it is in flight (a worker has "
            f"it, until {visible_at.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC at most); "
            "try again once the attempt has ended",
            details={"in_flight": True, "visible_at": visible_at.isoformat()},
        )
    return "delete"


async def cancel_on(
    conn: Conn,
    domain: str,
    command_id: UUID,
    *,
    reason: str | None,
    operator: str | None,
    source: str = "api",
    pool: AsyncConnectionPool[Conn],
) -> CommandStatus:
    """Cancel one command on ``conn`` (in the caller's atomic block); see the module.

    Returns the status it was cancelled from.
    """
    record = await _lock_command(conn, domain, command_id)
    if record is None:
        raise CommandNotFoundError(f"no command {command_id} in domain {domain!r}")
    status = record.status
    if status is CommandStatus.IN_TROUBLESHOOTING_QUEUE:
        tsq = TroubleshootingQueue(pool)  # runs on conn: never borrows from the pool
        await tsq.cancel(
            domain, command_id, reason=reason, operator=operator, source=source, conn=conn
        )
        return status
    if status.is_final:
        raise InvalidStateError(f"cannot cancel command {command_id}: it is already {status.value}")
    queue_op = await _lock_message(conn, record)
    sent, trace = await sent_event(EventStore(pool), conn, domain, command_id)
    data: dict[str, Any] = {"reason": reason, "operator": operator, "source": source}
    await record_one(
        conn,
        Transition(
            domain=domain,
            command_id=command_id,
            expected_version=record.version,
            events=[operator_event(record, ev.COMMAND_CANCELLED_BY_OPERATOR, data)],
            msg_id=record.msg_id,
            queue_op=queue_op,
            reply=reply_for(command_of(record, sent, trace), REPLY_CANCELLED),
        ),
        "cancel",
    )
    return status


class CommandCancels:
    """``cancel_command``: an operator withdraws a command (a part of the bus)."""

    @property
    def pool(self) -> AsyncConnectionPool[Conn]:
        raise NotImplementedError

    async def cancel_command(
        self,
        domain: str,
        command_id: UUID | str,
        *,
        reason: str | None = None,
        operator: str | None = None,
        source: str = "api",
        conn: Conn | None = None,
    ) -> CommandStatus:
        """Cancel a command that has not run yet, or waits in the troubleshooting queue.

        A PENDING or RETRY_SCHEDULED command is cancelled unless a worker is running
        it at that moment (:class:`~commandbus.errors.InvalidStateError` saying it
        is in flight: try again once that attempt has ended); its queue message is
        deleted in the same transaction, so no worker runs it afterwards. A command
        in the troubleshooting queue is cancelled as ``bus.troubleshooting.cancel``
        does. Either way ``CommandCancelledByOperator`` records ``reason``,
        ``operator`` and ``source`` (``api``, ``cli`` or ``web``), and a command
        with ``reply_to`` (a saga's step) gets a ``CANCELLED`` reply. A command
        already COMPLETED, FAILED or CANCELLED is an
        :class:`~commandbus.errors.InvalidStateError`, an unknown one a
        :class:`~commandbus.errors.CommandNotFoundError`. Returns the status it was
        cancelled from. With ``conn=`` it joins the caller's transaction (a refusal
        undoes only its own work).
        """
        domain, cid = target(domain, command_id)
        reason = reason_arg(reason)
        operator = operator_arg(operator)
        source = source_arg(source)
        async with borrow(self.pool, conn) as c, atomic(c):
            return await cancel_on(
                c, domain, cid, reason=reason, operator=operator, source=source, pool=self.pool
            )
