"""A waterfall as text: one bar per row on a common time axis, ANSI colour when asked."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from datetime import datetime
from typing import Final

from commandbus.engine.observability.waterfall.build import _duration, build_waterfall
from commandbus.engine.observability.waterfall.flow import Waterfall
from commandbus.models import StoredEvent

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
