"""A saga as an operator reads it: its status and a timeline of what happened.

:func:`load_view` gathers a saga's status row, its event stream and the streams
of the commands it sent; :func:`render` turns them into lines (styled with
``click.style``, which ``click.echo`` strips when stdout is not a terminal). The
timeline has one line per event, each with its offset from the saga's start: a
step's command sent, its retries and operators' actions (from the command's own
stream), its outcome with how long the saga waited for it, timeouts,
compensations and the end. ``commandbus saga show`` and ``commandbus demo`` print it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import attrs
import click

from commandbus import event_types as ev
from commandbus.codec import unstructure
from commandbus.engine.commands.bus import CommandBus
from commandbus.models import CommandRecord, StoredEvent
from commandbus.sagas.client import SagaClient
from commandbus.sagas.read import SagaRecord

#: Command events shown in a saga's timeline (the saga's own events say the rest).
_COMMAND_EVENTS = frozenset(
    {
        ev.COMMAND_RETRY_SCHEDULED,
        ev.COMMAND_ATTEMPT_LOST,
        ev.COMMAND_RETRIED_BY_OPERATOR,
        ev.COMMAND_CANCELLED_BY_OPERATOR,
        ev.COMMAND_COMPLETED_BY_OPERATOR,
    }
)
_OUTCOMES = frozenset(
    {
        ev.COMMAND_COMPLETED,
        ev.COMMAND_FAILED,
        ev.COMMAND_MOVED_TO_TSQ,
    }
)
#: How much of a result, an input or an error message a line shows.
_MAX_TEXT = 72

_TONES: dict[str, dict[str, Any]] = {
    "ok": {"fg": "green"},
    "bad": {"fg": "red", "bold": True},
    "warn": {"fg": "yellow"},
    "sent": {"fg": "cyan"},
    "dim": {"dim": True},
    "plain": {},
}
_STATUS_TONES = {
    "COMPLETED": "ok",
    "COMPENSATED": "warn",
    "RUNNING": "sent",
    "PAUSED": "warn",
    "WAITING_ON_OPERATOR": "warn",
    "COMPENSATING": "warn",
    "COMPENSATION_FAILED": "bad",
    "FAILED": "bad",
}


@attrs.frozen(kw_only=True)
class SagaView:
    """Everything the timeline of one saga is made of."""

    record: SagaRecord
    events: tuple[StoredEvent, ...]
    #: the saga's commands (its steps' and compensations'), by command id
    commands: Mapping[UUID, CommandRecord]
    command_events: Mapping[UUID, tuple[StoredEvent, ...]]

    def to_json(self) -> dict[str, Any]:
        return {
            "saga": unstructure(self.record),
            "events": unstructure(list(self.events)),
            "commands": [
                {
                    "command": unstructure(self.commands.get(cid)),
                    "events": unstructure(list(events)),
                }
                for cid, events in self.command_events.items()
            ],
        }


def _sent_commands(events: Iterable[StoredEvent]) -> dict[UUID, str]:
    """The commands a saga sent (steps and compensations), with their domains, in order."""
    out: dict[UUID, str] = {}
    for e in events:
        if e.event_type in (ev.SAGA_STEP_STARTED, ev.SAGA_STEP_COMPENSATING):
            cid, domain = e.data.get("command_id"), e.data.get("domain")
            if cid and domain:
                out[UUID(str(cid))] = str(domain)
    return out


async def load_view(bus: CommandBus, saga_id: UUID) -> SagaView | None:
    """Read one saga's row, events and commands (None if there is no such saga)."""
    sagas = SagaClient(bus)
    record = await sagas.get_saga(saga_id)
    if record is None:
        return None
    events = tuple(await sagas.saga_history(saga_id))
    commands: dict[UUID, CommandRecord] = {}
    command_events: dict[UUID, tuple[StoredEvent, ...]] = {}
    for cid, domain in _sent_commands(events).items():
        found = await bus.get_command(domain, cid)
        if found is not None:
            commands[cid] = found
        command_events[cid] = tuple(await bus.command_history(domain, cid))
    return SagaView(record=record, events=events, commands=commands, command_events=command_events)


# -- formatting ----------------------------------------------------------------------------


def duration(seconds: float) -> str:
    """A short, human duration: ``12ms``, ``1.25s``, ``42.0s``, ``3m07s``, ``2h05m``, ``3d04h``."""
    seconds = max(seconds, 0.0)
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 10:
        return f"{seconds:.2f}s"
    if seconds < 60:
        return f"{seconds:.1f}s"
    whole = int(seconds)
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"


def _since(later: datetime, earlier: datetime | None) -> float:
    return 0.0 if earlier is None else (later - earlier).total_seconds()


def _text(value: Any, limit: int = _MAX_TEXT) -> str:
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def error_text(error: Any) -> str:
    """``CODE: message`` of an error as the library records it."""
    if not isinstance(error, Mapping):
        return "-" if error is None else _text(error)
    code, message = error.get("code"), error.get("message")
    if code and message:
        return f"{code}: {_text(message)}"
    return _text(message or code or dict(error))


def _by(data: Mapping[str, Any]) -> str:
    """`` (by NAME)`` when the event names the operator who asked for it."""
    return f" (by {_text(data['operator'], 40)})" if data.get("operator") else ""


def _when(at: datetime) -> str:
    return at.astimezone().strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + at.astimezone().strftime(" %Z")


def style(text: str, tone: str) -> str:
    return click.style(text, **_TONES.get(tone, {}))


def status_text(status: str) -> str:
    return style(status, _STATUS_TONES.get(status, "plain"))


@attrs.frozen
class _Row:
    at: datetime
    step: str
    what: str
    tone: str
    detail: str = ""


class _Timeline:
    """Turns a saga's events (and its commands') into rows, tracking waits."""

    def __init__(self, view: SagaView) -> None:
        self.view = view
        self.rows: list[_Row] = []
        #: when each command was sent (the start of the wait for its outcome)
        self.sent_at: dict[str, datetime] = {}
        self.step_of: dict[str, str] = {}
        self.paused_at: datetime | None = None
        self.started_at: datetime | None = None
        self.attempts: dict[str, int] = {}
        for cid, events in view.command_events.items():
            for e in events:
                if e.event_type in _OUTCOMES and isinstance(e.data.get("attempt"), int):
                    self.attempts[str(cid)] = e.data["attempt"]

    def add(self, at: datetime, step: str, what: str, tone: str, detail: str = "") -> None:
        self.rows.append(_Row(at, step, what, tone, detail))

    def waited(self, e: StoredEvent) -> str:
        cid = str(e.data.get("command_id"))
        sent = self.sent_at.get(cid)
        text = f"after {duration(_since(e.recorded_at, sent))}" if sent else ""
        attempt = self.attempts.get(cid, 1)
        if attempt > 1:
            text += f", attempt {attempt}"
        return text

    def saga_event(self, e: StoredEvent) -> None:
        d, t, at = e.data, e.event_type, e.recorded_at
        step = str(d.get("step", ""))
        cid = str(d.get("command_id"))
        if t == ev.SAGA_STARTED:
            self.started_at = at
            key = f", key {d['idempotency_key']!r}" if d.get("idempotency_key") else ""
            self.add(at, "saga", "started", "plain", f"input {_text(d.get('input'))}{key}")
        elif t in (ev.SAGA_STEP_STARTED, ev.SAGA_STEP_COMPENSATING):
            self.sent_at[cid] = at
            self.step_of[cid] = step
            timeout = d.get("timeout_seconds")
            limit = f" (timeout {duration(float(timeout))})" if timeout else ""
            what = "sent" if t == ev.SAGA_STEP_STARTED else "compensating"
            tone = "sent" if t == ev.SAGA_STEP_STARTED else "warn"
            self.add(
                at, step, what, tone, f"{d.get('domain')}/{d.get('command_type')} {cid}{limit}"
            )
        elif t == ev.SAGA_STEP_COMPLETED:
            what = "completed late" if d.get("late") else "completed"
            if d.get("pivot"):
                what += " (pivot)"
            result = d.get("result")
            detail = self.waited(e) + (f": {_text(result)}" if result is not None else "")
            self.add(at, step, what, "ok", detail)
        elif t == ev.SAGA_STEP_FAILED:
            what = "cancelled" if d.get("outcome") == "CANCELLED" else "failed"
            self.add(at, step, what, "bad", f"{self.waited(e)}: {error_text(d.get('error'))}")
        elif t == ev.SAGA_STEP_TIMED_OUT:
            if d.get("fails", True):
                self.add(at, step, "timed out", "bad", f"no outcome {self.waited(e)}")
            else:
                self.add(
                    at, step, "overdue", "warn", f"no outcome {self.waited(e)} (past the pivot)"
                )
        elif t == ev.SAGA_STEP_WAITING_ON_OPERATOR:
            detail = f"{self.waited(e)}: {error_text(d.get('error'))} (troubleshooting queue)"
            self.add(at, step, "waiting on operator", "warn", detail)
        elif t == ev.SAGA_STEP_COMPENSATED and d.get("by_operator"):
            # the failed compensation's undo was done by hand (its command cancelled
            # by an operator, or the step marked compensated)
            detail = "by hand" + (f": {_text(d['reason'])}" if d.get("reason") else "") + _by(d)
            self.add(at, step, "compensated", "warn", detail)
        elif t == ev.SAGA_STEP_COMPENSATED:
            self.add(at, step, "compensated", "ok", self.waited(e))
        elif t == ev.SAGA_STEP_COMPENSATION_FAILED:
            waited = self.waited(e) if d.get("command_id") else "not sent"
            self.add(
                at, step, "compensation failed", "bad", f"{waited}: {error_text(d.get('error'))}"
            )
        elif t == ev.SAGA_COMPENSATION_STARTED:
            reason = str(d.get("reason") or "").replace("_", " ")
            self.add(at, "saga", "compensating", "warn", f"{reason}: undoing completed steps")
        elif t == ev.SAGA_CANCEL_REQUESTED:
            detail = _text(d.get("reason") or "") + _by(d)
            self.add(at, "saga", "cancel requested", "warn", detail)
        elif t == ev.SAGA_PAUSED:
            self.paused_at = at
            self.add(at, "saga", "paused", "warn", _text(d.get("reason") or "") + _by(d))
        elif t == ev.SAGA_RESUMED:
            held = _since(at, self.paused_at) if self.paused_at else None
            detail = ("" if held is None else f"after {duration(held)}") + _by(d)
            self.add(at, "saga", "resumed", "sent", detail)
            self.paused_at = None
        elif t == ev.SAGA_COMPLETED:
            self.add(at, "saga", "COMPLETED", "ok", f"in {duration(_since(at, self.started_at))}")
        elif t == ev.SAGA_COMPENSATED:
            total = duration(_since(at, self.started_at))
            self.add(at, "saga", "COMPENSATED", "warn", f"in {total}")
        elif t == ev.SAGA_FAILED:
            self.add(at, "saga", "FAILED", "bad", error_text(d.get("error")))
        elif t == ev.SAGA_REPLY_IGNORED:
            if d.get("action"):
                detail = f"operator's {d['action']} refused: {d.get('reason')}"
                self.add(at, "saga", "request refused", "dim", detail)
            else:
                owner = self.step_of.get(cid, "saga")
                detail = f"{d.get('outcome')} reply of {cid}: {d.get('reason')}"
                self.add(at, owner, "reply ignored", "dim", detail)
        elif t == ev.SAGA_BLOCKED:
            self.add(at, "saga", "blocked", "bad", _text(d.get("reason") or ""))
        else:
            self.add(at, step or "saga", t, "plain", _text(d))

    def command_event(self, cid: UUID, e: StoredEvent) -> None:
        d, t, at = e.data, e.event_type, e.recorded_at
        step = self.step_of.get(str(cid), "?")
        if t == ev.COMMAND_RETRY_SCHEDULED:
            delay = d.get("delay_seconds")
            later = f"; next attempt in {duration(float(delay))}" if delay is not None else ""
            detail = f"attempt {d.get('attempt')}: {error_text(d.get('error'))}{later}"
            self.add(at, step, "retry scheduled", "warn", detail)
        elif t == ev.COMMAND_ATTEMPT_LOST:
            self.add(at, step, "attempt lost", "warn", f"attempt {d.get('attempt')}: no outcome")
        elif t == ev.COMMAND_RETRIED_BY_OPERATOR:
            who = f" by {d['operator']}" if d.get("operator") else ""
            self.add(at, step, "operator retry", "sent", f"{cid} re-queued{who}")
        elif t == ev.COMMAND_CANCELLED_BY_OPERATOR:
            who = f" by {d['operator']}" if d.get("operator") else ""
            reason = f": {_text(d['reason'])}" if d.get("reason") else ""
            self.add(at, step, "operator cancel", "warn", f"{cid}{who}{reason}")
        elif t == ev.COMMAND_COMPLETED_BY_OPERATOR:
            who = f" by {d['operator']}" if d.get("operator") else ""
            self.add(at, step, "operator complete", "sent", f"{cid}{who}")

    def build(self) -> list[_Row]:
        merged: list[tuple[int, UUID | None, StoredEvent]] = [
            (e.position, None, e) for e in self.view.events
        ]
        for command_id, events in self.view.command_events.items():
            merged += [
                (e.position, command_id, e) for e in events if e.event_type in _COMMAND_EVENTS
            ]
        for _pos, cid, e in sorted(merged, key=lambda item: item[0]):
            if cid is None:
                self.saga_event(e)
            else:
                self.command_event(cid, e)
        return self.rows


def timeline(view: SagaView, indent: str = "  ") -> list[str]:
    """The timeline's lines (styled)."""
    rows = _Timeline(view).build()
    if not rows:
        return []
    start = rows[0].at
    offsets = [f"+{duration(_since(r.at, start))}" for r in rows]
    width_at = max(len(o) for o in offsets)
    width_step = max(len(r.step) for r in rows)
    width_what = max(len(r.what) for r in rows)
    lines = []
    for offset, r in zip(offsets, rows, strict=True):
        step = r.step.ljust(width_step)
        if r.step != "saga":
            step = click.style(step, bold=True)
        lines.append(
            f"{indent}{style(offset.rjust(width_at), 'dim')}  {step}  "
            f"{style(r.what.ljust(width_what), r.tone)}  {r.detail}".rstrip()
        )
    return lines


def render(view: SagaView, *, now: datetime | None = None) -> list[str]:
    """``commandbus saga show``: the saga's status, steps, last error and timeline."""
    rec = view.record
    lines = [
        f"saga {click.style(str(rec.saga_id), bold=True)}  {rec.name} v{rec.definition_version}"
        f"  {status_text(rec.status.value)}"
    ]
    if rec.ended_at is not None:
        span = f", ended {duration(_since(rec.ended_at, rec.created_at))} later"
    else:
        moment = now or datetime.now(tz=rec.updated_at.tzinfo)
        span = f", last moved {duration(_since(moment, rec.updated_at))} ago"
    lines.append(f"  started      {_when(rec.created_at)}{span}")
    lines.append(f"  correlation  {rec.correlation_id}")
    if rec.idempotency_key:
        lines.append(f"  key          {rec.idempotency_key}")
    if rec.steps:
        lines.append(
            "  steps        "
            + ", ".join(f"{s.name} {status_text(s.status.value)}" for s in rec.steps)
        )
    lines.append(f"  current      {', '.join(rec.current_steps) or '-'}")
    lines.append(f"  last error   {error_text(rec.last_error) if rec.last_error else '-'}")
    if rec.state.blocked:
        lines.append(f"  blocked      {style(rec.state.blocked, 'bad')}")
    lines.append("  timeline")
    lines += timeline(view, indent="    ")
    return lines


def stuck_for(record: SagaRecord, now: datetime) -> timedelta:
    """How long a saga has not moved (zero once it has ended)."""
    if record.status.is_final:
        return timedelta(0)
    return max(now - record.updated_at, timedelta(0))
