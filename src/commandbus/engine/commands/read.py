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
from functools import lru_cache
from typing import Any
from uuid import UUID

import attrs
from psycopg import sql
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from commandbus.arguments import (
    bool_arg,
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
from commandbus.engine.commands import list_sql as lq
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


@attrs.frozen
class _Key:
    """Where a page follows on from: the last row of the page before."""

    created_at: datetime
    command_id: UUID
    domain: str
    newest_first: bool


def _encode_cursor(record: CommandRecord, newest_first: bool) -> str:
    order = "desc" if newest_first else "asc"
    raw = f"{order}|{record.created_at.isoformat()}|{record.command_id}|{record.domain}"
    return base64.urlsafe_b64encode(raw.encode()).decode()


def _decode_cursor(cursor: str, newest_first: bool) -> _Key:
    try:
        order, ts, cid, domain = base64.urlsafe_b64decode(cursor.encode()).decode().split("|")
        if order not in ("asc", "desc"):
            raise ValueError(order)
        key = _Key(datetime.fromisoformat(ts), UUID(cid), domain, order == "desc")
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValidationError(f"invalid page cursor {cursor!r}") from exc
    if key.newest_first != newest_first:
        raise ValidationError(
            f"the page cursor is from a list in the other order (newest_first={key.newest_first})"
        )
    return key


@lru_cache(maxsize=256)
def _list_statement(
    key: str | None, one_domain: bool, filters: tuple[str, ...], after: bool, newest_first: bool
) -> sql.Composed:
    """The listing statement for the criteria given (see ``LIST_*`` in ``list_sql.py``)."""
    order = sql.SQL(lq.LIST_DESC if newest_first else lq.LIST_ASC)
    keyset: sql.Composable = sql.SQL("")
    if after:
        keyset = sql.SQL(lq.LIST_KEYSET).format(cmp=sql.SQL("<" if newest_first else ">"))
    where = sql.SQL("").join(sql.SQL(_FILTERS[f]) for f in filters)
    if key is not None:
        return sql.SQL(lq.LIST_KEYED).format(
            key=sql.SQL(_KEYS[key]), where=where, after=keyset, order=order
        )
    domains = lq.LIST_ONE_DOMAIN if one_domain else lq.LIST_EVERY_DOMAIN
    return sql.SQL(lq.LIST_MERGED).format(
        domains=sql.SQL(domains), where=where, after=keyset, order=order
    )


_KEYS = {"correlation_id": lq.LIST_KEY_CORRELATION, "batch_id": lq.LIST_KEY_BATCH}
_FILTERS = {
    "domain": lq.LIST_DOMAIN,
    "status": lq.LIST_STATUS,
    "command_type": lq.LIST_TYPE,
    "correlation_id": lq.LIST_CORRELATION,
    "batch_id": lq.LIST_BATCH,
    "error": lq.LIST_ERROR,
}


async def fetch_command(conn: Conn, domain: str, command_id: UUID) -> CommandRecord | None:
    """The status row of one command (arguments already checked)."""
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(q.GET_COMMAND, {"domain": domain, "command_id": command_id})
    row = await cur.fetchone()
    return None if row is None else to_record(row)


async def fetch_page(
    conn: Conn,
    where: CommandFilter,
    limit: int,
    cursor: str | None,
    *,
    newest_first: bool = False,
) -> Page:
    """Commands matching ``where``, one page, oldest (or newest) first; arguments checked.

    Every page is index range scans that stop at the page's end (see ``LIST_*``
    in ``sql.py``): by correlation id or batch id when one is given, else by
    (domain, status), for the domain and status given or each of them.
    """
    after = _decode_cursor(cursor, newest_first) if cursor else None
    params: dict[str, Any] = {
        "domain": where.domain,
        "status": None if where.status is None else where.status.value,
        "statuses": [where.status.value] if where.status else [s.value for s in CommandStatus],
        "correlation_id": where.correlation_id,
        "command_type": where.command_type,
        "batch_id": where.batch_id,
        "error": where.error_contains,
        "limit": limit + 1,
    }
    if after is not None:
        params |= {
            "after_ts": after.created_at,
            "after_id": after.command_id,
            "after_domain": after.domain,
        }
    key = (
        "correlation_id"
        if where.correlation_id is not None
        else "batch_id"
        if where.batch_id is not None
        else None
    )
    given = {
        "domain": where.domain is not None,
        "status": where.status is not None,
        "command_type": where.command_type is not None,
        "correlation_id": where.correlation_id is not None,
        "batch_id": where.batch_id is not None,
        "error": where.error_contains is not None,
    }
    # without a key, the domain and status drive the scans instead of filtering them
    driven = {key} if key is not None else {"domain", "status"}
    filters = tuple(f for f, on in given.items() if on and f not in driven)
    if key is not None:
        params["key"] = params[key]
    statement = _list_statement(
        key, where.domain is not None, filters, after is not None, newest_first
    )
    cur = conn.cursor(row_factory=dict_row)
    # never a prepared statement: a generic plan of this keyset query may scan a whole
    # (domain, status) range (seen: 150 ms instead of 2 ms for a page 50,000 rows in)
    await cur.execute(statement, params, prepare=False)
    rows = [to_record(r) for r in await cur.fetchall()]
    more = len(rows) > limit
    items = tuple(rows[:limit])
    return Page(items=items, next_cursor=_encode_cursor(items[-1], newest_first) if more else None)


async def fetch_by_id(conn: Conn, command_id: UUID) -> list[CommandRecord]:
    """The commands with this id, in every domain (usually one), by domain."""
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(lq.FIND_COMMANDS, {"command_id": command_id})
    return [to_record(r) for r in await cur.fetchall()]


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
        newest_first: bool = False,
        conn: Conn | None = None,
    ) -> Page:
        """Commands matching ``where`` (all without it), oldest first, keyset-paged.

        Pass ``cursor=page.next_cursor`` for the next page (None: the last one).
        Ordered by the time the command was sent (its transaction's start), then
        its id, then its domain: a key that never changes, so a command that
        matches from the first page to the last is listed once, never skipped or
        repeated, whatever changes meanwhile (a command sent meanwhile may or may
        not be listed). ``newest_first=True`` lists the newest first (a cursor
        belongs to its order).
        """
        criteria = filter_arg(where)
        limit, cursor = page_args(limit, cursor)
        newest_first = bool_arg(newest_first, "newest_first")
        async with borrow(self.pool, conn) as c:
            return await fetch_page(c, criteria, limit, cursor, newest_first=newest_first)

    async def find_commands(
        self, command_id: UUID | str, *, conn: Conn | None = None
    ) -> list[CommandRecord]:
        """The commands with this id in every domain (usually one; [] if none), by domain.

        For a lookup without the domain: a command id is unique within its domain
        only. One primary-key probe per domain.
        """
        cid = uuid_arg(command_id, "command_id")
        async with borrow(self.pool, conn) as c:
            return await fetch_by_id(c, cid)

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
