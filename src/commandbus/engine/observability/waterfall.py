"""A flow as a waterfall, from the audit stream alone (no tracing backend needed).

A flow is everything with one correlation id: the commands sent (and those their
handlers sent), their attempts, sagas with their steps and compensations.
:func:`load_flow` reads its events in ONE query (given a correlation id or a saga
id); :func:`build_waterfall` turns them into rows (a tree: saga, step, command,
attempt) with start and end times; :func:`render_waterfall` draws them as text
bars on a common time axis, with ANSI colour when asked. An attempt's bar shows
its wait in the queue (from when the message became visible to when the worker
started handling it) and its run, from the ``timing`` the worker puts in each
outcome event's metadata (older events without it show the attempt as one
piece). :meth:`Waterfall.to_json` is the same data for a web view.

Imports nothing of the engine (it is its lowest layer): the connection is any
psycopg async connection.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any, Final
from uuid import UUID

import attrs
import psycopg

from commandbus import event_types as ev
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

_OUTCOMES: Final = frozenset(
    {
        ev.COMMAND_COMPLETED,
        ev.COMMAND_FAILED,
        ev.COMMAND_RETRY_SCHEDULED,
        ev.COMMAND_MOVED_TO_TSQ,
        ev.COMMAND_ATTEMPT_LOST,
    }
)
_COMMAND_STATUS: Final = {
    ev.COMMAND_COMPLETED: "completed",
    ev.COMMAND_FAILED: "failed",
    ev.COMMAND_RETRY_SCHEDULED: "retried",
    ev.COMMAND_MOVED_TO_TSQ: "troubleshooting",
    ev.COMMAND_ATTEMPT_LOST: "lost",
    ev.COMMAND_CANCELLED_BY_OPERATOR: "cancelled",
    ev.COMMAND_COMPLETED_BY_OPERATOR: "completed by operator",
}
_SAGA_END: Final = {
    ev.SAGA_COMPLETED: "completed",
    ev.SAGA_COMPENSATED: "compensated",
    ev.SAGA_FAILED: "failed",
}


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


# -- building -----------------------------------------------------------------------------


@attrs.define
class _Node:
    row: Row
    children: list[_Node] = attrs.field(factory=list)


def _trace_id(metadata: Any) -> str | None:
    trace = metadata.get("trace") if isinstance(metadata, dict) else None
    value = trace.get("traceparent") if isinstance(trace, dict) else None
    if isinstance(value, str):
        parts = value.split("-")
        if len(parts) >= 3 and len(parts[1]) == 32:
            return parts[1]
    return None


def _error_text(data: dict[str, Any]) -> str:
    error = data.get("error")
    if isinstance(error, dict):
        code, message = error.get("code"), error.get("message")
        return f"{code}: {message}" if code and message and code not in message else str(message)
    return ""


def _seconds(value: Any) -> float:
    try:
        return max(0.0, float(value))
    except (TypeError, ValueError):
        return 0.0


def _parse_time(value: Any) -> datetime | None:
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            return None
    return None


def _short(u: Any) -> str:
    return str(u)[:8]


class _Command:
    """One command's stream folded into a command row with its attempt rows."""

    def __init__(self, stream_id: str, events: list[StoredEvent]) -> None:
        self.events = events
        first = events[0]
        sent = first.data if first.event_type == ev.COMMAND_SENT else {}
        parts = stream_id.split(":", 2)
        self.domain = str(sent.get("domain") or (parts[1] if len(parts) == 3 else "?"))
        self.command_id = str(sent.get("command_id") or (parts[2] if len(parts) == 3 else "?"))
        self.command_type = str(sent.get("command_type") or "?")
        self.saga_id = sent.get("saga_id")
        self.batch_id = sent.get("batch_id")
        self.causation_id = None if first.causation_id is None else str(first.causation_id)
        self.start = first.recorded_at

    def node(self, depth: int) -> _Node:
        events = self.events
        first = events[0]
        anchor = first.recorded_at + timedelta(seconds=_seconds(first.data.get("delay_seconds")))
        attempts: list[Row] = []
        status, detail, end = "pending", "", None
        n = 0
        for e in events[1:]:
            if e.event_type in _OUTCOMES:
                n = int(e.data.get("attempt") or n + 1)
                row, anchor = self._attempt(e, n, anchor, depth + 1)
                attempts.append(row)
                status = _COMMAND_STATUS[e.event_type]
                detail = _error_text(e.data)
                if e.event_type in (ev.COMMAND_COMPLETED, ev.COMMAND_FAILED):
                    end = e.recorded_at
                elif e.event_type == ev.COMMAND_RETRY_SCHEDULED:
                    status = "retry scheduled"
            elif e.event_type == ev.COMMAND_RETRIED_BY_OPERATOR:
                anchor = e.recorded_at
                status, detail = "retried by operator", ""
                n = 0
            elif e.event_type in (
                ev.COMMAND_CANCELLED_BY_OPERATOR,
                ev.COMMAND_COMPLETED_BY_OPERATOR,
            ):
                status = _COMMAND_STATUS[e.event_type]
                detail = str(e.data.get("reason") or "")
                end = e.recorded_at
        if status == "troubleshooting":
            status = "in troubleshooting queue"
        if status == "completed" and detail:
            detail = ""
        label = f"{self.domain}.{self.command_type} {_short(self.command_id)}"
        row = Row(
            kind="command",
            label=label,
            depth=depth,
            start=first.recorded_at,
            end=end,
            status=status,
            detail=detail,
            trace_id=_trace_id(first.metadata),
        )
        return _Node(row, [_Node(a) for a in attempts])

    def _attempt(
        self, e: StoredEvent, n: int, anchor: datetime, depth: int
    ) -> tuple[Row, datetime]:
        """The row of the attempt ``e`` ends, and when the next one becomes visible."""
        timing = e.metadata.get("timing") if isinstance(e.metadata, dict) else None
        run_start = run_end = None
        if isinstance(timing, dict) and isinstance(timing.get("started_us"), int):
            run_start = datetime.fromtimestamp(timing["started_us"] / 1e6, tz=e.recorded_at.tzinfo)
            run_end = run_start + timedelta(microseconds=int(timing.get("duration_us") or 0))
        status = _COMMAND_STATUS[e.event_type]
        end = e.recorded_at
        detail = _error_text(e.data)
        if e.event_type == ev.COMMAND_ATTEMPT_LOST:
            detail = "no outcome recorded (the worker died or overran the visibility timeout)"
        if e.event_type == ev.COMMAND_RETRY_SCHEDULED:
            delay = _seconds(e.data.get("delay_seconds"))
            detail = f"{detail}; retry in {_duration(timedelta(seconds=delay))}".lstrip("; ")
            nxt = _parse_time(e.data.get("retry_at")) or end + timedelta(seconds=delay)
        else:
            nxt = end
        start = min(anchor, run_start) if run_start is not None else anchor
        row = Row(
            kind="attempt",
            label=f"attempt {n}",
            depth=depth,
            start=min(start, end),
            end=end,
            status=status,
            detail=detail,
            run_start=run_start,
            run_end=run_end,
            trace_id=_trace_id(e.metadata),
        )
        return row, nxt


class _Saga:
    """One saga's stream folded into a saga row with its step and compensation rows."""

    def __init__(self, events: list[StoredEvent]) -> None:
        self.events = events
        first = events[0]
        self.saga_id = first.stream_id.split(":", 1)[1]
        self.start = first.recorded_at

    def node(self, depth: int, commands: dict[str, _Command], used: set[str]) -> _Node:
        first = self.events[0]
        name = f"{first.data.get('name', '?')} v{first.data.get('version', '?')}"
        status, detail, end = "running", "", None
        steps: dict[tuple[str, str], dict[str, Any]] = {}
        order: list[tuple[str, str]] = []

        def open_(kind: str, e: StoredEvent) -> None:
            key = (kind, str(e.data.get("step")))
            steps[key] = {"start": e.recorded_at, "event": e, "end": None, "status": "running"}
            if key not in order:
                order.append(key)

        def close(kind: str, e: StoredEvent, st: str) -> None:
            key = (kind, str(e.data.get("step")))
            if key in steps:
                steps[key].update(end=e.recorded_at, status=st, detail=_error_text(e.data))

        for e in self.events:
            t = e.event_type
            if t == ev.SAGA_STEP_STARTED:
                open_("step", e)
            elif t == ev.SAGA_STEP_COMPLETED:
                close("step", e, "completed")
            elif t == ev.SAGA_STEP_FAILED:
                close("step", e, "failed")
            elif t == ev.SAGA_STEP_TIMED_OUT:
                close("step", e, "timed out")
            elif t == ev.SAGA_STEP_WAITING_ON_OPERATOR:
                key = ("step", str(e.data.get("step")))
                if key in steps:
                    steps[key].update(status="waiting on operator", detail=_error_text(e.data))
            elif t == ev.SAGA_STEP_COMPENSATING:
                open_("compensation", e)
            elif t == ev.SAGA_STEP_COMPENSATED:
                close("compensation", e, "compensated")
            elif t == ev.SAGA_STEP_COMPENSATION_FAILED:
                if ("compensation", str(e.data.get("step"))) not in steps:
                    open_("compensation", e)
                close("compensation", e, "compensation failed")
            elif t == ev.SAGA_COMPENSATION_STARTED:
                status, detail = "compensating", str(e.data.get("reason") or "")
            elif t == ev.SAGA_PAUSED:
                status = "paused"
            elif t == ev.SAGA_RESUMED:
                status = "running"
            elif t in _SAGA_END:
                status, end = _SAGA_END[t], e.recorded_at
                if t == ev.SAGA_FAILED:
                    detail = _error_text(e.data) or str(e.data.get("reason") or "")
        children: list[_Node] = []
        for key in order:
            s = steps[key]
            kind, step = key
            e = s["event"]
            label = step if kind == "step" else f"compensate {step}"
            row = Row(
                kind=kind,
                label=label,
                depth=depth + 1,
                start=s["start"],
                end=s["end"],
                status=s["status"],
                detail=s.get("detail", ""),
                trace_id=_trace_id(e.metadata),
            )
            node = _Node(row)
            cid = e.data.get("command_id")
            command = next((c for c in commands.values() if cid and c.command_id == str(cid)), None)
            if command is not None:
                used.add(command.command_id)
                node.children.append(command.node(depth + 2))
            children.append(node)
        row = Row(
            kind="saga",
            label=f"saga {name} {_short(self.saga_id)}",
            depth=depth,
            start=first.recorded_at,
            end=end,
            status=status,
            detail=detail,
            trace_id=_trace_id(first.metadata),
        )
        return _Node(row, children)


def build_waterfall(events: Iterable[StoredEvent]) -> Waterfall:
    """The waterfall of a flow's events (as :func:`load_flow` returns them)."""
    events = sorted(events, key=lambda e: e.position)
    streams: dict[str, list[StoredEvent]] = {}
    for e in events:
        streams.setdefault(e.stream_id, []).append(e)
    commands: dict[str, _Command] = {}
    sagas: list[_Saga] = []
    batches: dict[str, StoredEvent] = {}
    for stream_id, stream in streams.items():
        kind = stream_id.split(":", 1)[0]
        if kind == ev.COMMAND_STREAM:
            c = _Command(stream_id, stream)
            commands[c.command_id] = c
        elif kind == ev.SAGA_STREAM and stream[0].event_type == ev.SAGA_STARTED:
            sagas.append(_Saga(stream))
        elif kind == ev.BATCH_STREAM and stream[0].event_type == ev.BATCH_CREATED:
            batches[stream_id.split(":", 1)[1]] = stream[0]

    used: set[str] = set()
    top: list[_Node] = [s.node(0, commands, used) for s in sagas]
    batch_nodes: dict[str, _Node] = {}
    for batch_id, e in batches.items():
        name = e.data.get("name")
        row = Row(
            kind="batch",
            label=f"batch {name or _short(batch_id)} ({e.data.get('total', '?')} commands)",
            depth=0,
            start=e.recorded_at,
            end=None,
            status="sent",
            trace_id=_trace_id(e.metadata),
        )
        batch_nodes[batch_id] = _Node(row)
    # commands a handler sent sit under the command that caused them
    pending = [c for c in commands.values() if c.command_id not in used]
    nodes: dict[str, _Node] = {}
    for c in sorted(pending, key=lambda c: c.start):
        nodes[c.command_id] = c.node(0)
    for c in sorted(pending, key=lambda c: c.start):
        node = nodes[c.command_id]
        parent = nodes.get(c.causation_id) if c.causation_id else None
        if parent is not None and parent is not node:
            parent.children.append(node)
        elif c.batch_id is not None and str(c.batch_id) in batch_nodes:
            batch_nodes[str(c.batch_id)].children.append(node)
        else:
            top.append(node)
    for b in batch_nodes.values():
        ends = [n.row.end for n in b.children]
        if b.children and all(x is not None for x in ends):
            b.row = attrs.evolve(b.row, end=max(x for x in ends if x is not None))
        top.append(b)

    rows: list[Row] = []

    def walk(node: _Node, depth: int) -> None:
        rows.append(node.row if node.row.depth == depth else attrs.evolve(node.row, depth=depth))
        for child in sorted(node.children, key=lambda n: n.row.start):
            walk(child, depth + 1)

    for node in sorted(top, key=lambda n: n.row.start):
        walk(node, 0)
    times = [e.recorded_at for e in events] + [
        t for r in rows for t in (r.start, r.end, r.run_start, r.run_end) if t is not None
    ]
    trace_ids = sorted({t for e in events if (t := _trace_id(e.metadata))})
    return Waterfall(
        correlation_id=events[0].correlation_id if events else None,
        start=min(times) if times else None,
        end=max(times) if times else None,
        rows=tuple(rows),
        trace_ids=tuple(trace_ids),
    )


# -- rendering --------------------------------------------------------------------------------

_RESET: Final = "\x1b[0m"
_COLOURS: Final = {
    "ok": "\x1b[32m",  # green
    "bad": "\x1b[1;31m",  # bold red
    "warn": "\x1b[33m",  # yellow
    "open": "\x1b[36m",  # cyan
    "dim": "\x1b[2m",
}
_TONES: Final = {
    "completed": "ok",
    "completed by operator": "ok",
    "compensated": "warn",
    "sent": "open",
    "pending": "open",
    "running": "open",
    "retry scheduled": "warn",
    "retried": "warn",
    "retried by operator": "warn",
    "compensating": "warn",
    "paused": "warn",
    "waiting on operator": "warn",
    "lost": "warn",
    "timed out": "bad",
    "failed": "bad",
    "troubleshooting": "bad",
    "in troubleshooting queue": "bad",
    "cancelled": "bad",
    "compensation failed": "bad",
}
_WAIT: Final = "░"
_RUN: Final = "█"
_UNSPLIT: Final = "▒"


def _duration(d: timedelta) -> str:
    s = d.total_seconds()
    if s < 0.001:
        return f"{s * 1e6:.0f} µs"
    if s < 1:
        return f"{s * 1e3:.1f} ms"
    if s < 120:
        return f"{s:.2f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


def _paint(text: str, tone: str | None, color: bool) -> str:
    if not color or tone is None or not text:
        return text
    return f"{_COLOURS[tone]}{text}{_RESET}"


def render_waterfall(
    flow: Waterfall | Sequence[StoredEvent],
    *,
    color: bool = False,
    width: int | None = None,
    now: datetime | None = None,
) -> str:
    """The flow as text: a header, one line per row with its bar, and a legend.

    ``flow`` is a :class:`Waterfall` or the events of one (:func:`load_flow`).
    ``color`` adds ANSI colours (green done, red failed, yellow retried or
    compensating, cyan still going); ``width`` is the line width (the terminal's,
    else 100). A row still going at the flow's last event ends at ``now``
    (default: the flow's last event).
    """
    wf = flow if isinstance(flow, Waterfall) else build_waterfall(flow)
    if not wf.rows or wf.start is None or wf.end is None:
        return "no events for this id\n"
    total_width = width or shutil.get_terminal_size((100, 24)).columns
    t0 = wf.start
    t_end = max(wf.end, now) if now is not None else wf.end
    span = max((t_end - t0).total_seconds(), 1e-6)
    label_w = min(max(len("  " * r.depth + r.label) for r in wf.rows), 44)
    tail_w = 30
    bar_w = max(10, total_width - label_w - tail_w - 6)

    def col(t: datetime) -> int:
        # (a hair over, so that float noise never moves a bar a column left)
        return min(bar_w - 1, max(0, int((t - t0).total_seconds() / span * bar_w + 1e-6)))

    traces = ", ".join(wf.trace_ids) if wf.trace_ids else "none recorded"
    lines = [
        f"flow {wf.correlation_id}  started {t0.isoformat(timespec='milliseconds')}  "
        f"took {_duration(wf.end - t0)}  trace {traces}",
        f"{'':{label_w}}  {'0':<{bar_w // 2}}{_duration(t_end - t0):>{bar_w - bar_w // 2}}",
    ]
    for r in wf.rows:
        start, end = r.start, r.end or t_end
        a, b = col(start), max(col(start), col(end))
        tone = _TONES.get(r.status)
        cells: list[tuple[str, str | None]] = [(" ", None)] * bar_w
        if r.kind == "attempt" and r.run_start is not None:
            rs = max(a, col(r.run_start))
            for i in range(a, rs):
                cells[i] = (_WAIT, "dim")
            for i in range(rs, max(rs, col(r.run_end or r.run_start)) + 1):
                cells[i] = (_RUN, tone)
        else:
            for i in range(a, b + 1):
                cells[i] = (_UNSPLIT if r.kind == "attempt" else _RUN, tone)
        label = ("  " * r.depth + r.label)[:label_w]
        tail = _duration(end - start) + ("" if r.end is not None else "+")
        tail = f"{tail:>9} {r.status}"
        if r.kind == "attempt" and r.run_start is not None and r.run_end is not None:
            wait, run = r.run_start - start, r.run_end - r.run_start
            tail += f" (wait {_duration(wait)}, run {_duration(run)})"
        if r.detail:
            tail += f": {r.detail}"
        lines.append(f"{label:<{label_w}} |{_bar(cells, color)}| {_paint(tail, tone, color)}")
    lines.append(
        f"{'':{label_w}}  {_WAIT} waiting in queue  {_RUN} running / open  "
        f"{_UNSPLIT} attempt (no timing recorded)"
    )
    return "\n".join(lines) + "\n"


def _bar(cells: list[tuple[str, str | None]], color: bool) -> str:
    """The cells as text, each run of one tone painted once."""
    if not color:
        return "".join(c for c, _t in cells)
    out: list[str] = []
    i = 0
    while i < len(cells):
        j = i
        while j < len(cells) and cells[j][1] == cells[i][1]:
            j += 1
        out.append(_paint("".join(c for c, _t in cells[i:j]), cells[i][1], True))
        i = j
    return "".join(out)
