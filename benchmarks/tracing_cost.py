"""Where tracing's overhead goes: the CPU one delivery's instrumentation costs, in-process.

The ``tracing`` scenario measures the end-to-end drain with OpenTelemetry off and
on; this module explains the difference. It runs the worker's own per-delivery
instrumentation (``spans.process``: the CONSUMER span, its context, the outcome
headers and the metrics) in a loop with the OpenTelemetry SDK set up as the worker
sets it up (a ``BatchSpanProcessor``, a metric reader), once per configuration,
and reports microseconds per delivery. The OTLP exporter's encoding of one
finished span is timed on its own (the worker's export thread pays it, under the
same GIL as the event loop).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from typing import Any

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased, Sampler, TraceIdRatioBased

from commandbus.engine.observability.tracing import spans
from commandbus.engine.observability.tracing.providers import use_providers
from commandbus.models import Command


class _Keep(SpanExporter):
    """Keeps the last batch of finished spans (to time their encoding); sends nothing."""

    def __init__(self) -> None:
        self.last: Sequence[ReadableSpan] = ()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.last = spans
        return SpanExportResult.SUCCESS


def _per_delivery(
    commands: list[Command], sampler: Sampler | None, metrics: bool, keep: _Keep | None = None
) -> float:
    """Microseconds of instrumentation per delivery with this set-up (best of 3)."""
    tracer_provider = None
    if sampler is not None:
        tracer_provider = TracerProvider(sampler=sampler)
        tracer_provider.add_span_processor(BatchSpanProcessor(keep or _Keep()))
    meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()]) if metrics else None
    best = float("inf")
    try:
        with use_providers(tracer_provider, meter_provider):
            for _ in range(3):
                t = time.perf_counter()
                for i, command in enumerate(commands):
                    with spans.process("bench", command, attempt=1, msg_id=i) as span:
                        span.outcome("completed")
                        span.headers()
                best = min(best, (time.perf_counter() - t) / len(commands) * 1e6)
    finally:
        if tracer_provider is not None:
            tracer_provider.force_flush()
            tracer_provider.shutdown()
        if meter_provider is not None:
            meter_provider.shutdown()
    return best


def instrumentation_cost(n: int = 20_000, sampled: float = 0.1) -> dict[str, float]:
    """Microseconds per delivery: nothing, metrics only, ``sampled`` and 100% of the
    traces with metrics, and the OTLP encoding of one recorded span."""
    commands = [
        Command(
            domain="bench",
            command_id=uuid.uuid4(),
            command_type="Noop",
            data={},
            correlation_id=uuid.uuid4(),
        )
        for _ in range(n)
    ]
    keep = _Keep()
    out: dict[str, Any] = {
        "off": _per_delivery(commands, None, False),
        "metrics only": _per_delivery(commands, None, True),
        f"{sampled:.0%} of traces + metrics": _per_delivery(
            commands, ParentBased(TraceIdRatioBased(sampled)), True
        ),
        "100% of traces + metrics": _per_delivery(commands, ALWAYS_ON, True, keep),
    }
    finished = list(keep.last)
    if finished:
        t = time.perf_counter()
        encode_spans(finished).SerializeToString()
        out["OTLP encoding of a span"] = (time.perf_counter() - t) / len(finished) * 1e6
    return out
