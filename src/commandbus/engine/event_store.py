"""The append-only event store: appends with an expected version, and reads."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from uuid import UUID

import attrs
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from commandbus.engine import queries
from commandbus.engine.codec import dumps, structure
from commandbus.engine.connections import Conn, atomic, borrow
from commandbus.engine.models import NewEvent, StoredEvent
from commandbus.errors import ConcurrencyError


@attrs.frozen(kw_only=True)
class StreamAppend:
    """Events to append to one stream, expecting it at ``expected_version`` (0: new)."""

    stream_id: str
    stream_type: str
    expected_version: int
    events: Sequence[NewEvent]


@attrs.define
class EventColumns:
    """Parallel arrays of events, as the append statements take them."""

    ids: list[str] = attrs.field(factory=list)
    versions: list[int] = attrs.field(factory=list)
    types: list[str] = attrs.field(factory=list)
    data: list[str] = attrs.field(factory=list)
    corr: list[UUID | None] = attrs.field(factory=list)
    caus: list[UUID | None] = attrs.field(factory=list)
    meta: list[str] = attrs.field(factory=list)

    def add(self, stream_id: str, version: int, event: NewEvent) -> None:
        self.ids.append(stream_id)
        self.versions.append(version)
        self.types.append(event.event_type)
        self.data.append(dumps(event.data, what=f"{event.event_type} data"))
        self.corr.append(event.correlation_id)
        self.caus.append(event.causation_id)
        self.meta.append(dumps(event.metadata, what="event metadata") if event.metadata else "{}")

    def params(self) -> dict[str, Any]:
        return {
            "e_ids": self.ids,
            "e_versions": self.versions,
            "e_types": self.types,
            "e_data": self.data,
            "e_corr": self.corr,
            "e_caus": self.caus,
            "e_meta": self.meta,
        }


def stored_event(row: dict[str, Any]) -> StoredEvent:
    return structure(row, StoredEvent)


async def read_stream(conn: Conn, stream_id: str, *, after_version: int = 0) -> list[StoredEvent]:
    """All events of one stream in version order."""
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(queries.READ_STREAM, {"stream_id": stream_id, "after_version": after_version})
    return [stored_event(r) for r in await cur.fetchall()]


async def append(conn: Conn, appends: Sequence[StreamAppend]) -> int:
    """Append events to one or more streams in ONE statement; all or nothing.

    Returns the position of the last event appended. Raises
    :class:`ConcurrencyError` (appending nothing) when any stream is not at its
    expected version.
    """
    if not appends:
        raise ValueError("nothing to append")
    cols = EventColumns()
    s_ids: list[str] = []
    s_types: list[str] = []
    s_expected: list[int] = []
    s_new: list[int] = []
    seen: set[str] = set()
    for item in appends:
        if item.stream_id in seen:
            raise ValueError(f"stream {item.stream_id!r} appears twice in one append")
        if not item.events:
            raise ValueError(f"no events for stream {item.stream_id!r}")
        if item.expected_version < 0:
            raise ValueError("expected_version must be >= 0")
        seen.add(item.stream_id)
        s_ids.append(item.stream_id)
        s_types.append(item.stream_type)
        s_expected.append(item.expected_version)
        s_new.append(item.expected_version + len(item.events))
        for i, event in enumerate(item.events, start=1):
            cols.add(item.stream_id, item.expected_version + i, event)
    params = {
        "s_ids": s_ids,
        "s_types": s_types,
        "s_expected": s_expected,
        "s_new": s_new,
        **cols.params(),
    }
    async with atomic(conn):
        cur = await conn.execute(queries.APPEND, params)
        rows = await cur.fetchall()
        conflicts = [r[0] for r in rows if not r[1]]
        if conflicts:
            raise ConcurrencyError(
                f"stream version conflict on {', '.join(conflicts)}",
                details={"streams": conflicts},
            )
        return int(rows[0][2])


class EventStore:
    """Appends to and reads from ``commandbus.event``."""

    def __init__(self, pool: AsyncConnectionPool[Conn]) -> None:
        self._pool = pool

    async def append(self, appends: Sequence[StreamAppend], *, conn: Conn | None = None) -> int:
        """Append events to one or more streams in ONE statement; see :func:`append`."""
        async with borrow(self._pool, conn) as c:
            return await append(c, appends)

    async def read_stream(
        self, stream_id: str, *, after_version: int = 0, conn: Conn | None = None
    ) -> list[StoredEvent]:
        """All events of one stream in version order."""
        async with borrow(self._pool, conn) as c:
            return await read_stream(c, stream_id, after_version=after_version)

    async def read_all(
        self, *, after: int = 0, limit: int = 1000, conn: Conn | None = None
    ) -> list[StoredEvent]:
        """Events after a global position, in position order."""
        async with borrow(self._pool, conn) as c:
            cur = c.cursor(row_factory=dict_row)
            await cur.execute(queries.READ_ALL, {"after": after, "limit": limit})
            return [stored_event(r) for r in await cur.fetchall()]

    async def stream_version(self, stream_id: str, *, conn: Conn | None = None) -> int:
        """The current version of a stream (0 when it does not exist)."""
        async with borrow(self._pool, conn) as c:
            cur = await c.execute(queries.STREAM_VERSION, {"stream_id": stream_id})
            row = await cur.fetchone()
            return int(row[0]) if row else 0
