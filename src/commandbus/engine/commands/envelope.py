"""What a worker sends back: the reply a command's ``reply_to`` queue receives.

The reply is the contract between workers and whoever waits on a command (a
saga coordinator): command id, domain, type, correlation, saga and batch ids,
``outcome`` (``SUCCESS``, ``FAILED`` or ``CANCELLED``), the result and the error.
"""

from __future__ import annotations

from typing import Any

from commandbus.engine.commands.store import Reply
from commandbus.models import Command, ErrorInfo


def reply_for(
    command: Command, outcome: str, *, result: Any = None, error: ErrorInfo | None = None
) -> Reply | None:
    if command.reply_to is None:
        return None
    body = {
        "command_id": str(command.command_id),
        "domain": command.domain,
        "command_type": command.command_type,
        "correlation_id": str(command.correlation_id),
        "saga_id": None if command.saga_id is None else str(command.saga_id),
        "batch_id": None if command.batch_id is None else str(command.batch_id),
        "outcome": outcome,
        "result": result,
        "error": None if error is None else error.as_dict(),
    }
    return Reply(queue=command.reply_to, message=body, headers={})
