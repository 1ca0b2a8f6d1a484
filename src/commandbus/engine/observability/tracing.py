"""Tracing and metrics through the OpenTelemetry API: the only module that imports it.

The library depends on ``opentelemetry-api`` only. Spans follow the OpenTelemetry
messaging semantic conventions (``messaging.system=pgmq``):

* a PRODUCER span ``send {queue}`` per :meth:`CommandBus.send` and one per
  ``send_batch`` (``messaging.batch.message_count``); its W3C context is what the
  message's PGMQ headers and its ``CommandSent`` metadata carry;
* a CONSUMER span ``process {queue}`` per delivery a worker handles (every retry
  its own span), a child of the context in the message's headers, current while
  the handler runs: a command sent from inside a handler is its child (one flow,
  one trace), and so is the reply to ``reply_to``;
* :func:`saga_span` for the saga coordinator's transitions and compensations
  (and :func:`count_saga_transition` for its metrics).

Nothing is recorded unless an SDK is installed as the global tracer / meter
provider (by :func:`configure_tracing`, ``COMMANDBUS_OTEL=1``, or the
application itself). While none is, the hot path costs a clock read and a few
attribute reads per message: the global providers are looked at again at most
once a second (:data:`REFRESH_SECONDS`), and :func:`configure_tracing` looks at
once. Without a recording SDK the sender's context still travels on: a command
sent from a handler, and its reply, carry the context the handled message came
with.

Imports nothing else of the engine.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import os
import re
import threading
import time
from collections.abc import Iterator, Mapping
from contextvars import ContextVar, Token
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Literal
from uuid import UUID

from opentelemetry import context as otel_context
from opentelemetry import metrics, propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from commandbus.errors import ConfigError

if TYPE_CHECKING:
    from commandbus.models import Command

#: The switch that turns the SDK on from the environment (``1``/``true``/``yes``/``on``).
OTEL_SWITCH: Final = "COMMANDBUS_OTEL"
#: How often, at most, the hot path looks at the global providers again.
REFRESH_SECONDS: Final = 1.0
#: Instrumentation scope of every span and instrument of the library.
SCOPE: Final = "commandbus"
#: ``messaging.system`` of every messaging span.
MESSAGING_SYSTEM: Final = "pgmq"

# The trace-context headers a message carries (W3C Trace Context and Baggage); the
# same keys as ``envelope.TRACE_KEYS`` (this module imports nothing of the engine).
_TRACE_KEYS: Final = ("traceparent", "tracestate", "baggage")
_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}")
_ON: Final = frozenset({"1", "true", "yes", "on"})
_OFF: Final = frozenset({"", "0", "false", "no", "off"})
_KINDS: Final = {
    "internal": SpanKind.INTERNAL,
    "producer": SpanKind.PRODUCER,
    "consumer": SpanKind.CONSUMER,
    "client": SpanKind.CLIENT,
    "server": SpanKind.SERVER,
}
#: Handler duration buckets, in seconds.
_DURATION_BUCKETS: Final = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)

SpanKindName = Literal["internal", "producer", "consumer", "client", "server"]
AttributeValue = str | bool | int | float


class _Instruments:
    """The library's metric instruments, on one meter."""

    def __init__(self, meter: metrics.Meter) -> None:
        self.sent = meter.create_counter(
            "commandbus.commands.sent",
            unit="{command}",
            description="Commands sent (send and send_batch), by domain and type",
        )
        self.processed = meter.create_counter(
            "commandbus.commands.processed",
            unit="{command}",
            description="Deliveries handled by workers, by domain, type and outcome",
        )
        self.failed = meter.create_counter(
            "commandbus.commands.failed",
            unit="{command}",
            description=(
                "Deliveries that ended a command as failed (a business rule) or in the "
                "troubleshooting queue, by domain, type, outcome and error.type"
            ),
        )
        self.retried = meter.create_counter(
            "commandbus.commands.retried",
            unit="{command}",
            description="Deliveries that scheduled a retry, by domain, type and error.type",
        )
        self.duration = meter.create_histogram(
            "commandbus.handler.duration",
            unit="s",
            description="Time to handle a delivery (the handler and its outcome), by outcome",
            explicit_bucket_boundaries_advisory=_DURATION_BUCKETS,
        )
        self.saga_transitions = meter.create_counter(
            "commandbus.saga.transitions",
            unit="{transition}",
            description="Saga transitions committed, by saga name and the status they left",
        )
        self.saga_compensations = meter.create_counter(
            "commandbus.saga.compensations",
            unit="{command}",
            description="Compensation commands sent, by saga name and step",
        )


def _is_real_tracer_provider(provider: trace.TracerProvider) -> bool:
    return not isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider)


def _is_real_meter_provider(provider: metrics.MeterProvider) -> bool:
    # the API's proxy (what get_meter_provider returns before one is set) is private
    return not isinstance(provider, metrics.NoOpMeterProvider) and type(provider).__name__ not in (
        "_ProxyMeterProvider",
        "ProxyMeterProvider",
    )


class _State:
    """What the hot path reads: the tracer and instruments, or None when not recording."""

    def __init__(self) -> None:
        self.next_check = 0.0
        self.tracer: trace.Tracer | None = None
        self.instruments: _Instruments | None = None
        self.pinned = False  # providers given by use_providers(): never looked up
        self._tracer_provider: trace.TracerProvider | None = None
        self._meter_provider: metrics.MeterProvider | None = None

    def refresh(self, now: float) -> None:
        self.next_check = now + REFRESH_SECONDS
        if self.pinned:
            return
        self.set(trace.get_tracer_provider(), metrics.get_meter_provider())

    def set(
        self, tracer_provider: trace.TracerProvider, meter_provider: metrics.MeterProvider
    ) -> None:
        if tracer_provider is not self._tracer_provider:
            self._tracer_provider = tracer_provider
            self.tracer = (
                tracer_provider.get_tracer(SCOPE)
                if _is_real_tracer_provider(tracer_provider)
                else None
            )
        if meter_provider is not self._meter_provider:
            self._meter_provider = meter_provider
            self.instruments = (
                _Instruments(meter_provider.get_meter(SCOPE))
                if _is_real_meter_provider(meter_provider)
                else None
            )


_state = _State()


def _active() -> _State:
    s = _state
    now = time.monotonic()
    if now >= s.next_check:
        s.refresh(now)
    return s


def refresh() -> None:
    """Look at the global tracer and meter providers now (not within the second)."""
    _state.refresh(time.monotonic())


def tracing_active() -> bool:
    """Whether spans are being recorded (a real tracer provider is installed)."""
    return _active().tracer is not None


def metrics_active() -> bool:
    """Whether the library's metrics are being recorded (a real meter provider)."""
    return _active().instruments is not None


@contextlib.contextmanager
def use_providers(
    tracer_provider: trace.TracerProvider | None = None,
    meter_provider: metrics.MeterProvider | None = None,
) -> Iterator[None]:
    """Record with these providers (not the global ones) inside the block.

    For tests and for applications that keep their SDK out of the globals; a
    ``None`` is the API's no-op. The global providers are looked at again after.
    """
    saved = _state.pinned
    _state.pinned = True
    _state.set(
        tracer_provider or trace.NoOpTracerProvider(),
        meter_provider or metrics.NoOpMeterProvider(),
    )
    try:
        yield
    finally:
        _state.pinned = saved
        _state.next_check = 0.0
        if not saved:
            refresh()


# -- trace context -----------------------------------------------------------------------

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


# -- sending -------------------------------------------------------------------------------


class SendSpan:
    """The PRODUCER span of a send (or a batch); a no-op when nothing records.

    Used as ``with producer(...) as span:``: :meth:`headers` is the context the
    messages carry, :meth:`describe` names the span once the arguments are
    checked, :meth:`sent` and :meth:`refused` say how it ended. An exception
    leaving the block is recorded and sets the status to ERROR.
    """

    __slots__ = ("_count", "_domain", "_instruments", "_span", "_token", "_types")

    def __init__(self, tracer: trace.Tracer | None, instruments: _Instruments | None) -> None:
        self._span: trace.Span | None = None
        self._token: Token[otel_context.Context] | None = None
        self._instruments = instruments
        self._domain: str | None = None
        self._types: list[tuple[str, str]] = []
        self._count = 0
        if tracer is not None:
            self._span = tracer.start_span("send", kind=SpanKind.PRODUCER)

    def __enter__(self) -> SendSpan:
        if self._span is not None:
            self._token = otel_context.attach(trace.set_span_in_context(self._span))
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        span = self._span
        if span is None:
            return
        try:
            if exc is not None:
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, str(exc) or type(exc).__name__))
                span.set_attribute("error.type", _error_type(exc))
        finally:
            if self._token is not None:
                otel_context.detach(self._token)
            span.end()

    def headers(self) -> dict[str, str]:
        """The W3C context the messages carry: this span's, or the current one's."""
        return current_trace_headers()

    def describe(
        self,
        *,
        domains: list[str] | tuple[str, ...],
        correlation_id: UUID,
        command_id: UUID | None = None,
        command_type: str | None = None,
        causation_id: UUID | None = None,
        saga_id: UUID | None = None,
        batch_id: UUID | None = None,
        count: int | None = None,
        types: list[tuple[str, str]] | None = None,
    ) -> None:
        """Name the span and set its attributes, once the arguments are checked."""
        if self._instruments is not None:
            self._types = types or (
                [(domains[0], command_type)] if command_type is not None else []
            )
        span = self._span
        if span is None:
            return
        unique = sorted(set(domains))
        attributes: dict[str, AttributeValue] = {
            "messaging.system": MESSAGING_SYSTEM,
            "messaging.operation.type": "send",
            "messaging.operation.name": "send",
            "messaging.message.conversation_id": str(correlation_id),
        }
        if len(unique) == 1:
            span.update_name(f"send {unique[0]}")
            attributes["messaging.destination.name"] = unique[0]
            attributes["commandbus.domain"] = unique[0]
        else:
            attributes["commandbus.domains"] = ",".join(unique)
        if command_id is not None:
            attributes["commandbus.command_id"] = str(command_id)
        if command_type is not None:
            attributes["commandbus.command_type"] = command_type
        if causation_id is not None:
            attributes["commandbus.causation_id"] = str(causation_id)
        if saga_id is not None:
            attributes["commandbus.saga_id"] = str(saga_id)
        if batch_id is not None:
            attributes["commandbus.batch_id"] = str(batch_id)
        if count is not None:
            attributes["messaging.batch.message_count"] = count
        span.set_attributes(attributes)

    def sent(self, msg_id: int | None = None) -> None:
        """The message(s) were written."""
        if self._span is not None and msg_id is not None:
            self._span.set_attribute("messaging.message.id", str(msg_id))
        inst = self._instruments
        if inst is not None:
            for domain, command_type in self._types:
                inst.sent.add(
                    1, {"commandbus.domain": domain, "commandbus.command_type": command_type}
                )

    def refused(self, code: str, message: str) -> None:
        """Nothing was written (a duplicate command id, say)."""
        if self._span is not None:
            self._span.set_status(Status(StatusCode.ERROR, message))
            self._span.set_attribute("error.type", code)


def producer() -> SendSpan:
    """A :class:`SendSpan` for a send; started now, a child of the current context."""
    s = _active()
    if s.tracer is None and s.instruments is None:
        return _NO_SEND
    return SendSpan(s.tracer, s.instruments)


_NO_SEND: Final = SendSpan(None, None)


# -- processing ------------------------------------------------------------------------------


class ProcessSpan:
    """The CONSUMER span of one delivery a worker handles, and its metrics.

    ``with process(...) as span:`` around the handling; :meth:`outcome` (the last
    call wins) says what the delivery did to its command. While the block runs,
    the span is the current context (a no-op span when nothing records, and the
    message's own context stays what sends and replies carry).
    """

    __slots__ = (
        "_attributes",
        "_context_token",
        "_error",
        "_headers",
        "_inherited_token",
        "_instruments",
        "_kind",
        "_outcome",
        "_parent",
        "_span",
        "_start",
    )

    def __init__(
        self,
        tracer: trace.Tracer | None,
        instruments: _Instruments | None,
        domain: str,
        command: Command,
        attempt: int,
        msg_id: int,
    ) -> None:
        self._instruments = instruments
        self._outcome: str | None = None
        self._error: BaseException | None = None
        self._kind: str | None = None
        self._context_token: Token[otel_context.Context] | None = None
        self._inherited_token: Token[Mapping[str, str] | None] | None = None
        self._headers = command.trace_context
        self._parent: otel_context.Context | None = None
        self._start = time.perf_counter()
        self._attributes: dict[str, AttributeValue] | None = (
            None
            if instruments is None
            else {"commandbus.domain": domain, "commandbus.command_type": command.command_type}
        )
        self._span: trace.Span | None = None
        if tracer is None:
            return
        attributes: dict[str, AttributeValue] = {
            "messaging.system": MESSAGING_SYSTEM,
            "messaging.destination.name": domain,
            "messaging.operation.type": "process",
            "messaging.operation.name": "process",
            "messaging.message.id": str(msg_id),
            "messaging.message.conversation_id": str(command.correlation_id),
            "commandbus.domain": domain,
            "commandbus.command_id": str(command.command_id),
            "commandbus.command_type": command.command_type,
            "commandbus.attempt": attempt,
            "commandbus.max_attempts": command.max_attempts,
        }
        if command.saga_id is not None:
            attributes["commandbus.saga_id"] = str(command.saga_id)
        if command.causation_id is not None:
            attributes["commandbus.causation_id"] = str(command.causation_id)
        if command.batch_id is not None:
            attributes["commandbus.batch_id"] = str(command.batch_id)
        parent = _parent(command.trace_context)
        span = tracer.start_span(
            f"process {domain}", context=parent, kind=SpanKind.CONSUMER, attributes=attributes
        )
        self._span = span
        self._parent = parent

    def __enter__(self) -> ProcessSpan:
        span = self._span
        if span is not None:
            self._context_token = otel_context.attach(trace.set_span_in_context(span, self._parent))
        elif self._headers:
            self._inherited_token = _inherited.set(self._headers)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        span = self._span
        try:
            if exc is not None:
                # the worker is stopping (the delivery goes back to the queue), or
                # the outcome could not be recorded (it comes back after its vt)
                stopping = not isinstance(exc, Exception)  # CancelledError
                self._outcome = "released" if stopping else "lost"
                if not stopping:
                    self._error = exc
            if span is not None:
                self._finish_span(span)
            if self._instruments is not None:
                self._count(self._instruments)
        finally:
            if self._context_token is not None:
                otel_context.detach(self._context_token)
            elif self._inherited_token is not None:
                _inherited.reset(self._inherited_token)

    def outcome(
        self, outcome: str, error: BaseException | None = None, kind: str | None = None
    ) -> None:
        """What this delivery did (``completed``, ``failed``, ``retried``, ``troubleshooting``).

        ``error`` is the exception that failed it and ``kind`` its classification
        (``business``, ``transient``, ``permanent``, ``unknown_command_type``...):
        a business-rule failure is ``outcome=failed`` with ``kind=business``.
        """
        self._outcome = outcome
        self._error = error
        self._kind = kind

    def headers(self) -> dict[str, str]:
        """The W3C ``traceparent`` (and ``tracestate``) of this span, for the outcome
        event's metadata: formatted here, which costs a fraction of a propagator's
        inject (messages themselves go through the configured propagators)."""
        if self._span is None:
            return {}
        ctx = self._span.get_span_context()
        if not ctx.is_valid:
            return {}
        out = {"traceparent": f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{ctx.trace_flags:02x}"}
        if ctx.trace_state:
            out["tracestate"] = ctx.trace_state.to_header()
        return out

    def _finish_span(self, span: trace.Span) -> None:
        exc = self._error
        if self._outcome is not None:
            span.set_attribute("commandbus.outcome", self._outcome)
        if self._kind is not None:
            span.set_attribute("commandbus.error.kind", self._kind)
        if exc is not None:
            span.set_attribute("error.type", _error_type(exc))
            code = getattr(exc, "error_code", None) or getattr(exc, "code", None)
            if isinstance(code, str):
                span.set_attribute("commandbus.error.code", code)
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, str(exc) or type(exc).__name__))
        elif self._outcome not in (None, "completed", "released"):
            span.set_status(Status(StatusCode.ERROR, self._outcome))
        span.end()

    def _count(self, inst: _Instruments) -> None:
        attributes = self._attributes
        assert attributes is not None
        outcome = self._outcome or "unknown"
        attributes["commandbus.outcome"] = outcome
        inst.duration.record(time.perf_counter() - self._start, attributes)
        inst.processed.add(1, attributes)
        if outcome in ("failed", "troubleshooting", "retried"):
            error = dict(attributes)
            if self._error is not None:
                error["error.type"] = _error_type(self._error)
            (inst.retried if outcome == "retried" else inst.failed).add(1, error)


class _NoProcess(ProcessSpan):
    """A delivery with nothing to record and no context to carry on: does nothing."""

    def __init__(self) -> None:
        pass

    def __enter__(self) -> ProcessSpan:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    def outcome(
        self, outcome: str, error: BaseException | None = None, kind: str | None = None
    ) -> None:
        return None

    def headers(self) -> dict[str, str]:
        return {}


_NO_PROCESS: Final = _NoProcess()


def process(domain: str, command: Command, *, attempt: int, msg_id: int) -> ProcessSpan:
    """The :class:`ProcessSpan` of one delivery (a shared no-op when there is nothing to do)."""
    s = _active()
    if s.tracer is None and s.instruments is None and not command.trace_context:
        return _NO_PROCESS
    return ProcessSpan(s.tracer, s.instruments, domain, command, attempt, msg_id)


# -- sagas -------------------------------------------------------------------------------------


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
        if self._span is not None:
            self._token = otel_context.attach(trace.set_span_in_context(self._span))
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        span = self._span
        if span is None:
            return
        try:
            if exc is not None:
                span.record_exception(exc)
                span.set_attribute("error.type", _error_type(exc))
                span.set_status(Status(StatusCode.ERROR, str(exc) or type(exc).__name__))
        finally:
            if self._token is not None:
                otel_context.detach(self._token)
            span.end()

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
        1, {"commandbus.saga_name": saga_name, "commandbus.saga_status": status}
    )
    for step, n in (compensations or {}).items():
        inst.saga_compensations.add(
            n, {"commandbus.saga_name": saga_name, "commandbus.saga_step": step}
        )


# -- set-up ----------------------------------------------------------------------------------

_setup_lock = threading.Lock()
_configured: dict[str, Any] = {}


def otel_requested(environ: Mapping[str, str] | None = None) -> bool:
    """Whether ``COMMANDBUS_OTEL`` asks for the SDK (a bad value is a ConfigError)."""
    raw = (os.environ if environ is None else environ).get(OTEL_SWITCH, "")
    value = raw.strip().lower()
    if value in _ON:
        return True
    if value in _OFF:
        return False
    raise ConfigError(
        f"{OTEL_SWITCH} must be 1/true/yes/on or 0/false/no/off, got {raw!r}",
        details={"variable": OTEL_SWITCH, "value": raw},
    )


def configure_tracing_from_env(*, service_name: str | None = None) -> bool:
    """:func:`configure_tracing` if ``COMMANDBUS_OTEL`` is on, else nothing.

    ``CommandBus.open()`` and ``Worker.run()`` call it, so a process started with
    ``COMMANDBUS_OTEL=1`` exports with no code. Idempotent; returns whether the
    library's SDK set-up is (now) in place.
    """
    if not otel_requested():
        return bool(_configured)
    return configure_tracing(service_name=service_name)


def _exporter_choice(signal: str) -> str:
    names = os.environ.get(f"OTEL_{signal}_EXPORTER", "otlp").strip().lower() or "otlp"
    choices = [n.strip() for n in names.split(",") if n.strip()]
    for choice in choices:
        if choice not in ("otlp", "console", "none"):
            raise ConfigError(
                f"OTEL_{signal}_EXPORTER={names!r}: commandbus sets up otlp, console or none",
                details={"variable": f"OTEL_{signal}_EXPORTER", "value": names},
            )
    return "none" if "none" in choices else choices[0]


def _protocol(signal: str) -> str:
    value = (
        os.environ.get(f"OTEL_EXPORTER_OTLP_{signal}_PROTOCOL")
        or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    ).strip()
    if value not in ("http/protobuf", "grpc"):
        raise ConfigError(
            f"OTLP protocol {value!r} is not supported: use http/protobuf or grpc",
            details={"variable": "OTEL_EXPORTER_OTLP_PROTOCOL", "value": value},
        )
    return value


_MISSING = (
    "OpenTelemetry tracing needs the SDK and the OTLP exporter: pip install 'commandbus[otel]'"
)


def configure_tracing(*, service_name: str | None = None) -> bool:
    """Install the OpenTelemetry SDK as the global tracer and meter providers.

    Exports with the OTLP exporter configured by the standard ``OTEL_*``
    variables (``OTEL_EXPORTER_OTLP_ENDPOINT``, ``..._HEADERS``,
    ``..._PROTOCOL`` = ``http/protobuf`` (default) or ``grpc``,
    ``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_BSP_*``,
    ``OTEL_METRIC_EXPORT_INTERVAL``, ``OTEL_TRACES_EXPORTER`` /
    ``OTEL_METRICS_EXPORTER`` = ``otlp``, ``console`` or ``none``); spans go
    through a ``BatchSpanProcessor``. ``service_name`` is used only when the
    environment names none. Both providers are shut down (flushing what is
    buffered) when the process exits; :func:`shutdown_tracing` does it now.

    Idempotent. Returns ``False`` (and installs nothing) when
    ``OTEL_SDK_DISABLED=true`` or the application already installed providers of
    its own. Raises :class:`~commandbus.errors.ConfigError` saying
    ``pip install 'commandbus[otel]'`` when the SDK or exporter is missing.
    """
    with _setup_lock:
        if _configured:
            return True
        if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
            return False
        traces, metric_exporter = _exporter_choice("TRACES"), _exporter_choice("METRICS")
        try:
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
        except ImportError as exc:
            raise ConfigError(_MISSING) from exc
        tracer_provider = trace.get_tracer_provider()
        meter_provider = metrics.get_meter_provider()
        own_traces = traces != "none" and not _is_real_tracer_provider(tracer_provider)
        own_metrics = metric_exporter != "none" and not _is_real_meter_provider(meter_provider)
        if not own_traces and not own_metrics:
            refresh()
            return False
        attributes: dict[str, str] = {}
        if service_name and not _service_named_by_env():
            attributes["service.name"] = service_name
        resource = Resource.create(attributes)
        if own_traces:
            span_exporter = _span_exporter(traces)
            from opentelemetry.sdk.trace.export import BatchSpanProcessor

            provider = TracerProvider(resource=resource, shutdown_on_exit=False)
            provider.add_span_processor(BatchSpanProcessor(span_exporter))
            trace.set_tracer_provider(provider)
            _configured["tracer_provider"] = provider
        if own_metrics:
            reader = _metric_reader(metric_exporter)
            from opentelemetry.sdk.metrics import MeterProvider

            mp = MeterProvider(resource=resource, metric_readers=[reader], shutdown_on_exit=False)
            metrics.set_meter_provider(mp)
            _configured["meter_provider"] = mp
        atexit.register(shutdown_tracing)
        refresh()
        return True


def _service_named_by_env() -> bool:
    if os.environ.get("OTEL_SERVICE_NAME", "").strip():
        return True
    resource = os.environ.get("OTEL_RESOURCE_ATTRIBUTES", "")
    return any(p.split("=", 1)[0].strip() == "service.name" for p in resource.split(","))


def _otlp_exporter(signal: str) -> Any:
    """The OTLP exporter of ``TRACES`` or ``METRICS`` for the configured protocol."""
    protocol = "grpc" if _protocol(signal) == "grpc" else "http"
    module, name = {
        "TRACES": ("trace_exporter", "OTLPSpanExporter"),
        "METRICS": ("metric_exporter", "OTLPMetricExporter"),
    }[signal]
    try:
        found = importlib.import_module(f"opentelemetry.exporter.otlp.proto.{protocol}.{module}")
    except ImportError as exc:
        raise ConfigError(_exporter_missing(signal)) from exc
    return getattr(found, name)()


def _span_exporter(choice: str) -> Any:
    if choice == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    return _otlp_exporter("TRACES")


def _metric_reader(choice: str) -> Any:
    from opentelemetry.sdk.metrics.export import (
        ConsoleMetricExporter,
        PeriodicExportingMetricReader,
    )

    exporter = ConsoleMetricExporter() if choice == "console" else _otlp_exporter("METRICS")
    return PeriodicExportingMetricReader(exporter)


def _exporter_missing(signal: str) -> str:
    if _protocol(signal) == "grpc":
        return (
            "the OTLP/gRPC exporter is not installed: pip install "
            "opentelemetry-exporter-otlp-proto-grpc (or use OTEL_EXPORTER_OTLP_PROTOCOL="
            "http/protobuf, which pip install 'commandbus[otel]' provides)"
        )
    return _MISSING


def shutdown_tracing(timeout_millis: int = 10_000) -> None:
    """Flush and shut down the providers :func:`configure_tracing` installed (once).

    Runs at exit anyway; call it when the process ends by other means
    (``os._exit``). Spans and metrics recorded afterwards are dropped.
    """
    with _setup_lock:
        tracer_provider = _configured.pop("tracer_provider", None)
        meter_provider = _configured.pop("meter_provider", None)
        if tracer_provider is not None or meter_provider is not None:
            _configured["shut_down"] = True
    if tracer_provider is not None:
        tracer_provider.force_flush(timeout_millis)
        tracer_provider.shutdown()
    if meter_provider is not None:
        meter_provider.shutdown(timeout_millis=timeout_millis)
