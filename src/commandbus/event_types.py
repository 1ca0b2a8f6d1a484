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

# -- sagas (stream "saga:<saga id>") --------------------------------------------------------
SAGA_STARTED: Final = "SagaStarted"
SAGA_STEP_STARTED: Final = "SagaStepStarted"
SAGA_STEP_COMPLETED: Final = "SagaStepCompleted"
SAGA_STEP_FAILED: Final = "SagaStepFailed"
SAGA_STEP_TIMED_OUT: Final = "SagaStepTimedOut"
SAGA_STEP_WAITING_ON_OPERATOR: Final = "SagaStepWaitingOnOperator"
SAGA_COMPENSATION_STARTED: Final = "SagaCompensationStarted"
SAGA_STEP_COMPENSATING: Final = "SagaStepCompensating"
SAGA_STEP_COMPENSATED: Final = "SagaStepCompensated"
SAGA_STEP_COMPENSATION_FAILED: Final = "SagaStepCompensationFailed"
SAGA_COMPLETED: Final = "SagaCompleted"
SAGA_COMPENSATED: Final = "SagaCompensated"
SAGA_FAILED: Final = "SagaFailed"
SAGA_PAUSED: Final = "SagaPaused"
SAGA_RESUMED: Final = "SagaResumed"
SAGA_CANCEL_REQUESTED: Final = "SagaCancelRequested"
SAGA_REPLY_IGNORED: Final = "SagaReplyIgnored"
SAGA_BLOCKED: Final = "SagaBlocked"

SAGA_STREAM: Final = "saga"
