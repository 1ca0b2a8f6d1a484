"""Wake-up notifications: throttled, decided at commit, never held back by an open transaction.

A LISTENing connection stands in for an idle worker. To know that no (further)
notification came without waiting out a timeout, the test sends its own marker
NOTIFY after everything committed: notifications arrive in commit order, so all
that were sent before the marker are in by the time it arrives.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest
from psycopg import IsolationLevel, sql

from commandbus import CommandBus, CommandRequest
from commandbus.engine.queues.tables import QueueRegistry, wakeup_channel
from commandbus.migrations import available_migrations, migrate

Conn = psycopg.AsyncConnection[Any]

#: Far below the poll interval an idle worker would otherwise wait (1 s by default).
PROMPTLY = 0.5


@pytest.fixture
async def listener(dsn: str, bus: CommandBus) -> AsyncIterator[Conn]:
    """A connection listening on the payments queue's wake-up channel (queue created)."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await QueueRegistry().ensure(conn, "payments")  # no message, no wake-up yet
        await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(wakeup_channel("payments"))))
        yield conn


async def next_wakeup(listener: Conn, timeout: float = PROMPTLY) -> str | None:  # noqa: ASYNC109
    """The channel of the next notification, or None if none came within ``timeout``."""
    async for notify in listener.notifies(timeout=timeout, stop_after=1):
        return notify.channel
    return None


async def wakeups_until_marker(listener: Conn, dsn: str) -> list[str]:
    """The wake-ups delivered so far: everything before our own marker notification."""
    await listener.execute("LISTEN cbtest_marker")  # no-op if already listening
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute("SELECT pg_notify('cbtest_marker', 'end')")
    seen: list[str] = []
    async for notify in listener.notifies(timeout=10):
        if notify.channel == "cbtest_marker":
            return seen
        seen.append(notify.channel)
    raise AssertionError("the marker notification never came")


async def set_throttle(conn: Conn, queue: str, ms: int) -> None:
    await conn.execute("SELECT commandbus.install_queue_wakeup(%s, %s)", (queue, ms))


async def test_an_open_transaction_does_not_hold_back_another_senders_wakeup(
    dsn: str, bus: CommandBus, listener: Conn
) -> None:
    await wakeups_until_marker(listener, dsn)  # forget the set-up send's wake-up
    async with await psycopg.AsyncConnection.connect(dsn) as open_tx:
        (await bus.send("payments", "Charge", {"who": "slow"}, conn=open_tx)).unwrap()
        # that transaction stays open while another sender sends and commits
        (await bus.send("payments", "Charge", {"who": "quick"})).unwrap()
        assert await next_wakeup(listener) == wakeup_channel("payments")
        await open_tx.rollback()


async def test_a_long_transaction_wakes_readers_when_it_commits(
    dsn: str, bus: CommandBus, conn: Conn, listener: Conn
) -> None:
    await wakeups_until_marker(listener, dsn)
    async with await psycopg.AsyncConnection.connect(dsn) as open_tx:
        (await bus.send("payments", "Charge", {}, conn=open_tx)).unwrap()
        assert await wakeups_until_marker(listener, dsn) == []  # NOTIFY waits for COMMIT
        await open_tx.commit()
    assert await next_wakeup(listener) == wakeup_channel("payments")


async def test_wakeups_are_throttled(dsn: str, bus: CommandBus, conn: Conn, listener: Conn) -> None:
    await set_throttle(conn, "payments", 60_000)
    await wakeups_until_marker(listener, dsn)
    for i in range(5):
        (await bus.send("payments", "Charge", {"i": i})).unwrap()
    assert await wakeups_until_marker(listener, dsn) == [wakeup_channel("payments")]


async def test_a_rolled_back_send_does_not_use_up_the_throttle(
    dsn: str, bus: CommandBus, conn: Conn, listener: Conn
) -> None:
    await set_throttle(conn, "payments", 60_000)
    await wakeups_until_marker(listener, dsn)
    async with await psycopg.AsyncConnection.connect(dsn) as tx:
        (await bus.send("payments", "Charge", {}, conn=tx)).unwrap()
        await tx.rollback()
    (await bus.send("payments", "Charge", {})).unwrap()
    assert await wakeups_until_marker(listener, dsn) == [wakeup_channel("payments")]


async def test_one_transaction_sends_one_wakeup_per_queue(
    dsn: str, bus: CommandBus, conn: Conn, listener: Conn
) -> None:
    (await bus.send("shipping", "Ship", {})).unwrap()
    await listener.execute(sql.SQL("LISTEN {}").format(sql.Identifier(wakeup_channel("shipping"))))
    await set_throttle(conn, "payments", 0)
    await set_throttle(conn, "shipping", 0)
    await wakeups_until_marker(listener, dsn)
    async with await psycopg.AsyncConnection.connect(dsn) as tx:
        for i in range(3):
            (await bus.send("payments", "Charge", {"i": i}, conn=tx)).unwrap()
        requests = [
            CommandRequest(domain=domain, command_type="Any", data={"i": i})
            for i in range(50)
            for domain in ("payments", "shipping")
        ]
        (await bus.send_batch(requests, conn=tx)).unwrap()
        await tx.commit()
    assert sorted(await wakeups_until_marker(listener, dsn)) == [
        wakeup_channel("payments"),
        wakeup_channel("shipping"),
    ]


async def test_a_send_in_a_repeatable_read_transaction_is_not_refused(
    dsn: str, bus: CommandBus, listener: Conn
) -> None:
    """Another sender's wake-up after this transaction's snapshot is no conflict."""
    async with await psycopg.AsyncConnection.connect(dsn) as rr:
        await rr.set_isolation_level(IsolationLevel.REPEATABLE_READ)
        await rr.execute("SELECT 1")  # the snapshot is taken
        (await bus.send("payments", "Charge", {"who": "other"})).unwrap()
        (await bus.send("payments", "Charge", {"who": "rr"}, conn=rr)).unwrap()
        await rr.commit()
    async with await psycopg.AsyncConnection.connect(dsn) as check:
        cur = await check.execute("SELECT count(*) FROM pgmq.q_payments")
        assert await cur.fetchone() == (2,)


async def test_queues_created_before_the_migration_are_converted(
    empty_dsn: str,
) -> None:
    """A queue made with 0003's trigger wakes readers the new way after migrating."""
    old = [m for m in available_migrations() if m.version <= 3]
    await migrate(empty_dsn, migrations=old)
    async with await psycopg.AsyncConnection.connect(empty_dsn, autocommit=True) as conn:
        # what QueueRegistry did before 0004
        await conn.execute("SELECT pgmq.create('legacy')")
        await conn.execute(
            "CREATE TRIGGER commandbus_wake_readers AFTER INSERT ON pgmq.q_legacy"
            " FOR EACH STATEMENT EXECUTE FUNCTION commandbus.wake_queue_readers()"
        )
        await conn.execute(
            "INSERT INTO commandbus.queue_wakeup (queue_name, throttle_ms) VALUES ('legacy', 2);"
            "INSERT INTO commandbus.queue (queue_name) VALUES ('legacy')"
        )
    await migrate(empty_dsn)
    async with (
        await psycopg.AsyncConnection.connect(empty_dsn, autocommit=True) as listen,
        await psycopg.AsyncConnection.connect(empty_dsn) as open_tx,
        CommandBus(empty_dsn) as bus,
    ):
        await listen.execute("LISTEN commandbus_legacy")
        (await bus.send("legacy", "Charge", {}, conn=open_tx)).unwrap()
        (await bus.send("legacy", "Charge", {})).unwrap()
        assert await next_wakeup(listen) == "commandbus_legacy"
        await open_tx.rollback()
        cur = await listen.execute(
            "SELECT tgname, tgdeferrable FROM pg_trigger"
            " WHERE tgrelid = 'pgmq.q_legacy'::regclass AND NOT tgisinternal"
        )
        assert await cur.fetchall() == [("commandbus_wakeup", True)]


async def test_a_send_after_a_rolled_back_savepoint_still_wakes_readers(
    dsn: str, bus: CommandBus, conn: Conn, listener: Conn
) -> None:
    """The savepoint's rollback drops its queued trigger and its transaction mark together."""
    await set_throttle(conn, "payments", 0)
    await wakeups_until_marker(listener, dsn)
    async with await psycopg.AsyncConnection.connect(dsn) as tx:
        await tx.execute("SAVEPOINT first_try")
        (await bus.send("payments", "Charge", {"try": 1}, conn=tx)).unwrap()
        await tx.execute("ROLLBACK TO SAVEPOINT first_try")
        (await bus.send("payments", "Charge", {"try": 2}, conn=tx)).unwrap()
        await tx.commit()
    assert await wakeups_until_marker(listener, dsn) == [wakeup_channel("payments")]
