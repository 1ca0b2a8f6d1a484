"""send_batch in parts: a server-side error in the middle or at the end of the pipeline."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import psycopg
import pytest

from commandbus import CommandBus, CommandRequest, DatabaseUnavailableError, ValidationError
from support import psycopg_warnings, table_counts

Conn = psycopg.AsyncConnection[Any]


def reqs(n: int = 1000) -> list[CommandRequest]:
    return [
        CommandRequest(domain="payments", command_type="Charge", data={"i": i}) for i in range(n)
    ]


TRIGGERS = {
    "command": """
CREATE FUNCTION public.boom() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.command_type = 'Boom' THEN RAISE EXCEPTION 'boom %', NEW.command_id; END IF;
  RETURN NEW;
END $$;
CREATE TRIGGER boom BEFORE INSERT ON commandbus.command FOR EACH ROW EXECUTE FUNCTION public.boom();
""",
    "batch": """
CREATE FUNCTION public.boom() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.name = 'boom' THEN RAISE EXCEPTION 'boom batch'; END IF;
  RETURN NEW;
END $$;
CREATE TRIGGER boom BEFORE INSERT ON commandbus.batch FOR EACH ROW EXECUTE FUNCTION public.boom();
""",
}


@pytest.mark.parametrize("where", [0, 450, 999, "batch"])
@pytest.mark.parametrize("mode", ["pool", "autocommit", "in_tx", "non_autocommit", "pipeline"])
async def test_server_error(
    dsn: str, conn: Conn, where: Any, mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    await conn.execute(TRIGGERS["batch" if where == "batch" else "command"])
    async with CommandBus(dsn, min_connections=1, max_connections=1) as bus:
        await bus.send("payments", "Charge", {})
        before = await table_counts(conn)
        batch = reqs()
        name = None
        if where == "batch":
            name = "boom"
        else:
            batch[where] = CommandRequest(domain="payments", command_type="Boom")
        c = None
        if mode != "pool":
            c = await psycopg.AsyncConnection.connect(dsn, autocommit=mode != "non_autocommit")
        try:
            if mode == "in_tx":
                assert c is not None
                async with c.transaction(force_rollback=True):
                    await c.execute("CREATE TEMP TABLE mine (x int)")
                    with pytest.raises(psycopg.errors.RaiseException, match="boom"):
                        await bus.send_batch(batch, conn=c, name=name)
                    cur = await c.execute("SELECT count(*) FROM mine")
                    assert (await cur.fetchall())[0][0] == 0
                    assert (await bus.send_batch(reqs(10), conn=c)).ok
            elif mode == "pipeline":
                assert c is not None
                with pytest.raises(psycopg.errors.RaiseException, match="boom"):
                    async with c.pipeline():
                        await bus.send_batch(batch, conn=c, name=name)
            else:
                with pytest.raises(psycopg.errors.RaiseException, match="boom"):
                    await bus.send_batch(batch, conn=c, name=name)
            if c is not None:
                if mode == "non_autocommit":
                    await c.rollback()
                cur = await c.execute("SELECT 1")
                assert (await cur.fetchall())[0][0] == 1
                if mode == "non_autocommit":
                    await c.rollback()
        finally:
            if c is not None:
                await c.close()
        assert await table_counts(conn) == before
        assert (await bus.send_batch(reqs(300))).ok
    assert psycopg_warnings(caplog) == []


@pytest.mark.parametrize("bad_at", [250, 999, 4999])
async def test_server_error_then_bad_argument(
    dsn: str, conn: Conn, bad_at: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    await conn.execute(TRIGGERS["command"])
    async with CommandBus(dsn, min_connections=1, max_connections=1) as bus:
        await bus.send("payments", "Charge", {})
        before = await table_counts(conn)
        batch = reqs(5000)
        batch[0] = CommandRequest(domain="payments", command_type="Boom")
        batch[bad_at] = CommandRequest(domain="payments", command_type="C", max_attempts=0)
        # whichever ended the sending first: the trigger's error or the bad argument
        with pytest.raises((psycopg.Error, ValidationError)):
            await bus.send_batch(batch)
        assert await table_counts(conn) == before
        assert (await bus.send_batch(reqs(300))).ok
    assert psycopg_warnings(caplog) == []


async def test_connection_killed_while_a_batch_is_sent(
    dsn: str, conn: Conn, caplog: pytest.LogCaptureFixture
) -> None:
    # the server ends the bus's connection half way through a batch of 20,000: a
    # DatabaseUnavailableError (retryable), nothing written, and the pool's next
    # connection sends the batch again
    caplog.set_level(logging.DEBUG)
    async with CommandBus(dsn, min_connections=1, max_connections=1) as bus:
        await bus.send("payments", "Charge", {})
        before = await table_counts(conn)
        batch = reqs(20_000)
        task = asyncio.create_task(bus.send_batch(batch))
        killed = 0
        for _ in range(200):  # until the batch's statements are running
            await asyncio.sleep(0.005)
            cur = await conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                " AND query LIKE '%%commandbus.command%%' AND state = 'active'"
            )
            killed = len(await cur.fetchall())
            if killed or task.done():
                break
        if not killed:
            task.cancel()
            pytest.skip("the batch finished before its connection could be ended")
        with pytest.raises(DatabaseUnavailableError):
            await task
        assert await table_counts(conn) == before
        again = await bus.send_batch(batch)
        assert again.ok, again
    # the pool says it discarded the dead connection; nothing else is logged
    warned = psycopg_warnings(caplog)
    assert all(w.startswith("discarding closed connection") for w in warned), warned
