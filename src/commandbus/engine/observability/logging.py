"""Structured logging with the correlation id and trace of the command being handled."""

from __future__ import annotations

import json as _json
import logging
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import IO, Any
from uuid import UUID

from commandbus.engine.observability.tracing import current_trace_ids

# Ids are kept as UUIDs and turned into text only when a record is logged.
correlation_id_var: ContextVar[UUID | None] = ContextVar("commandbus_correlation_id", default=None)
command_id_var: ContextVar[UUID | None] = ContextVar("commandbus_command_id", default=None)


class CorrelationFilter(logging.Filter):
    """Adds ``correlation_id``, ``command_id``, ``trace_id`` and ``span_id`` to every record.

    Each is None outside a handler (the trace ids: outside a traced span). Put it
    on a *handler*: a logger's own filters never see the records of its child
    loggers (``commandbus.engine.worker.worker``, ``myapp.handlers``...), a
    handler's filters see every record the handler emits.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        correlation_id, command_id = correlation_id_var.get(), command_id_var.get()
        record.correlation_id = None if correlation_id is None else str(correlation_id)
        record.command_id = None if command_id is None else str(command_id)
        record.trace_id, record.span_id = current_trace_ids()
        return True


LOG_FORMAT = (
    "%(asctime)s %(levelname)s %(name)s correlation_id=%(correlation_id)s "
    "command_id=%(command_id)s %(message)s"
)


class TextFormatter(logging.Formatter):
    """:data:`LOG_FORMAT`, with ``trace_id=... span_id=...`` before the message when traced."""

    def __init__(self) -> None:
        super().__init__(LOG_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:
        trace_id = getattr(record, "trace_id", None)
        if trace_id is None:
            return super().formatMessage(record)
        message = record.message
        try:
            record.message = (
                f"trace_id={trace_id} span_id={getattr(record, 'span_id', None)} {message}"
            )
            return super().formatMessage(record)
        finally:
            record.message = message


# Attributes every LogRecord has: the rest came from ``extra=`` and go in the JSON too.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message",
    "asctime",
    "correlation_id",
    "command_id",
    "trace_id",
    "span_id",
}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time`` (UTC, ISO 8601), ``level``, ``logger``,
    ``message``, ``correlation_id``, ``command_id``, ``trace_id``, ``span_id``
    (null when unknown), ``exception`` when there is one, and whatever the call
    passed with ``extra=`` (as text when it is not JSON)."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "correlation_id": getattr(record, "correlation_id", None),
            "command_id": getattr(record, "command_id", None),
            "trace_id": getattr(record, "trace_id", None),
            "span_id": getattr(record, "span_id", None),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and key not in out:
                out[key] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return _json.dumps(out, default=str, ensure_ascii=False)


def configure_logging(
    level: int = logging.INFO, *, stream: IO[str] | None = None, json: bool = False
) -> None:
    """Log the ``commandbus`` loggers to ``stream`` (stderr) with the ids on every line.

    Used by the CLI. ``json=True`` writes one JSON object per line
    (:class:`JsonFormatter`) instead of text. Either way a record carries the
    correlation id and command id of the command being handled and, when it is
    traced, the ``trace_id`` and ``span_id`` (the worker's ``process`` span), so
    logs and traces join. The filter sits on the handler, so records of every
    ``commandbus.*`` logger carry the ids; to give your own loggers the ids, add
    :class:`CorrelationFilter` to your handlers.
    """
    handler = logging.StreamHandler(stream)
    handler.addFilter(CorrelationFilter())
    handler.setFormatter(JsonFormatter() if json else TextFormatter())
    root = logging.getLogger("commandbus")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
