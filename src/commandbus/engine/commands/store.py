"""Named operations on commands, each one statement, each on the caller's connection.

The bus, the worker and the troubleshooting actions are built from these; passing
one connection to several of them puts them in one transaction.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any, Literal
from uuid import UUID

import attrs
import psycopg
from psycopg import sql

from commandbus import event_types as ev
from commandbus.engine.commands import batch_status as batch_projection
from commandbus.engine.commands import sql as queries
from commandbus.engine.commands.status import (
    sql_set_by_event,
)
from commandbus.engine.db.connect import Conn
from commandbus.engine.db.script import send_pipelined
from commandbus.engine.queues import sql as queue_sql
from commandbus.engine.queues.tables import (
    archive_table,
    next_msg_id,
    queue_table,
    wakeup_channel,
    wakeup_setting,
    with_queue,
)
from commandbus.models import NewEvent
from commandbus.names import command_stream_id

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
    message: dict[str, Any]
    headers: dict[str, Any]


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
    #: the command's stream (computed from domain and id unless given)
    stream_id: str = attrs.field(
        default=attrs.Factory(
            lambda self: command_stream_id(self.domain, self.command_id), takes_self=True
        )
    )


@attrs.frozen(kw_only=True)
class ReadMessage:
    """A message taken from a domain queue, with its command's state.

    ``version``, ``attempts`` and ``status`` are the command's status row, or, if
    that row is missing, what the command's stream says; all are None only when
    the domain has no such command (a foreign message).
    """

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
        _send_one_statement(cmd.domain),
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
            "command_sent": ev.COMMAND_SENT,
        },
    )
    row = await cur.fetchone()
    return None if row is None else int(row[0])


@lru_cache(maxsize=256)
def _send_one_statement(domain: str) -> sql.Composed:
    return sql.SQL(queries.SEND_ONE).format(queue=queue_table(domain), msg_id=next_msg_id(domain))


def _next_msg_ids(domains: tuple[str, ...]) -> sql.Composable:
    """Each input row's next message id, from the queue of its ``domain``."""
    if len(domains) == 1:
        return next_msg_id(domains[0])
    whens = [sql.SQL("WHEN {} THEN {}").format(sql.Literal(d), next_msg_id(d)) for d in domains]
    return sql.SQL("CASE domain {} END").format(sql.SQL(" ").join(whens))


@lru_cache(maxsize=512)
def _send_statement(
    domains: tuple[str, ...],
    *,
    in_batch: bool,
    all_applied: bool = False,
    claimed: tuple[str, ...] = (),
) -> sql.Composed:
    """SEND_BATCH for commands of these (sorted) domains; ``in_batch``: they belong to
    ``%(batch_id)s`` (created after them by CREATE_BATCH); ``all_applied``: it fails
    unless every command is sent (for a :class:`Script`); ``claimed`` (with
    ``all_applied``): the domains whose messages are claimed as they are sent, each
    for ``%(claim_<its index in domains>)s`` seconds."""
    empty = sql.SQL("")
    parts: list[sql.Composable] = [
        sql.SQL(queries.SEND_BATCH_HEAD).format(
            msg_id=_next_msg_ids(domains),
            batch_id=sql.Placeholder("batch_id") if in_batch else sql.SQL("NULL::uuid"),
        )
    ]
    for i, domain in enumerate(domains):
        if domain in claimed:
            seconds: sql.Composable = sql.SQL("{}::float8").format(sql.Placeholder(f"claim_{i}"))
            read_ct, last_read_at = sql.SQL("1"), sql.SQL("clock_timestamp()")
            no_wakeup: sql.Composable = sql.SQL(
                "\n       AND (SELECT set_config({}, 'queued', true)) IS NOT NULL"
            ).format(sql.Literal(wakeup_setting(domain)))
        else:
            seconds, read_ct, last_read_at = sql.SQL("go.delay"), sql.SQL("0"), sql.SQL("NULL")
            no_wakeup = empty
        parts.append(
            sql.SQL(queries.SEND_BATCH_QUEUE).format(
                cte=sql.Identifier(f"msg_{len(parts) - 1}"),
                queue=queue_table(domain),
                domain=sql.Literal(domain),
                seconds=seconds,
                read_ct=read_ct,
                last_read_at=last_read_at,
                no_wakeup=no_wakeup,
            )
        )
    parts.append(sql.SQL(queries.SEND_BATCH_TAIL))
    assert all_applied or not claimed, "a claiming send is a script's (all applied)"
    parts.append(
        sql.SQL(queries.SEND_BATCH_ALL_APPLIED if all_applied else queries.SEND_BATCH_RESULT)
    )
    return sql.Composed(parts)


def send_batch_statement(domains: tuple[str, ...]) -> sql.Composed:
    """The statement of one part of :func:`send_many`: commands of these (sorted)
    domains, in a batch."""
    return _send_statement(domains, in_batch=True)


@lru_cache(maxsize=1)
def create_batch_statement() -> sql.Composed:
    """The statement that creates a batch after its commands (:func:`send_many`)."""
    return sql.SQL(queries.CREATE_BATCH).format(
        batch_columns=batch_projection.columns(),
        batch_row=batch_projection.row_from_created(),
    )


def send_commands_statement(
    domains: tuple[str, ...], *, all_applied: bool = False, claimed: tuple[str, ...] = ()
) -> sql.Composed:
    """The statement of :func:`send_commands` for commands of these (sorted) domains
    (of :func:`send_commands_all_applied` with ``all_applied``, claiming the messages
    of the ``claimed`` ones)."""
    return _send_statement(domains, in_batch=False, all_applied=all_applied, claimed=claimed)


@lru_cache(maxsize=256)
def _send_query(
    domains: tuple[str, ...],
    *,
    in_batch: bool,
    all_applied: bool = False,
    claimed: tuple[str, ...] = (),
) -> bytes:
    """The send statement, rendered once (psycopg would render it per call)."""
    return _send_statement(
        domains, in_batch=in_batch, all_applied=all_applied, claimed=claimed
    ).as_bytes()


def _send_params(cmds: Sequence[OutgoingCommand]) -> dict[str, Any]:
    """The commands' parameters of SEND_BATCH (a batch's own are added to them)."""
    return {
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
        "metadata": [c.metadata for c in cmds],
        "expected_commands": len(cmds),
        "command_sent": ev.COMMAND_SENT,
    }


@attrs.frozen
class NewBatch:
    """A batch to create after its commands: its stream and ``BatchCreated`` data."""

    stream_id: str
    data: str
    correlation_id: UUID


async def send_many(
    conn: Conn,
    parts: Iterable[Sequence[OutgoingCommand]],
    batch_id: UUID,
    batch: Callable[[], NewBatch | None],
) -> tuple[list[tuple[str, UUID, int | None, bool]], bool]:
    """Insert a batch's commands part by part, then the batch, in ONE pipeline.

    ``parts`` may be a generator that checks and renders each part when asked: a
    part is on its way to the server, and inserted there, while the next one is
    rendered. ``batch()`` is asked after the last part for the batch to create
    (``batch_id``'s); None sends nothing more. Run it in a transaction: returns
    (domain, command id, msg id, was new) of every command sent and whether the
    batch was created. Nothing but status rows is written for a part holding a
    command id that exists, so the caller must roll back unless every command
    has its msg id and the batch was created.
    """
    sent_parts = 0
    asked: list[NewBatch | None] = []

    def statements() -> Iterator[tuple[bytes, dict[str, Any]]]:
        nonlocal sent_parts
        for part in parts:
            params = _send_params(part)
            params["batch_id"] = batch_id
            sent_parts += 1
            yield _send_query(tuple(sorted({c.domain for c in part})), in_batch=True), params
        asked.append(new := batch())
        if new is not None:
            yield (
                _create_batch_query(),
                {
                    "batch_stream_id": new.stream_id,
                    "batch_data": new.data,
                    "batch_corr": new.correlation_id,
                    "batch_stream": ev.BATCH_STREAM,
                    "batch_created": ev.BATCH_CREATED,
                },
            )

    cursors: list[psycopg.AsyncCursor[Any]] = []
    try:
        await send_pipelined(conn, statements(), cursors)
        rows = [(r[0], r[1], r[2], r[3]) for c in cursors[:sent_parts] for r in await c.fetchall()]
        created = False
        if asked and asked[0] is not None:
            found = await cursors[sent_parts].fetchone()
            created = found is not None and bool(found[0])
        return rows, created
    finally:
        for c in cursors:
            await c.close()


@lru_cache(maxsize=1)
def _create_batch_query() -> bytes:
    return create_batch_statement().as_bytes()


async def send_commands(
    conn: Conn, cmds: Sequence[OutgoingCommand]
) -> list[tuple[str, UUID, int | None]]:
    """Insert many commands (one or more domains, no batch) in ONE statement.

    Returns (domain, command id, msg id) in the order of ``cmds``. All or nothing:
    when any command id already exists in its domain (or one is repeated in
    ``cmds``), nothing but status rows is written and every msg id is None; the
    caller must then roll back.
    """
    if not cmds:
        return []
    domains = tuple(sorted({c.domain for c in cmds}))
    params = _send_params(cmds)
    cur = await conn.execute(_send_query(domains, in_batch=False), params)
    sent = {(r[0], r[1]): r[2] for r in await cur.fetchall() if r[2] is not None}
    if len(sent) != len(cmds):
        return [(c.domain, c.command_id, None) for c in cmds]
    return [(c.domain, c.command_id, sent[c.domain, c.command_id]) for c in cmds]


def send_commands_all_applied(
    cmds: Sequence[OutgoingCommand], claims: Mapping[str, float] | None = None
) -> tuple[bytes, dict[str, Any]]:
    """:func:`send_commands` for a :class:`~commandbus.engine.db.script.Script`: the
    statement fails (undoing the script) unless every command is new; its one row is
    (the number sent, their command ids, their message ids).

    ``claims``: domains whose messages are claimed as they are sent, each for its
    seconds (every command to them must be without delay; see
    :mod:`commandbus.engine.worker.handoff`).
    """
    domains = tuple(sorted({c.domain for c in cmds}))
    params = _send_params(cmds)
    if not claims:
        return _send_query(domains, in_batch=False, all_applied=True), params
    claimed = tuple(d for d in domains if d in claims)
    for i, d in enumerate(domains):
        if d in claims:
            params[f"claim_{i}"] = claims[d]
    query = _send_query(domains, in_batch=False, all_applied=True, claimed=claimed)
    return query, params


async def read_batch(conn: Conn, domain: str, *, qty: int, vt_seconds: float) -> list[ReadMessage]:
    """Take up to ``qty`` visible messages of a domain queue for ``vt_seconds``."""
    cur = await conn.execute(
        _read_query(domain),
        {
            "qty": qty,
            "vt": vt_seconds,
            "domain": domain,
            "stream_prefix": command_stream_id(domain, ""),
        },
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
def _read_query(domain: str) -> bytes:
    """READ_BATCH for ``domain``, rendered once (psycopg would render it per call)."""
    return _read_statement(domain).as_bytes()


@lru_cache(maxsize=256)
def _read_statement(domain: str) -> sql.Composed:
    return sql.SQL(queries.READ_BATCH).format(
        queue=queue_table(domain),
        status_of_event=sql_set_by_event("status"),
        attempts_of_event=sql_set_by_event("attempts"),
    )


async def seconds_until_next_visible(conn: Conn, domain: str) -> float | None:
    """Seconds until the queue's next invisible message shows (None: queue empty)."""
    cur = await conn.execute(with_queue(queue_sql.NEXT_VISIBLE, domain))
    row = await cur.fetchone()
    return None if row is None or row[0] is None else float(row[0])


async def release(
    conn: Conn, domain: str, started: Sequence[int], unstarted: Sequence[int] = ()
) -> None:
    """Make messages visible again at once (``unstarted`` ones give back their read)."""
    if started or unstarted:
        await conn.execute(
            with_queue(queue_sql.RELEASE, domain),
            {"started": list(started), "unstarted": list(unstarted)},
        )


async def release_claimed(conn: Conn, domain: str, msg_ids: Sequence[int]) -> None:
    """Make messages claimed as they were sent visible at once, unread, and wake the
    domain's readers (the send woke none)."""
    await release(conn, domain, (), msg_ids)
    await conn.execute("SELECT pg_notify(%s, '')", (wakeup_channel(domain),))


def archive_move(domain: str, msg_ids: sql.Composable, suffix: str = "") -> sql.Composed:
    """The queues' ARCHIVE_MOVE: CTEs ``moved<suffix>`` and ``archived<suffix>``."""
    return sql.SQL(queue_sql.ARCHIVE_MOVE).format(
        moved=sql.Identifier(f"moved{suffix}"),
        archived=sql.Identifier(f"archived{suffix}"),
        queue=queue_table(domain),
        archive=archive_table(domain),
        msg_ids=msg_ids,
    )


@lru_cache(maxsize=256)
def _archive_statement(domain: str) -> sql.Composed:
    ids = sql.SQL("{}::bigint[]").format(sql.Placeholder("msg_ids"))
    return sql.SQL(queue_sql.ARCHIVE).format(move=archive_move(domain, ids))


async def archive(conn: Conn, domain: str, msg_ids: Sequence[int]) -> None:
    """Move messages from the queue to its archive table."""
    await conn.execute(_archive_statement(domain), {"msg_ids": list(msg_ids)})


async def extend_visibility(
    conn: Conn, domain: str, msg_id: int, seconds: float
) -> datetime | None:
    cur = await conn.execute(
        with_queue(queue_sql.EXTEND_VT, domain), {"msg_id": msg_id, "seconds": seconds}
    )
    row = await cur.fetchone()
    return None if row is None else row[0]
