"""send_batch in parts: cancelling a large send_batch half way."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import psycopg
import pytest

from commandbus import CommandBus, CommandRequest
from support import psycopg_warnings, table_counts

Conn = psycopg.AsyncConnection[Any]


def reqs(n: int, domain: str = "payments") -> list[CommandRequest]:
    return [
        CommandRequest(domain=domain, command_type="Charge", data={"i": i, "pad": "x" * 50})
        for i in range(n)
    ]


@pytest.mark.parametrize("delay", [0.0, 0.005, 0.02, 0.05, 0.1, 0.2, 0.4, 0.8])
async def test_cancel_pooled(
    dsn: str, conn: Conn, delay: float, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with CommandBus(dsn, min_connections=1, max_connections=1) as bus:
        await bus.send("payments", "Charge", {})
        before = await table_counts(conn)
        task = asyncio.create_task(bus.send_batch(reqs(20_000)))
        await asyncio.sleep(delay)
        task.cancel()
        try:
            r = await task
            finished = r.ok
        except asyncio.CancelledError:
            finished = False
        after = await table_counts(conn)
        if finished:
            assert after["commandbus.command"] == before["commandbus.command"] + 20_000
        else:
            assert after == before, {k: (before[k], v) for k, v in after.items() if before[k] != v}
        # the pool (one connection) still works
        r2 = await asyncio.wait_for(bus.send_batch(reqs(500)), 30)
        assert r2.ok
    assert psycopg_warnings(caplog) == []


@pytest.mark.parametrize("delay", [0.01, 0.05, 0.2])
@pytest.mark.parametrize("mode", ["autocommit_idle", "in_tx", "non_autocommit_idle"])
async def test_cancel_with_conn(
    bus: CommandBus, dsn: str, conn: Conn, delay: float, mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    await bus.send("payments", "Charge", {})
    before = await table_counts(conn)
    async with await psycopg.AsyncConnection.connect(
        dsn, autocommit=mode != "non_autocommit_idle"
    ) as c:

        async def run() -> Any:
            if mode == "in_tx":
                async with c.transaction():
                    return await bus.send_batch(reqs(20_000), conn=c)
            return await bus.send_batch(reqs(20_000), conn=c)

        task = asyncio.create_task(run())
        await asyncio.sleep(delay)
        task.cancel()
        finished = False
        with contextlib.suppress(asyncio.CancelledError):
            finished = (await task).ok
        if not c.closed:
            if mode == "non_autocommit_idle":
                await c.rollback()
            cur = await c.execute("SELECT 1")
            assert (await cur.fetchall())[0][0] == 1
            if mode == "non_autocommit_idle":
                await c.rollback()
    after = await table_counts(conn)
    if (finished and mode == "autocommit_idle") or (finished and mode == "in_tx"):
        assert after["commandbus.command"] == before["commandbus.command"] + 20_000
    else:
        assert after == before
    assert psycopg_warnings(caplog) == []
