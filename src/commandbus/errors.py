"""The one error root of commandbus and its family.

Every error the library raises derives from :class:`CommandBusError`. Each class
says whether retrying the same operation could succeed (``retryable``), which is
what the worker uses to decide between a durable retry and the troubleshooting
queue.
"""

from __future__ import annotations

from typing import Any, ClassVar


class CommandBusError(Exception):
    """Root of every error raised by commandbus."""

    retryable: ClassVar[bool] = False
    code: ClassVar[str] = "COMMANDBUS_ERROR"

    def __init__(self, message: str, *, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details: dict[str, Any] = dict(details or {})


# -- configuration and infrastructure -------------------------------------------------


class ConfigError(CommandBusError, ValueError):
    """A configuration value is missing or invalid; the message names it."""

    code = "CONFIG_ERROR"


class DatabaseError(CommandBusError):
    """The database could not be used for an operation."""

    code = "DATABASE_ERROR"


class DatabaseUnavailableError(DatabaseError):
    """The database cannot be reached (refused, unknown host, terminated)."""

    retryable = True
    code = "DATABASE_UNAVAILABLE"


class EmbeddedDatabaseError(DatabaseError):
    """The embedded PostgreSQL could not be started, stopped or located."""

    code = "EMBEDDED_DATABASE_ERROR"


class MigrationError(DatabaseError):
    """Applying the schema migrations failed."""

    code = "MIGRATION_ERROR"


class IncompatiblePGMQError(MigrationError):
    """PGMQ is installed at a version this library cannot use."""

    code = "INCOMPATIBLE_PGMQ"


class SchemaNotReadyError(DatabaseError):
    """The commandbus schema is missing or older than this library: run migrations."""

    code = "SCHEMA_NOT_READY"


# -- input validation ---------------------------------------------------------------------


class ValidationError(CommandBusError, ValueError):
    """Input was refused before anything was written."""

    code = "VALIDATION_ERROR"


class InvalidNameError(ValidationError):
    """A domain, queue, command type or saga name does not follow the naming rules."""

    code = "INVALID_NAME"


class PayloadError(ValidationError):
    """Command data (or a handler result) cannot be serialised to JSON."""

    code = "INVALID_PAYLOAD"


class PayloadTooLargeError(PayloadError):
    """Serialised command data exceeds the configured size limit."""

    code = "PAYLOAD_TOO_LARGE"


# -- engine state -------------------------------------------------------------------------


class ConcurrencyError(CommandBusError):
    """An append met a stream whose version is not the expected one."""

    retryable = True
    code = "CONCURRENCY_CONFLICT"


class DuplicateCommandError(CommandBusError):
    """A command with this id already exists in the domain."""

    code = "DUPLICATE_COMMAND"


class CommandNotFoundError(CommandBusError):
    """No command with this (domain, id) exists."""

    code = "COMMAND_NOT_FOUND"


class InvalidStateError(CommandBusError):
    """The operation does not apply to the command in its current state."""

    code = "INVALID_STATE"


class SagaDefinitionError(CommandBusError, ValueError):
    """A saga definition is not valid (names, steps, compensations, builders)."""

    code = "SAGA_DEFINITION"


class SagaNotFoundError(CommandBusError):
    """No saga has this id."""

    code = "SAGA_NOT_FOUND"


class HandlerRegistrationError(CommandBusError, ValueError):
    """A handler registration is invalid or duplicated."""

    code = "HANDLER_REGISTRATION"


class UnknownCommandTypeError(CommandBusError):
    """No handler is registered for a (domain, command type)."""

    code = "UNKNOWN_COMMAND_TYPE"


# -- raised by handlers -------------------------------------------------------------------


class CommandFailure(CommandBusError):
    """Base for the errors a handler raises to choose the command's outcome."""

    code = "COMMAND_FAILED"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message, details=details)
        self.error_code = code or type(self).code


class TransientCommandError(CommandFailure):
    """A failure that may pass: the command is retried with backoff."""

    retryable = True
    code = "TRANSIENT"


class PermanentCommandError(CommandFailure):
    """A failure that will not pass by retrying: the command goes to the TSQ."""

    code = "PERMANENT"


class BusinessRuleError(CommandFailure):
    """The command was valid but refused by a business rule: FAILED at once, no TSQ."""

    code = "BUSINESS_RULE"


def error_for_code(code: str) -> type[CommandBusError]:
    """The most specific error class with this ``code`` (CommandBusError if none)."""
    pending: list[type[CommandBusError]] = [CommandBusError]
    while pending:
        cls = pending.pop()
        if cls.code == code:
            return cls
        pending.extend(cls.__subclasses__())
    return CommandBusError
