"""JSON (de)serialisation owned by the library.

One private ``cattrs`` converter turns models into JSON-ready structures and back;
the global converter is never touched. ``dumps`` refuses data that JSON cannot
represent with a :class:`~commandbus.errors.PayloadError` naming the problem.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Any, TypeVar
from uuid import UUID

import cattrs
import orjson

from commandbus.errors import PayloadError, PayloadTooLargeError

T = TypeVar("T")

converter = cattrs.Converter()
converter.register_unstructure_hook(UUID, str)
converter.register_structure_hook(UUID, lambda v, _t: v if isinstance(v, UUID) else UUID(v))
converter.register_unstructure_hook(datetime, lambda d: d.isoformat())
converter.register_structure_hook(
    datetime, lambda v, _t: v if isinstance(v, datetime) else datetime.fromisoformat(v)
)


# an escaped NUL (\u0000) that is not itself an escaped backslash followed by "u0000"
_NUL = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")

_encoder = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def _json_key(key: Any) -> str:
    """The object key JSON writes for a dict key (as :mod:`json` converts it)."""
    if isinstance(key, str):
        return key
    if key is True or key is False or key is None:
        return {True: "true", False: "false", None: "null"}[key]
    if isinstance(key, float):
        return float.__repr__(key)
    return int.__repr__(key)  # the only other keys json accepts


def _clashing_keys(value: Any) -> str | None:
    """Two keys of one mapping that become the same JSON key (``1`` and ``"1"``): one
    would silently replace the other. Only called when orjson saw a key that is not
    a ``str`` (or something else it does not write), so the common case never walks."""
    pending = [value]
    while pending:
        v = pending.pop()
        if isinstance(v, dict):
            if not all(type(k) is str for k in v):
                seen: dict[str, Any] = {}
                for k in v:
                    j = _json_key(k)
                    if j in seen:
                        return f"keys {seen[j]!r} and {k!r}, which are both {j!r} in JSON"
                    seen[j] = k
            pending.extend(v.values())
        elif isinstance(v, list | tuple):
            pending.extend(v)
    return None


def dumps(value: Any, *, what: str = "data") -> str:
    """Serialise ``value`` to compact JSON or raise :class:`PayloadError`.

    Keys that are not strings become strings as :mod:`json` writes them (``1`` is
    ``"1"``); two keys of one mapping that would become the same are refused, as
    one would be lost."""
    try:
        text = _encoder.encode(value)
    except (TypeError, ValueError) as exc:
        raise PayloadError(f"{what} is not JSON-serialisable: {exc}") from None
    except RecursionError:
        raise PayloadError(f"{what} is nested too deeply to serialise") from None
    try:
        orjson.dumps(value)  # (fast; refuses any key that is not a str)
    except (TypeError, RecursionError):
        clash = _clashing_keys(value)
        if clash is not None:
            raise PayloadError(f"{what} has {clash}: one would be lost") from None
    if "\\u0000" in text and _NUL.search(text):
        raise PayloadError(f"{what} contains a NUL character, which PostgreSQL jsonb cannot store")
    try:
        text.encode()
    except UnicodeEncodeError:
        raise PayloadError(f"{what} contains text that is not valid Unicode") from None
    return text


#: The most JSON one statement carries in one document or one array: PostgreSQL
#: refuses a jsonb value over 256 MB (and a message over 1 GB, closing the
#: connection), so a batch of commands, or of sagas started at once, must stay under.
MAX_STATEMENT_JSON_BYTES = 268_435_455


def dumps_document(value: Any, *, what: str = "data") -> str:
    """:func:`dumps` for a document the library builds around values :func:`dumps`
    already accepted (a transition's rows, say): the same JSON, several times
    faster. What orjson would write differently (or not at all) takes the strict
    path, which also raises what :func:`dumps` raises. (A NaN or an infinity, which
    :func:`dumps` refuses and so are never in such a document, would be null.)"""
    try:
        out = orjson.dumps(value)
    except TypeError:  # orjson.JSONEncodeError too: a big integer, a key not a str...
        return dumps(value, what=what)
    if b"\\u0000" in out:
        return dumps(value, what=what)  # it says whether that is a NUL
    return out.decode()


# Integers of 19 digits or more, which orjson reads as floats, are found as a run
# of 19 "0" once every digit is "0" and everything else a space (a regular
# expression would cost more than the parse).
_DIGITS = bytes(48 if 48 <= i <= 57 else 32 for i in range(256))
_LONG_RUN = b"0" * 19


def loads(data: str | bytes) -> Any:
    """``json.loads``, with orjson where that reads the text the same (a long integer
    or an out-of-range number go to the standard library)."""
    if isinstance(data, str):
        data = data.encode()
    if _LONG_RUN not in data.translate(_DIGITS):
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            pass
    return json.loads(data)


def dumps_limited(value: Any, limit: int, *, what: str = "data") -> str:
    """Like :func:`dumps`, also refusing a result longer than ``limit`` bytes."""
    text = dumps(value, what=what)
    # Characters are at most 4 bytes in UTF-8: only encode when it might matter.
    if len(text) * 4 > limit:
        size = len(text.encode())
        if size > limit:
            raise PayloadTooLargeError(
                f"{what} is {size} bytes serialised, over the limit of {limit} bytes"
            )
    return text


def unstructure(value: Any) -> Any:
    return converter.unstructure(value)


def structure(value: Any, cls: type[T]) -> T:
    return converter.structure(value, cls)
