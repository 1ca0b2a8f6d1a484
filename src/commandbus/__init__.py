"""commandbus: event-sourced commands, workers and sagas on PostgreSQL and PGMQ.

The public API is what ``__all__`` lists; everything else is private.

Each name is imported from the module that defines it when it is first used
(PEP 562), so ``import commandbus`` costs next to nothing: a process that uses
part of the library (the command line starting, an application importing one
error class) loads only that part, and never psycopg unless it needs it.
"""

from __future__ import annotations

# typing.TYPE_CHECKING without importing typing (about 8 ms): type checkers take
# any name TYPE_CHECKING for True
TYPE_CHECKING = False
if TYPE_CHECKING:
    # what type checkers and IDEs see: every name, with its type (kept equal to
    # _DEFINED_IN by tests/test_public_api.py)
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

    __version__: str

#: Where each public name is defined, module by module: the one table the lazy
#: attribute lookup below reads.
_DEFINED_IN: dict[str, tuple[str, ...]] = {
    "commandbus.config": ("Config",),
    "commandbus.engine.commands.bus": ("CommandBus",),
    "commandbus.engine.commands.read": ("CommandFilter",),
    "commandbus.engine.commands.replay": ("Difference", "VerifyReport"),
    "commandbus.engine.commands.troubleshooting": ("TroubleshootingQueue",),
    "commandbus.engine.eventstore.store": ("EventStore", "StreamAppend"),
    "commandbus.engine.observability.logging": ("CorrelationFilter", "configure_logging"),
    "commandbus.engine.observability.tracing": ("configure_tracing", "shutdown_tracing"),
    "commandbus.engine.worker.context": ("HandlerContext",),
    "commandbus.engine.worker.registry": ("HandlerRegistry",),
    "commandbus.engine.worker.stats": ("WorkerStats",),
    "commandbus.engine.worker.worker": ("Worker",),
    "commandbus.errors": (
        "BusinessRuleError",
        "CommandBusError",
        "CommandFailure",
        "CommandNotFoundError",
        "ConcurrencyError",
        "ConfigError",
        "DatabaseError",
        "DatabaseUnavailableError",
        "DuplicateCommandError",
        "EmbeddedDatabaseError",
        "HandlerRegistrationError",
        "IncompatiblePGMQError",
        "InvalidNameError",
        "InvalidStateError",
        "MigrationError",
        "PayloadError",
        "PayloadTooLargeError",
        "PermanentCommandError",
        "SagaDefinitionError",
        "SagaNotFoundError",
        "SchemaNotReadyError",
        "TransientCommandError",
        "UnknownCommandTypeError",
        "ValidationError",
    ),
    "commandbus.migrations": ("migrate",),
    "commandbus.models": (
        "BatchRecord",
        "BatchResult",
        "Command",
        "CommandRecord",
        "CommandRequest",
        "CommandStatus",
        "ErrorInfo",
        "NewEvent",
        "Page",
        "SendResult",
        "StoredEvent",
    ),
    "commandbus.monitoring": ("SystemStatus", "system_status"),
    "commandbus.results": ("Failure", "Result", "Success"),
    "commandbus.sagas": (
        "Compensation",
        "Coordinator",
        "CoordinatorStats",
        "Parallel",
        "Saga",
        "SagaClient",
        "SagaContext",
        "SagaFilter",
        "SagaPage",
        "SagaRecord",
        "SagaRegistry",
        "SagaStart",
        "SagaStatus",
        "SagaVerifyReport",
        "StartedSaga",
        "Step",
        "StepStatus",
    ),
}

_MODULE_OF = {name: module for module, names in _DEFINED_IN.items() for name in names}


def _load(name: str) -> object:
    """``commandbus.NAME``, the first time it is used: imported from its module and
    kept, so later uses are plain module attributes."""
    if name == "__version__":
        from importlib import metadata

        try:
            value: object = metadata.version("commandbus")
        except metadata.PackageNotFoundError:  # pragma: no cover - running from a source tree
            value = "0.0.0"
    else:
        module = _MODULE_OF.get(name)
        if module is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        from importlib import import_module

        value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


if not TYPE_CHECKING:
    # hidden from type checkers, which see the imports above: with a module
    # __getattr__ they would accept any name at all (typed as its return type)
    __getattr__ = _load
del TYPE_CHECKING  # not public

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
