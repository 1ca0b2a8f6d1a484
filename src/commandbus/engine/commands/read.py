"""Questions users ask of the read models: where is command X, what is in batch Y."""

from __future__ import annotations

import base64
from datetime import datetime
from typing import Any
from uuid import UUID

from psycopg.rows import dict_row

from commandbus.codec import structure
from commandbus.engine.commands import sql as q
from commandbus.engine.db.connect import Conn
from commandbus.errors import ValidationError
from commandbus.models import BatchRecord, CommandRecord, CommandStatus, Page

MAX_PAGE = 1000


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


async def get_command(conn: Conn, domain: str, command_id: UUID) -> CommandRecord | None:
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(q.GET_COMMAND, {"domain": domain, "command_id": command_id})
    row = await cur.fetchone()
    return None if row is None else to_record(row)


async def list_commands(
    conn: Conn,
    *,
    domain: str | None = None,
    status: CommandStatus | str | None = None,
    correlation_id: UUID | None = None,
    command_type: str | None = None,
    batch_id: UUID | None = None,
    error_contains: str | None = None,
    limit: int = 100,
    cursor: str | None = None,
) -> Page:
    """Commands matching every given filter, oldest first, one page at a time."""
    if not 1 <= limit <= MAX_PAGE:
        raise ValidationError(f"limit must be between 1 and {MAX_PAGE}, got {limit}")
    status_value = None if status is None else CommandStatus(status).value
    after_ts, after_id = _decode_cursor(cursor) if cursor else (None, None)
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(
        q.LIST_COMMANDS,
        {
            "domain": domain,
            "status": status_value,
            "correlation_id": correlation_id,
            "command_type": command_type,
            "batch_id": batch_id,
            "error": error_contains,
            "after_ts": after_ts,
            "after_id": after_id,
            "limit": limit + 1,
        },
    )
    rows = [to_record(r) for r in await cur.fetchall()]
    more = len(rows) > limit
    items = tuple(rows[:limit])
    return Page(items=items, next_cursor=_encode_cursor(items[-1]) if more else None)


async def get_batch(conn: Conn, batch_id: UUID) -> BatchRecord | None:
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(q.GET_BATCH, {"batch_id": batch_id})
    row = await cur.fetchone()
    return None if row is None else structure(row, BatchRecord)
