"""send_batch in parts: two batches at once with overlapping ids; rebuilds meanwhile."""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Any
from uuid import UUID, uuid4

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from commandbus import CommandBus, CommandRequest, ConcurrencyError, Failure, Success
from support import psycopg_warnings

Conn = psycopg.AsyncConnection[Any]


def reqs(ids: list[UUID], domain: str = "payments") -> list[CommandRequest]:
    return [CommandRequest(domain=domain, command_type="Charge", command_id=c) for c in ids]


@pytest.mark.parametrize("order", ["same", "reversed", "shuffled", "tail_overlap"])
async def test_overlapping_batches(
    dsn: str, conn: Conn, order: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    # PostgreSQL looks for a deadlock after deadlock_timeout (1 s by default): not
    # waited out here
    quick = make_conninfo(dsn, options="-c deadlock_timeout=50ms")
    async with CommandBus(quick, max_connections=4) as bus:
        await bus.send("payments", "Charge", {})
        ids = [uuid4() for _ in range(1000)]
        if order == "same":
            a, b = ids, list(ids)
        elif order == "reversed":
            a, b = ids, ids[::-1]
        elif order == "shuffled":
            b = list(ids)
            random.Random(1).shuffle(b)
            a = ids
        else:  # only the last of A is the first of B, and vice versa
            other = [uuid4() for _ in range(998)]
            a = [ids[0], *other[:499], ids[1]]
            b = [ids[1], *other[499:], ids[0]]
        results = await asyncio.wait_for(
            asyncio.gather(
                bus.send_batch(reqs(a)), bus.send_batch(reqs(b)), return_exceptions=True
            ),
            60,
        )
        assert psycopg_warnings(caplog) == []
        assert sum(1 for r in results if not isinstance(r, BaseException) and r.ok) == 1, results
        # the other is refused: its ids exist, or (ids in another order) PostgreSQL
        # broke a deadlock by ending it, which is a retryable ConcurrencyError
        assert all(
            isinstance(r, Failure | ConcurrencyError) or (isinstance(r, Success) and r.ok)
            for r in results
        ), results
        cur = await conn.execute("SELECT count(*) FROM commandbus.command")
        n = (await cur.fetchall())[0][0]
        assert n in (1001, 1 + len(set(a)))
        report = await bus.verify_projection()
        assert not report.differences


async def test_rebuild_and_verify_while_batches_sent(dsn: str, conn: Conn) -> None:
    async with CommandBus(dsn, max_connections=8) as bus:
        await bus.send("payments", "Charge", {})
        await bus.send("shipping", "Ship", {})
        stop = asyncio.Event()
        sent = 0
        refused = 0

        async def sender(k: int) -> None:
            nonlocal sent, refused
            rng = random.Random(k)
            while not stop.is_set():
                await asyncio.sleep(0.02)
                n = rng.randint(1, 200)
                batch = [
                    CommandRequest(
                        domain=rng.choice(["payments", "shipping"]), command_type="X", data={"n": i}
                    )
                    for i in range(n)
                ]
                if rng.random() < 0.2:  # a refused one now and then
                    cid = uuid4()
                    batch[0] = CommandRequest(domain="payments", command_type="X", command_id=cid)
                    batch.append(batch[0])
                    r = await bus.send_batch(batch)
                    assert not r.ok
                    refused += 1
                else:
                    r = await bus.send_batch(batch)
                    assert r.ok, r
                    sent += 1

        tasks = [asyncio.create_task(sender(k)) for k in range(3)]

        try:
            for _ in range(4):
                report = await bus.verify_projection()
                assert report.ok, report.differences[:3]
                await bus.rebuild_projection(replace_live=True)
                await bus.rebuild_projection(table="cmd_rebuild")
                report = await bus.verify_projection()
                assert not report.differences, report.differences[:3]
        finally:
            stop.set()
            await asyncio.gather(*tasks)
        report = await bus.verify_projection()
        assert not report.differences
        cur = await conn.execute(
            "SELECT count(*) FROM commandbus.batch b WHERE NOT EXISTS"
            " (SELECT 1 FROM commandbus.command c WHERE c.batch_id = b.batch_id)"
        )
        assert (await cur.fetchall())[0][0] == 0
        cur = await conn.execute(
            "SELECT count(*) FROM commandbus.command c WHERE batch_id IS NOT NULL AND NOT EXISTS"
            " (SELECT 1 FROM commandbus.batch b WHERE c.batch_id = b.batch_id)"
        )
        assert (await cur.fetchall())[0][0] == 0
        cur = await conn.execute(
            "SELECT b.batch_id FROM commandbus.batch b JOIN commandbus.command c USING (batch_id)"
            " GROUP BY b.batch_id, b.total HAVING count(*) <> b.total"
        )
        assert await cur.fetchall() == []
        assert sent > 5


@pytest.mark.parametrize("first_fails", [False, True])
async def test_same_batch_id_concurrently(dsn: str, conn: Conn, first_fails: bool) -> None:
    async with CommandBus(dsn, max_connections=4) as bus:
        await bus.send("payments", "Charge", {})
        bid = uuid4()
        a = [CommandRequest(domain="payments", command_type="A") for _ in range(1500)]
        b = [CommandRequest(domain="payments", command_type="B") for _ in range(1500)]
        if first_fails:
            dup = uuid4()
            a[1499] = CommandRequest(domain="payments", command_type="A", command_id=dup)
            a[0] = a[1499]
        results = await asyncio.wait_for(
            asyncio.gather(bus.send_batch(a, batch_id=bid), bus.send_batch(b, batch_id=bid)), 60
        )
        oks = [r.ok for r in results]
        assert oks.count(True) == 1
        if first_fails:
            assert oks == [False, True]
        batch = await bus.get_batch(bid)
        assert batch is not None and batch.total == 1500
        cur = await conn.execute(
            "SELECT count(*) FROM commandbus.command WHERE batch_id = %s", (bid,)
        )
        assert (await cur.fetchall())[0][0] == 1500
        report = await bus.verify_projection()
        assert not report.differences


@pytest.mark.parametrize("autocommit", [True, False])
async def test_pipeline_conn_new_queue(dsn: str, conn: Conn, autocommit: bool) -> None:
    async with CommandBus(dsn, max_connections=4) as bus:
        async with (
            await psycopg.AsyncConnection.connect(dsn, autocommit=autocommit) as c,
            c.transaction(force_rollback=True),
            c.pipeline(),
        ):
            r = await bus.send_batch(
                [CommandRequest(domain="brandnew", command_type="X", reply_to="newreplies")]
                + [CommandRequest(domain="brandnew2", command_type="X") for _ in range(700)],
                conn=c,
            )
            assert r.ok, r
        cur = await conn.execute("SELECT count(*) FROM commandbus.command")
        assert (await cur.fetchall())[0][0] == 0
