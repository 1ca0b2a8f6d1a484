"""Deciding one saga's transition under its span: what the coordinator and a worker
acting on replies in the outcome's transaction (:mod:`commandbus.sagas.inline`)
both do with a saga's incoming messages."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any
from uuid import UUID

import attrs

from commandbus import event_types as ev
from commandbus.config import Config
from commandbus.engine.observability.tracing import SagaSpan, saga_span
from commandbus.sagas.decide import SAGA_QUEUE, Decider
from commandbus.sagas.definition import Saga
from commandbus.sagas.state import SagaState


def saga_of(body: object) -> UUID | None:
    """The saga a saga-queue message or a reply is for (None: not a saga's)."""
    if not isinstance(body, dict):
        return None
    try:
        return UUID(str(body["saga_id"]))
    except (KeyError, ValueError):
        return None


@attrs.define
class TransitionCounts:
    """Transitions recorded, and the sagas they ended (counted once each)."""

    transitions: int = 0
    completed: int = 0
    compensated: int = 0
    failed: int = 0

    def count(self, decider: Decider) -> None:
        """Count a recorded transition."""
        self.transitions += 1
        for e in decider.events:
            if e.event_type == ev.SAGA_COMPLETED:
                self.completed += 1
            elif e.event_type == ev.SAGA_COMPENSATED:
                self.compensated += 1
            elif e.event_type == ev.SAGA_FAILED:
                self.failed += 1


def decide(
    saga: Saga | None,
    state: SagaState,
    config: Config,
    *,
    parent_headers: Mapping[str, Any],
    message_id: int | None,
    feed: Callable[[Decider], bool],
) -> tuple[Decider, bool]:
    """A decider for ``state``, fed by ``feed`` inside the transition's span.

    Returns the decider and what ``feed`` returned (False: its messages wait).
    ``parent_headers`` is the W3C context of the last message fed (a reply's).
    """
    span = saga_span(
        f"saga {state.name} transition",
        saga_id=state.saga_id,
        correlation_id=state.correlation_id,
        parent_headers=parent_headers,
        kind="consumer",
        saga_name=state.name,
        queue=SAGA_QUEUE,
        message_id=message_id,
    )
    with span:
        decider = Decider(
            saga,
            state,
            max_payload_bytes=config.max_payload_bytes,
            default_max_attempts=config.max_attempts,
            headers=span.headers,
            on_send=functools.partial(_send_span, span, state),
        )
        ok = feed(decider)
        _describe(span, decider)
    return decider, ok


_FAILURES = {
    ev.SAGA_STEP_FAILED: True,  # a business failure (or an operator's cancel)
    ev.SAGA_STEP_TIMED_OUT: False,
    ev.SAGA_STEP_COMPENSATION_FAILED: False,
    ev.SAGA_FAILED: True,
}


def _describe(span: SagaSpan, decider: Decider) -> None:
    """What the transition did, on its span (a failed step marks it failed)."""
    if not span.recording:
        return
    state = decider.state
    span.set("commandbus.saga_events", ",".join(e.event_type for e in decider.events))
    if state is not None:
        span.set("commandbus.saga_status", state.status.value)
    for e in decider.events:
        step = e.data.get("step")
        span.event(e.event_type, {"step": step} if isinstance(step, str) else None)
        business = _FAILURES.get(e.event_type)
        if business is not None and (e.event_type != ev.SAGA_STEP_TIMED_OUT or e.data.get("fails")):
            error = e.data.get("error") or {}
            span.fail(
                f"{e.event_type}: {error.get('message', '')}".strip(": "),
                error_type=str(error.get("code") or e.event_type),
                business=business,
            )


def _send_span(span: SagaSpan, state: SagaState, kind: str, step: str) -> dict[str, str]:
    """A PRODUCER span for one command a transition sends; its context goes with it."""
    name = f"compensate {step}" if kind == "compensation" else f"send {step}"
    with saga_span(
        name,
        saga_id=state.saga_id,
        correlation_id=state.correlation_id,
        step=step,
        parent_headers=span.headers,
        kind="producer",
        saga_name=state.name,
    ) as child:
        return child.headers
