"""Questions users ask of the read models: where is command X, what is in batch Y.

:class:`CommandFilter` says which commands a list is about (``list_commands``,
the troubleshooting queue's ``list``, the command line); :class:`CommandReads` is
the read side of :class:`~commandbus.engine.commands.bus.CommandBus`, every method
taking an optional ``conn=``. The ``fetch_*`` functions run the statements on a
connection for both.
"""

from __future__ import annotations

import base64
from datetime import datetime
from typing import Any
from uuid import UUID

import attrs
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from commandbus.arguments import (
    int_arg,
    opt_command_type_arg,
    opt_domain_arg,
    opt_text_arg,
    opt_uuid_arg,
    show,
    status_arg,
    uuid_arg,
)
from commandbus.codec import structure
from commandbus.engine.commands import sql as q
from commandbus.engine.db.connect import Conn, borrow
from commandbus.engine.eventstore.store import EventStore
from commandbus.errors import ValidationError
from commandbus.models import BatchRecord, CommandRecord, CommandStatus, Page, StoredEvent
from commandbus.names import command_stream_id, validate_domain

#: The most commands one page holds.
MAX_PAGE = 1000


def _correlation_id(value: object) -> UUID | None:
    return opt_uuid_arg(value, "correlation_id")


def _batch_id(value: object) -> UUID | None:
    return opt_uuid_arg(value, "batch_id")


def _error_contains(value: object) -> str | None:
    return opt_text_arg(value, "error_contains", empty=True)


@attrs.frozen(kw_only=True)
class CommandFilter:
    """Which commands a list is about: every criterion given must hold (None: any).

    Checked and normalised when built (ids may be any text form of a UUID, a
    status its name), so a bad criterion is a
    :class:`~commandbus.errors.ValidationError` naming it, before any SQL.
    ``error_contains`` is a literal, case-insensitive substring of the last
    error's message (``_``, ``%`` and ``\\`` are plain characters).
    """

    domain: str | None = attrs.field(default=None, converter=opt_domain_arg)
    status: CommandStatus | None = attrs.field(default=None, converter=status_arg)
    command_type: str | None = attrs.field(default=None, converter=opt_command_type_arg)
    correlation_id: UUID | None = attrs.field(default=None, converter=_correlation_id)
    batch_id: UUID | None = attrs.field(default=None, converter=_batch_id)
    error_contains: str | None = attrs.field(default=None, converter=_error_contains)


def filter_arg(value: object, name: str = "where") -> CommandFilter:
    """A :class:`CommandFilter` (None: every command)."""
    if value is None:
        return CommandFilter()
    if not isinstance(value, CommandFilter):
        raise ValidationError(f"{name} must be a CommandFilter, got {show(value)}")
    return value


def page_args(limit: object, cursor: object) -> tuple[int, str | None]:
    """``limit`` and ``cursor`` of a list call, checked."""
    return int_arg(limit, "limit", low=1, high=MAX_PAGE), opt_text_arg(cursor, "cursor")


def to_record(row: dict[str, Any]) -> CommandRecord:
    return structure(row, CommandRecord)


def _encode_cursor(record: CommandRecord) -> str:
    raw = f"{record.created_at.isoformat()}|{record.command_id}"
    return base64.urlsafe_b64encode(raw.encode()).decode()


def _decode_cursor(cursor: str) -> tuple[datetime, UUID]:
    try:
        ts, cid = base64.urlsafe_b64decode(cursor.encode()).decode().split("|")
        return datetime.fromisoformat(ts), UUID(cid)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValidationError(f"invalid page cursor {cursor!r}") from exc


async def fetch_command(conn: Conn, domain: str, command_id: UUID) -> CommandRecord | None:
    """The status row of one command (arguments already checked)."""
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(q.GET_COMMAND, {"domain": domain, "command_id": command_id})
    row = await cur.fetchone()
    return None if row is None else to_record(row)


async def fetch_page(conn: Conn, where: CommandFilter, limit: int, cursor: str | None) -> Page:
    """Commands matching ``where``, oldest first, one page (arguments already checked)."""
    after_ts, after_id = _decode_cursor(cursor) if cursor else (None, None)
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(
        q.LIST_COMMANDS,
        {
            "domain": where.domain,
            "status": None if where.status is None else where.status.value,
            "correlation_id": where.correlation_id,
            "command_type": where.command_type,
            "batch_id": where.batch_id,
            "error": where.error_contains,
            "after_ts": after_ts,
            "after_id": after_id,
            "limit": limit + 1,
        },
    )
    rows = [to_record(r) for r in await cur.fetchall()]
    more = len(rows) > limit
    items = tuple(rows[:limit])
    return Page(items=items, next_cursor=_encode_cursor(items[-1]) if more else None)


async def _fetch_batch(conn: Conn, batch_id: UUID) -> BatchRecord | None:
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(q.GET_BATCH, {"batch_id": batch_id})
    row = await cur.fetchone()
    return None if row is None else structure(row, BatchRecord)


class CommandReads:
    """Where is command X, which commands match, how far along is batch Y.

    The read side of the bus: ``conn=`` reads on the caller's connection (seeing
    its uncommitted work); without it a pooled connection is borrowed.
    """

    @property
    def pool(self) -> AsyncConnectionPool[Conn]:
        raise NotImplementedError

    @property
    def events(self) -> EventStore:
        raise NotImplementedError

    async def get_command(
        self, domain: str, command_id: UUID | str, *, conn: Conn | None = None
    ) -> CommandRecord | None:
        """Where is command X: its row of the status projection (None if unknown)."""
        domain = validate_domain(domain)
        cid = uuid_arg(command_id, "command_id")
        async with borrow(self.pool, conn) as c:
            return await fetch_command(c, domain, cid)

    async def list_commands(
        self,
        where: CommandFilter | None = None,
        *,
        limit: int = 100,
        cursor: str | None = None,
        conn: Conn | None = None,
    ) -> Page:
        """Commands matching ``where`` (all without it), oldest first, keyset-paged.

        Pass ``cursor=page.next_cursor`` for the next page (None: the last one).
        """
        criteria = filter_arg(where)
        limit, cursor = page_args(limit, cursor)
        async with borrow(self.pool, conn) as c:
            return await fetch_page(c, criteria, limit, cursor)

    async def command_history(
        self, domain: str, command_id: UUID | str, *, conn: Conn | None = None
    ) -> list[StoredEvent]:
        """Every event of one command, in order."""
        stream = command_stream_id(validate_domain(domain), uuid_arg(command_id, "command_id"))
        return await self.events.read_stream(stream, conn=conn)

    async def get_batch(
        self, batch_id: UUID | str, *, conn: Conn | None = None
    ) -> BatchRecord | None:
        """A batch with its progress counted by status."""
        bid = uuid_arg(batch_id, "batch_id")
        async with borrow(self.pool, conn) as c:
            return await _fetch_batch(c, bid)
