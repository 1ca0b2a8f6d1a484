"""Checks of the public API's arguments, in pure Python, before any SQL runs.

Each check returns the value in the form the engine uses (ids become
``uuid.UUID``, delays become seconds) or raises
:class:`~commandbus.errors.ValidationError` with a message that names the
argument. ``bool`` is never accepted where a number is expected.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from datetime import timedelta
from typing import Any
from uuid import UUID

import psycopg
from psycopg.pq import TransactionStatus

from commandbus.errors import ValidationError
from commandbus.models import CommandStatus
from commandbus.names import validate_command_type, validate_domain

#: The largest value of a PostgreSQL ``integer`` column (attempts are stored as one).
MAX_INT = 2**31 - 1
#: The largest value of a PostgreSQL ``bigint`` (stream versions, positions, limits).
MAX_BIGINT = 2**63 - 1
#: The longest delay a send accepts.
MAX_DELAY = timedelta(days=36525)  # 100 years

# The text forms of a UUID that name the same id: canonical (any case), 32 hex
# digits, either one in braces, or a ``urn:uuid:`` URN.
_UUID_TEXT = re.compile(
    r"(?:urn:uuid:)?(\{)?"
    r"(?:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|[0-9a-f]{32})"
    r"(?(1)\})",
    re.IGNORECASE,
)


def show(value: object) -> str:
    """``repr(value)``, cut short for messages."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def uuid_arg(value: object, name: str) -> UUID:
    """``value`` as a UUID: a ``UUID``, or one of its text forms."""
    if isinstance(value, UUID):
        return value
    if isinstance(value, str) and _UUID_TEXT.fullmatch(value):
        return UUID(value.lower())  # UUID() strips only a lower-case "urn:uuid:"
    raise ValidationError(f"{name} must be a UUID, got {show(value)}")


def opt_uuid_arg(value: object, name: str) -> UUID | None:
    return None if value is None else uuid_arg(value, name)


def int_arg(value: object, name: str, *, low: int, high: int) -> int:
    """An ``int`` (not a ``bool``) between ``low`` and ``high``."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValidationError(f"{name} must be an integer, got {show(value)}")
    if not low <= value <= high:
        raise ValidationError(f"{name} must be between {low} and {high}, got {value}")
    return value


def text_arg(value: object, name: str, *, empty: bool = False, most: int | None = None) -> str:
    """A ``str`` PostgreSQL can store (no NUL character), of at most ``most`` characters."""
    if not isinstance(value, str):
        raise ValidationError(f"{name} must be a string, got {show(value)}")
    if not empty and not value:
        raise ValidationError(f"{name} must not be empty")
    if "\x00" in value:
        raise ValidationError(f"{name} must not contain a NUL character")
    if most is not None and len(value) > most:
        raise ValidationError(f"{name} must be at most {most} characters, got {len(value)}")
    return value


def opt_text_arg(
    value: object, name: str, *, empty: bool = False, most: int | None = None
) -> str | None:
    return None if value is None else text_arg(value, name, empty=empty, most=most)


#: The longest reason an operator may give for an action (it stays in the audit stream).
MAX_REASON = 2000
#: The longest operator name.
MAX_OPERATOR = 200


def reason_arg(value: object) -> str | None:
    """An operator's reason: text, at most :data:`MAX_REASON` characters (or None)."""
    return opt_text_arg(value, "reason", empty=True, most=MAX_REASON)


def operator_arg(value: object) -> str | None:
    """Who acted: text, at most :data:`MAX_OPERATOR` characters (or None)."""
    return opt_text_arg(value, "operator", empty=True, most=MAX_OPERATOR)


#: Where an operator's action came from, recorded with it (``source`` in the event).
SOURCES = ("api", "cli", "web")


def source_arg(value: object) -> str:
    """Where an operator's action came from: one of :data:`SOURCES`."""
    if value not in SOURCES:
        raise ValidationError(f"source must be one of {', '.join(SOURCES)}, got {show(value)}")
    return str(value)


def bool_arg(value: object, name: str) -> bool:
    if not isinstance(value, bool):
        raise ValidationError(f"{name} must be True or False, got {show(value)}")
    return value


def mapping_arg(value: object, name: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ValidationError(f"{name} must be a mapping, got {type(value).__name__}")
    return value


def delay_arg(value: object, name: str = "delay") -> float:
    """A delay as seconds: a ``timedelta`` or a number of seconds, 0 up to 100 years."""
    limit = MAX_DELAY.total_seconds()
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(min(value, limit + 1))
    else:
        raise ValidationError(
            f"{name} must be a timedelta or a number of seconds, got {show(value)}"
        )
    if math.isnan(seconds) or seconds < 0:
        raise ValidationError(f"{name} must be at least 0 seconds, got {show(value)}")
    if seconds > limit:
        raise ValidationError(f"{name} must be at most {MAX_DELAY.days} days, got {show(value)}")
    return seconds


def conn_arg(value: object) -> None:
    """The caller's connection: an open psycopg ``AsyncConnection``."""
    if not isinstance(value, psycopg.AsyncConnection):
        raise ValidationError(f"conn must be a psycopg AsyncConnection, got {show(value)}")
    if value.closed:
        raise ValidationError("conn is closed")
    if value.info.transaction_status is TransactionStatus.INERROR:
        raise ValidationError("conn is in a failed transaction: roll it back first")


def status_arg(value: object, name: str = "status") -> CommandStatus | None:
    """A :class:`CommandStatus` or its name."""
    if value is None or isinstance(value, CommandStatus):
        return value
    if isinstance(value, str) and value in CommandStatus.__members__:
        return CommandStatus(value)
    raise ValidationError(
        f"{name} must be one of {', '.join(CommandStatus.__members__)}, got {show(value)}"
    )


def opt_domain_arg(value: object) -> str | None:
    return None if value is None else validate_domain(value)


def opt_command_type_arg(value: object) -> str | None:
    return None if value is None else validate_command_type(value)
