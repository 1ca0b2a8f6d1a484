"""How each command event changes the command status projection.

This is the ONE definition of the projection (:data:`RULES`): the engine writes
the patch of each event in the same statement that appends it, :mod:`replay`
folds the same patches over the whole event stream (``verify`` proves the two
agree), and the worker's read, when a command's status row is missing, folds its
status and attempts from its events with SQL generated from the same rules
(:func:`sql_set_by_event`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final, Literal

import attrs
from psycopg import sql

from commandbus import event_types as ev
from commandbus.models import CommandStatus

# Patches only ever set values (None means "keep"), so applying one is the same
# in SQL (coalesce) and in Python (fold).


@attrs.frozen(kw_only=True)
class Patch:
    status: CommandStatus | None = None
    attempts: int | None = None
    last_error: dict[str, Any] | None = None
    result: Any = None
    msg_id: int | None = None


@attrs.frozen(kw_only=True)
class Rule:
    """What one event type sets on a command's row; the rest of the row is kept."""

    status: CommandStatus | None = None
    #: ``"attempt"``: the event's ``data["attempt"]``; an int: that number; None: kept
    attempts: Literal["attempt"] | int | None = None
    last_error: bool = False  # data["error"]
    result: bool = False  # data.get("result")
    msg_id: bool = False  # data["msg_id"]


#: Every command event that changes the row, and how. ``CommandSent`` creates the
#: row (:func:`row_from_sent`); any other event only moves its version.
RULES: Final[Mapping[str, Rule]] = {
    ev.COMMAND_COMPLETED: Rule(status=CommandStatus.COMPLETED, attempts="attempt", result=True),
    ev.COMMAND_FAILED: Rule(status=CommandStatus.FAILED, attempts="attempt", last_error=True),
    ev.COMMAND_RETRY_SCHEDULED: Rule(
        status=CommandStatus.RETRY_SCHEDULED, attempts="attempt", last_error=True
    ),
    ev.COMMAND_ATTEMPT_LOST: Rule(attempts="attempt"),
    ev.COMMAND_MOVED_TO_TSQ: Rule(
        status=CommandStatus.IN_TROUBLESHOOTING_QUEUE, attempts="attempt", last_error=True
    ),
    ev.COMMAND_RETRIED_BY_OPERATOR: Rule(status=CommandStatus.PENDING, attempts=0, msg_id=True),
    ev.COMMAND_CANCELLED_BY_OPERATOR: Rule(status=CommandStatus.CANCELLED),
    ev.COMMAND_COMPLETED_BY_OPERATOR: Rule(status=CommandStatus.COMPLETED, result=True),
}

#: What ``CommandSent`` starts a row with.
SENT_STATUS: Final = CommandStatus.PENDING
SENT_ATTEMPTS: Final = 0


def patch_for(event_type: str, data: dict[str, Any]) -> Patch | None:
    """The projection change of one command event (None: the event changes nothing)."""
    rule = RULES.get(event_type)
    if rule is None:
        return None
    return Patch(
        status=rule.status,
        attempts=data["attempt"] if rule.attempts == "attempt" else rule.attempts,
        last_error=data["error"] if rule.last_error else None,
        result=data.get("result") if rule.result else None,
        msg_id=data["msg_id"] if rule.msg_id else None,
    )


def sql_set_by_event(field: Literal["status", "attempts"]) -> sql.Composed:
    """SQL for the ``field`` an event ``e`` (event_type, data) sets; NULL if it keeps it.

    Generated from :data:`RULES` (and ``CommandSent``), so that a statement can
    fold a command's state from its events without a second definition: the
    value of the last event of a stream for which this is not NULL is the field.
    """
    whens: list[sql.Composable] = []
    sent = SENT_STATUS.value if field == "status" else SENT_ATTEMPTS
    rules: list[tuple[str, Any]] = [(ev.COMMAND_SENT, sent)]
    for event_type, rule in RULES.items():
        if field == "status" and rule.status is not None:
            rules.append((event_type, rule.status.value))
        elif field == "attempts" and rule.attempts is not None:
            rules.append((event_type, rule.attempts))
    for event_type, value in rules:
        if value == "attempt":
            then: sql.Composable = sql.SQL("(e.data->>'attempt')::int")
        elif isinstance(value, int):
            then = sql.SQL("{}::int").format(sql.Literal(value))
        else:
            then = sql.SQL("{}::text").format(sql.Literal(value))
        whens.append(sql.SQL(" WHEN {} THEN {}").format(sql.Literal(event_type), then))
    return sql.SQL("(CASE e.event_type{} END)").format(sql.Composed(whens))


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
        "status": SENT_STATUS.value,
        "attempts": SENT_ATTEMPTS,
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
