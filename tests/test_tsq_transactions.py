"""Operator actions with ``conn=``: they join the caller's transaction and never commit behind it.

Four kinds of caller connection, as in test_caller_transactions: autocommit or
not, idle or already inside a transaction. Retry, cancel and complete are each
run on the caller's connection: the caller sees their effect at once, nobody else
does until the caller commits, and a rollback leaves nothing (no event, no status
change, no queue message, no reply). On an idle autocommit connection an action
is atomic on its own. A refused action undoes only its own work.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any
from uuid import UUID, uuid4

import psycopg
import pytest
from psycopg.pq import TransactionStatus

from commandbus import (
    Command,
    CommandBus,
    CommandFilter,
    CommandStatus,
    HandlerContext,
    HandlerRegistry,
    InvalidStateError,
    PermanentCommandError,
    ValidationError,
    Worker,
)
from support import FAST, scalar, wait_for

Conn = psycopg.AsyncConnection[Any]
Action = Callable[[CommandBus, UUID, Conn], Awaitable[Any]]

MODES = [
    pytest.param(True, False, id="autocommit-idle"),
    pytest.param(True, True, id="autocommit-in-transaction"),
    pytest.param(False, False, id="non-autocommit-idle"),
    pytest.param(False, True, id="non-autocommit-in-transaction"),
]


async def retry(bus: CommandBus, cid: UUID, conn: Conn) -> Any:
    return await bus.troubleshooting.retry("payments", cid, operator="ana", conn=conn)


async def cancel(bus: CommandBus, cid: UUID, conn: Conn) -> Any:
    return await bus.troubleshooting.cancel("payments", cid, reason="dup", conn=conn)


async def complete(bus: CommandBus, cid: UUID, conn: Conn) -> Any:
    return await bus.troubleshooting.complete("payments", cid, result={"by": "hand"}, conn=conn)


# action -> (status afterwards, queue messages added, replies added)
ACTIONS = [
    pytest.param(retry, CommandStatus.PENDING, 1, 0, id="retry"),
    pytest.param(cancel, CommandStatus.CANCELLED, 0, 1, id="cancel"),
    pytest.param(complete, CommandStatus.COMPLETED, 0, 1, id="complete"),
]


def registry() -> HandlerRegistry:
    reg = HandlerRegistry()

    @reg.handler("payments", "Charge")
    async def charge(cmd: Command, ctx: HandlerContext) -> Any:
        raise PermanentCommandError(f"declined {cmd.data['n']}", code="DECLINED")

    return reg


@pytest.fixture
async def in_tsq(dsn: str, bus: CommandBus, conn: Conn) -> list[UUID]:
    """Two commands waiting in the troubleshooting queue (with a reply queue)."""
    await conn.execute("CREATE TABLE public.orders (id uuid PRIMARY KEY)")
    sent = [
        (await bus.send("payments", "Charge", {"n": n}, reply_to="replies")).unwrap().command_id
        for n in range(2)
    ]
    async with Worker(dsn, registry(), domain="payments", config=FAST):

        async def both_in_tsq() -> bool:
            return len((await bus.troubleshooting.list()).items) == 2

        await wait_for(both_in_tsq)
    return sent


async def seen(observer: Conn, cid: UUID) -> dict[str, Any]:
    """What another session sees of the command and of what an action writes."""
    return {
        "status": await scalar(
            observer, "SELECT status FROM commandbus.command WHERE command_id = %s", cid
        ),
        "events": await scalar(observer, "SELECT count(*) FROM commandbus.event"),
        "messages": await scalar(observer, "SELECT count(*) FROM pgmq.q_payments"),
        "replies": await scalar(observer, "SELECT count(*) FROM pgmq.q_replies"),
        "orders": await scalar(observer, "SELECT count(*) FROM public.orders"),
    }


@asynccontextmanager
async def caller(dsn: str, autocommit: bool) -> AsyncIterator[Conn]:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=autocommit) as c:
        yield c


class CallerRollback(Exception):
    pass


async def in_caller(
    c: Conn, work: Callable[[], Awaitable[None]], *, in_tx: bool, commit: bool
) -> None:
    """Run ``work`` in the caller's transaction (with an order of its own), then end it."""
    order = (uuid4(),)
    if c.autocommit:
        try:
            async with c.transaction():
                await c.execute("INSERT INTO public.orders VALUES (%s)", order)
                await work()
                if not commit:
                    raise CallerRollback
        except CallerRollback:
            pass
        return
    if in_tx:
        await c.execute("INSERT INTO public.orders VALUES (%s)", order)
    await work()
    assert c.info.transaction_status is TransactionStatus.INTRANS  # left for the caller
    await (c.commit() if commit else c.rollback())


@pytest.mark.parametrize(("autocommit", "in_tx"), MODES)
@pytest.mark.parametrize(("action", "status", "messages", "replies"), ACTIONS)
async def test_an_operator_action_is_the_callers_to_commit_or_roll_back(
    bus: CommandBus,
    dsn: str,
    conn: Conn,
    in_tsq: list[UUID],
    action: Action,
    status: CommandStatus,
    messages: int,
    replies: int,
    autocommit: bool,
    in_tx: bool,
) -> None:
    cid = in_tsq[0]
    before = await seen(conn, cid)
    assert before["status"] == "IN_TROUBLESHOOTING_QUEUE"
    expected = {
        "status": status.value,
        "events": before["events"] + 1,
        "messages": before["messages"] + messages,
        "replies": before["replies"] + replies,
    }

    async with caller(dsn, autocommit) as c:
        if autocommit and not in_tx:
            await action(bus, cid, c)  # atomic on its own, committed when it returns
            assert c.info.transaction_status is TransactionStatus.IDLE
            assert await seen(conn, cid) == {**expected, "orders": 0}
            return

        async def act() -> None:
            await action(bus, cid, c)
            # the caller sees the action at once; nobody else does yet
            record = await bus.get_command("payments", cid, conn=c)
            assert record is not None and record.status is status
            listed = await bus.troubleshooting.list(conn=c)
            assert [r.command_id for r in listed.items] == [in_tsq[1]]
            assert await seen(conn, cid) == before

        await in_caller(c, act, in_tx=in_tx, commit=False)
        assert await seen(conn, cid) == before  # the rollback left nothing

        await in_caller(c, act, in_tx=in_tx, commit=True)
        assert await seen(conn, cid) == {**expected, "orders": 1 if in_tx else 0}


@pytest.mark.parametrize(("autocommit", "in_tx"), MODES)
async def test_a_refused_action_undoes_only_its_own_work(
    bus: CommandBus, dsn: str, conn: Conn, in_tsq: list[UUID], autocommit: bool, in_tx: bool
) -> None:
    pending = (await bus.send("payments", "Charge", {"n": 9})).unwrap().command_id
    done = in_tsq[0]
    await bus.troubleshooting.cancel("payments", done)
    before = await seen(conn, in_tsq[1])

    async def work() -> None:
        with pytest.raises(InvalidStateError, match="PENDING"):
            await bus.troubleshooting.retry("payments", pending, conn=c)
        with pytest.raises(InvalidStateError, match="CANCELLED"):
            await bus.troubleshooting.complete("payments", done, result=1, conn=c)
        # the caller's transaction goes on, with the caller's own work in it
        await bus.troubleshooting.cancel("payments", in_tsq[1], conn=c)
        await c.execute("INSERT INTO public.orders VALUES (%s)", (uuid4(),))

    async with caller(dsn, autocommit) as c:
        if autocommit and not in_tx:
            await work()
        else:
            await in_caller(c, work, in_tx=in_tx, commit=True)
    after = await seen(conn, in_tsq[1])
    assert after["status"] == "CANCELLED"
    assert after["events"] == before["events"] + 1  # only the cancel
    assert after["replies"] == before["replies"] + 1
    assert after["orders"] == (2 if in_tx else 1)  # the caller's own work is all there


async def test_list_commands_filters_on_the_last_error(
    bus: CommandBus, conn: Conn, in_tsq: list[UUID]
) -> None:
    page = await bus.list_commands(CommandFilter(error_contains="DECLINED 1"))
    assert [r.command_id for r in page.items] == [in_tsq[1]]
    page = await bus.list_commands(CommandFilter(status="IN_TROUBLESHOOTING_QUEUE"))
    assert [r.command_id for r in page.items] == in_tsq
    tsq = await bus.troubleshooting.list(
        CommandFilter(status=CommandStatus.IN_TROUBLESHOOTING_QUEUE, error_contains="declined 0")
    )
    assert [r.command_id for r in tsq.items] == [in_tsq[0]]


async def test_a_failed_caller_transaction_is_refused_before_any_sql(
    bus: CommandBus, dsn: str, conn: Conn, in_tsq: list[UUID]
) -> None:
    async with caller(dsn, autocommit=False) as failed:
        with pytest.raises(psycopg.errors.DivisionByZero):
            await failed.execute("SELECT 1/0")
        tsq = bus.troubleshooting
        calls: list[Callable[[], Awaitable[Any]]] = [
            lambda: tsq.retry("payments", in_tsq[0], conn=failed),
            lambda: tsq.cancel("payments", in_tsq[0], conn=failed),
            lambda: tsq.complete("payments", in_tsq[0], conn=failed),
            lambda: tsq.list(conn=failed),
        ]
        for call in calls:
            with pytest.raises(ValidationError, match="conn is in a failed transaction"):
                await call()


# -- the other methods that gained conn= ------------------------------------------------------


@pytest.mark.parametrize("commit", [True, False], ids=["commit", "rollback"])
async def test_create_domain_in_the_callers_transaction(
    bus: CommandBus, dsn: str, conn: Conn, commit: bool
) -> None:
    exists = "SELECT count(*) FROM pgmq.meta WHERE queue_name = 'audit'"
    async with caller(dsn, autocommit=False) as c:
        await bus.create_domain("audit", conn=c)
        assert await scalar(c, exists) == 1
        assert await scalar(conn, exists) == 0  # not committed behind the caller
        await (c.commit() if commit else c.rollback())
    assert await scalar(conn, exists) == (1 if commit else 0)
    # a rolled-back queue is not taken as existing: sending creates it again
    assert (await bus.send("audit", "Note", {})).ok
    assert await scalar(conn, exists) == 1


async def test_verify_and_rebuild_take_a_connection_not_in_a_transaction(
    bus: CommandBus, dsn: str
) -> None:
    await bus.send("payments", "Charge", {"n": 1})
    async with caller(dsn, autocommit=False) as c:
        assert (await bus.verify_projection(conn=c)).ok
        assert await bus.rebuild_projection(conn=c) == 1
        assert c.info.transaction_status is TransactionStatus.IDLE
        await c.execute("SELECT 1")  # now inside the caller's transaction
        with pytest.raises(ValidationError, match="own transaction"):
            await bus.verify_projection(conn=c)
        with pytest.raises(ValidationError, match="own transaction"):
            await bus.rebuild_projection(conn=c)
