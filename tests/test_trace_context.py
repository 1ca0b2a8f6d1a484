"""The W3C trace context of the sender travels in the PGMQ headers and the event."""

from __future__ import annotations

from typing import Any

import psycopg
from opentelemetry.sdk.trace import TracerProvider

from commandbus import CommandBus, CommandRequest
from engine_fixtures import fetch

Conn = psycopg.AsyncConnection[Any]


async def test_send_carries_the_active_trace_context(bus: CommandBus, conn: Conn) -> None:
    tracer = TracerProvider().get_tracer("tests")
    with tracer.start_as_current_span("checkout") as span:
        one = (await bus.send("payments", "Charge", {})).unwrap()
        batch = (
            await bus.send_batch([CommandRequest(domain="payments", command_type="Charge")])
        ).unwrap()
    trace_id = format(span.get_span_context().trace_id, "032x")
    headers = await fetch(conn, "SELECT msg_id, headers FROM pgmq.q_payments ORDER BY msg_id")
    assert [h["traceparent"].split("-")[1] for _m, h in headers] == [trace_id, trace_id]
    for cid in (one.command_id, batch.command_ids[0]):
        sent = (await bus.command_history("payments", cid))[0]
        assert sent.metadata["trace"]["traceparent"].split("-")[1] == trace_id

    untraced = (await bus.send("payments", "Charge", {})).unwrap()
    rows = await fetch(
        conn, "SELECT headers FROM pgmq.q_payments WHERE msg_id = %s", untraced.msg_id
    )
    assert rows == [({},)]
