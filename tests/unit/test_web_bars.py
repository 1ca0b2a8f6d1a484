"""The dashboard's waterfall axis: a finished flow spans its own time, not up to now."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from commandbus.engine.observability.waterfall.flow import Row, Waterfall
from commandbus.web.views import bars

T0 = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
MS = timedelta(milliseconds=1)


def _row(label: str, start: timedelta, end: timedelta | None, status: str) -> Row:
    return Row(
        kind="step",
        label=label,
        depth=1,
        start=T0 + start,
        end=None if end is None else T0 + end,
        status=status,
    )


def _flow(*rows: Row) -> Waterfall:
    ends = [r.end for r in rows if r.end is not None]
    return Waterfall(
        correlation_id=None, start=T0, end=max(ends) if ends else None, rows=rows, trace_ids=()
    )


def test_a_finished_flow_fills_the_axis_whenever_it_is_looked_at() -> None:
    flow = _flow(
        _row("saga", 0 * MS, 70 * MS, "completed"),
        _row("a", 0 * MS, 35 * MS, "completed"),
        _row("b", 35 * MS, 70 * MS, "completed"),
    )
    placed = bars(flow, now=T0 + timedelta(days=3))
    assert [(b.left, b.width) for b in placed] == [(0.0, 100.0), (0.0, 50.0), (50.0, 50.0)]


def test_a_flow_still_going_runs_to_now() -> None:
    flow = _flow(
        _row("a", 0 * MS, 1000 * MS, "completed"),
        _row("b", 1000 * MS, None, "running"),
    )
    placed = bars(flow, now=T0 + timedelta(seconds=4))
    assert [(b.left, b.width) for b in placed] == [(0.0, 25.0), (25.0, 75.0)]
