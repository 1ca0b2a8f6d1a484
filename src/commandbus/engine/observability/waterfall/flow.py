"""A flow's events in one query (:func:`load_flow`), and the waterfall's data (rows)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Final
from uuid import UUID

import attrs
import psycopg

from commandbus.models import StoredEvent
from commandbus.names import saga_stream_id

#: The events of one flow: by correlation id, or by the correlation id of the
#: saga whose id is given (its ``SagaStarted`` is version 1 of ``saga:<id>``).
FLOW_EVENTS: Final = """
SELECT position, transaction_id::text::bigint AS transaction_id, stream_id, stream_version,
       event_type, data, correlation_id, causation_id, metadata, recorded_at
  FROM commandbus.event
 WHERE correlation_id = coalesce(
           (SELECT s.correlation_id FROM commandbus.event s
             WHERE s.stream_id = %(saga_stream)s AND s.stream_version = 1),
           %(id)s::uuid)
 ORDER BY position
 LIMIT %(limit)s
"""

#: At most this many events are read for one flow by default.
DEFAULT_LIMIT: Final = 10_000


async def load_flow(
    conn: psycopg.AsyncConnection[Any], flow_id: UUID | str, *, limit: int = DEFAULT_LIMIT
) -> list[StoredEvent]:
    """The events of a flow, in order: ``flow_id`` is a correlation id or a saga id.

    One query (:data:`FLOW_EVENTS`), on the caller's connection; the caller's row
    factory is left alone. An id that names nothing gives an empty list.
    """
    uid = UUID(str(flow_id))
    params = {"id": str(uid), "saga_stream": saga_stream_id(uid), "limit": int(limit)}
    async with conn.cursor(row_factory=psycopg.rows.tuple_row) as cur:
        await cur.execute(FLOW_EVENTS, params)
        rows = await cur.fetchall()
    return [
        StoredEvent(
            position=r[0],
            transaction_id=r[1],
            stream_id=r[2],
            stream_version=r[3],
            event_type=r[4],
            data=r[5],
            correlation_id=r[6],
            causation_id=r[7],
            metadata=r[8],
            recorded_at=r[9],
        )
        for r in rows
    ]


@attrs.frozen(kw_only=True)
class Row:
    """One bar of the waterfall."""

    #: ``saga``, ``step``, ``compensation``, ``batch``, ``command`` or ``attempt``
    kind: str
    label: str
    depth: int
    start: datetime
    #: ``None`` while it is still going at the flow's last event
    end: datetime | None
    #: ``completed``, ``failed``, ``retried``, ``troubleshooting``, ``lost``,
    #: ``running``, ``compensated``, ``cancelled``...
    status: str
    detail: str = ""
    #: for an attempt: when the worker started handling it (before: waiting in the
    #: queue), and when its handler finished; ``None`` when not recorded
    run_start: datetime | None = None
    run_end: datetime | None = None
    trace_id: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "label": self.label,
            "depth": self.depth,
            "start": self.start.isoformat(),
            "end": None if self.end is None else self.end.isoformat(),
            "status": self.status,
            "detail": self.detail,
            "run_start": None if self.run_start is None else self.run_start.isoformat(),
            "run_end": None if self.run_end is None else self.run_end.isoformat(),
            "trace_id": self.trace_id,
        }


@attrs.frozen(kw_only=True)
class Waterfall:
    """A flow's rows, in display order (depth-first, each level by start time)."""

    correlation_id: UUID | None
    start: datetime | None
    end: datetime | None
    rows: tuple[Row, ...]
    #: the trace ids the flow's events carry (one, when the whole flow was traced)
    trace_ids: tuple[str, ...]

    @property
    def duration(self) -> timedelta:
        if self.start is None or self.end is None:
            return timedelta(0)
        return self.end - self.start

    def to_json(self) -> dict[str, Any]:
        return {
            "correlation_id": None if self.correlation_id is None else str(self.correlation_id),
            "start": None if self.start is None else self.start.isoformat(),
            "end": None if self.end is None else self.end.isoformat(),
            "trace_ids": list(self.trace_ids),
            "rows": [r.to_json() for r in self.rows],
        }
