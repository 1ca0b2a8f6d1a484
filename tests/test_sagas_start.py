"""Starting sagas: idempotent (by key or id, also under concurrency and within one
call), many in one call, and inside the caller's transaction (never committing
behind it: a rollback leaves nothing)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from uuid import uuid4

import psycopg
import pytest
from psycopg.pq import TransactionStatus

from commandbus import CommandBus, Saga, SagaClient, SagaStart, SagaStatus, Step
from saga_apps import ORDER, assert_consistent, final, running
from support import scalar

Conn = psycopg.AsyncConnection[Any]

NOTHING = {
    "sagas": 0,
    "saga_events": 0,
    "streams": 0,
    "commands": 0,
    "messages": 0,
    "requests": 0,
    "orders": 0,
}


async def written(conn: Conn) -> dict[str, int]:
    """Everything a start or an operator's request writes, as another session sees it."""
    return {
        "sagas": await scalar(conn, "SELECT count(*) FROM commandbus.saga"),
        "saga_events": await scalar(
            conn, "SELECT count(*) FROM commandbus.event WHERE stream_id LIKE 'saga:%%'"
        ),
        "streams": await scalar(
            conn, "SELECT count(*) FROM commandbus.stream WHERE stream_id LIKE 'saga:%%'"
        ),
        "commands": await scalar(conn, "SELECT count(*) FROM commandbus.command"),
        "messages": await scalar(conn, "SELECT count(*) FROM pgmq.q_inventory"),
        "requests": await scalar(conn, "SELECT count(*) FROM pgmq.q_commandbus_sagas"),
        "orders": await scalar(conn, "SELECT count(*) FROM public.orders"),
    }


@pytest.fixture
async def observer(conn: Conn, bus: CommandBus) -> Conn:
    """Another session (autocommit): sees only what was committed."""
    await conn.execute("CREATE TABLE public.orders (id uuid PRIMARY KEY)")
    await bus.create_queues(["inventory", "payments", "shipping", "commandbus_sagas"])
    return conn


@asynccontextmanager
async def caller(dsn: str, autocommit: bool) -> AsyncIterator[Conn]:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=autocommit) as c:
        yield c


class CallerRollback(Exception):
    pass


MODES = [
    pytest.param(True, True, id="autocommit-in-transaction"),
    pytest.param(False, False, id="non-autocommit-idle"),
    pytest.param(False, True, id="non-autocommit-in-transaction"),
]


async def start_one(sagas: SagaClient, c: Conn) -> None:
    await sagas.start_saga(ORDER, {"order_id": "tx"}, idempotency_key="k-tx", conn=c)
    # reads on the caller's connection see the caller's uncommitted saga
    page = await sagas.list_sagas(conn=c)
    assert len(page.items) == 1
    assert len(await sagas.saga_history(page.items[0].saga_id, conn=c)) == 2


async def start_many(sagas: SagaClient, c: Conn) -> None:
    started = await sagas.start_sagas(ORDER, [{"order_id": "a"}, {"order_id": "b"}], conn=c)
    assert [s.created for s in started] == [True, True]


@pytest.mark.parametrize(("autocommit", "in_tx"), MODES)
@pytest.mark.parametrize("op", [start_one, start_many])
async def test_a_start_in_a_rolled_back_caller_transaction_leaves_nothing(
    bus: CommandBus, dsn: str, observer: Conn, autocommit: bool, in_tx: bool, op: Any
) -> None:
    sagas = SagaClient(bus)
    n = 1 if op is start_one else 2
    async with caller(dsn, autocommit) as c:
        for commit in (False, True):
            if autocommit:
                try:
                    async with c.transaction():
                        await c.execute("INSERT INTO public.orders VALUES (%s)", (uuid4(),))
                        await op(sagas, c)
                        assert await written(observer) == NOTHING
                        if not commit:
                            raise CallerRollback
                except CallerRollback:
                    pass
            else:
                if in_tx:
                    await c.execute("INSERT INTO public.orders VALUES (%s)", (uuid4(),))
                assert c.info.transaction_status is (
                    TransactionStatus.INTRANS if in_tx else TransactionStatus.IDLE
                )
                await op(sagas, c)
                # never committed behind the caller: the transaction is still open
                assert c.info.transaction_status is TransactionStatus.INTRANS
                assert await written(observer) == NOTHING
                await (c.commit() if commit else c.rollback())
            if not commit:
                assert await written(observer) == NOTHING
    after = await written(observer)
    assert after == {
        "sagas": n,
        "saga_events": 2 * n,
        "streams": n,
        "commands": n,
        "messages": n,
        "requests": 0,
        "orders": 1 if (autocommit or in_tx) else 0,
    }


async def test_a_start_on_an_idle_autocommit_connection_is_atomic_on_its_own(
    bus: CommandBus, dsn: str, observer: Conn
) -> None:
    async with caller(dsn, True) as c:
        await SagaClient(bus).start_saga(ORDER, {"order_id": "ac"}, conn=c)
        assert c.info.transaction_status is TransactionStatus.IDLE
    assert (await written(observer))["sagas"] == 1


async def test_the_same_key_after_a_rolled_back_start_starts_afresh(
    bus: CommandBus, dsn: str, observer: Conn
) -> None:
    sagas = SagaClient(bus)
    async with caller(dsn, False) as c:
        first = await sagas.start_saga(ORDER, {"order_id": "x"}, idempotency_key="k", conn=c)
        await c.rollback()
    again = await sagas.start_saga(ORDER, {"order_id": "x"}, idempotency_key="k")
    assert first.created and again.created and first.saga_id == again.saga_id
    assert (await written(observer))["sagas"] == 1


@pytest.mark.parametrize(("autocommit", "in_tx"), MODES)
async def test_an_operator_request_in_a_rolled_back_transaction_leaves_nothing(
    bus: CommandBus, dsn: str, observer: Conn, autocommit: bool, in_tx: bool
) -> None:
    sagas = SagaClient(bus)
    started = await sagas.start_saga(ORDER, {"order_id": "op"})
    before = await written(observer)
    async with caller(dsn, autocommit) as c:
        if autocommit:
            with pytest.raises(CallerRollback):
                async with c.transaction():
                    await sagas.pause_saga(started.saga_id, conn=c)
                    await sagas.cancel_saga(started.saga_id, conn=c)
                    raise CallerRollback
        else:
            if in_tx:
                await c.execute("SELECT 1")
            await sagas.pause_saga(started.saga_id, conn=c)
            await sagas.cancel_saga(started.saga_id, conn=c)
            assert c.info.transaction_status is TransactionStatus.INTRANS
            assert await written(observer) == before
            await c.rollback()
    assert await written(observer) == before


async def test_a_start_committed_by_the_caller_runs_to_the_end(dsn: str) -> None:
    async with running(dsn) as h, caller(dsn, False) as c:
        started = await h.sagas.start_saga(ORDER, {"order_id": "cm"}, conn=c)
        await c.commit()
        rec = await final(h, started.saga_id)
        await assert_consistent(h)
    assert rec.status is SagaStatus.COMPLETED
    assert h.journal.of("cm") == ["Reserve", "Charge", "Ship"]


# -- idempotent starts --------------------------------------------------------------------


async def test_the_same_key_returns_the_existing_saga_and_writes_nothing(
    bus: CommandBus, observer: Conn
) -> None:
    sagas = SagaClient(bus)
    a = await sagas.start_saga(ORDER, {"order_id": "1"}, idempotency_key="key")
    before = await written(observer)
    b = await sagas.start_saga(ORDER, {"order_id": "other input"}, idempotency_key="key")
    assert (a.created, b.created, a.saga_id) == (True, False, b.saga_id)
    assert await written(observer) == before
    rec = await sagas.get_saga(a.saga_id)
    assert rec is not None and rec.state.input == {"order_id": "1"}  # the first one's
    assert rec.idempotency_key == "key"
    # the key is per saga name; an explicit id is idempotent too
    other = Saga("other", steps=[Step("a", domain="inventory", command="Reserve")])
    c = await sagas.start_saga(other, {}, idempotency_key="key")
    assert c.created and c.saga_id != a.saga_id
    d = await sagas.start_saga(other, {}, saga_id=c.saga_id)
    assert not d.created and d.saga_id == c.saga_id


async def test_start_sagas_with_duplicates_starts_each_saga_once(
    bus: CommandBus, observer: Conn
) -> None:
    sagas = SagaClient(bus)
    old = await sagas.start_saga(ORDER, {"order_id": "old"}, idempotency_key="old")
    sid = uuid4()
    started = await sagas.start_sagas(
        ORDER,
        [
            SagaStart(input={"order_id": "1"}, idempotency_key="k1"),
            SagaStart(input={"order_id": "2"}, idempotency_key="k2"),
            SagaStart(input={"order_id": "1 again"}, idempotency_key="k1"),
            {"order_id": "3"},
            SagaStart(input={"order_id": "4"}, saga_id=sid),
            SagaStart(input={"order_id": "4 again"}, saga_id=str(sid)),
            SagaStart(input={"order_id": "old again"}, idempotency_key="old"),
        ],
    )
    assert [s.created for s in started] == [True, True, False, True, True, False, False]
    ids = [s.saga_id for s in started]
    assert ids[0] == ids[2] and ids[4] == ids[5] == sid and ids[6] == old.saga_id
    assert len(set(ids)) == 5
    after = await written(observer)
    assert after["sagas"] == 5 and after["commands"] == 5
    rec = await sagas.get_saga(ids[0])
    assert rec is not None and rec.state.input == {"order_id": "1"}
    assert await sagas.start_sagas(ORDER, []) == []


async def test_concurrent_starts_with_one_key_start_one_saga(
    bus: CommandBus, observer: Conn
) -> None:
    sagas = SagaClient(bus)
    results = await asyncio.gather(
        *(sagas.start_saga(ORDER, {"order_id": str(i)}, idempotency_key="race") for i in range(8))
    )
    assert sum(r.created for r in results) == 1
    assert len({r.saga_id for r in results}) == 1
    after = await written(observer)
    assert after["sagas"] == 1 and after["commands"] == 1 and after["saga_events"] == 2


async def test_many_sagas_start_in_one_call_and_run(dsn: str) -> None:
    async with running(dsn) as h:
        started = await h.sagas.start_sagas(
            ORDER, [SagaStart(input={"order_id": f"m{i}"}) for i in range(150)]
        )
        assert all(s.created for s in started)
        for s in started:
            await final(h, s.saga_id)
        counts = await h.sagas.status_counts()
        await assert_consistent(h)
    assert counts == {"COMPLETED": 150}


async def test_every_step_sees_the_input_as_stored(dsn: str) -> None:
    """The first step is built when the saga starts, the others by the coordinator
    from the stored input: all of them see the same (JSON) input."""

    def shape(ctx: Any) -> dict[str, Any]:
        return {
            "order_id": "shape",
            "keys": sorted(type(k).__name__ for k in ctx.input),
            "items": type(ctx.input["items"]).__name__,
        }

    saga = Saga(
        "shape",
        steps=[
            Step("a", domain="inventory", command="Reserve", data=shape),
            Step("b", domain="payments", command="Charge", data=shape),
        ],
    )
    async with running(dsn, saga) as h:
        odd: dict[Any, Any] = {"items": (1, 2), 7: "seven"}
        started = await h.sagas.start_saga(saga, odd)
        await final(h, started.saga_id)
        async with h.bus.pool.connection() as c:
            cur = await c.execute(
                "SELECT e.data->'data' FROM commandbus.event e"
                "  JOIN commandbus.command c ON e.stream_id ="
                "       'command:' || c.domain || ':' || c.command_id"
                " WHERE c.saga_id = %s AND e.event_type = 'CommandSent'"
                " ORDER BY c.created_at",
                (started.saga_id,),
            )
            sent = [r[0] for r in await cur.fetchall()]
        rec = await h.sagas.get_saga(started.saga_id)
        await assert_consistent(h)
    assert rec is not None and rec.state.input == {"items": [1, 2], "7": "seven"}
    assert len(sent) == 2 and sent[0] == sent[1], sent
    assert sent[0]["keys"] == ["str", "str"] and sent[0]["items"] == "list"


async def test_starts_go_on_after_a_repeated_key_on_one_pooled_connection(dsn: str) -> None:
    """A repeated key undoes the one-round-trip start (its saga exists), which is then
    made statement by statement. The connection it ran on keeps working: new starts
    on it succeed, before and after psycopg prepares the statements (6th use)."""
    async with CommandBus(dsn, min_connections=1, max_connections=1) as bus:
        sagas = SagaClient(bus)
        for i in range(5):
            started = await sagas.start_saga(ORDER, {"order_id": f"a{i}"}, idempotency_key=f"a{i}")
            assert started.created
        for _ in range(3):  # a client retrying its request
            again = await sagas.start_saga(ORDER, {"order_id": "a0"}, idempotency_key="a0")
            assert not again.created
        for i in range(20):
            assert (await sagas.start_saga(ORDER, {"order_id": f"b{i}"})).created
        assert (await sagas.status_counts())["RUNNING"] == 25


async def test_starts_on_the_callers_connection_never_touch_its_prepared_statements(
    dsn: str,
) -> None:
    """With ``conn=`` a start goes statement by statement (never the one-round-trip
    way, whose failure resets the connection's prepared statements): the caller's own
    prepared statement survives repeated keys."""
    async with CommandBus(dsn) as bus:
        sagas = SagaClient(bus)
        await bus.create_queues(["inventory", "commandbus_sagas"])
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as c:
            await c.execute("PREPARE callers_own AS SELECT 42")
            await sagas.start_saga(ORDER, {"order_id": "k"}, idempotency_key="k", conn=c)
            for _ in range(8):
                await sagas.start_saga(ORDER, {"order_id": "k"}, idempotency_key="k", conn=c)
            assert (await sagas.start_saga(ORDER, {"order_id": "new"}, conn=c)).created
            cur = await c.execute("EXECUTE callers_own")
            assert await cur.fetchone() == (42,)
