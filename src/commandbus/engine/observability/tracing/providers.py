"""What the hot path reads: the tracer and instruments of the global providers (or pinned ones).

The global providers are looked at again at most once a second
(:data:`REFRESH_SECONDS`); while none records, :func:`_active` gives ``None``s.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Final

from opentelemetry import metrics, trace

from commandbus.engine.observability.tracing.instruments import _Instruments

#: How often, at most, the hot path looks at the global providers again.
REFRESH_SECONDS: Final = 1.0
#: Instrumentation scope of every span and instrument of the library.
SCOPE: Final = "commandbus"


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
