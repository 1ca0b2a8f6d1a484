"""The append-only event store: appends with an expected version, and reads."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from uuid import UUID

import attrs
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from commandbus.arguments import (
    MAX_BIGINT,
    int_arg,
    mapping_arg,
    opt_uuid_arg,
    text_arg,
)
from commandbus.codec import dumps, structure
from commandbus.engine.db.connect import Conn, atomic, borrow
from commandbus.engine.eventstore import sql as es_sql
from commandbus.errors import ConcurrencyError, ValidationError
from commandbus.models import NewEvent, StoredEvent
from commandbus.names import is_library_stream


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

    def add(self, stream_id: str, version: int, event: object, where: str) -> None:
        if not isinstance(event, NewEvent):
            raise ValidationError(f"{where} must be a NewEvent, got {type(event).__name__}")
        self.ids.append(stream_id)
        self.versions.append(version)
        self.types.append(text_arg(event.event_type, f"{where}.event_type"))
        data = mapping_arg(event.data, f"{where}.data")
        self.data.append(dumps(data, what=f"{where}.data"))
        self.corr.append(opt_uuid_arg(event.correlation_id, f"{where}.correlation_id"))
        self.caus.append(opt_uuid_arg(event.causation_id, f"{where}.causation_id"))
        meta = mapping_arg(event.metadata, f"{where}.metadata")
        self.meta.append(dumps(meta, what=f"{where}.metadata") if meta else "{}")

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


def event_json(event: NewEvent) -> dict[str, Any]:
    """An event as the statements that record transitions read it, one element of a
    JSON array (``jsonb_to_recordset(...) AS (type, data, corr, caus, meta)``)."""
    return {
        "type": event.event_type,
        "data": event.data,
        "corr": None if event.correlation_id is None else str(event.correlation_id),
        "caus": None if event.causation_id is None else str(event.causation_id),
        "meta": event.metadata or None,
    }


def stored_event(row: dict[str, Any]) -> StoredEvent:
    return structure(row, StoredEvent)


def _sequence(value: object, name: str) -> list[Any]:
    if isinstance(value, str | bytes | Mapping) or not isinstance(value, Iterable):
        raise ValidationError(f"{name} must be a sequence, got {type(value).__name__}")
    items = list(value)
    if not items:
        raise ValidationError(f"{name} must not be empty: nothing to append")
    return items


async def append(conn: Conn, appends: Sequence[StreamAppend]) -> int:
    """Append events to one or more streams in ONE statement; all or nothing.

    Returns the position of the last event appended. Raises
    :class:`ConcurrencyError` (appending nothing) when any stream is not at its
    expected version, and :class:`ValidationError` (naming the argument) for bad
    arguments, before anything is written. On the caller's connection it joins the
    caller's transaction (see :func:`~commandbus.engine.db.connect.atomic`).
    """
    cols = EventColumns()
    s_ids: list[str] = []
    s_types: list[str] = []
    s_expected: list[int] = []
    s_new: list[int] = []
    seen: set[str] = set()
    for i, item in enumerate(_sequence(appends, "appends")):
        where = f"appends[{i}]"
        if not isinstance(item, StreamAppend):
            raise ValidationError(f"{where} must be a StreamAppend, got {type(item).__name__}")
        stream_id = text_arg(item.stream_id, f"{where}.stream_id")
        stream_type = text_arg(item.stream_type, f"{where}.stream_type")
        if stream_id in seen:
            raise ValidationError(f"stream {stream_id!r} appears twice in one append ({where})")
        events = _sequence(item.events, f"{where}.events")
        expected = int_arg(
            item.expected_version,
            f"{where}.expected_version",
            low=0,
            high=MAX_BIGINT - len(events),
        )
        seen.add(stream_id)
        s_ids.append(stream_id)
        s_types.append(stream_type)
        s_expected.append(expected)
        s_new.append(expected + len(events))
        for n, event in enumerate(events, start=1):
            cols.add(stream_id, expected + n, event, f"{where}.events[{n - 1}]")
    params = {
        "s_ids": s_ids,
        "s_types": s_types,
        "s_expected": s_expected,
        "s_new": s_new,
        **cols.params(),
    }
    async with atomic(conn):
        cur = await conn.execute(es_sql.APPEND, params)
        rows = await cur.fetchall()
        conflicts = [r[0] for r in rows if not r[1]]
        if conflicts:
            raise ConcurrencyError(
                f"stream version conflict on {', '.join(conflicts)}",
                details={"streams": conflicts},
            )
        return int(rows[0][2])


class EventStore:
    """Appends to and reads from ``commandbus.event`` (``bus.events``).

    Every method takes an optional ``conn=``: on the caller's connection it joins
    the caller's transaction and never commits behind it; without one a pooled
    connection is borrowed. (The library writes its own streams with the
    module's :func:`append`, which this class's ``append`` refuses them to.)
    """

    def __init__(self, pool: AsyncConnectionPool[Conn]) -> None:
        self._pool = pool

    async def append(self, appends: Sequence[StreamAppend], *, conn: Conn | None = None) -> int:
        """Append events to one or more streams in ONE statement; see :func:`append`.

        The library's own streams (commands, batches, quarantined messages: types
        ``command``, ``batch``, ``quarantine`` and ids starting with ``<type>:``)
        cannot be written here: :class:`ValidationError`, nothing appended.
        """
        for i, item in enumerate(_sequence(appends, "appends")):
            if (
                isinstance(item, StreamAppend)
                and isinstance(item.stream_id, str)
                and isinstance(item.stream_type, str)
                and is_library_stream(item.stream_id, item.stream_type)
            ):
                raise ValidationError(
                    f"appends[{i}]: stream {item.stream_id!r} of type {item.stream_type!r} "
                    "belongs to the library (command, batch and quarantine streams are "
                    "written only by commandbus)"
                )
        async with borrow(self._pool, conn) as c:
            return await append(c, appends)

    async def read_stream(
        self, stream_id: str, *, after_version: int = 0, conn: Conn | None = None
    ) -> list[StoredEvent]:
        """All events of one stream in version order."""
        stream_id = text_arg(stream_id, "stream_id")
        after_version = int_arg(after_version, "after_version", low=0, high=MAX_BIGINT)
        async with borrow(self._pool, conn) as c:
            cur = c.cursor(row_factory=dict_row)
            await cur.execute(
                es_sql.READ_STREAM, {"stream_id": stream_id, "after_version": after_version}
            )
            return [stored_event(r) for r in await cur.fetchall()]

    async def read_all(
        self, *, after: int = 0, limit: int = 1000, conn: Conn | None = None
    ) -> list[StoredEvent]:
        """Events after a global position, in position order."""
        after = int_arg(after, "after", low=0, high=MAX_BIGINT)
        limit = int_arg(limit, "limit", low=1, high=MAX_BIGINT)
        async with borrow(self._pool, conn) as c:
            cur = c.cursor(row_factory=dict_row)
            await cur.execute(es_sql.READ_ALL, {"after": after, "limit": limit})
            return [stored_event(r) for r in await cur.fetchall()]

    async def stream_version(self, stream_id: str, *, conn: Conn | None = None) -> int:
        """The current version of a stream (0 when it does not exist)."""
        stream_id = text_arg(stream_id, "stream_id")
        async with borrow(self._pool, conn) as c:
            cur = await c.execute(es_sql.STREAM_VERSION, {"stream_id": stream_id})
            row = await cur.fetchone()
            return int(row[0]) if row else 0
