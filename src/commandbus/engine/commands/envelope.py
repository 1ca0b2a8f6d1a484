"""The wire format: what a command's queue message and a reply look like.

This module is the ONE definition of both. A command's message is a JSON object
with the keys of :data:`COMMAND_KEYS` plus ``data`` (its payload, serialised once);
its PGMQ headers carry the sender's W3C trace context. ``CommandSent`` records
the same keys (plus ``domain``, ``delay_seconds`` and ``msg_id``), so an operator
retry rebuilds the message from the event. A reply is the object
:func:`reply_for` builds, sent to the command's ``reply_to`` queue; its headers
are the W3C context of the worker's ``process`` span of the command (so what the
reply causes joins the same trace), or the command's own trace context where no
span records (an operator's action, a worker without tracing).
``tests/golden/`` pins both formats.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final
from uuid import UUID

from commandbus.codec import dumps, dumps_document
from commandbus.engine.commands.store import Reply
from commandbus.engine.observability.tracing import reply_headers
from commandbus.models import Command, ErrorInfo

#: The keys of a command's queue message besides ``data``, in order.
COMMAND_KEYS: Final = (
    "command_id",
    "command_type",
    "correlation_id",
    "causation_id",
    "reply_to",
    "saga_id",
    "batch_id",
    "max_attempts",
)
#: A reply's ``outcome``: the command completed (``result`` holds what it returned).
REPLY_SUCCESS: Final = "SUCCESS"
#: The command failed for good (a business rule; ``error`` says why).
REPLY_FAILED: Final = "FAILED"
#: An operator cancelled the command.
REPLY_CANCELLED: Final = "CANCELLED"
#: The command went to the troubleshooting queue: not final, an operator decides
#: (a later reply follows if they retry, complete or cancel it).
REPLY_TROUBLESHOOTING: Final = "TROUBLESHOOTING"
#: The trace-context headers a message carries (W3C Trace Context and Baggage).
TRACE_KEYS: Final = ("traceparent", "tracestate", "baggage")


def _text(u: UUID | None) -> str | None:
    return None if u is None else str(u)


def encode_command(
    *,
    command_id: UUID,
    command_type: str,
    correlation_id: UUID,
    causation_id: UUID | None,
    reply_to: str | None,
    saga_id: UUID | None,
    batch_id: UUID | None,
    max_attempts: int,
    data_json: str,
) -> str:
    """A command's queue message, with ``data_json`` (already serialised) as its data."""
    # checked values (ids, names, an int): orjson writes what the strict encoder would
    head = dumps_document(
        {
            "command_id": str(command_id),
            "command_type": command_type,
            "correlation_id": str(correlation_id),
            "causation_id": _text(causation_id),
            "reply_to": reply_to,
            "saga_id": _text(saga_id),
            "batch_id": _text(batch_id),
            "max_attempts": max_attempts,
        }
    )
    return head[:-1] + ',"data":' + data_json + "}"


def message_from_sent(sent: Mapping[str, Any]) -> str:
    """A command's queue message rebuilt from its ``CommandSent`` event's data."""
    return dumps({**{k: sent.get(k) for k in COMMAND_KEYS}, "data": sent["data"]})


def encode_headers(trace: Mapping[str, str]) -> str:
    """The PGMQ headers of a message: the trace context (``{}`` when not traced)."""
    return dumps(dict(trace)) if trace else "{}"


def trace_context(headers: Any) -> dict[str, str]:
    """The trace context in a message's headers (anything else is ignored)."""
    if not isinstance(headers, Mapping):
        return {}
    return {k: v for k in TRACE_KEYS if isinstance(v := headers.get(k), str)}


def _opt_uuid(value: Any) -> UUID | None:
    return None if value is None else UUID(value)


def decode_command(domain: str, message: Any, headers: Any = None) -> Command:
    """The command a queue message carries; raises KeyError/TypeError/ValueError if bad.

    The worker's hot path, so written out by hand and given the message as read.
    """
    if not isinstance(message, dict):
        raise TypeError(f"message is a {type(message).__name__}, not an object")
    data = message.get("data")
    if not isinstance(data, dict):
        raise TypeError("message has no 'data' object")
    return Command(
        domain=domain,
        command_id=UUID(message["command_id"]),
        command_type=str(message["command_type"]),
        data=data,
        correlation_id=UUID(message["correlation_id"]),
        causation_id=_opt_uuid(message.get("causation_id")),
        reply_to=message.get("reply_to"),
        saga_id=_opt_uuid(message.get("saga_id")),
        batch_id=_opt_uuid(message.get("batch_id")),
        max_attempts=int(message.get("max_attempts") or 1),
        trace_context=trace_context(headers) if headers else {},
    )


def reply_for(
    command: Command, outcome: str, *, result: Any = None, error: ErrorInfo | None = None
) -> Reply | None:
    """The reply to ``command`` (``None`` without ``reply_to``), with the current trace.

    Called while the worker's ``process`` span of the command is current, the
    headers carry that span's context; otherwise the command's own.
    """
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
    return Reply(queue=command.reply_to, message=body, headers=reply_headers(command.trace_context))
