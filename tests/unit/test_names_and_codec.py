"""Pure functions: name rules, the command codec, the status projection's patches."""

from __future__ import annotations

import json
import re
from uuid import uuid4

import pytest

from commandbus import CommandStatus, InvalidNameError, PayloadError, PayloadTooLargeError
from commandbus.codec import dumps, dumps_limited
from commandbus.engine.commands.envelope import decode_command
from commandbus.engine.commands.status import apply, patch_for, row_from_sent
from commandbus.names import validate_command_type, validate_domain


@pytest.mark.parametrize("name", ["payments", "a", "a_1", "x" * 47])
def test_good_domains(name: str) -> None:
    assert validate_domain(name) == name


@pytest.mark.parametrize("name", ["", "Payments", "1a", "a-b", "x" * 48, "a b", None, 3, ["a"]])
def test_bad_domains_are_refused(name: object) -> None:
    with pytest.raises(InvalidNameError):
        validate_domain(name)


@pytest.mark.parametrize("name", ["", "1Charge", "a b", "x" * 129, None])
def test_bad_command_types_are_refused(name: object) -> None:
    with pytest.raises(InvalidNameError):
        validate_command_type(name)


def test_a_message_decodes_into_a_command() -> None:
    cid, corr = uuid4(), uuid4()
    cmd = decode_command(
        "payments",
        {
            "command_id": str(cid),
            "command_type": "Charge",
            "correlation_id": str(corr),
            "data": {"amount": 5},
            "max_attempts": 4,
            "reply_to": "replies",
        },
    )
    assert (cmd.command_id, cmd.correlation_id, cmd.max_attempts) == (cid, corr, 4)
    assert cmd.data == {"amount": 5} and cmd.reply_to == "replies" and cmd.saga_id is None


@pytest.mark.parametrize(
    "message",
    [[], {"command_id": "x"}, {"command_id": "not-a-uuid", "data": {}}, {"data": []}],
)
def test_a_foreign_message_does_not_decode(message: object) -> None:
    with pytest.raises((KeyError, TypeError, ValueError)):
        decode_command("payments", message)


def test_dumps_refuses_what_jsonb_cannot_store() -> None:
    for bad in ({"n": float("nan")}, {"s": "a\x00b"}, {"s": "\ud800"}, {"o": object()}):
        with pytest.raises(PayloadError):
            dumps(bad)
    assert dumps({"s": "a\\u0000b"}) == '{"s":"a\\\\u0000b"}'  # an escaped backslash is fine


@pytest.mark.parametrize(
    ("value", "clash"),
    [
        ({1: "a", "1": "b"}, "keys 1 and '1'"),
        ({"x": [{"y": {1.5: 1, "1.5": 2}}]}, "keys 1.5 and '1.5'"),
        ({None: 1, "null": 2}, "keys None and 'null'"),
        ({False: 1, "false": 2}, "keys False and 'false'"),
    ],
)
def test_dumps_refuses_two_keys_that_json_makes_one(value: object, clash: str) -> None:
    # jsonb keeps the last of two equal keys: the other one would be lost unseen
    with pytest.raises(PayloadError, match=f"data has {re.escape(clash)}, which are both"):
        dumps(value)


def test_dumps_writes_other_keys_as_json_does() -> None:
    value = {1: "a", 2.5: "b", None: "c", "s": {3: [{"t": 10**30}]}}
    assert dumps(value) == json.dumps(value, separators=(",", ":"))


def test_dumps_limited_counts_bytes() -> None:
    with pytest.raises(PayloadTooLargeError):
        dumps_limited({"s": "é" * 60}, 100)
    assert dumps_limited({"s": "e" * 10}, 100) == '{"s":"eeeeeeeeee"}'


def test_the_status_patches_fold_a_command_s_history() -> None:
    cid = uuid4()
    row = row_from_sent(
        {
            "domain": "payments",
            "command_id": str(cid),
            "command_type": "Charge",
            "max_attempts": 3,
            "msg_id": 1,
            "data": {},
        },
        correlation_id=cid,
        recorded_at=0,
    )
    assert row["status"] == CommandStatus.PENDING and row["attempts"] == 0
    history = [
        ("CommandRetryScheduled", {"attempt": 1, "error": {"message": "x"}, "delay_seconds": 1}),
        ("CommandCompleted", {"attempt": 2, "result": {"ok": True}}),
    ]
    for version, (event_type, data) in enumerate(history, start=2):
        patch = patch_for(event_type, data)
        assert patch is not None
        apply(row, patch, version=version, recorded_at=version)
    assert row["status"] == CommandStatus.COMPLETED
    assert row["attempts"] == 2 and row["result"] == {"ok": True} and row["version"] == 3
