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


def dumps(value: Any, *, what: str = "data") -> str:
    """Serialise ``value`` to compact JSON or raise :class:`PayloadError`."""
    try:
        text = _encoder.encode(value)
    except (TypeError, ValueError) as exc:
        raise PayloadError(f"{what} is not JSON-serialisable: {exc}") from None
    except RecursionError:
        raise PayloadError(f"{what} is nested too deeply to serialise") from None
    if "\\u0000" in text and _NUL.search(text):
        raise PayloadError(f"{what} contains a NUL character, which PostgreSQL jsonb cannot store")
    try:
        text.encode()
    except UnicodeEncodeError:
        raise PayloadError(f"{what} contains text that is not valid Unicode") from None
    return text


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
