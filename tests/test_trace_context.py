"""The W3C trace context of the sender travels in the PGMQ headers and the event."""

from __future__ import annotations

from typing import Any

import psycopg
from opentelemetry.sdk.trace import TracerProvider

from commandbus import CommandBus, CommandRequest
from support import fetch

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


async def test_the_trace_context_travels_to_the_handler_the_reply_and_an_operator_retry(
    dsn: str, bus: CommandBus, conn: Conn
) -> None:
    from commandbus import (
        Command,
        CommandStatus,
        HandlerContext,
        HandlerRegistry,
        PermanentCommandError,
        Worker,
    )
    from support import FAST, wait_for

    reg = HandlerRegistry()
    seen: list[dict[str, str]] = []
    failed: set[Any] = set()

    @reg.handler("payments", "Charge")
    async def charge(cmd: Command, ctx: HandlerContext) -> str:
        seen.append(dict(cmd.trace_context))
        if cmd.data.get("fail") and cmd.command_id not in failed:
            failed.add(cmd.command_id)
            raise PermanentCommandError("to the TSQ")
        return "ok"

    tracer = TracerProvider().get_tracer("tests")
    with tracer.start_as_current_span("checkout") as span:
        ok = (await bus.send("payments", "Charge", {}, reply_to="replies")).unwrap()
        tsq = (await bus.send("payments", "Charge", {"fail": True}, reply_to="replies")).unwrap()
    trace_id = format(span.get_span_context().trace_id, "032x")

    async def status(cid: Any) -> Any:
        record = await bus.get_command("payments", cid)
        return None if record is None else record.status

    async with Worker(dsn, reg, domain="payments", config=FAST):

        async def settled() -> bool:
            return (
                await status(ok.command_id) is CommandStatus.COMPLETED
                and await status(tsq.command_id) is CommandStatus.IN_TROUBLESHOOTING_QUEUE
            )

        await wait_for(settled)
        await bus.troubleshooting.retry("payments", tsq.command_id)  # outside any span

        async def retried() -> bool:
            return await status(tsq.command_id) is CommandStatus.COMPLETED

        await wait_for(retried)
    assert len(seen) == 3
    assert all(s["traceparent"].split("-")[1] == trace_id for s in seen), seen
    replies = await fetch(conn, "SELECT headers, message->>'outcome' FROM pgmq.q_replies")
    # the success, the move to the troubleshooting queue, the retried success
    assert sorted(o for _h, o in replies) == ["SUCCESS", "SUCCESS", "TROUBLESHOOTING"]
    assert all(h["traceparent"].split("-")[1] == trace_id for h, _o in replies)
