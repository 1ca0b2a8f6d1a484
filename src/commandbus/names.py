"""Naming rules for domains, queues and command types.

Domain and queue names become PGMQ table names (``pgmq.q_<name>``), i.e. SQL
identifiers, so they are checked here before any SQL is built; they only ever
reach SQL through ``psycopg.sql.Identifier`` after that.
"""

from __future__ import annotations

import re

from commandbus import event_types as ev
from commandbus.errors import InvalidNameError

# PGMQ limits queue names to 47 characters (prefix + name must fit in 63).
_QUEUE_RE = re.compile(r"[a-z][a-z0-9_]{0,46}")
_TYPE_RE = re.compile(r"[A-Za-z][A-Za-z0-9_.:-]{0,127}")


def validate_queue_name(name: object, *, what: str = "queue name") -> str:
    """Return ``name`` if it is a valid queue (or domain) name, else raise."""
    if not isinstance(name, str) or _QUEUE_RE.fullmatch(name) is None:
        raise InvalidNameError(
            f"invalid {what} {name!r}: use 1-47 characters, lower-case letters, digits "
            "and '_', starting with a letter"
        )
    return name


def validate_domain(name: object) -> str:
    """A domain is served by the queue of the same name."""
    return validate_queue_name(name, what="domain")


def validate_command_type(name: object) -> str:
    """Command types are wire names: a letter, then letters, digits, '_', '.', ':' or '-'."""
    if not isinstance(name, str) or _TYPE_RE.fullmatch(name) is None:
        raise InvalidNameError(
            f"invalid command type {name!r}: use 1-128 characters, letters, digits and "
            "'_', '.', ':', '-', starting with a letter"
        )
    return name


def command_stream_id(domain: str, command_id: object) -> str:
    """The event stream of one command."""
    return f"{ev.COMMAND_STREAM}:{domain}:{command_id}"


def batch_stream_id(batch_id: object) -> str:
    """The event stream of one batch."""
    return f"{ev.BATCH_STREAM}:{batch_id}"


def quarantine_stream_id(queue: str, msg_id: int) -> str:
    """The event stream of one quarantined queue message."""
    return f"{ev.QUARANTINE_STREAM}:{queue}:{msg_id}"


def saga_stream_id(saga_id: object) -> str:
    """The event stream of one saga."""
    return f"{ev.SAGA_STREAM}:{saga_id}"


#: Stream types the library writes; their streams are named ``<type>:...``.
LIBRARY_STREAM_TYPES = frozenset(
    {ev.COMMAND_STREAM, ev.BATCH_STREAM, ev.QUARANTINE_STREAM, ev.SAGA_STREAM}
)


def is_library_stream(stream_id: str, stream_type: str) -> bool:
    """Whether a stream id or type is one the library owns (only it may append there)."""
    prefix, colon, _rest = stream_id.partition(":")
    return stream_type in LIBRARY_STREAM_TYPES or (bool(colon) and prefix in LIBRARY_STREAM_TYPES)
