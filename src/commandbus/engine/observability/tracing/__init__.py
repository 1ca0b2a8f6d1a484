"""Tracing and metrics through the OpenTelemetry API: the only package that imports it.

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

Modules: ``providers`` (what the hot path reads), ``instruments`` (metrics),
``context`` (W3C context: headers, inheritance, ids), ``spans`` (send and
process), ``sagas`` (the coordinator's spans), ``setup`` (the opt-in SDK). They
import OpenTelemetry and nothing else of the engine.
"""

from commandbus.engine.observability.tracing.context import (
    MESSAGING_SYSTEM,
    AttributeValue,
    current_trace_headers,
    current_trace_ids,
    reply_headers,
    trace_id_of,
)
from commandbus.engine.observability.tracing.instruments import QueueReadings, queue_readings
from commandbus.engine.observability.tracing.providers import (
    REFRESH_SECONDS,
    SCOPE,
    metrics_active,
    refresh,
    tracing_active,
    use_providers,
)
from commandbus.engine.observability.tracing.sagas import (
    SagaSpan,
    SpanKindName,
    count_saga_transition,
    saga_span,
)
from commandbus.engine.observability.tracing.setup import (
    OTEL_SWITCH,
    configure_tracing,
    configure_tracing_from_env,
    otel_requested,
    shutdown_tracing,
)
from commandbus.engine.observability.tracing.spans import (
    ProcessSpan,
    SendSpan,
    process,
    producer,
)

__all__ = [
    "MESSAGING_SYSTEM",
    "OTEL_SWITCH",
    "REFRESH_SECONDS",
    "SCOPE",
    "AttributeValue",
    "ProcessSpan",
    "QueueReadings",
    "SagaSpan",
    "SendSpan",
    "SpanKindName",
    "configure_tracing",
    "configure_tracing_from_env",
    "count_saga_transition",
    "current_trace_headers",
    "current_trace_ids",
    "metrics_active",
    "otel_requested",
    "process",
    "producer",
    "queue_readings",
    "refresh",
    "reply_headers",
    "saga_span",
    "shutdown_tracing",
    "trace_id_of",
    "tracing_active",
    "use_providers",
]
