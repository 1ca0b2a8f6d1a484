"""The engine's models: frozen, keyword-only attrs classes."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import attrs


class CommandStatus(enum.StrEnum):
    """Where a command stands, as projected from its event stream."""

    PENDING = "PENDING"
    RETRY_SCHEDULED = "RETRY_SCHEDULED"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    IN_TROUBLESHOOTING_QUEUE = "IN_TROUBLESHOOTING_QUEUE"
    CANCELLED = "CANCELLED"

    @property
    def is_final(self) -> bool:
        return self in (CommandStatus.COMPLETED, CommandStatus.FAILED, CommandStatus.CANCELLED)


@attrs.frozen(kw_only=True)
class ErrorInfo:
    """A failure as recorded in events: the exception type, a stable code, a message.

    ``traceback`` is the formatted traceback of an unexpected exception (bounded:
    its innermost frames), ``None`` for an error a handler raised on purpose
    (``BusinessRuleError``, ``PermanentCommandError``, ``TransientCommandError``)
    and in events recorded before it existed. It is in the command's events and
    status row (``CommandRecord.last_error["traceback"]``), not in replies.
    """

    type: str
    code: str
    message: str
    traceback: str | None = None

    def as_dict(self) -> dict[str, str]:
        """The error as events carry it (``traceback`` only when there is one)."""
        out = {"type": self.type, "code": self.code, "message": self.message}
        if self.traceback is not None:
            out["traceback"] = self.traceback
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ErrorInfo:
        """An error as recorded (an event's ``error``, a ``last_error``), old ones too."""
        traceback = data.get("traceback")
        return cls(
            type=str(data.get("type") or ""),
            code=str(data.get("code") or ""),
            message=str(data.get("message") or ""),
            traceback=None if traceback is None else str(traceback),
        )


@attrs.frozen(kw_only=True)
class Command:
    """A command as a handler receives it."""

    domain: str
    command_id: UUID
    command_type: str
    data: dict[str, Any]
    correlation_id: UUID
    causation_id: UUID | None = None
    reply_to: str | None = None
    saga_id: UUID | None = None
    batch_id: UUID | None = None
    max_attempts: int = 3
    #: the sender's W3C trace context (``traceparent``...), from the message headers
    trace_context: Mapping[str, str] = attrs.field(factory=dict)


@attrs.frozen(kw_only=True)
class CommandRequest:
    """One command to send with :meth:`CommandBus.send_batch`.

    Its fields are checked when the batch is sent, as :meth:`CommandBus.send` checks
    its arguments: ids may be ``UUID`` or a text form of one, ``delay`` a
    ``timedelta`` or seconds.
    """

    domain: str
    command_type: str
    data: dict[str, Any] = attrs.field(factory=dict)
    command_id: UUID | str | None = None
    correlation_id: UUID | str | None = None
    causation_id: UUID | str | None = None
    reply_to: str | None = None
    saga_id: UUID | str | None = None
    max_attempts: int | None = None
    delay: timedelta | float | None = None


@attrs.frozen(kw_only=True)
class SendResult:
    """What :meth:`CommandBus.send` did: the command id and its PGMQ message id."""

    command_id: UUID
    msg_id: int
    correlation_id: UUID


@attrs.frozen(kw_only=True)
class BatchResult:
    """What :meth:`CommandBus.send_batch` did."""

    batch_id: UUID
    command_ids: tuple[UUID, ...]
    msg_ids: tuple[int, ...]


@attrs.frozen(kw_only=True)
class CommandRecord:
    """One row of the command status projection."""

    domain: str
    command_id: UUID
    command_type: str
    status: CommandStatus
    attempts: int
    max_attempts: int
    msg_id: int | None
    last_error: dict[str, Any] | None
    result: Any
    correlation_id: UUID
    reply_to: str | None
    saga_id: UUID | None
    batch_id: UUID | None
    created_at: datetime
    updated_at: datetime
    version: int


@attrs.frozen(kw_only=True)
class BatchRecord:
    """A batch and its progress, counted from the command projection."""

    batch_id: UUID
    name: str | None
    total: int
    correlation_id: UUID
    created_at: datetime
    counts: dict[str, int]

    @property
    def finished(self) -> int:
        return sum(self.counts.get(s.value, 0) for s in CommandStatus if s.is_final)

    @property
    def is_complete(self) -> bool:
        return self.finished == self.total


@attrs.frozen(kw_only=True)
class NewEvent:
    """An event to append to a stream."""

    event_type: str
    data: dict[str, Any]
    correlation_id: UUID | None = None
    causation_id: UUID | None = None
    metadata: dict[str, Any] = attrs.field(factory=dict)


@attrs.frozen(kw_only=True)
class StoredEvent:
    """An event as stored in the audit stream."""

    position: int
    transaction_id: int
    stream_id: str
    stream_version: int
    event_type: str
    data: dict[str, Any]
    correlation_id: UUID | None
    causation_id: UUID | None
    metadata: dict[str, Any]
    recorded_at: datetime


@attrs.frozen(kw_only=True)
class Page:
    """A page of a keyset-paged listing; pass ``next_cursor`` to get the next one."""

    items: tuple[CommandRecord, ...]
    next_cursor: str | None
