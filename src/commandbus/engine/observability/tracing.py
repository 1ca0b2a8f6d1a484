"""Trace context that travels with commands (W3C traceparent in the PGMQ headers)."""

from __future__ import annotations

from opentelemetry import propagate


def current_trace_headers() -> dict[str, str]:
    """The active trace context as W3C headers (empty when nothing is traced)."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier
