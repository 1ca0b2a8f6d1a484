"""What an exception raised by a handler means: its kind and its error as recorded.

The kinds (see :class:`ErrorKind`):

* ``business``: a :class:`~commandbus.errors.BusinessRuleError`; FAILED at once.
* ``permanent``: a :class:`~commandbus.errors.PermanentCommandError` or another
  library error that retrying cannot fix; the troubleshooting queue at once.
* ``programming_error``: a mistake in the code (:data:`PROGRAMMING_ERRORS`: a
  ``TypeError`` from a wrong call, an ``AttributeError``, a ``NameError``...).
  Running the same code on the same command again fails the same way, so it
  goes to the troubleshooting queue at once, with its traceback; fix the code,
  then retry it from there. A handler that knows better raises
  ``TransientCommandError(...) from exc``.
* ``transient``: everything else (a :class:`~commandbus.errors.TransientCommandError`,
  connection errors, timeouts, an unknown exception): retried while attempts last.

An exception group (a ``TaskGroup`` whose tasks failed) is classified by its
members: the first of the most decisive kind (programming error, permanent,
business, transient) decides, and gives the error its type, code and message.

Everything recorded is bounded: a message of :data:`MAX_MESSAGE_CHARS`, a
traceback of :data:`MAX_TRACEBACK_CHARS` (its end: the innermost frames and the
exception), whatever the exception holds, and an exception whose ``str()``
raises is recorded all the same.
"""

from __future__ import annotations

import traceback as _traceback
from enum import StrEnum

from commandbus.errors import (
    BusinessRuleError,
    CommandBusError,
    CommandFailure,
    PermanentCommandError,
)
from commandbus.models import ErrorInfo

#: Longest error message recorded (a longer one is cut, saying by how much).
MAX_MESSAGE_CHARS = 2000
#: Longest traceback recorded: its last lines (the innermost frames) are kept.
MAX_TRACEBACK_CHARS = 4000
#: Longest line of a recorded traceback (a huge message or source line is cut).
MAX_TRACEBACK_LINE_CHARS = 300
#: Longest error code or type name recorded.
MAX_CODE_CHARS = 200
#: Members of an exception group looked at (a group may nest groups).
MAX_GROUP_MEMBERS = 1000

#: Exceptions that mean the code is wrong, not that the moment was bad.
PROGRAMMING_ERRORS: tuple[type[BaseException], ...] = (
    TypeError,
    AttributeError,
    NameError,
    ImportError,
    AssertionError,
    NotImplementedError,
    SyntaxError,
)


class ErrorKind(StrEnum):
    """What an exception raised by a handler means for its command."""

    BUSINESS = "business"  # final at once: CommandFailed
    PERMANENT = "permanent"  # the TSQ at once
    PROGRAMMING = "programming_error"  # a mistake in the code: the TSQ at once
    TRANSIENT = "transient"  # retried while attempts last, then the TSQ
    UNKNOWN_COMMAND_TYPE = "unknown_command_type"  # no handler: the TSQ at once


# the order in which members of an exception group decide its kind
_PRECEDENCE = (ErrorKind.PROGRAMMING, ErrorKind.PERMANENT, ErrorKind.BUSINESS, ErrorKind.TRANSIENT)


def _kind_of_one(exc: BaseException) -> ErrorKind:
    if isinstance(exc, BusinessRuleError):
        return ErrorKind.BUSINESS
    if isinstance(exc, PermanentCommandError):
        return ErrorKind.PERMANENT
    if isinstance(exc, CommandBusError):
        return ErrorKind.TRANSIENT if exc.retryable else ErrorKind.PERMANENT
    if isinstance(exc, PROGRAMMING_ERRORS):
        return ErrorKind.PROGRAMMING
    return ErrorKind.TRANSIENT


def members(exc: BaseException) -> list[BaseException]:
    """The exceptions an exception group holds, groups in it flattened (``[exc]`` if none)."""
    if not isinstance(exc, BaseExceptionGroup):
        return [exc]
    found: list[BaseException] = []
    pending: list[BaseException] = [exc]
    seen: set[int] = set()
    while pending and len(found) < MAX_GROUP_MEMBERS:
        e = pending.pop(0)
        if id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, BaseExceptionGroup):
            pending[:0] = list(e.exceptions)
        else:
            found.append(e)
    return found or [exc]


def decisive(exc: BaseException) -> tuple[ErrorKind, BaseException]:
    """The kind of ``exc`` and the exception that decided it (a group's member)."""
    kinds = [(_kind_of_one(e), e) for e in members(exc)]
    for kind in _PRECEDENCE:
        for k, e in kinds:
            if k is kind:
                return k, e
    return ErrorKind.TRANSIENT, exc  # not reached: every member has a kind


def classify(exc: BaseException) -> ErrorKind:
    """``business``, ``permanent``, ``programming_error`` or ``transient`` (see the module)."""
    return decisive(exc)[0]


def on_purpose(exc: BaseException) -> bool:
    """Raised by a handler to choose the outcome (a CommandFailure without a cause).

    Those are recorded and logged without a traceback; every other exception
    keeps its traceback.
    """
    return all(isinstance(e, CommandFailure) and e.__cause__ is None for e in members(exc))


def safe_str(exc: BaseException) -> str:
    """``str(exc)``, or a stand-in when its ``__str__`` raises."""
    try:
        text = str(exc)
    except Exception:  # whatever a user's __str__ raises
        return f"<{type(exc).__name__}: str() failed>"
    return text


def cut(text: str, limit: int) -> str:
    """``text``, at most ``limit`` characters: a longer one ends saying what was cut."""
    if len(text) <= limit:
        return text
    note = f"... ({len(text) - limit} characters cut)"
    keep = max(0, limit - len(note))
    return text[:keep] + note[: limit - keep]


def format_traceback(exc: BaseException, limit: int = MAX_TRACEBACK_CHARS) -> str:
    """The traceback of ``exc`` (its chained causes and group members too), bounded.

    Each line is cut at :data:`MAX_TRACEBACK_LINE_CHARS`; when the whole is longer
    than ``limit``, its last lines are kept (the innermost frames and the
    exception) after a line saying how many were left out.
    """
    try:
        chunks = _traceback.format_exception(exc)
    except Exception:  # a traceback must never stop the recording
        return f"<the traceback of {type(exc).__name__} could not be formatted>"
    lines = [cut(line, MAX_TRACEBACK_LINE_CHARS) for chunk in chunks for line in chunk.splitlines()]
    size = sum(len(line) + 1 for line in lines)
    if size <= limit:
        return "\n".join(lines)
    kept: list[str] = []
    room = limit - 40  # the note that says what was left out
    for line in reversed(lines):
        if len(line) + 1 > room:
            break
        kept.append(line)
        room -= len(line) + 1
    kept.reverse()
    return "\n".join([f"... ({len(lines) - len(kept)} earlier lines cut)", *kept])


def _code(exc: BaseException) -> str:
    try:
        code = exc.error_code if isinstance(exc, CommandFailure) else getattr(exc, "code", None)
        text = str(code) if code is not None and code != "" else ""
    except Exception:  # a property that raises, a __str__ that raises
        text = ""
    return cut(text or type(exc).__name__, MAX_CODE_CHARS)


def error_info(exc: BaseException, *, with_traceback: bool | None = None) -> ErrorInfo:
    """The error recorded for ``exc``: type, code and message of the exception that
    decided its kind, and the bounded traceback unless it was raised on purpose
    (``with_traceback`` overrides that)."""
    leaf = decisive(exc)[1]
    message = safe_str(leaf) or type(leaf).__name__
    others = len(members(exc)) - 1
    if others:
        message = f"{message} (and {others} more in a {type(exc).__name__})"
    if with_traceback is None:
        with_traceback = not on_purpose(exc)
    return ErrorInfo(
        type=cut(type(leaf).__name__, MAX_CODE_CHARS),
        code=_code(leaf),
        message=cut(message, MAX_MESSAGE_CHARS),
        traceback=format_traceback(exc) if with_traceback else None,
    )
