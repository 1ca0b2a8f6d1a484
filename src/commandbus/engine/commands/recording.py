"""Recording command transitions: each one's events, status row, queue action and
reply, for many commands in ONE statement, each only if its stream is still at
the version it was read at."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from psycopg import sql

from commandbus import event_types as ev
from commandbus.codec import dumps_document
from commandbus.engine.commands import sql as queries
from commandbus.engine.commands.status import Patch, merge, patch_for
from commandbus.engine.commands.store import Reply, Transition, archive_move
from commandbus.engine.db.connect import Conn
from commandbus.engine.eventstore.store import event_json
from commandbus.engine.queues import sql as queue_sql
from commandbus.engine.queues.tables import queue_table, with_queue
from commandbus.models import NewEvent

_NO_PATCH = Patch()


@lru_cache(maxsize=512)
def transition_statement(
    domains: tuple[str, ...], replies: tuple[str, ...], *, all_applied: bool = False
) -> sql.Composed:
    """The statement of :func:`record_transitions`: queue actions on ``domains``, replies
    into ``replies`` (both sorted); ``all_applied``: it fails unless every transition
    is recorded (for a :class:`~commandbus.engine.db.script.Script`)."""
    parts: list[sql.Composable] = [sql.SQL(queries.TRANSITION_HEAD)]
    for i, domain in enumerate(domains):
        literal = sql.Literal(domain)
        archived = sql.SQL(queries.TRANSITION_ARCHIVED).format(domain=literal)
        parts.append(
            sql.SQL(queries.TRANSITION_QUEUE).format(
                queue=queue_table(domain),
                domain=literal,
                deleted=sql.Identifier(f"deleted_{i}"),
                archive=archive_move(domain, archived, f"_{i}"),
                delayed=sql.Identifier(f"delayed_{i}"),
            )
        )
    for i, queue in enumerate(replies):
        parts.append(
            sql.SQL(queries.TRANSITION_REPLY).format(
                cte=sql.Identifier(f"reply_{i}"),
                queue=queue_table(queue),
                reply_queue=sql.Literal(queue),
            )
        )
    parts.append(
        sql.SQL(queries.TRANSITION_ALL_APPLIED if all_applied else queries.TRANSITION_TAIL)
    )
    return sql.Composed(parts)


@lru_cache(maxsize=512)
def _transition_query(
    domains: tuple[str, ...], replies: tuple[str, ...], *, all_applied: bool = False
) -> bytes:
    """:func:`transition_statement`, rendered once (psycopg would render it per call)."""
    return transition_statement(domains, replies, all_applied=all_applied).as_bytes()


def _patch(events: Sequence[NewEvent]) -> Patch:
    if len(events) == 1:
        return patch_for(events[0].event_type, events[0].data) or _NO_PATCH
    result = _NO_PATCH
    for event in events:
        p = patch_for(event.event_type, event.data)
        if p is not None:
            result = merge(result, p)
    return result


async def record_transitions(
    conn: Conn, transitions: Sequence[Transition], *, without_replies_to: str | None = None
) -> set[str]:
    """Record many command transitions in ONE statement.

    Each transition is recorded only if its stream is still at its expected version;
    the others (a duplicate delivery that lost the race, say) change nothing.
    Returns the stream ids that were recorded. Streams must be distinct.
    ``without_replies_to``: replies to that queue are not sent (the caller acts on
    them in the same transaction, or sends them with :func:`send_replies`).
    """
    query, params = _record_transitions(transitions, without_replies_to, all_applied=False)
    cur = await conn.execute(query, params)
    return {r[0] for r in await cur.fetchall()}


def record_transitions_all_applied(
    transitions: Sequence[Transition], *, without_replies_to: str | None = None
) -> tuple[bytes, dict[str, Any]]:
    """:func:`record_transitions` for a :class:`~commandbus.engine.db.script.Script`:
    the statement fails (undoing the script) unless every transition is recorded."""
    return _record_transitions(transitions, without_replies_to, all_applied=True)


def _record_transitions(
    transitions: Sequence[Transition], without_replies_to: str | None, *, all_applied: bool
) -> tuple[bytes, dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    op_domains: set[str] = set()
    reply_queues: set[str] = set()
    for t in transitions:
        patch = _patch(t.events)
        if t.queue_op != "none":
            op_domains.add(t.domain)
        row = {
            "stream_id": t.stream_id,
            "expected": t.expected_version,
            "new_version": t.expected_version + len(t.events),
            "msg_id": t.msg_id,
            "queue_op": t.queue_op,
            "delay": t.retry_delay,
            "domain": t.domain,
            "command_id": str(t.command_id),
            "status": None if patch.status is None else patch.status.value,
            "attempts": patch.attempts,
            "last_error": patch.last_error,
            "result": patch.result,
            "new_msg_id": patch.msg_id,
            "events": [event_json(e) for e in t.events],
        }
        if t.reply is not None and t.reply.queue != without_replies_to:
            reply_queues.add(t.reply.queue)
            row["reply_queue"] = t.reply.queue
            row["reply"] = {"message": t.reply.message, "headers": t.reply.headers}
        rows.append(row)
    stmt = _transition_query(
        tuple(sorted(op_domains)), tuple(sorted(reply_queues)), all_applied=all_applied
    )
    params: dict[str, Any] = {
        "transitions": dumps_document(rows, what="command transition"),
        "command_retry_scheduled": ev.COMMAND_RETRY_SCHEDULED,
    }
    if all_applied:
        params["expected_rows"] = len(rows)
    return stmt, params


async def send_replies(conn: Conn, replies: Sequence[Reply]) -> None:
    """Send replies as messages of their queues (one statement per queue)."""
    for query, params in send_replies_statements(replies):
        await conn.execute(query, params)


def send_replies_statements(replies: Sequence[Reply]) -> list[tuple[sql.Composed, dict[str, Any]]]:
    """The statements of :func:`send_replies`."""
    by_queue: dict[str, list[dict[str, Any]]] = {}
    for r in replies:
        by_queue.setdefault(r.queue, []).append({"message": r.message, "headers": r.headers})
    return [
        (with_queue(queue_sql.SEND_REPLIES, queue), {"replies": dumps_document(rows, what="reply")})
        for queue, rows in sorted(by_queue.items())
    ]
