"""send_batch in parts with conn=: autocommit or not, idle, in a transaction, in a pipeline."""

from __future__ import annotations

import logging
from typing import Any
from uuid import uuid4

import psycopg
import pytest
from psycopg.pq import TransactionStatus

from commandbus import CommandBus, CommandRequest, Failure, ValidationError
from support import psycopg_warnings, table_counts

Conn = psycopg.AsyncConnection[Any]


def reqs(n: int = 1000, domain: str = "payments") -> list[CommandRequest]:
    return [CommandRequest(domain=domain, command_type="Charge", data={"i": i}) for i in range(n)]


def failing(failure: str, existing: Any) -> list[CommandRequest]:
    """1,000 commands; the last one already exists (``existing``), has a bad
    argument (``bad_arg_late``), or is fine (anything else)."""
    batch = reqs()
    if failure == "existing":
        batch[999] = CommandRequest(domain="payments", command_type="C", command_id=existing)
    elif failure == "bad_arg_late":
        batch[999] = CommandRequest(domain="payments", command_type="C", max_attempts=-1)
    return batch


@pytest.fixture(autouse=True)
def _logs(caplog: pytest.LogCaptureFixture) -> Any:
    caplog.set_level(logging.DEBUG)
    yield
    assert psycopg_warnings(caplog) == []


async def _other_sees(dsn: str) -> int:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as o:
        cur = await o.execute("SELECT count(*) FROM commandbus.command")
        return (await cur.fetchall())[0][0]


@pytest.mark.parametrize("autocommit", [True, False])
@pytest.mark.parametrize("mode", ["idle", "explicit", "implicit"])
@pytest.mark.parametrize("new_queue", [False, True])
async def test_conn_never_commits_behind_caller(
    bus: CommandBus, conn: Conn, dsn: str, autocommit: bool, mode: str, new_queue: bool
) -> None:
    domain = "fresh" if new_queue else "payments"
    if not new_queue:
        await bus.send("payments", "Charge", {})
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=autocommit) as c:
        base = await _other_sees(dsn)
        if mode == "idle":
            r = await bus.send_batch(reqs(domain=domain), conn=c)
            assert r.ok
            if autocommit:
                assert await _other_sees(dsn) == base + 1000  # committed: its own transaction
                return
            assert c.info.transaction_status is TransactionStatus.INTRANS
            assert await _other_sees(dsn) == base
            await c.rollback()
        elif mode == "explicit":
            async with c.transaction(force_rollback=True):
                await c.execute("SELECT 1")
                r = await bus.send_batch(reqs(domain=domain), conn=c)
                assert r.ok
                assert await _other_sees(dsn) == base
        else:
            if autocommit:
                pytest.skip("no implicit transaction on autocommit")
            await c.execute("SELECT 1")
            assert c.info.transaction_status is TransactionStatus.INTRANS
            r = await bus.send_batch(reqs(domain=domain), conn=c)
            assert r.ok
            assert await _other_sees(dsn) == base
            await c.rollback()
        assert await _other_sees(dsn) == base
        events = await conn.execute("SELECT count(*) FROM commandbus.event")
        assert (await events.fetchall())[0][0] == base  # one event per command sent before


@pytest.mark.parametrize("autocommit", [True, False])
@pytest.mark.parametrize("failure", ["existing", "repeated", "batch", "bad_arg_late"])
async def test_failure_inside_caller_tx_leaves_it_usable(
    bus: CommandBus, conn: Conn, dsn: str, autocommit: bool, failure: str
) -> None:
    existing = (await bus.send("payments", "Charge", {})).unwrap().command_id
    bid = uuid4()
    assert (await bus.send_batch(reqs(1), batch_id=bid)).ok
    before = await table_counts(conn)
    async with (
        await psycopg.AsyncConnection.connect(dsn, autocommit=autocommit) as c,
        c.transaction(force_rollback=True),
    ):
        await c.execute("CREATE TEMP TABLE mine (x int)")
        await c.execute("INSERT INTO mine VALUES (1)")
        batch: list[Any] = reqs()
        kw: dict[str, Any] = {}
        if failure == "existing":
            batch[999] = CommandRequest(domain="payments", command_type="C", command_id=existing)
        elif failure == "repeated":
            batch[700] = batch[100] = CommandRequest(
                domain="payments", command_type="C", command_id=uuid4()
            )
        elif failure == "batch":
            kw["batch_id"] = bid
        if failure == "bad_arg_late":
            batch[999] = CommandRequest(domain="payments", command_type="C", data={"x": {1}})
            with pytest.raises(ValidationError, match=r"commands\[999\]"):
                await bus.send_batch(batch, conn=c, **kw)
        else:
            r = await bus.send_batch(batch, conn=c, **kw)
            assert isinstance(r, Failure), r
        # the caller's transaction goes on
        cur = await c.execute("SELECT count(*) FROM mine")
        assert (await cur.fetchall())[0][0] == 1
        cur = await c.execute("SELECT count(*) FROM commandbus.command")
        assert (await cur.fetchall())[0][0] == 2
        # and can send more
        assert (await bus.send_batch(reqs(300), conn=c)).ok
    assert await table_counts(conn) == before


@pytest.mark.parametrize("autocommit", [True, False])
@pytest.mark.parametrize("failure", ["existing", "bad_arg_late", "none"])
async def test_failure_on_idle_non_autocommit(
    bus: CommandBus, conn: Conn, dsn: str, autocommit: bool, failure: str
) -> None:
    existing = (await bus.send("payments", "Charge", {})).unwrap().command_id
    before = await table_counts(conn)
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=autocommit) as c:
        batch = failing(failure, existing)
        if failure == "existing":
            r = await bus.send_batch(batch, conn=c)
            assert isinstance(r, Failure)
        elif failure == "bad_arg_late":
            with pytest.raises(ValidationError, match=r"commands\[999\]"):
                await bus.send_batch(batch, conn=c)
        else:
            assert (await bus.send_batch(batch, conn=c)).ok
            if not autocommit:
                await c.rollback()
            else:
                return
        assert c.info.transaction_status is TransactionStatus.IDLE, c.info.transaction_status
        cur = await c.execute("SELECT 1")
        assert (await cur.fetchall())[0][0] == 1
        if not autocommit:
            await c.rollback()
    assert await table_counts(conn) == before


@pytest.mark.parametrize("autocommit", [True, False])
@pytest.mark.parametrize("in_tx", [False, True])
@pytest.mark.parametrize("failure", ["none", "existing", "bad_arg_late"])
@pytest.mark.parametrize("first", [True, False], ids=["stmt_first", "batch_first"])
async def test_conn_already_in_pipeline(
    bus: CommandBus, conn: Conn, dsn: str, autocommit: bool, in_tx: bool, failure: str, first: bool
) -> None:
    existing = (await bus.send("payments", "Charge", {})).unwrap().command_id
    before = await table_counts(conn)
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=autocommit) as c:
        batch = failing(failure, existing)

        async def go() -> Any:
            async with c.pipeline():
                if first:
                    await c.execute("SELECT 1")
                if failure == "bad_arg_late":
                    with pytest.raises(ValidationError, match=r"commands\[999\]"):
                        await bus.send_batch(batch, conn=c)
                    return None
                r = await bus.send_batch(batch, conn=c)
                cur = await c.execute("SELECT count(*) FROM commandbus.command")
                n = (await cur.fetchall())[0][0]
                return r, n

        if in_tx:
            async with c.transaction(force_rollback=True):
                out = await go()
        else:
            out = await go()
        if out is not None:
            r, n = out
            if failure == "none":
                assert r.ok, r
                assert n == 1001
            else:
                assert isinstance(r, Failure), r
                assert n == 1
        if not autocommit:
            await c.rollback()
        cur = await c.execute("SELECT 1")
        assert (await cur.fetchall())[0][0] == 1
    after = await table_counts(conn)
    if failure == "none" and autocommit and not in_tx:
        assert after["commandbus.command"] == before["commandbus.command"] + 1000
    else:
        assert after == before
