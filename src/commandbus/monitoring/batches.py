"""The batches, newest first: :func:`list_batches` (the dashboard's batch list)."""

from __future__ import annotations

import base64
from datetime import datetime
from uuid import UUID

import attrs
from psycopg.rows import dict_row

from commandbus.arguments import int_arg, opt_text_arg, show
from commandbus.codec import structure
from commandbus.engine.commands.bus import CommandBus
from commandbus.engine.db.connect import Conn, borrow
from commandbus.errors import ValidationError
from commandbus.models import BatchRecord
from commandbus.monitoring import sql as q

#: The longest page of batches.
MAX_BATCH_PAGE = 500


@attrs.frozen(kw_only=True)
class BatchPage:
    """A page of batches, newest first; pass ``next_cursor`` for the next one."""

    items: tuple[BatchRecord, ...]
    next_cursor: str | None


def _encode(record: BatchRecord) -> str:
    raw = f"batches|{record.created_at.isoformat()}|{record.batch_id}"
    return base64.urlsafe_b64encode(raw.encode()).decode()


def _decode(cursor: str) -> tuple[datetime, UUID]:
    try:
        kind, ts, bid = base64.urlsafe_b64decode(cursor.encode()).decode().split("|")
        if kind != "batches":
            raise ValueError(kind)
        return datetime.fromisoformat(ts), UUID(bid)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValidationError(f"invalid page cursor {cursor!r:.80}") from exc


async def list_batches(
    bus: CommandBus,
    *,
    limit: int = 50,
    cursor: str | None = None,
    conn: Conn | None = None,
) -> BatchPage:
    """Batches newest first (by the time they were sent, then id), each with its
    progress counted by status; keyset-paged (one index range scan per page)."""
    if not isinstance(bus, CommandBus):
        raise ValidationError(f"bus must be a CommandBus, got {show(bus)}")
    n = int_arg(limit, "limit", low=1, high=MAX_BATCH_PAGE)
    text = opt_text_arg(cursor, "cursor")
    after_ts, after_id = _decode(text) if text else (None, None)
    async with borrow(bus.pool, conn) as c:
        cur = c.cursor(row_factory=dict_row)
        # never prepared: the first page and the next ones want different plans
        await cur.execute(
            q.LIST_BATCHES,
            {"after_ts": after_ts, "after_id": after_id, "limit": n + 1},
            prepare=False,
        )
        rows = [structure(r, BatchRecord) for r in await cur.fetchall()]
    items = tuple(rows[:n])
    return BatchPage(items=items, next_cursor=_encode(items[-1]) if len(rows) > n else None)
