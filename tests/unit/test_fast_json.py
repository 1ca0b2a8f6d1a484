"""The fast JSON paths (orjson) give what the standard library gives, or take its way."""

from __future__ import annotations

import json
from typing import Any

import pytest

from commandbus.codec import dumps, dumps_document, loads
from commandbus.errors import PayloadError

SAME = [
    {"a": 1, "b": [1.5, -0.0, 1e16, 3.141592653589793], "c": None, "d": True},
    {"text": "ünïcödé ✓ \U0001f600", "quote": 'a "b" \\ c', "ctl": "\t\n\x01"},
    [{"nested": [[[]]], "empty": {}}],
    {"int64": 2**63 - 1, "neg": -(2**63), "u64": 2**64 - 1},
    "just a string",
    {1: "int key", "2": "str key"},  # orjson refuses int keys: the strict way
    {"big": 10**30, "neg_big": -(10**25)},  # beyond 64 bits: the strict way
    {"escaped": "\\u0000 is not a NUL"},
]


@pytest.mark.parametrize("value", SAME)
def test_dumps_document_means_what_dumps_means(value: Any) -> None:
    assert json.loads(dumps_document(value)) == json.loads(dumps(value))


@pytest.mark.parametrize(
    "value, message",
    [
        ({"nul": "a\x00b"}, "NUL"),
        ({"surrogate": "\ud800"}, "not valid Unicode"),
        ({"set": {1, 2}}, "not JSON-serialisable"),
    ],
)
def test_dumps_document_refuses_what_dumps_refuses(value: Any, message: str) -> None:
    with pytest.raises(PayloadError, match=message):
        dumps(value)
    with pytest.raises(PayloadError, match=message):
        dumps_document(value)


@pytest.mark.parametrize(
    "text",
    [
        '{"a": 1, "b": [1.5, -0.0, 1e16], "c": null, "d": true, "e": "ü✓"}',
        '{"id": 12345678901234567890123}',  # a long integer stays an exact int
        '{"n": -9223372036854775809}',
        '{"huge": 1.5e400}',  # infinity, as the standard library reads it
        '{"digits": "12345678901234567890"}',
        "[]",
        '"x"',
    ],
)
def test_loads_reads_what_json_loads_reads(text: str) -> None:
    expected = json.loads(text)
    for given in (text, text.encode()):
        got = loads(given)
        assert got == expected and repr(got) == repr(expected)


def test_loads_refuses_what_json_refuses() -> None:
    with pytest.raises(ValueError):
        loads(b"{not json")
