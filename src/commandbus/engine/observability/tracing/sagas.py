"""The saga coordinator's spans (transitions, steps, compensations) and its metrics."""

from __future__ import annotations

from collections.abc import Mapping
from contextvars import Token
from types import TracebackType
from typing import Any, Final, Literal
from uuid import UUID

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from commandbus.engine.observability.tracing.context import (
    _TRACE_KEYS,
    MESSAGING_SYSTEM,
    AttributeValue,
    _parent,
    current_trace_headers,
    end_span,
    enter_span,
)
from commandbus.engine.observability.tracing.providers import _active

_KINDS: Final = {
    "internal": SpanKind.INTERNAL,
    "producer": SpanKind.PRODUCER,
    "consumer": SpanKind.CONSUMER,
    "client": SpanKind.CLIENT,
    "server": SpanKind.SERVER,
}

SpanKindName = Literal["internal", "producer", "consumer", "client", "server"]


class SagaSpan:
    """A span of the saga coordinator (a transition, a compensation, a start...).

    ``with saga_span(...) as span:``; :attr:`headers` is the W3C context that
    what the block sends must carry (this span's, or the parent's when nothing
    records, so the trace is never cut). An exception leaving the block is
    recorded (status ERROR); :meth:`fail` marks a failure that is not one.
    """

    __slots__ = ("_parent_headers", "_span", "_token")

    def __init__(self, span: trace.Span | None, parent_headers: Mapping[str, str]) -> None:
        self._span = span
        self._parent_headers = parent_headers
        self._token: Token[otel_context.Context] | None = None

    def __enter__(self) -> SagaSpan:
        self._token = enter_span(self._span)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        end_span(self._span, self._token, exc)

    @property
    def recording(self) -> bool:
        return self._span is not None and self._span.is_recording()

    @property
    def headers(self) -> dict[str, str]:
        """The W3C context for what this span causes (messages it sends)."""
        if self._span is None:
            return dict(self._parent_headers)
        carrier: dict[str, str] = {}
        propagate.inject(carrier, context=trace.set_span_in_context(self._span))
        return carrier

    def set(self, key: str, value: AttributeValue | None) -> None:
        """Set an attribute (``None`` is skipped)."""
        if self._span is not None and value is not None:
            self._span.set_attribute(key, value)

    def rename(self, name: str) -> None:
        if self._span is not None:
            self._span.update_name(name)

    def event(self, name: str, attributes: Mapping[str, AttributeValue] | None = None) -> None:
        """Add a timestamped event to the span (``step completed``...)."""
        if self._span is not None:
            self._span.add_event(name, dict(attributes or {}))

    def fail(
        self,
        message: str,
        *,
        error_type: str,
        business: bool = True,
        outcome: str | None = None,
    ) -> None:
        """Mark the span failed (status ERROR) without an exception.

        ``error_type`` is the error's code or class (``error.type``); ``business``
        says whether a business rule failed (``commandbus.error.kind=business``)
        rather than something crashing; ``outcome`` sets ``commandbus.outcome``.
        """
        span = self._span
        if span is None:
            return
        span.set_attribute("error.type", error_type)
        span.set_attribute("commandbus.error.kind", "business" if business else "technical")
        if outcome is not None:
            span.set_attribute("commandbus.outcome", outcome)
        span.set_status(Status(StatusCode.ERROR, message))


def saga_span(
    name: str,
    *,
    saga_id: UUID | str,
    correlation_id: UUID | str | None,
    step: str | None = None,
    parent_headers: Mapping[str, Any] | None = None,
    kind: SpanKindName = "internal",
    saga_name: str | None = None,
    queue: str | None = None,
    message_id: int | str | None = None,
    attributes: Mapping[str, AttributeValue | None] | None = None,
) -> SagaSpan:
    """A span for the saga coordinator: use it as ``with saga_span(...) as span:``.

    ``parent_headers`` are the W3C headers of what caused it (a reply's PGMQ
    headers, a timer's): the span is their child. ``None`` makes it a child of
    the current context (a saga started from a handler or a traced caller).
    ``kind`` is ``internal`` (a transition), ``producer`` (sending a stage or a
    compensation), ``consumer`` (processing a reply, with ``queue`` and
    ``message_id``)... Sets ``commandbus.saga_id``, ``commandbus.saga_step``,
    ``commandbus.saga_name`` and ``messaging.message.conversation_id`` (the
    correlation id); ``messaging.*`` too when ``queue`` is given.
    """
    parent = (
        {k: v for k in _TRACE_KEYS if isinstance(v := parent_headers.get(k), str)}
        if isinstance(parent_headers, Mapping)
        else None
    )
    tracer = _active().tracer
    if tracer is None:
        return SagaSpan(None, parent if parent is not None else current_trace_headers())
    attrs: dict[str, AttributeValue] = {"commandbus.saga_id": str(saga_id)}
    if correlation_id is not None:
        attrs["messaging.message.conversation_id"] = str(correlation_id)
    if step is not None:
        attrs["commandbus.saga_step"] = step
    if saga_name is not None:
        attrs["commandbus.saga_name"] = saga_name
    if queue is not None:
        attrs["messaging.system"] = MESSAGING_SYSTEM
        attrs["messaging.destination.name"] = queue
        operation = "send" if kind == "producer" else "process"
        attrs["messaging.operation.type"] = operation
        attrs["messaging.operation.name"] = operation
    if message_id is not None:
        attrs["messaging.message.id"] = str(message_id)
    for key, value in (attributes or {}).items():
        if value is not None:
            attrs[key] = value
    span = tracer.start_span(
        name,
        context=_parent(parent) if parent is not None else None,
        kind=_KINDS[kind],
        attributes=attrs,
    )
    return SagaSpan(span, parent or {})


def count_saga_transition(
    saga_name: str, status: str, *, compensations: Mapping[str, int] | None = None
) -> None:
    """Count one committed saga transition (``status``: what it left the saga in) and
    the compensation commands it sent, by step. For the coordinator; nothing when
    no meter provider records."""
    inst = _active().instruments
    if inst is None:
        return
    inst.saga_transitions.add(
        (("commandbus.saga_name", saga_name), ("commandbus.saga_status", status))
    )
    for step, n in (compensations or {}).items():
        inst.saga_compensations.add(
            (("commandbus.saga_name", saga_name), ("commandbus.saga_step", step)), n
        )
