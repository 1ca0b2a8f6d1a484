"""How each command event changes the command status projection.

This is the ONE definition of the projection: the engine writes the patch of each
event in the same statement that appends it, and :mod:`rebuild` folds the same
patches over the whole event stream. ``verify`` proves the two agree.
"""

from __future__ import annotations

from typing import Any

import attrs

from commandbus.engine import event_types as ev
from commandbus.engine.models import CommandStatus

# Patches only ever set values (None means "keep"), so applying one is the same
# in SQL (coalesce) and in Python (fold).


@attrs.frozen(kw_only=True)
class Patch:
    status: CommandStatus | None = None
    attempts: int | None = None
    last_error: dict[str, Any] | None = None
    result: Any = None
    msg_id: int | None = None


def patch_for(event_type: str, data: dict[str, Any]) -> Patch | None:
    """The projection change of one command event (None: the event changes nothing)."""
    if event_type == ev.COMMAND_COMPLETED:
        return Patch(
            status=CommandStatus.COMPLETED, attempts=data["attempt"], result=data.get("result")
        )
    if event_type == ev.COMMAND_FAILED:
        return Patch(
            status=CommandStatus.FAILED, attempts=data["attempt"], last_error=data["error"]
        )
    if event_type == ev.COMMAND_RETRY_SCHEDULED:
        return Patch(
            status=CommandStatus.RETRY_SCHEDULED,
            attempts=data["attempt"],
            last_error=data["error"],
        )
    if event_type == ev.COMMAND_ATTEMPT_LOST:
        return Patch(attempts=data["attempt"])
    if event_type == ev.COMMAND_MOVED_TO_TSQ:
        return Patch(
            status=CommandStatus.IN_TROUBLESHOOTING_QUEUE,
            attempts=data["attempt"],
            last_error=data["error"],
        )
    if event_type == ev.COMMAND_RETRIED_BY_OPERATOR:
        return Patch(status=CommandStatus.PENDING, attempts=0, msg_id=data["msg_id"])
    if event_type == ev.COMMAND_CANCELLED_BY_OPERATOR:
        return Patch(status=CommandStatus.CANCELLED)
    if event_type == ev.COMMAND_COMPLETED_BY_OPERATOR:
        return Patch(status=CommandStatus.COMPLETED, result=data.get("result"))
    return None


def merge(first: Patch, second: Patch) -> Patch:
    """One patch with the effect of applying ``first`` then ``second``."""
    return Patch(
        status=second.status if second.status is not None else first.status,
        attempts=second.attempts if second.attempts is not None else first.attempts,
        last_error=second.last_error if second.last_error is not None else first.last_error,
        result=second.result if second.result is not None else first.result,
        msg_id=second.msg_id if second.msg_id is not None else first.msg_id,
    )


def row_from_sent(data: dict[str, Any], *, correlation_id: Any, recorded_at: Any) -> dict[str, Any]:
    """The projection row a ``CommandSent`` event creates."""
    return {
        "domain": data["domain"],
        "command_id": data["command_id"],
        "command_type": data["command_type"],
        "status": CommandStatus.PENDING.value,
        "attempts": 0,
        "max_attempts": data["max_attempts"],
        "msg_id": data["msg_id"],
        "last_error": None,
        "result": None,
        "correlation_id": correlation_id,
        "reply_to": data.get("reply_to"),
        "saga_id": data.get("saga_id"),
        "batch_id": data.get("batch_id"),
        "created_at": recorded_at,
        "updated_at": recorded_at,
        "version": 1,
    }


def apply(row: dict[str, Any], patch: Patch, *, version: int, recorded_at: Any) -> None:
    """Fold one patch into a projection row (the Python twin of the SQL update)."""
    if patch.status is not None:
        row["status"] = patch.status.value
    if patch.attempts is not None:
        row["attempts"] = patch.attempts
    if patch.last_error is not None:
        row["last_error"] = patch.last_error
    if patch.result is not None:
        row["result"] = patch.result
    if patch.msg_id is not None:
        row["msg_id"] = patch.msg_id
    row["updated_at"] = recorded_at
    row["version"] = version
