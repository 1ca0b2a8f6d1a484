"""Turning what a handler did into the command's next transition (events + queue action)."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

import attrs

from commandbus import event_types as ev
from commandbus.engine.commands.envelope import (
    REPLY_FAILED,
    REPLY_SUCCESS,
    REPLY_TROUBLESHOOTING,
    reply_for,
)
from commandbus.engine.commands.store import Reply, Transition
from commandbus.engine.worker.failures import ErrorKind, classify, error_info
from commandbus.engine.worker.retry_policy import RetryPolicy
from commandbus.models import Command, ErrorInfo, NewEvent


def _for_reply(err: ErrorInfo) -> ErrorInfo:
    """Replies carry the error without its traceback (the command's events keep it)."""
    return err if err.traceback is None else attrs.evolve(err, traceback=None)


class Outcome(StrEnum):
    """What a recorded transition did to its command (what the worker counts)."""

    COMPLETED = "completed"
    FAILED = "failed"
    RETRIED = "retried"
    TROUBLESHOOTING = "troubleshooting"


class TsqReason(StrEnum):
    """Why a command went to the troubleshooting queue (``reason`` in its event)."""

    PERMANENT = "permanent"
    PROGRAMMING_ERROR = "programming_error"
    UNKNOWN_COMMAND_TYPE = "unknown_command_type"
    ATTEMPTS_EXHAUSTED = "attempts_exhausted"
    UNRECORDABLE_OUTCOME = "unrecordable_outcome"


@attrs.frozen
class Decision:
    """A transition to record and what it means."""

    outcome: Outcome
    transition: Transition


class OutcomeBuilder:
    """Builds transitions for one domain's worker."""

    def __init__(self, policy: RetryPolicy, *, archive_completed: bool = False) -> None:
        self._policy = policy
        self._done_op: Any = "archive" if archive_completed else "delete"

    @staticmethod
    def lost_attempts(command: Command, read_ct: int, recorded: int) -> list[NewEvent]:
        """Events for earlier deliveries of this message that never recorded an outcome.

        At most ``max_attempts`` are counted: a delivery past them never runs.
        """
        return [
            NewEvent(
                event_type=ev.COMMAND_ATTEMPT_LOST,
                data={
                    "attempt": n,
                    "reason": "visibility timeout expired before an outcome was recorded",
                },
                correlation_id=command.correlation_id,
                causation_id=command.command_id,
            )
            for n in range(recorded + 1, min(read_ct, command.max_attempts + 1))
        ]

    def _decide(self, outcome: Outcome, command: Command, **kw: Any) -> Decision:
        return Decision(outcome, self._transition(command, **kw))

    def _transition(
        self,
        command: Command,
        *,
        version: int,
        msg_id: int,
        prefix: list[NewEvent],
        event_type: str,
        data: dict[str, Any],
        queue_op: Any,
        retry_delay: float | None = None,
        reply: Reply | None = None,
    ) -> Transition:
        event = NewEvent(
            event_type=event_type,
            data=data,
            correlation_id=command.correlation_id,
            causation_id=command.command_id,
        )
        return Transition(
            domain=command.domain,
            command_id=command.command_id,
            expected_version=version,
            events=[*prefix, event],
            msg_id=msg_id,
            queue_op=queue_op,
            retry_delay=retry_delay,
            reply=reply,
        )

    def success(
        self,
        command: Command,
        result: Any,
        *,
        attempt: int,
        version: int,
        msg_id: int,
        prefix: list[NewEvent],
    ) -> Decision:
        return self._decide(
            Outcome.COMPLETED,
            command,
            version=version,
            msg_id=msg_id,
            prefix=prefix,
            event_type=ev.COMMAND_COMPLETED,
            data={"attempt": attempt, "result": result},
            queue_op=self._done_op,
            reply=reply_for(command, REPLY_SUCCESS, result=result),
        )

    def failure(
        self,
        command: Command,
        exc: BaseException,
        *,
        attempt: int,
        version: int,
        msg_id: int,
        prefix: list[NewEvent],
        kind: ErrorKind | None = None,
        err: ErrorInfo | None = None,
    ) -> Decision:
        """What an exception raised while handling (or ``kind``) does to the command.

        ``err`` is the error to record (default: :func:`error_info` of ``exc``).
        """
        kind = kind or classify(exc)
        err = err or error_info(exc)
        common: dict[str, Any] = {
            "version": version,
            "msg_id": msg_id,
            "prefix": prefix,
        }
        if kind is ErrorKind.BUSINESS:
            return self._decide(
                Outcome.FAILED,
                command,
                **common,
                event_type=ev.COMMAND_FAILED,
                data={"attempt": attempt, "error": err.as_dict()},
                queue_op=self._done_op,
                reply=reply_for(command, REPLY_FAILED, error=_for_reply(err)),
            )
        if kind is ErrorKind.TRANSIENT and attempt < command.max_attempts:
            delay = self._policy.delay(attempt).total_seconds()
            # the recording statement adds "retry_at" (its own time + delay)
            return self._decide(
                Outcome.RETRIED,
                command,
                **common,
                event_type=ev.COMMAND_RETRY_SCHEDULED,
                data={"attempt": attempt, "error": err.as_dict(), "delay_seconds": delay},
                queue_op="retry",
                retry_delay=delay,
            )
        reason = {
            ErrorKind.PERMANENT: TsqReason.PERMANENT,
            ErrorKind.PROGRAMMING: TsqReason.PROGRAMMING_ERROR,
            ErrorKind.UNKNOWN_COMMAND_TYPE: TsqReason.UNKNOWN_COMMAND_TYPE,
        }.get(kind, TsqReason.ATTEMPTS_EXHAUSTED)
        return self._decide(
            Outcome.TROUBLESHOOTING,
            command,
            **common,
            event_type=ev.COMMAND_MOVED_TO_TSQ,
            data={"attempt": attempt, "error": err.as_dict(), "reason": str(reason)},
            queue_op="archive",
            reply=reply_for(command, REPLY_TROUBLESHOOTING, error=_for_reply(err)),
        )

    def deliveries_exhausted(
        self, command: Command, *, deliveries: int, version: int, msg_id: int, recorded: int
    ) -> Decision:
        """TSQ for a message delivered past ``max_attempts`` with no outcome recorded.

        Each of those deliveries ended without an outcome (the worker died or the
        visibility timeout ran out mid-handler): the handler does not run again.
        """
        last = command.max_attempts
        return self._decide(
            Outcome.TROUBLESHOOTING,
            command,
            version=version,
            msg_id=msg_id,
            prefix=self.lost_attempts(command, deliveries, recorded),
            event_type=ev.COMMAND_MOVED_TO_TSQ,
            data={
                "attempt": last,
                "deliveries": deliveries,
                "error": {
                    "type": "AttemptsExhausted",
                    "code": "ATTEMPTS_EXHAUSTED",
                    "message": (
                        f"delivered {deliveries - 1} times without a recorded outcome "
                        f"(max_attempts={last}); the handler was not run again"
                    ),
                },
                "reason": str(TsqReason.ATTEMPTS_EXHAUSTED),
            },
            queue_op="archive",
            reply=reply_for(
                command,
                REPLY_TROUBLESHOOTING,
                error=ErrorInfo(
                    type="AttemptsExhausted",
                    code="ATTEMPTS_EXHAUSTED",
                    message=f"delivered {deliveries - 1} times without a recorded outcome",
                ),
            ),
        )

    def unrecordable(self, t: Transition, exc: BaseException) -> Decision:
        """The TSQ transition for an outcome the database refused to store."""
        last = t.events[-1]
        err = error_info(exc, with_traceback=False)  # the library's own statement failed
        transition = Transition(
            domain=t.domain,
            command_id=t.command_id,
            stream_id=t.stream_id,
            expected_version=t.expected_version,
            events=[
                *t.events[:-1],
                NewEvent(
                    event_type=ev.COMMAND_MOVED_TO_TSQ,
                    data={
                        "attempt": last.data.get("attempt"),
                        "error": {
                            **err.as_dict(),
                            "message": f"the outcome could not be recorded: {err.message}",
                        },
                        "reason": str(TsqReason.UNRECORDABLE_OUTCOME),
                    },
                    correlation_id=last.correlation_id,
                    causation_id=last.causation_id,
                ),
            ],
            msg_id=t.msg_id,
            queue_op="archive",
        )
        return Decision(Outcome.TROUBLESHOOTING, transition)
