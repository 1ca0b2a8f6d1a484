"""Named operations on commands, each one statement, each on the caller's connection.

The bus, the worker and the troubleshooting actions are built from these; passing
one connection to several of them puts them in one transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any, Literal
from uuid import UUID

import attrs
from psycopg import sql
from psycopg.adapt import PyFormat

from commandbus.engine import queries
from commandbus.engine.connections import Conn
from commandbus.engine.event_store import EventColumns
from commandbus.engine.models import NewEvent
from commandbus.engine.names import command_stream_id
from commandbus.engine.queues import archive_table, queue_table, with_queue
from commandbus.projections.command_projection import Patch, merge, patch_for

QueueOp = Literal["delete", "archive", "retry", "none"]


@attrs.frozen(kw_only=True)
class OutgoingCommand:
    """A command ready to insert: validated, with its JSON already rendered."""

    domain: str
    command_id: UUID
    command_type: str
    correlation_id: UUID
    causation_id: UUID | None
    reply_to: str | None
    saga_id: UUID | None
    max_attempts: int
    delay_seconds: float
    message: str
    headers: str
    metadata: str


@attrs.frozen(kw_only=True)
class Reply:
    """A reply message for a command's ``reply_to`` queue."""

    queue: str
    message: str
    headers: str


@attrs.frozen(kw_only=True)
class Transition:
    """One recorded step of a command: events, queue action and optional reply."""

    domain: str
    command_id: UUID
    expected_version: int
    events: Sequence[NewEvent]
    msg_id: int | None = None
    queue_op: QueueOp = "none"
    #: for ``retry``: seconds after the recording transaction when the message shows again
    retry_delay: float | None = None
    reply: Reply | None = None

    @property
    def stream_id(self) -> str:
        return command_stream_id(self.domain, self.command_id)


@attrs.frozen(kw_only=True)
class ReadMessage:
    """A message taken from a domain queue, with its command's projected state."""

    msg_id: int
    read_ct: int
    message: Any
    headers: Any
    version: int | None
    attempts: int | None
    status: str | None


async def send_one(conn: Conn, cmd: OutgoingCommand) -> int | None:
    """Insert one command; returns its message id, or None if the id already exists."""
    cur = await conn.execute(
        with_queue(queries.SEND_ONE, cmd.domain),
        {
            "stream_id": command_stream_id(cmd.domain, cmd.command_id),
            "domain": cmd.domain,
            "command_id": cmd.command_id,
            "command_type": cmd.command_type,
            "delay": cmd.delay_seconds,
            "message": cmd.message,
            "headers": cmd.headers,
            "correlation_id": cmd.correlation_id,
            "causation_id": cmd.causation_id,
            "metadata": cmd.metadata,
            "max_attempts": cmd.max_attempts,
            "reply_to": cmd.reply_to,
            "saga_id": cmd.saga_id,
        },
    )
    row = await cur.fetchone()
    return None if row is None else int(row[0])


@lru_cache(maxsize=256)
def _send_batch_statement(domains: tuple[str, ...]) -> sql.Composed:
    parts: list[sql.Composable] = [sql.SQL(queries.SEND_BATCH_HEAD)]
    union: list[sql.Composable] = []
    for i, domain in enumerate(domains):
        cte = sql.Identifier(f"msg_{i}")
        parts.append(
            sql.SQL(queries.SEND_BATCH_QUEUE).format(
                cte=cte, queue=queue_table(domain), domain=sql.Literal(domain)
            )
        )
        union.append(sql.SQL("SELECT msg_id, command_id FROM {}").format(cte))
    parts.append(sql.SQL(queries.SEND_BATCH_TAIL).format(union=sql.SQL(" UNION ALL ").join(union)))
    return sql.Composed(parts)


async def send_many(
    conn: Conn,
    cmds: Sequence[OutgoingCommand],
    *,
    batch_id: UUID,
    batch_stream: str,
    batch_name: str | None,
    batch_data: str,
    batch_correlation_id: UUID,
    metadata: str,
) -> list[tuple[UUID, int | None, bool]]:
    """Insert many commands and their batch; returns (command id, msg id, was new).

    Nothing but streams is written when any command id already exists: the caller
    must then roll back.
    """
    domains = tuple(sorted({c.domain for c in cmds}))
    params: dict[str, Any] = {
        "stream_ids": [command_stream_id(c.domain, c.command_id) for c in cmds],
        "domains": [c.domain for c in cmds],
        "command_ids": [c.command_id for c in cmds],
        "types": [c.command_type for c in cmds],
        "messages": [c.message for c in cmds],
        "headers": [c.headers for c in cmds],
        "corr": [c.correlation_id for c in cmds],
        "caus": [c.causation_id for c in cmds],
        "max_attempts": [c.max_attempts for c in cmds],
        "reply_to": [c.reply_to for c in cmds],
        "saga_ids": [c.saga_id for c in cmds],
        "delays": [c.delay_seconds for c in cmds],
        "batch_stream": batch_stream,
        "expected_streams": len(cmds) + 1,
        "batch_id": batch_id,
        "batch_name": batch_name,
        "batch_data": batch_data,
        "batch_corr": batch_correlation_id,
        "metadata": metadata,
    }
    cur = await conn.execute(_send_batch_statement(domains), params)
    return [(r[0], r[1], r[2]) for r in await cur.fetchall()]


async def read_batch(conn: Conn, domain: str, *, qty: int, vt_seconds: float) -> list[ReadMessage]:
    """Take up to ``qty`` visible messages of a domain queue for ``vt_seconds``."""
    cur = await conn.execute(
        _read_statement(domain), {"qty": qty, "vt": vt_seconds, "domain": domain}
    )
    return [
        ReadMessage(
            msg_id=r[0],
            read_ct=r[1],
            message=r[2],
            headers=r[3],
            version=r[4],
            attempts=r[5],
            status=r[6],
        )
        for r in await cur.fetchall()
    ]


@lru_cache(maxsize=256)
def _read_statement(domain: str) -> sql.Composed:
    return with_queue(queries.READ_BATCH, domain)


async def seconds_until_next_visible(conn: Conn, domain: str) -> float | None:
    """Seconds until the queue's next invisible message shows (None: queue empty)."""
    cur = await conn.execute(with_queue(queries.NEXT_VISIBLE, domain))
    row = await cur.fetchone()
    return None if row is None or row[0] is None else float(row[0])


async def release(
    conn: Conn, domain: str, started: Sequence[int], unstarted: Sequence[int] = ()
) -> None:
    """Make messages visible again at once (``unstarted`` ones give back their read)."""
    if started or unstarted:
        await conn.execute(
            with_queue(queries.RELEASE, domain),
            {"started": list(started), "unstarted": list(unstarted)},
        )


async def archive(conn: Conn, domain: str, msg_ids: Sequence[int]) -> None:
    """Move messages from the queue to its archive table."""
    await conn.execute(with_queue(queries.ARCHIVE, domain), {"msg_ids": list(msg_ids)})


async def extend_visibility(
    conn: Conn, domain: str, msg_id: int, seconds: float
) -> datetime | None:
    cur = await conn.execute(
        with_queue(queries.EXTEND_VT, domain), {"msg_id": msg_id, "seconds": seconds}
    )
    row = await cur.fetchone()
    return None if row is None else row[0]


@lru_cache(maxsize=512)
def _transition_statement(domains: tuple[str, ...], replies: tuple[str, ...]) -> sql.Composed:
    parts: list[sql.Composable] = [sql.SQL(queries.TRANSITION_HEAD)]
    for i, domain in enumerate(domains):
        parts.append(
            sql.SQL(queries.TRANSITION_QUEUE).format(
                queue=queue_table(domain),
                archive=archive_table(domain),
                deleted=sql.Identifier(f"deleted_{i}"),
                moved=sql.Identifier(f"moved_{i}"),
                archived=sql.Identifier(f"archived_{i}"),
                delayed=sql.Identifier(f"delayed_{i}"),
            )
        )
    for i, queue in enumerate(replies):
        parts.append(
            sql.SQL(queries.TRANSITION_REPLY).format(
                cte=sql.Identifier(f"reply_{i}"),
                queue=queue_table(queue),
                ids=sql.Placeholder(f"r{i}_ids", PyFormat.BINARY),
                messages=sql.Placeholder(f"r{i}_messages", PyFormat.BINARY),
                headers=sql.Placeholder(f"r{i}_headers", PyFormat.BINARY),
            )
        )
    parts.append(sql.SQL(queries.TRANSITION_TAIL))
    return sql.Composed(parts)


def _patch(events: Sequence[NewEvent]) -> Patch:
    result = Patch()
    for event in events:
        p = patch_for(event.event_type, event.data)
        if p is not None:
            result = merge(result, p)
    return result


async def record_transitions(conn: Conn, transitions: Sequence[Transition]) -> set[str]:
    """Record many command transitions in ONE statement.

    Each transition is recorded only if its stream is still at its expected version;
    the others (a duplicate delivery that lost the race, say) change nothing.
    Returns the stream ids that were recorded. Streams must be distinct.
    """
    from commandbus.engine.codec import dumps

    cols = EventColumns()
    s_ids: list[str] = []
    s_expected: list[int] = []
    s_new: list[int] = []
    s_msg: list[int | None] = []
    s_op: list[str] = []
    s_delay: list[float | None] = []
    p_domains: list[str] = []
    p_cmd: list[UUID] = []
    p_status: list[str | None] = []
    p_attempts: list[int | None] = []
    p_error: list[str | None] = []
    p_result: list[str | None] = []
    p_msg: list[int | None] = []
    op_domains: set[str] = set()
    replies: dict[str, tuple[list[str], list[str], list[str]]] = {}
    for t in transitions:
        sid = t.stream_id
        new_version = t.expected_version + len(t.events)
        s_ids.append(sid)
        s_expected.append(t.expected_version)
        s_new.append(new_version)
        s_msg.append(t.msg_id)
        s_op.append(t.queue_op)
        s_delay.append(t.retry_delay)
        if t.queue_op != "none":
            op_domains.add(t.domain)
        for i, event in enumerate(t.events, start=1):
            cols.add(sid, t.expected_version + i, event)
        patch = _patch(t.events)
        p_domains.append(t.domain)
        p_cmd.append(t.command_id)
        p_status.append(None if patch.status is None else patch.status.value)
        p_attempts.append(patch.attempts)
        p_error.append(None if patch.last_error is None else dumps(patch.last_error))
        p_result.append(None if patch.result is None else dumps(patch.result))
        p_msg.append(patch.msg_id)
        if t.reply is not None:
            r = replies.setdefault(t.reply.queue, ([], [], []))
            r[0].append(sid)
            r[1].append(t.reply.message)
            r[2].append(t.reply.headers)
    reply_queues = tuple(sorted(replies))
    params: dict[str, Any] = {
        "s_ids": s_ids,
        "s_expected": s_expected,
        "s_new": s_new,
        "s_msg": s_msg,
        "s_op": s_op,
        "s_delay": s_delay,
        **cols.params(),
        "p_ids": s_ids,
        "p_domains": p_domains,
        "p_cmd": p_cmd,
        "p_version": s_new,
        "p_status": p_status,
        "p_attempts": p_attempts,
        "p_error": p_error,
        "p_result": p_result,
        "p_msg": p_msg,
    }
    for i, queue in enumerate(reply_queues):
        ids, messages, headers = replies[queue]
        params[f"r{i}_ids"] = ids
        params[f"r{i}_messages"] = messages
        params[f"r{i}_headers"] = headers
    stmt = _transition_statement(tuple(sorted(op_domains)), reply_queues)
    cur = await conn.execute(stmt, params)
    return {r[0] for r in await cur.fetchall()}
