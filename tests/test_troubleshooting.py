"""Operator actions on the troubleshooting queue."""

from __future__ import annotations

from typing import Any
from uuid import uuid4

import psycopg
import pytest

from commandbus import (
    Command,
    CommandBus,
    CommandFilter,
    CommandNotFoundError,
    CommandStatus,
    HandlerContext,
    HandlerRegistry,
    InvalidStateError,
    PermanentCommandError,
    Worker,
)
from support import FAST, fetch, wait_for

Conn = psycopg.AsyncConnection[Any]


def registry(outcomes: dict[str, Any]) -> HandlerRegistry:
    reg = HandlerRegistry()

    @reg.handler("payments", "Charge")
    async def charge(cmd: Command, ctx: HandlerContext) -> Any:
        if outcomes.get("fail", True):
            raise PermanentCommandError(f"declined {cmd.data['n']}", code="DECLINED")
        return {"ok": cmd.data["n"]}

    @reg.handler("payments", "Refund")
    async def refund(cmd: Command, ctx: HandlerContext) -> Any:
        raise PermanentCommandError("refunds are off", code="REFUNDS_OFF")

    return reg


async def _to_tsq(dsn: str, bus: CommandBus, n: int, **send: Any) -> list[Any]:
    sent = [(await bus.send("payments", "Charge", {"n": i}, **send)).value for i in range(n)]
    sent.append((await bus.send("payments", "Refund", {"n": -1}, **send)).value)
    async with Worker(dsn, registry({}), domain="payments", config=FAST):

        async def all_in_tsq() -> bool:
            return len((await bus.troubleshooting.list()).items) == n + 1

        await wait_for(all_in_tsq)
    return sent


async def test_list_filters_by_type_and_error(dsn: str, bus: CommandBus) -> None:
    await _to_tsq(dsn, bus, 3)
    assert len((await bus.troubleshooting.list(CommandFilter(domain="payments"))).items) == 4
    assert len((await bus.troubleshooting.list(CommandFilter(command_type="Refund"))).items) == 1
    assert (
        len((await bus.troubleshooting.list(CommandFilter(error_contains="declined 1"))).items) == 1
    )
    # the message, not the code: "REFUNDS_OFF" is the code of "refunds are off"
    assert (
        len((await bus.troubleshooting.list(CommandFilter(error_contains="Refunds ARE"))).items)
        == 1
    )
    assert (await bus.troubleshooting.list(CommandFilter(error_contains="REFUNDS_OFF"))).items == ()
    assert (await bus.troubleshooting.list(CommandFilter(domain="shipping"))).items == ()
    page = await bus.troubleshooting.list(limit=2)
    assert len(page.items) == 2 and page.next_cursor is not None


async def test_retry_requeues_with_fresh_attempts(dsn: str, bus: CommandBus, conn: Conn) -> None:
    sent = await _to_tsq(dsn, bus, 1, max_attempts=2)
    target = sent[0]
    new_msg = await bus.troubleshooting.retry("payments", target.command_id, operator="ana")
    assert new_msg != target.msg_id
    record = await bus.get_command("payments", target.command_id)
    assert record is not None
    assert record.status is CommandStatus.PENDING and record.attempts == 0
    assert record.msg_id == new_msg
    # the re-queued message is the original command
    msg = (await fetch(conn, "SELECT message FROM pgmq.q_payments WHERE msg_id = %s", new_msg))[0][
        0
    ]
    assert msg["command_id"] == str(target.command_id) and msg["data"] == {"n": 0}
    assert msg["max_attempts"] == 2

    async with Worker(dsn, registry({"fail": False}), domain="payments", config=FAST):

        async def done() -> bool:
            r = await bus.get_command("payments", target.command_id)
            return r is not None and r.status is CommandStatus.COMPLETED

        await wait_for(done)
    history = await bus.command_history("payments", target.command_id)
    assert [e.event_type for e in history] == [
        "CommandSent",
        "CommandMovedToTroubleshootingQueue",
        "CommandRetriedByOperator",
        "CommandCompleted",
    ]
    assert history[2].data["operator"] == "ana"
    assert history[3].data["attempt"] == 1  # fresh attempts


async def test_cancel_and_complete(dsn: str, bus: CommandBus, conn: Conn) -> None:
    sent = await _to_tsq(dsn, bus, 2, reply_to="replies")
    a, b = sent[0], sent[1]
    await bus.troubleshooting.cancel("payments", a.command_id, reason="duplicate order")
    await bus.troubleshooting.complete("payments", b.command_id, result={"manual": True})
    ra = await bus.get_command("payments", a.command_id)
    rb = await bus.get_command("payments", b.command_id)
    assert ra is not None and ra.status is CommandStatus.CANCELLED
    assert rb is not None and rb.status is CommandStatus.COMPLETED
    assert rb.result == {"manual": True}
    replies = {
        m["command_id"]: m for (m,) in await fetch(conn, "SELECT message FROM pgmq.q_replies")
    }
    assert replies[str(a.command_id)]["outcome"] == "CANCELLED"
    assert replies[str(b.command_id)]["outcome"] == "SUCCESS"
    assert replies[str(b.command_id)]["result"] == {"manual": True}
    assert len((await bus.troubleshooting.list()).items) == 1  # the Refund


async def test_actions_are_refused_outside_the_tsq(dsn: str, bus: CommandBus) -> None:
    sent = await _to_tsq(dsn, bus, 1)
    pending = (await bus.send("payments", "Charge", {"n": 1})).value
    with pytest.raises(InvalidStateError, match="PENDING, not in the troubleshooting queue"):
        await bus.troubleshooting.retry("payments", pending.command_id)
    with pytest.raises(InvalidStateError):
        await bus.troubleshooting.cancel("payments", pending.command_id)
    with pytest.raises(InvalidStateError):
        await bus.troubleshooting.complete("payments", pending.command_id, result=1)
    with pytest.raises(CommandNotFoundError):
        await bus.troubleshooting.retry("payments", uuid4())
    await bus.troubleshooting.cancel("payments", sent[0].command_id)
    with pytest.raises(InvalidStateError, match="CANCELLED"):
        await bus.troubleshooting.cancel("payments", sent[0].command_id)
    from commandbus import PayloadError

    with pytest.raises(PayloadError):
        await bus.troubleshooting.complete("payments", sent[1].command_id, result=object())
    record = await bus.get_command("payments", sent[1].command_id)
    assert record is not None and record.status is CommandStatus.IN_TROUBLESHOOTING_QUEUE
