"""The messaging spans: a PRODUCER span per send (or batch), a CONSUMER span per delivery."""

from __future__ import annotations

import time
from collections.abc import Mapping
from contextvars import Token
from types import TracebackType
from typing import TYPE_CHECKING, Final
from uuid import UUID

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from commandbus.engine.observability.tracing.context import (
    MESSAGING_SYSTEM,
    AttributeValue,
    _error_type,
    _inherited,
    _parent,
    current_trace_headers,
    end_span,
    enter_span,
)
from commandbus.engine.observability.tracing.instruments import TallyKey, _Instruments
from commandbus.engine.observability.tracing.providers import _active

if TYPE_CHECKING:
    from commandbus.models import Command


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
        self._token = enter_span(self._span)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        end_span(self._span, self._token, exc)

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
                    (("commandbus.domain", domain), ("commandbus.command_type", command_type))
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
        "_command_type",
        "_context_token",
        "_domain",
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
        self._domain = domain
        self._command_type = command.command_type
        self._span: trace.Span | None = None
        if tracer is None:
            return
        parent = _parent(command.trace_context)
        # What a sampler may look at goes in at the start; the rest only when the
        # span records (a span sampled out costs no string formatting).
        span = tracer.start_span(
            f"process {domain}",
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes={
                "messaging.system": MESSAGING_SYSTEM,
                "messaging.destination.name": domain,
                "messaging.operation.type": "process",
                "messaging.operation.name": "process",
                "commandbus.domain": domain,
                "commandbus.command_type": command.command_type,
            },
        )
        if span.is_recording():
            attributes: dict[str, AttributeValue] = {
                "messaging.message.id": str(msg_id),
                "messaging.message.conversation_id": str(command.correlation_id),
                "commandbus.command_id": str(command.command_id),
                "commandbus.attempt": attempt,
                "commandbus.max_attempts": command.max_attempts,
            }
            if command.saga_id is not None:
                attributes["commandbus.saga_id"] = str(command.saga_id)
            if command.causation_id is not None:
                attributes["commandbus.causation_id"] = str(command.causation_id)
            if command.batch_id is not None:
                attributes["commandbus.batch_id"] = str(command.batch_id)
            span.set_attributes(attributes)
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
        outcome = self._outcome or "unknown"
        domain, command_type = self._domain, self._command_type
        key = (domain, command_type, outcome)
        attributes = inst.duration_attributes.get(key)
        if attributes is None:
            attributes = inst.duration_attributes[key] = {
                "commandbus.domain": domain,
                "commandbus.command_type": command_type,
                "commandbus.outcome": outcome,
            }
        inst.duration.record(time.perf_counter() - self._start, attributes)
        tally: TallyKey = (
            ("commandbus.domain", domain),
            ("commandbus.command_type", command_type),
            ("commandbus.outcome", outcome),
        )
        inst.processed.add(tally)
        if outcome in ("failed", "troubleshooting", "retried"):
            if self._error is not None:
                tally = (*tally, ("error.type", _error_type(self._error)))
            (inst.retried if outcome == "retried" else inst.failed).add(tally)


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
