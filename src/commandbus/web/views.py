"""What the pages draw, computed in Python: chart bars, waterfall bars, saga steps."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import attrs

from commandbus import CommandStatus, SagaRecord, StoredEvent
from commandbus import event_types as ev
from commandbus.engine.observability.waterfall import Waterfall
from commandbus.monitoring import Throughput


@attrs.frozen(kw_only=True)
class Chart:
    """A small bar chart: one bar per minute, heights in SVG units."""

    title: str
    total: int
    peak: int
    bars: tuple[tuple[float, float, str], ...]  # x, height, tooltip
    width: int = 300
    height: int = 48


def charts(tp: Throughput) -> list[Chart]:
    out = []
    for title, pick in (("completed / min", "completed"), ("failed / min", "failed")):
        values = [(m.minute, int(getattr(m, pick))) for m in tp.minutes]
        peak = max((v for _, v in values), default=0)
        n = max(1, len(values))
        step = 300 / n
        bars = tuple(
            (
                round(i * step, 2),
                round(0 if peak == 0 else max(1.0, 46 * v / peak) if v else 0, 2),
                f"{m:%H:%M} UTC: {v}",
            )
            for i, (m, v) in enumerate(values)
        )
        out.append(Chart(title=title, total=sum(v for _, v in values), peak=peak, bars=bars))
    return out


@attrs.frozen(kw_only=True)
class Bar:
    """One waterfall row placed on the flow's time axis (percent of its span)."""

    kind: str
    label: str
    depth: int
    status: str
    detail: str
    start: datetime
    end: datetime | None
    left: float
    width: float
    run_left: float | None
    run_width: float | None
    queue: str | None = None


def _pct(t: datetime, start: datetime, span: float) -> float:
    return round(100 * max(0.0, (t - start).total_seconds()) / span, 3)


def bars(wf: Waterfall, now: datetime) -> list[Bar]:
    """Each row of ``wf`` as a bar; a row still going ends at ``now``."""
    if wf.start is None:
        return []
    start = wf.start
    # the axis ends at the last end, or now while a row is still going
    going = any(r.end is None for r in wf.rows)
    last = max([*(r.end for r in wf.rows if r.end is not None), *([now] if going else [])])
    span = max((last - start).total_seconds(), 1e-3)
    out = []
    for r in wf.rows:
        end = r.end or now
        left = _pct(r.start, start, span)
        width = max(0.3, _pct(end, start, span) - left)
        run_left = run_width = None
        if r.run_start is not None and r.run_end is not None:
            run_left = _pct(r.run_start, start, span)
            run_width = max(0.3, _pct(r.run_end, start, span) - run_left)
        queue = r.label.split(".", 1)[0] if r.kind == "command" and r.end is None else None
        out.append(
            Bar(
                kind=r.kind,
                label=r.label,
                depth=r.depth,
                status=r.status,
                detail=r.detail,
                start=r.start,
                end=r.end,
                left=left,
                width=width,
                run_left=run_left,
                run_width=run_width,
                queue=queue,
            )
        )
    return out


@attrs.frozen(kw_only=True)
class StepView:
    """A forward step with its compensation beside it (the saga page's waterfall)."""

    name: str
    stage: int
    status: str
    domain: str
    command_type: str
    command_id: str
    started: datetime | None
    ended: datetime | None
    pivot: bool
    result: Any
    error: Any
    waiting_since: datetime | None
    comp_status: str | None
    comp_domain: str | None
    comp_type: str | None
    comp_id: str | None
    comp_started: datetime | None
    comp_ended: datetime | None
    comp_error: Any
    #: the failed compensation's command waits in the troubleshooting queue
    comp_in_tsq: bool
    #: its compensation failed and nothing runs it again: an operator may mark it
    #: compensated (the undo done by hand)
    comp_markable: bool
    left: float
    width: float
    comp_left: float | None
    comp_width: float | None


@attrs.frozen(kw_only=True)
class CompView:
    """A compensation as it ran (in the order they ran)."""

    step: str
    domain: str
    command_type: str
    command_id: str | None
    status: str
    started: datetime
    ended: datetime | None
    by_operator: bool
    error: Any
    #: its command waits in the troubleshooting queue (an operator can act on it there)
    in_tsq: bool = False


#: A failed compensation's command in one of these states (None: never sent, or no
#: status row) runs no more: an operator may mark the step compensated.
_SETTLED = {
    None,
    CommandStatus.FAILED.value,
    CommandStatus.CANCELLED.value,
    CommandStatus.IN_TROUBLESHOOTING_QUEUE.value,
}

_ENDS = {ev.SAGA_STEP_COMPLETED, ev.SAGA_STEP_FAILED, ev.SAGA_STEP_TIMED_OUT}


def saga_steps(
    record: SagaRecord,
    history: list[StoredEvent],
    pivots: set[str],
    now: datetime,
    commands: Mapping[UUID, str],
) -> tuple[list[StepView], list[CompView]]:
    """The saga's steps (stage order) with their compensations, and the compensations
    in the order they ran, from its status row, its events and the status of each
    of its commands (``commands``, by id)."""
    started: dict[str, datetime] = {}
    ended: dict[str, datetime] = {}
    waiting: dict[str, datetime] = {}
    comps: dict[str, dict[str, Any]] = {}
    order: list[str] = []
    for e in history:
        step = e.data.get("step") if isinstance(e.data, dict) else None
        if not isinstance(step, str):
            continue
        t = e.recorded_at
        if e.event_type == ev.SAGA_STEP_STARTED:
            started[step] = t
            ended.pop(step, None)
        elif e.event_type in _ENDS:
            ended.setdefault(step, t)
            if e.event_type == ev.SAGA_STEP_COMPLETED and e.data.get("pivot"):
                pivots.add(step)
        elif e.event_type == ev.SAGA_STEP_WAITING_ON_OPERATOR:
            waiting[step] = t
        elif e.event_type == ev.SAGA_STEP_COMPENSATING:
            comps[step] = {
                "domain": str(e.data.get("domain") or ""),
                "command_type": str(e.data.get("command_type") or ""),
                "command_id": e.data.get("command_id"),
                "status": "COMPENSATING",
                "started": t,
                "ended": None,
                "by_operator": False,
                "error": None,
            }
            order.append(step)
        elif e.event_type == ev.SAGA_STEP_COMPENSATED and step in comps:
            comps[step].update(
                status="COMPENSATED", ended=t, by_operator=bool(e.data.get("by_operator"))
            )
        elif e.event_type == ev.SAGA_STEP_COMPENSATION_FAILED:
            c = comps.setdefault(
                step,
                {
                    "domain": "",
                    "command_type": "",
                    "command_id": None,
                    "started": t,
                    "by_operator": False,
                },
            )
            if step not in order:
                order.append(step)
            c.update(
                status="COMPENSATION_FAILED",
                ended=t,
                error=e.data.get("error"),
            )
    for c in comps.values():
        cid = c["command_id"]
        now_status = None if cid is None else commands.get(UUID(str(cid)))
        c["in_tsq"] = now_status == CommandStatus.IN_TROUBLESHOOTING_QUEUE.value
        # what an operator may mark as done by hand (SagaClient.mark_compensated):
        # a failed compensation nothing runs again
        c["markable"] = c["status"] == "COMPENSATION_FAILED" and now_status in _SETTLED
    t0 = record.created_at
    last = record.ended_at or now
    span = max((last - t0).total_seconds(), 1e-3)
    steps = []
    for s in sorted(record.steps, key=lambda s: (s.stage, started.get(s.name, t0))):
        st = started.get(s.name, t0)
        en = ended.get(s.name)
        comp = comps.get(s.name)
        left = _pct(st, t0, span)
        width = max(0.5, _pct(en or (comp["started"] if comp else last), t0, span) - left)
        c_left = c_width = None
        if comp is not None:
            c_left = _pct(comp["started"], t0, span)
            c_width = max(0.5, _pct(comp["ended"] or last, t0, span) - c_left)
        steps.append(
            StepView(
                name=s.name,
                stage=s.stage,
                status=s.status.value,
                domain=s.domain,
                command_type=s.command_type,
                command_id=str(s.command_id),
                started=started.get(s.name),
                ended=en,
                pivot=s.name in pivots,
                result=s.result,
                error=s.error,
                waiting_since=(
                    waiting.get(s.name, st)
                    if s.status.value in ("RUNNING", "WAITING_ON_OPERATOR")
                    else None
                ),
                comp_status=None if comp is None else comp["status"],
                comp_domain=None if comp is None else comp["domain"],
                comp_type=None if comp is None else comp["command_type"],
                comp_id=None
                if comp is None or comp["command_id"] is None
                else str(comp["command_id"]),
                comp_started=None if comp is None else comp["started"],
                comp_ended=None if comp is None else comp["ended"],
                comp_error=None if comp is None else comp["error"],
                comp_in_tsq=comp is not None and bool(comp.get("in_tsq")),
                comp_markable=comp is not None and bool(comp.get("markable")),
                left=left,
                width=width,
                comp_left=c_left,
                comp_width=c_width,
            )
        )
    ran = [
        CompView(
            step=name,
            domain=comps[name]["domain"],
            command_type=comps[name]["command_type"],
            command_id=None
            if comps[name]["command_id"] is None
            else str(comps[name]["command_id"]),
            status=comps[name]["status"],
            started=comps[name]["started"],
            ended=comps[name]["ended"],
            by_operator=comps[name]["by_operator"],
            error=comps[name]["error"],
            in_tsq=bool(comps[name].get("in_tsq")),
        )
        for name in order
    ]
    return steps, ran


def age(now: datetime, since: datetime | None) -> timedelta | None:
    return None if since is None else max(timedelta(0), now - since)
