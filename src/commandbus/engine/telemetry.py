"""Trace context that travels with commands (W3C traceparent in the PGMQ headers)."""

from __future__ import annotations

from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate


def current_trace_headers() -> dict[str, str]:
    """The active trace context as W3C headers (empty when nothing is traced)."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


def context_from_headers(headers: Any) -> otel_context.Context | None:
    """The trace context carried by a message's headers, if any."""
    if isinstance(headers, dict) and "traceparent" in headers:
        return propagate.extract(headers)
    return None
