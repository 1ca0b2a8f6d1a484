"""The W3C trace context: what messages carry, what a handler inherits, ids for logs."""

from __future__ import annotations

import re
from collections.abc import Mapping
from contextvars import ContextVar, Token
from typing import Any, Final

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import Status, StatusCode

from commandbus.engine.observability.tracing.providers import _active

#: ``messaging.system`` of every messaging span.
MESSAGING_SYSTEM: Final = "pgmq"

# The trace-context headers a message carries (W3C Trace Context and Baggage); the
# same keys as ``envelope.TRACE_KEYS`` (this module imports nothing of the engine).
_TRACE_KEYS: Final = ("traceparent", "tracestate", "baggage")
_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}")

AttributeValue = str | bool | int | float

# The context a message handled while nothing records came with: what a command
# sent from its handler, and its reply, carry on (so the trace is not cut).
_inherited: ContextVar[Mapping[str, str] | None] = ContextVar(
    "commandbus_inherited_trace", default=None
)


def current_trace_headers() -> dict[str, str]:
    """The active trace context as W3C headers (empty when nothing is traced).

    Inside a handler of a worker that records nothing, the context the handled
    message came with.
    """
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    if not carrier:
        inherited = _inherited.get()
        if inherited:
            return dict(inherited)
    return carrier


def reply_headers(command_trace: Mapping[str, str]) -> dict[str, str]:
    """The headers of a reply: the context of the span processing the command.

    Inside the worker's ``process`` span that span's context (so what the reply
    causes is its child); elsewhere (an operator's action) or when nothing
    records, the context the command was sent with.
    """
    if _active().tracer is None:
        inherited = _inherited.get()
        return dict(inherited if inherited else command_trace)
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier or dict(command_trace)


def current_trace_ids() -> tuple[str | None, str | None]:
    """``(trace_id, span_id)`` of the active span as hex, or ``(None, None)``."""
    ctx = trace.get_current_span().get_span_context()
    if ctx.is_valid:
        return format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")
    inherited = _inherited.get()
    if inherited:
        m = _TRACEPARENT.match(inherited.get("traceparent", ""))
        if m:
            return m.group(1), m.group(2)
    return None, None


def trace_id_of(headers: Mapping[str, Any] | None) -> str | None:
    """The trace id in W3C headers (or an event's ``metadata["trace"]``), if any."""
    if not isinstance(headers, Mapping):
        return None
    value = headers.get("traceparent")
    m = _TRACEPARENT.match(value) if isinstance(value, str) else None
    return m.group(1) if m else None


def _parent(headers: Mapping[str, str] | None) -> otel_context.Context:
    """The context to start a span of a message in: the one its headers carry, else a root."""
    if headers:
        return propagate.extract({k: v for k in _TRACE_KEYS if (v := headers.get(k))})
    return otel_context.Context()


def _error_type(exc: BaseException) -> str:
    cls = type(exc)
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


def enter_span(span: trace.Span | None) -> Token[otel_context.Context] | None:
    """Make ``span`` current (nothing when there is no span); the token to end it."""
    return None if span is None else otel_context.attach(trace.set_span_in_context(span))


def end_span(
    span: trace.Span | None, token: Token[otel_context.Context] | None, exc: BaseException | None
) -> None:
    """End a span made current by :func:`enter_span`, recording ``exc`` (status ERROR)."""
    if span is None:
        return
    try:
        if exc is not None:
            span.record_exception(exc)
            span.set_attribute("error.type", _error_type(exc))
            span.set_status(Status(StatusCode.ERROR, str(exc) or type(exc).__name__))
    finally:
        if token is not None:
            otel_context.detach(token)
        span.end()
