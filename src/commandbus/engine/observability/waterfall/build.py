"""The rows of a flow from its events: a tree of sagas, steps, commands and attempts."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any, Final

import attrs

from commandbus import event_types as ev
from commandbus.engine.observability.waterfall.flow import Row, Waterfall
from commandbus.models import StoredEvent

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
