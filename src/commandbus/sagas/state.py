"""A saga's state: a fold of its events, and the status derived from it.

:func:`apply` is the ONE definition of what each saga event does. The coordinator
folds the events it appends to get the state it stores in the saga's status row;
verify and rebuild fold the whole stream with the same function, so the row is
provably a replay of the events. The state never depends on a saga's definition
(the events say everything), so a replay needs no registered sagas.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from typing import Any
from uuid import UUID

import attrs

from commandbus import event_types as ev


class SagaStatus(enum.StrEnum):
    """Where a saga stands."""

    RUNNING = "RUNNING"
    PAUSED = "PAUSED"
    #: a step's command is in the troubleshooting queue
    WAITING_ON_OPERATOR = "WAITING_ON_OPERATOR"
    COMPENSATING = "COMPENSATING"
    COMPLETED = "COMPLETED"
    COMPENSATED = "COMPENSATED"
    #: a compensation failed for good; its command is with an operator
    COMPENSATION_FAILED = "COMPENSATION_FAILED"
    #: a step after the pivot failed (nothing is compensated after the pivot)
    FAILED = "FAILED"

    @property
    def is_final(self) -> bool:
        return self in (SagaStatus.COMPLETED, SagaStatus.COMPENSATED, SagaStatus.FAILED)


class StepStatus(enum.StrEnum):
    """Where one step of a saga stands (its command, then its compensation)."""

    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    TIMED_OUT = "TIMED_OUT"
    WAITING_ON_OPERATOR = "WAITING_ON_OPERATOR"
    COMPENSATING = "COMPENSATING"
    COMPENSATED = "COMPENSATED"
    COMPENSATION_FAILED = "COMPENSATION_FAILED"


#: Step statuses of a forward command that may still reply.
IN_FLIGHT = frozenset({StepStatus.RUNNING, StepStatus.WAITING_ON_OPERATOR})


@attrs.define(kw_only=True)
class StepState:
    """One started step: its command, status, result or error, timer and compensation."""

    name: str
    stage: int
    status: StepStatus
    command_id: UUID
    domain: str
    command_type: str
    result: Any = None
    error: dict[str, Any] | None = None
    timer_msg_id: int | None = None
    overdue: bool = False
    compensation_id: UUID | None = None


@attrs.define(kw_only=True)
class SagaState:
    """A saga as the fold of its events (:func:`apply`); its status is derived."""

    saga_id: UUID
    name: str
    version: int
    input: dict[str, Any]
    correlation_id: UUID
    idempotency_key: str | None = None
    #: the last forward stage started (-1: none yet)
    stage: int = -1
    steps: dict[str, StepState] = attrs.field(factory=dict)
    compensating: bool = False
    #: an operator asked to cancel it (and the pivot did not overtake the request)
    cancelled: bool = False
    reason: str | None = None
    paused: bool = False
    pivoted: bool = False
    ended: SagaStatus | None = None
    last_error: dict[str, Any] | None = None
    #: commands sent so far (command ids are derived from the saga id and this count)
    sent: int = 0
    blocked: str | None = None

    @property
    def status(self) -> SagaStatus:
        if self.ended is not None:
            return self.ended
        statuses = {s.status for s in self.steps.values()}
        if StepStatus.WAITING_ON_OPERATOR in statuses:
            return SagaStatus.WAITING_ON_OPERATOR
        if StepStatus.COMPENSATION_FAILED in statuses:
            return SagaStatus.COMPENSATION_FAILED
        if self.paused:
            return SagaStatus.PAUSED
        if self.compensating:
            return SagaStatus.COMPENSATING
        return SagaStatus.RUNNING

    @property
    def current_steps(self) -> list[str]:
        """Steps whose command (or compensation) is out, in start order."""
        waiting = {
            StepStatus.RUNNING,
            StepStatus.WAITING_ON_OPERATOR,
            StepStatus.COMPENSATING,
            StepStatus.COMPENSATION_FAILED,
        }
        return [s.name for s in self.steps.values() if s.status in waiting]

    @property
    def results(self) -> dict[str, Any]:
        return {
            s.name: s.result
            for s in self.steps.values()
            if s.status in (StepStatus.COMPLETED, StepStatus.COMPENSATING, StepStatus.COMPENSATED)
            or (s.status is StepStatus.COMPENSATION_FAILED and s.result is not None)
        }

    def step_of_command(self, command_id: UUID) -> tuple[StepState, bool] | None:
        """The step a command belongs to, and whether it is that step's compensation."""
        for s in self.steps.values():
            if s.command_id == command_id:
                return s, False
            if s.compensation_id == command_id:
                return s, True
        return None


class SagaEventError(Exception):
    """An event that does not fit the state (a corrupt stream)."""


def _uuid(value: Any) -> UUID:
    return value if isinstance(value, UUID) else UUID(str(value))


def apply(state: SagaState | None, event_type: str, data: Mapping[str, Any]) -> SagaState:
    """The state after one event (``state`` is changed in place and returned)."""
    if event_type == ev.SAGA_STARTED:
        return SagaState(
            saga_id=_uuid(data["saga_id"]),
            name=data["name"],
            version=int(data["version"]),
            input=dict(data["input"]),
            correlation_id=_uuid(data["correlation_id"]),
            idempotency_key=data.get("idempotency_key"),
        )
    if state is None:
        raise SagaEventError(f"{event_type} before SagaStarted")
    if event_type != ev.SAGA_BLOCKED:
        state.blocked = None
    step = state.steps.get(data.get("step", "")) if "step" in data else None
    if event_type == ev.SAGA_STEP_STARTED:
        state.steps[data["step"]] = StepState(
            name=data["step"],
            stage=int(data["stage"]),
            status=StepStatus.RUNNING,
            command_id=_uuid(data["command_id"]),
            domain=data["domain"],
            command_type=data["command_type"],
            timer_msg_id=data.get("timer_msg_id"),
        )
        state.stage = max(state.stage, int(data["stage"]))
        state.sent += 1
        return state
    if event_type in (ev.SAGA_REPLY_IGNORED,):
        return state
    if event_type == ev.SAGA_BLOCKED:
        state.blocked = data.get("reason")
        return state
    if event_type == ev.SAGA_PAUSED:
        state.paused = True
        return state
    if event_type == ev.SAGA_RESUMED:
        state.paused = False
        return state
    if event_type in (ev.SAGA_COMPENSATION_STARTED, ev.SAGA_CANCEL_REQUESTED):
        state.compensating = True
        if event_type == ev.SAGA_CANCEL_REQUESTED:
            state.cancelled = True
        state.reason = data.get("reason")
        if data.get("error") is not None:
            state.last_error = data["error"]
        return state
    if event_type == ev.SAGA_COMPLETED:
        state.ended = SagaStatus.COMPLETED
        return state
    if event_type == ev.SAGA_COMPENSATED:
        state.ended = SagaStatus.COMPENSATED
        return state
    if event_type == ev.SAGA_FAILED:
        state.ended = SagaStatus.FAILED
        state.last_error = data.get("error")
        return state
    if step is None:
        raise SagaEventError(f"{event_type} for unknown step {data.get('step')!r}")
    if event_type == ev.SAGA_STEP_COMPLETED:
        step.status = StepStatus.COMPLETED
        step.result = data.get("result")
        step.error = None
        step.timer_msg_id = None
        if data.get("pivot"):
            state.pivoted = True
        if data.get("cancel_overtaken"):
            state.compensating = state.cancelled = False
            state.reason = None
        if state.ended is SagaStatus.COMPENSATED:
            state.ended = None  # a late success: its compensation runs too
    elif event_type == ev.SAGA_STEP_FAILED:
        step.status = StepStatus.FAILED
        step.error = data.get("error")
        step.timer_msg_id = None
        state.last_error = step.error
    elif event_type == ev.SAGA_STEP_TIMED_OUT:
        step.timer_msg_id = None
        if data.get("fails", True):
            step.status = StepStatus.TIMED_OUT
            step.error = data.get("error")
            state.last_error = step.error
        else:
            step.overdue = True
    elif event_type == ev.SAGA_STEP_WAITING_ON_OPERATOR:
        step.status = StepStatus.WAITING_ON_OPERATOR
        step.error = data.get("error")
        step.timer_msg_id = None
        state.last_error = step.error
    elif event_type == ev.SAGA_STEP_COMPENSATING:
        step.status = StepStatus.COMPENSATING
        step.compensation_id = _uuid(data["command_id"])
        state.sent += 1
    elif event_type == ev.SAGA_STEP_COMPENSATED:
        step.status = StepStatus.COMPENSATED
    elif event_type == ev.SAGA_STEP_COMPENSATION_FAILED:
        step.status = StepStatus.COMPENSATION_FAILED
        step.error = data.get("error")
        state.last_error = step.error
    else:
        raise SagaEventError(f"unknown saga event {event_type!r}")
    return state


def fold(events: Iterable[tuple[str, Mapping[str, Any]]]) -> SagaState | None:
    """The state after a whole stream (``(event type, data)`` pairs in version order)."""
    state: SagaState | None = None
    for event_type, data in events:
        state = apply(state, event_type, data)
    return state


# -- the state as stored in the status row (jsonb) -----------------------------------------


def to_json(state: SagaState) -> dict[str, Any]:
    return {
        "saga_id": str(state.saga_id),
        "name": state.name,
        "version": state.version,
        "input": state.input,
        "correlation_id": str(state.correlation_id),
        "idempotency_key": state.idempotency_key,
        "stage": state.stage,
        "steps": [
            {
                "name": s.name,
                "stage": s.stage,
                "status": s.status.value,
                "command_id": str(s.command_id),
                "domain": s.domain,
                "command_type": s.command_type,
                "result": s.result,
                "error": s.error,
                "timer_msg_id": s.timer_msg_id,
                "overdue": s.overdue,
                "compensation_id": None if s.compensation_id is None else str(s.compensation_id),
            }
            for s in state.steps.values()
        ],
        "compensating": state.compensating,
        "cancelled": state.cancelled,
        "reason": state.reason,
        "paused": state.paused,
        "pivoted": state.pivoted,
        "ended": None if state.ended is None else state.ended.value,
        "last_error": state.last_error,
        "sent": state.sent,
        "blocked": state.blocked,
    }


def _opt_uuid(value: Any) -> UUID | None:
    return None if value is None else UUID(str(value))


def from_json(doc: Mapping[str, Any]) -> SagaState:
    steps = {
        s["name"]: StepState(
            name=s["name"],
            stage=s["stage"],
            status=StepStatus(s["status"]),
            command_id=UUID(s["command_id"]),
            domain=s["domain"],
            command_type=s["command_type"],
            result=s.get("result"),
            error=s.get("error"),
            timer_msg_id=s.get("timer_msg_id"),
            overdue=bool(s.get("overdue")),
            compensation_id=_opt_uuid(s.get("compensation_id")),
        )
        for s in doc["steps"]
    }
    return SagaState(
        saga_id=UUID(doc["saga_id"]),
        name=doc["name"],
        version=int(doc["version"]),
        input=dict(doc["input"]),
        correlation_id=UUID(doc["correlation_id"]),
        idempotency_key=doc.get("idempotency_key"),
        stage=int(doc["stage"]),
        steps=steps,
        compensating=bool(doc["compensating"]),
        cancelled=bool(doc.get("cancelled")),
        reason=doc.get("reason"),
        paused=bool(doc["paused"]),
        pivoted=bool(doc["pivoted"]),
        ended=None if doc.get("ended") is None else SagaStatus(doc["ended"]),
        last_error=doc.get("last_error"),
        sent=int(doc["sent"]),
        blocked=doc.get("blocked"),
    )


def columns(state: SagaState) -> dict[str, Any]:
    """The status row's columns that come from the state (live and replayed alike)."""
    status = state.status
    return {
        "saga_id": state.saga_id,
        "name": state.name,
        "definition_version": state.version,
        "status": status.value,
        "current_steps": state.current_steps,
        "correlation_id": state.correlation_id,
        "idempotency_key": state.idempotency_key,
        "last_error": state.last_error,
        "state": to_json(state),
    }
