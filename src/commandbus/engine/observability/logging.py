"""Structured logging with the correlation id of the command being handled."""

from __future__ import annotations

import logging
from contextvars import ContextVar
from typing import IO
from uuid import UUID

# Ids are kept as UUIDs and turned into text only when a record is logged.
correlation_id_var: ContextVar[UUID | None] = ContextVar("commandbus_correlation_id", default=None)
command_id_var: ContextVar[UUID | None] = ContextVar("commandbus_command_id", default=None)


class CorrelationFilter(logging.Filter):
    """Adds ``correlation_id`` and ``command_id`` to every record (None outside a handler).

    Put it on a *handler*: a logger's own filters never see the records of its
    child loggers (``commandbus.engine.worker.worker``, ``myapp.handlers``...), a
    handler's filters see every record the handler emits.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        correlation_id, command_id = correlation_id_var.get(), command_id_var.get()
        record.correlation_id = None if correlation_id is None else str(correlation_id)
        record.command_id = None if command_id is None else str(command_id)
        return True


LOG_FORMAT = (
    "%(asctime)s %(levelname)s %(name)s correlation_id=%(correlation_id)s "
    "command_id=%(command_id)s %(message)s"
)


def configure_logging(level: int = logging.INFO, *, stream: IO[str] | None = None) -> None:
    """Log the ``commandbus`` loggers to ``stream`` (stderr) with the ids on every line.

    Used by the CLI. The filter sits on the handler, so records of every
    ``commandbus.*`` logger carry the ids; to give your own loggers the ids, add
    :class:`CorrelationFilter` to your handlers.
    """
    handler = logging.StreamHandler(stream)
    handler.addFilter(CorrelationFilter())
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root = logging.getLogger("commandbus")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
