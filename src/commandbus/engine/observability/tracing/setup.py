"""Opt-in SDK set-up: the OTLP (or console) exporters from the standard ``OTEL_*`` variables."""

from __future__ import annotations

import atexit
import importlib
import os
import threading
from collections.abc import Mapping
from typing import Any, Final

from opentelemetry import metrics, trace

from commandbus.engine.observability.tracing.providers import (
    _is_real_meter_provider,
    _is_real_tracer_provider,
    refresh,
)
from commandbus.errors import ConfigError

#: The switch that turns the SDK on from the environment (``1``/``true``/``yes``/``on``).
OTEL_SWITCH: Final = "COMMANDBUS_OTEL"
_ON: Final = frozenset({"1", "true", "yes", "on"})
_OFF: Final = frozenset({"", "0", "false", "no", "off"})

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
