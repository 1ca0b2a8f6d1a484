"""commandbus: event-sourced commands, workers and sagas on PostgreSQL and PGMQ.

The public API is what ``__all__`` lists; everything else is private.
"""

from __future__ import annotations

from importlib import metadata as _metadata

from commandbus.config import Config
from commandbus.engine.commands.bus import CommandBus
from commandbus.engine.commands.read import CommandFilter
from commandbus.engine.commands.replay import Difference, VerifyReport
from commandbus.engine.commands.troubleshooting import TroubleshootingQueue
from commandbus.engine.eventstore.store import EventStore, StreamAppend
from commandbus.engine.observability.logging import CorrelationFilter, configure_logging
from commandbus.engine.observability.tracing import configure_tracing, shutdown_tracing
from commandbus.engine.worker.context import HandlerContext
from commandbus.engine.worker.registry import HandlerRegistry
from commandbus.engine.worker.stats import WorkerStats
from commandbus.engine.worker.worker import Worker
from commandbus.errors import (
    BusinessRuleError,
    CommandBusError,
    CommandFailure,
    CommandNotFoundError,
    ConcurrencyError,
    ConfigError,
    DatabaseError,
    DatabaseUnavailableError,
    DuplicateCommandError,
    EmbeddedDatabaseError,
    HandlerRegistrationError,
    IncompatiblePGMQError,
    InvalidNameError,
    InvalidStateError,
    MigrationError,
    PayloadError,
    PayloadTooLargeError,
    PermanentCommandError,
    SagaDefinitionError,
    SagaNotFoundError,
    SchemaNotReadyError,
    TransientCommandError,
    UnknownCommandTypeError,
    ValidationError,
)
from commandbus.migrations import migrate
from commandbus.models import (
    BatchRecord,
    BatchResult,
    Command,
    CommandRecord,
    CommandRequest,
    CommandStatus,
    ErrorInfo,
    NewEvent,
    Page,
    SendResult,
    StoredEvent,
)
from commandbus.monitoring import SystemStatus, system_status
from commandbus.results import Failure, Result, Success
from commandbus.sagas import (
    Compensation,
    Coordinator,
    CoordinatorStats,
    Parallel,
    Saga,
    SagaClient,
    SagaContext,
    SagaFilter,
    SagaPage,
    SagaRecord,
    SagaRegistry,
    SagaStart,
    SagaStatus,
    SagaVerifyReport,
    StartedSaga,
    Step,
    StepStatus,
)

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
    "CommandFailure",
    "CommandFilter",
    "CommandNotFoundError",
    "CommandRecord",
    "CommandRequest",
    "CommandStatus",
    "Compensation",
    "ConcurrencyError",
    "Config",
    "ConfigError",
    "Coordinator",
    "CoordinatorStats",
    "CorrelationFilter",
    "DatabaseError",
    "DatabaseUnavailableError",
    "Difference",
    "DuplicateCommandError",
    "EmbeddedDatabaseError",
    "ErrorInfo",
    "EventStore",
    "Failure",
    "HandlerContext",
    "HandlerRegistrationError",
    "HandlerRegistry",
    "IncompatiblePGMQError",
    "InvalidNameError",
    "InvalidStateError",
    "MigrationError",
    "NewEvent",
    "Page",
    "Parallel",
    "PayloadError",
    "PayloadTooLargeError",
    "PermanentCommandError",
    "Result",
    "Saga",
    "SagaClient",
    "SagaContext",
    "SagaDefinitionError",
    "SagaFilter",
    "SagaNotFoundError",
    "SagaPage",
    "SagaRecord",
    "SagaRegistry",
    "SagaStart",
    "SagaStatus",
    "SagaVerifyReport",
    "SchemaNotReadyError",
    "SendResult",
    "StartedSaga",
    "Step",
    "StepStatus",
    "StoredEvent",
    "StreamAppend",
    "Success",
    "SystemStatus",
    "TransientCommandError",
    "TroubleshootingQueue",
    "UnknownCommandTypeError",
    "ValidationError",
    "VerifyReport",
    "Worker",
    "WorkerStats",
    "__version__",
    "configure_logging",
    "configure_tracing",
    "migrate",
    "shutdown_tracing",
    "system_status",
]
