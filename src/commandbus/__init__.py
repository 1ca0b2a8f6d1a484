"""commandbus: event-sourced commands, workers and sagas on PostgreSQL and PGMQ.

The public API is what ``__all__`` lists; everything else is private.
"""

from __future__ import annotations

from importlib import metadata as _metadata

from commandbus.config import Config
from commandbus.engine.bus import CommandBus
from commandbus.engine.context import HandlerContext
from commandbus.engine.event_store import EventStore, StreamAppend
from commandbus.engine.log import configure_logging
from commandbus.engine.models import (
    BatchRecord,
    BatchResult,
    Command,
    CommandRecord,
    CommandRequest,
    CommandStatus,
    NewEvent,
    Page,
    SendResult,
    StoredEvent,
)
from commandbus.engine.registry import HandlerRegistry
from commandbus.engine.troubleshooting import TroubleshootingQueue
from commandbus.engine.worker import Worker, WorkerStats
from commandbus.errors import (
    BusinessRuleError,
    CommandBusError,
    CommandNotFoundError,
    ConcurrencyError,
    ConfigError,
    DatabaseUnavailableError,
    DuplicateCommandError,
    IncompatiblePGMQError,
    InvalidNameError,
    InvalidStateError,
    MigrationError,
    PayloadError,
    PayloadTooLargeError,
    PermanentCommandError,
    SchemaNotReadyError,
    TransientCommandError,
    UnknownCommandTypeError,
    ValidationError,
)
from commandbus.migrations import migrate
from commandbus.projections.replay import Difference, VerifyReport
from commandbus.results import Failure, Result, Success

try:
    __version__ = _metadata.version("commandbus")
except _metadata.PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = [
    "BatchRecord",
    "BatchResult",
    "BusinessRuleError",
    "Command",
    "CommandBus",
    "CommandBusError",
    "CommandNotFoundError",
    "CommandRecord",
    "CommandRequest",
    "CommandStatus",
    "ConcurrencyError",
    "Config",
    "ConfigError",
    "DatabaseUnavailableError",
    "Difference",
    "DuplicateCommandError",
    "EventStore",
    "Failure",
    "HandlerContext",
    "HandlerRegistry",
    "IncompatiblePGMQError",
    "InvalidNameError",
    "InvalidStateError",
    "MigrationError",
    "NewEvent",
    "Page",
    "PayloadError",
    "PayloadTooLargeError",
    "PermanentCommandError",
    "Result",
    "SchemaNotReadyError",
    "SendResult",
    "StoredEvent",
    "StreamAppend",
    "Success",
    "TransientCommandError",
    "TroubleshootingQueue",
    "UnknownCommandTypeError",
    "ValidationError",
    "VerifyReport",
    "Worker",
    "WorkerStats",
    "__version__",
    "configure_logging",
    "migrate",
]
