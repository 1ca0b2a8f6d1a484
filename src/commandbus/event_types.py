"""Wire names of the events in the audit stream. They are stable: never rename one."""

from __future__ import annotations

from typing import Final

COMMAND_SENT: Final = "CommandSent"
COMMAND_COMPLETED: Final = "CommandCompleted"
COMMAND_FAILED: Final = "CommandFailed"
COMMAND_RETRY_SCHEDULED: Final = "CommandRetryScheduled"
COMMAND_ATTEMPT_LOST: Final = "CommandAttemptLost"
COMMAND_MOVED_TO_TSQ: Final = "CommandMovedToTroubleshootingQueue"
COMMAND_RETRIED_BY_OPERATOR: Final = "CommandRetriedByOperator"
COMMAND_CANCELLED_BY_OPERATOR: Final = "CommandCancelledByOperator"
COMMAND_COMPLETED_BY_OPERATOR: Final = "CommandCompletedByOperator"

BATCH_CREATED: Final = "BatchCreated"

MESSAGE_QUARANTINED: Final = "MessageQuarantined"
QUARANTINE_STREAM: Final = "quarantine"

COMMAND_STREAM: Final = "command"
BATCH_STREAM: Final = "batch"
