"""``conn=``: work done on the caller's connection is the caller's to commit or roll back.

Four kinds of caller connection: autocommit or not, idle or inside a transaction.
On an autocommit connection outside a transaction an operation is atomic on its own
(and committed when it returns); in every other case nothing is committed behind
the caller: the caller's rollback leaves nothing (events, streams, queue messages,
status rows, batches) and the caller's commit keeps everything.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any
from uuid import uuid4

import psycopg
import pytest
from psycopg.pq import TransactionStatus

from commandbus import (
    CommandBus,
    CommandFilter,
    CommandRequest,
    ConcurrencyError,
    Failure,
    NewEvent,
    StreamAppend,
    Success,
)
from support import STREAMS, scalar

Conn = psycopg.AsyncConnection[Any]
Op = Callable[[CommandBus, Conn], Awaitable[None]]

NOTHING = {"streams": 0, "events": 0, "commands": 0, "messages": 0, "batches": 0, "orders": 0}


async def written(conn: Conn) -> dict[str, int]:
    """Everything a send or an append can write, as another session sees it."""
    return {
        "streams": await scalar(conn, STREAMS),
        "events": await scalar(conn, "SELECT count(*) FROM commandbus.event"),
        "commands": await scalar(conn, "SELECT count(*) FROM commandbus.command"),
        "messages": await scalar(
            conn,
            "SELECT (SELECT count(*) FROM pgmq.q_payments)"
            " + (SELECT count(*) FROM pgmq.q_shipping)",
        ),
        "batches": await scalar(conn, "SELECT count(*) FROM commandbus.batch"),
        "orders": await scalar(conn, "SELECT count(*) FROM public.orders"),
    }


async def send(bus: CommandBus, conn: Conn) -> None:
    r = await bus.send("payments", "Charge", {"n": 1}, conn=conn)
    assert isinstance(r, Success)
    # reads on the caller's connection see the caller's uncommitted work
    record = await bus.get_command("payments", r.value.command_id, conn=conn)
    assert record is not None
    history = await bus.command_history("payments", r.value.command_id, conn=conn)
    assert [e.event_type for e in history] == ["CommandSent"]
    assert len((await bus.list_commands(CommandFilter(domain="payments"), conn=conn)).items) == 1


async def send_batch(bus: CommandBus, conn: Conn) -> None:
    r = await bus.send_batch(
        [
            CommandRequest(domain="payments", command_type="Charge"),
            CommandRequest(domain="shipping", command_type="Ship"),
        ],
        conn=conn,
    )
    assert isinstance(r, Success)
    batch = await bus.get_batch(r.value.batch_id, conn=conn)
    assert batch is not None and batch.total == 2


async def append(bus: CommandBus, conn: Conn) -> None:
    await bus.events.append(
        [
            StreamAppend(
                stream_id="order:1",
                stream_type="order",
                expected_version=0,
                events=[
                    NewEvent(event_type="Created", data={}),
                    NewEvent(event_type="Paid", data={}),
                ],
            ),
            StreamAppend(
                stream_id="order:2",
                stream_type="order",
                expected_version=0,
                events=[NewEvent(event_type="Created", data={})],
            ),
        ],
        conn=conn,
    )
    assert await bus.events.stream_version("order:1", conn=conn) == 2
    assert len(await bus.events.read_stream("order:1", conn=conn)) == 2
    assert len(await bus.events.read_all(conn=conn)) == 3


OPS = [
    pytest.param(send, id="send"),
    pytest.param(send_batch, id="send_batch"),
    pytest.param(append, id="events.append"),
]

# (autocommit, already inside a transaction)
MODES = [
    pytest.param(True, False, id="autocommit-idle"),
    pytest.param(True, True, id="autocommit-in-transaction"),
    pytest.param(False, False, id="non-autocommit-idle"),
    pytest.param(False, True, id="non-autocommit-in-transaction"),
]


@pytest.fixture
async def observer(conn: Conn, bus: CommandBus) -> Conn:
    """Another session (autocommit): sees only what was committed."""
    await conn.execute("CREATE TABLE public.orders (id uuid PRIMARY KEY)")
    await bus.create_domain("payments")
    await bus.create_domain("shipping")
    return conn


@asynccontextmanager
async def caller(dsn: str, autocommit: bool) -> AsyncIterator[Conn]:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=autocommit) as c:
        yield c


class CallerRollback(Exception):
    pass


async def run_in_caller(c: Conn, op: Op, bus: CommandBus, *, in_tx: bool, commit: bool) -> None:
    """Run ``op`` as the caller would, then commit or roll back the caller's work."""
    if c.autocommit:
        if not in_tx:
            await op(bus, c)
            return
        try:
            async with c.transaction():
                await c.execute("INSERT INTO public.orders VALUES (%s)", (uuid4(),))
                await op(bus, c)
                if not commit:
                    raise CallerRollback
        except CallerRollback:
            pass
        return
    if in_tx:
        await c.execute("INSERT INTO public.orders VALUES (%s)", (uuid4(),))
        assert c.info.transaction_status is TransactionStatus.INTRANS
    else:
        assert c.info.transaction_status is TransactionStatus.IDLE
    await op(bus, c)
    if commit:
        await c.commit()
    else:
        await c.rollback()


@pytest.mark.parametrize(("autocommit", "in_tx"), MODES)
@pytest.mark.parametrize("op", OPS)
async def test_nothing_commits_behind_the_caller(
    bus: CommandBus, dsn: str, observer: Conn, op: Op, autocommit: bool, in_tx: bool
) -> None:
    async with caller(dsn, autocommit) as c:
        if autocommit and not in_tx:
            # atomic on its own, committed when it returns, nothing left open
            await op(bus, c)
            assert c.info.transaction_status is TransactionStatus.IDLE
            assert (await written(observer))["events"] == (1 if op is send else 3)
            return

        if not autocommit:
            # nothing is visible to anyone else before the caller commits
            if in_tx:
                await c.execute("INSERT INTO public.orders VALUES (%s)", (uuid4(),))
            await op(bus, c)
            assert c.info.transaction_status is TransactionStatus.INTRANS
            assert await written(observer) == NOTHING
            await c.rollback()
        else:
            await run_in_caller(c, op, bus, in_tx=in_tx, commit=False)
        assert await written(observer) == NOTHING

        await run_in_caller(c, op, bus, in_tx=in_tx, commit=True)
        after = await written(observer)
        assert after["events"] == (1 if op is send else 3)
        assert after["orders"] == (1 if in_tx else 0)


async def _failing_batch(bus: CommandBus, conn: Conn, existing: Any) -> None:
    r = await bus.send_batch(
        [
            CommandRequest(domain="payments", command_type="Charge"),
            CommandRequest(domain="payments", command_type="Charge", command_id=existing),
        ],
        conn=conn,
    )
    assert isinstance(r, Failure) and r.code == "DUPLICATE_COMMAND"


async def _conflicting_append(bus: CommandBus, conn: Conn) -> None:
    with pytest.raises(ConcurrencyError):
        await bus.events.append(
            [
                StreamAppend(
                    stream_id="fresh",
                    stream_type="order",
                    expected_version=0,
                    events=[NewEvent(event_type="Created", data={})],
                ),
                StreamAppend(
                    stream_id="taken",
                    stream_type="order",
                    expected_version=0,
                    events=[NewEvent(event_type="Created", data={})],
                ),
            ],
            conn=conn,
        )


@pytest.mark.parametrize(("autocommit", "in_tx"), MODES)
async def test_a_refused_operation_undoes_only_its_own_work(
    bus: CommandBus, dsn: str, observer: Conn, autocommit: bool, in_tx: bool
) -> None:
    existing = (await bus.send("payments", "Charge", {})).unwrap().command_id
    await bus.events.append(
        [
            StreamAppend(
                stream_id="taken",
                stream_type="order",
                expected_version=0,
                events=[NewEvent(event_type="Created", data={})],
            )
        ]
    )
    before = await written(observer)
    order = uuid4()

    async def refused(bus: CommandBus, c: Conn) -> None:
        await _failing_batch(bus, c, existing)
        await _conflicting_append(bus, c)
        # the caller's transaction is still usable and still holds the caller's work
        if in_tx:
            assert await scalar(c, "SELECT count(*) FROM public.orders") == 1
        await c.execute("INSERT INTO public.orders VALUES (%s)", (order,))

    async with caller(dsn, autocommit) as c:
        await run_in_caller(c, refused, bus, in_tx=in_tx, commit=True)
    after = await written(observer)
    assert after == {**before, "orders": 2 if in_tx else 1}


async def test_a_caller_connection_with_dict_rows_works_and_keeps_its_row_factory(
    dsn: str, bus: CommandBus
) -> None:
    """The library reads its own rows as tuples; the caller's rows stay dicts."""
    from psycopg.rows import dict_row

    from commandbus import CommandRequest

    async with await psycopg.AsyncConnection.connect(dsn, row_factory=dict_row) as caller:
        sent = (await bus.send("payments", "Charge", {}, conn=caller)).unwrap()
        batch = (
            await bus.send_batch(
                [CommandRequest(domain="payments", command_type="Charge")], conn=caller
            )
        ).unwrap()
        await caller.commit()
        cur = await caller.execute("SELECT 1 AS one")
        assert await cur.fetchone() == {"one": 1}
    record = await bus.get_command("payments", sent.command_id)
    assert record is not None and len(batch.command_ids) == 1


# -- a domain that has no queue yet ----------------------------------------------------------


async def _queue_exists(observer: Conn, queue: str) -> bool:
    cur = await observer.execute(
        "SELECT count(*) FROM commandbus.queue WHERE queue_name = %s", (queue,)
    )
    row = await cur.fetchone()
    assert row is not None
    return bool(row[0])


async def _send_to(bus: CommandBus, conn: Conn, domain: str, *, batch: bool) -> None:
    if batch:
        r = await bus.send_batch(
            [CommandRequest(domain=domain, command_type="T", data={"i": i}) for i in range(2)],
            conn=conn,
        )
    else:
        r = await bus.send(domain, "T", {"i": 0}, reply_to=f"{domain}_replies", conn=conn)
    assert r.ok, r


@pytest.mark.parametrize("batch", [False, True], ids=["send", "send_batch"])
@pytest.mark.parametrize(("autocommit", "in_tx"), MODES)
async def test_a_domain_created_in_the_caller_s_transaction_takes_its_sends(
    bus: CommandBus, dsn: str, observer: Conn, autocommit: bool, in_tx: bool, batch: bool
) -> None:
    # (before: after create_domain(conn=) the send waited forever for the queue's
    # creation lock, which the caller's transaction held)
    domain = f"fresh_{'b' if batch else 's'}_{int(autocommit)}{int(in_tx)}"
    async with caller(dsn, autocommit) as c:
        if autocommit and not in_tx:
            await asyncio.wait_for(_send_to(bus, c, domain, batch=batch), timeout=10)
            assert await _queue_exists(observer, domain)
            return

        async def work(conn: Conn) -> None:
            await bus.create_domain(domain, conn=conn)  # the caller's transaction holds it
            await _send_to(bus, conn, domain, batch=batch)

        async def op(_bus: CommandBus, conn: Conn) -> None:
            await asyncio.wait_for(work(conn), timeout=10)

        await run_in_caller(c, op, bus, in_tx=in_tx, commit=False)
        assert not await _queue_exists(observer, domain)  # the caller's, rolled back
        assert await written(observer) == NOTHING
        if not batch:
            # a queue the send needed is created on its own and committed (empty)
            assert await _queue_exists(observer, f"{domain}_replies")
        await run_in_caller(c, op, bus, in_tx=in_tx, commit=True)
        assert await _queue_exists(observer, domain)
        assert (await written(observer))["events"] == (1 if not batch else 3)  # + the batch
    # the committed queue serves the bus's own connections too
    assert (await bus.send(domain, "T", {"i": 9})).ok


async def test_new_domains_in_open_caller_transactions_never_block_other_senders(
    bus: CommandBus, dsn: str, observer: Conn
) -> None:
    # (the queue is created on a connection of the bus's own and committed at once:
    # created in a caller's transaction, its creation lock was held until that ended,
    # so a send outside it waited, two REPEATABLE READ callers failed to serialize,
    # and two callers creating two domains in opposite orders deadlocked)
    async with caller(dsn, False) as a, caller(dsn, False) as b:
        for c in (a, b):
            await c.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            await c.execute("INSERT INTO public.orders VALUES (%s)", (uuid4(),))

        async def both() -> None:
            assert (await bus.send("new_x", "T", {}, conn=a)).ok
            assert (await bus.send("new_y", "T", {}, conn=b)).ok
            assert (await bus.send("new_x", "T", {}, conn=b)).ok  # the other's new domain
            assert (await bus.send("new_y", "T", {}, conn=a)).ok
            assert (await bus.send("new_x", "T", {})).ok  # and no caller at all

        await asyncio.wait_for(both(), timeout=10)
        await a.commit()
        await b.rollback()
    assert await _queue_exists(observer, "new_x") and await _queue_exists(observer, "new_y")
    assert (await written(observer))["events"] == 3  # a's two and the one of its own


async def test_two_callers_creating_domains_in_opposite_orders_get_a_clear_error(
    bus: CommandBus, dsn: str, observer: Conn, monkeypatch: pytest.MonkeyPatch
) -> None:
    # each caller's transaction holds the creation of its own new domain; each then
    # sends to the other's. The bus's own connections wait on locks held by callers
    # that wait on the bus: no cycle PostgreSQL can see. It waited forever (found by
    # an adversarial review); the wait is bounded now, and says why.
    from commandbus.engine.commands import bus as bus_module

    monkeypatch.setattr(bus_module, "QUEUE_CREATION_WAIT_MS", 300)
    async with caller(dsn, False) as a, caller(dsn, False) as b:
        await bus.create_domain("mine_a", conn=a)
        await bus.create_domain("mine_b", conn=b)
        results = await asyncio.wait_for(
            asyncio.gather(
                bus.send("mine_b", "T", {}, conn=a),
                bus.send("mine_a", "T", {}, conn=b),
                return_exceptions=True,
            ),
            timeout=10,
        )
        for r in results:
            assert isinstance(r, ConcurrencyError), r
            assert "is being created by a transaction that did not end in 0.3 s" in str(r)
        await a.rollback()
        await b.commit()
    assert await _queue_exists(observer, "mine_b") and not await _queue_exists(observer, "mine_a")
    assert (await bus.send("mine_a", "T", {})).ok  # created now, nothing in the way
