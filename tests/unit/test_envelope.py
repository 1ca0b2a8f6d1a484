"""The wire format is pinned by golden files: a change to it shows here first.

Set UPDATE_GOLDEN=1 to rewrite the files after a deliberate change.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from uuid import UUID

from commandbus import Command
from commandbus.engine.commands.envelope import (
    decode_command,
    encode_command,
    message_from_sent,
    reply_for,
    trace_context,
)
from commandbus.models import ErrorInfo

GOLDEN = Path(__file__).parent.parent / "golden"
CID = UUID("00000000-0000-4000-8000-000000000001")
CORR = UUID("00000000-0000-4000-8000-000000000002")
SAGA = UUID("00000000-0000-4000-8000-000000000003")
TRACE = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}


def golden(name: str, value: object) -> None:
    path = GOLDEN / name
    text = json.dumps(value, indent=2, sort_keys=True) + "\n"
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(text)
    assert json.loads(path.read_text()) == value, f"{name} changed: {text}"


def test_a_command_message() -> None:
    message = encode_command(
        command_id=CID,
        command_type="Charge",
        correlation_id=CORR,
        causation_id=None,
        reply_to="payments_replies",
        saga_id=SAGA,
        batch_id=None,
        max_attempts=3,
        data_json='{"amount":40}',
    )
    golden("command_message.json", json.loads(message))
    cmd = decode_command("payments", json.loads(message), TRACE)
    assert (cmd.command_id, cmd.correlation_id, cmd.saga_id) == (CID, CORR, SAGA)
    assert cmd.data == {"amount": 40} and cmd.trace_context == TRACE


def test_an_operator_retry_rebuilds_the_same_message_from_the_sent_event() -> None:
    message = json.loads((GOLDEN / "command_message.json").read_text())
    sent = {**message, "domain": "payments", "delay_seconds": 0.0, "msg_id": 7}
    assert json.loads(message_from_sent(sent)) == message


def test_a_reply() -> None:
    cmd = Command(
        domain="payments",
        command_id=CID,
        command_type="Charge",
        data={},
        correlation_id=CORR,
        reply_to="payments_replies",
        saga_id=SAGA,
        trace_context=TRACE,
    )
    reply = reply_for(cmd, "FAILED", error=ErrorInfo(type="E", code="NO_FUNDS", message="no"))
    assert reply is not None and reply.queue == "payments_replies"
    assert reply.headers == TRACE
    golden("reply.json", reply.message)


def test_only_trace_headers_are_taken_from_a_message() -> None:
    assert trace_context({**TRACE, "x-other": "1", "tracestate": 5}) == TRACE
    assert trace_context(None) == {} and trace_context("x") == {}
