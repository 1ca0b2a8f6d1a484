"""A saga's next command, sent in its previous step's outcome transaction to a domain a
worker of this process serves, is claimed as it is sent and handed to that worker once
the transaction commits: no wake-up, no read (engine/worker/handoff.py).

What must hold whatever happens: a claimed message is never lost and never run
twice at once. Handed over, it runs as a read would have given it; refused (its
consumer stopped meanwhile), it is visible again at once and its domain is woken;
never handed over (the process died), it comes back after the visibility timeout.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import psycopg

from commandbus import CommandBus, HandlerRegistry, SagaStatus, Worker
from commandbus.engine.commands import store as command_store
from commandbus.engine.commands.store import OutgoingCommand
from commandbus.engine.db.script import Script, run_all_applied_rows
from commandbus.engine.worker.handoff import Claims
from handoff_apps import outgoing
from saga_apps import ORDER, assert_consistent, commands_of, final, running
from support import wait_for

DOMAIN = "payments"


def _command(delay: float = 0.0, domain: str = DOMAIN) -> OutgoingCommand:
    return outgoing(domain, "Charge" if domain == DOMAIN else "Ship", delay=delay)


@asynccontextmanager
async def _payments(dsn: str, **kwargs: Any) -> AsyncIterator[tuple[Worker, list[str]]]:
    """A running payments worker whose handler notes each command it runs."""
    ran: list[str] = []
    reg = HandlerRegistry()

    async def charge(cmd: Any, ctx: Any) -> dict[str, Any]:
        ran.append(str(cmd.command_id))
        return {"charged": cmd.data["amount"]}

    reg.register(DOMAIN, "Charge", charge)
    async with CommandBus(dsn) as bus:
        await bus.create_queues([DOMAIN])
    async with Worker(dsn, reg, domain=DOMAIN, **kwargs) as w:
        yield w, ran


async def _send_claimed(dsn: str, claims: Claims, cmds: list[OutgoingCommand]) -> dict[str, float]:
    """Send ``cmds`` as a worker's script does, claiming what ``claims`` grants."""
    granted = claims.claim(cmds)
    script = Script()
    script.add(*command_store.send_commands_all_applied(cmds, granted))
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        rows = await run_all_applied_rows(script, conn)
    assert not isinstance(rows, str), rows
    if granted:
        _n, command_ids, msg_ids = rows[0][0]
        claims.sent = (command_ids, msg_ids)
    return granted


async def _queue_row(dsn: str, command_id: uuid.UUID) -> tuple[int, bool] | None:
    """(read_ct, visible now) of the command's message, None once it left the queue."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT read_ct, vt <= clock_timestamp() FROM pgmq.q_payments"
            " WHERE message->>'command_id' = %s",
            (str(command_id),),
        )
        row = await cur.fetchone()
    return None if row is None else (int(row[0]), bool(row[1]))


async def _status(dsn: str, command_id: uuid.UUID) -> str | None:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT status FROM commandbus.command WHERE domain = %s AND command_id = %s",
            (DOMAIN, command_id),
        )
        row = await cur.fetchone()
    return None if row is None else str(row[0])


async def test_a_sagas_next_steps_are_handed_over_not_read(dsn: str) -> None:
    """The workers of one process run a saga: every step after the first (which the
    client sent) reaches its worker from the previous step's worker, unread."""
    async with running(dsn, ORDER, coordinators=0, inline=True) as h:
        started = await h.sagas.start_saga(ORDER, {"order_id": "h1"})
        rec = await final(h, started.saga_id)
        assert rec.status is SagaStatus.COMPLETED
        by_domain = {w.domain: w.stats for w in h.workers}
        assert by_domain["inventory"].handed_over == 0
        assert by_domain["payments"].handed_over == 1
        assert by_domain["shipping"].handed_over == 1
        assert [c[1:] for c in await commands_of(h, started.saga_id)] == [
            ("Reserve", "COMPLETED"),
            ("Charge", "COMPLETED"),
            ("Ship", "COMPLETED"),
        ]
        await assert_consistent(h)


async def test_many_sagas_at_once_each_step_runs_once(dsn: str) -> None:
    """A group of outcomes claims many messages at once: all handed over, each run once."""
    async with running(dsn, ORDER, coordinators=0, inline=True) as h:
        ids = [(await h.sagas.start_saga(ORDER, {"order_id": f"m{i}"})).saga_id for i in range(40)]
        for saga_id in ids:
            assert (await final(h, saga_id)).status is SagaStatus.COMPLETED
        ran = [t for _d, t, _o in h.journal.calls if t in ("Charge", "Ship")]
        assert len(ran) == 80  # every step once: none read again or twice
        assert sum(w.stats.handed_over for w in h.workers) == 80
        await assert_consistent(h)


async def test_a_claimed_message_wakes_no_reader_and_runs_as_read(dsn: str) -> None:
    async with (
        _payments(dsn) as (w, ran),
        await psycopg.AsyncConnection.connect(dsn, autocommit=True) as listener,
    ):
        await listener.execute(f'LISTEN "commandbus_{DOMAIN}"')
        cmd = _command()
        claims = Claims(w._url)
        assert await _send_claimed(dsn, claims, [cmd]) == {DOMAIN: 30.0}
        row = await _queue_row(dsn, cmd.command_id)
        assert row == (1, False)  # read once, invisible: no reader can take it
        # no NOTIFY for it (an unclaimed send notifies at its commit)
        gen = listener.notifies(timeout=0.3)
        assert [n async for n in gen] == []
        assert claims.hand_over(*claims.sent) == {}  # type: ignore[misc]
        await wait_for(lambda: ran == [str(cmd.command_id)], timeout=10)
        await wait_for(lambda: _status_is(dsn, cmd.command_id, "COMPLETED"), timeout=10)
        assert w.stats.handed_over == 1
        # an ordinary send still wakes the readers
        await _send_claimed(dsn, Claims("postgresql://elsewhere/db"), [_command()])
        gen = listener.notifies(timeout=2)
        assert len([n async for n in gen]) >= 1


async def _status_is(dsn: str, command_id: uuid.UUID, status: str) -> bool:
    return await _status(dsn, command_id) == status


async def test_what_is_not_claimed(dsn: str) -> None:
    """Nothing is claimed for a delayed command, another database, a domain nobody here
    serves, or a consumer whose stop was requested."""
    async with _payments(dsn) as (w, _ran):
        url = w._url
        assert Claims(url).claim([_command(delay=5)]) == {}
        assert Claims(url + "?application_name=x").claim([_command()]) == {}
        other = _command(domain="shipping")
        assert Claims(url).claim([other]) == {}
        # a delayed command keeps the others to its domain from being claimed too
        assert Claims(url).claim([_command(), _command(delay=1)]) == {}
        assert Claims(url).claim([_command()]) == {DOMAIN: 30.0}
        w.request_stop(1)
        assert w._domains[0].room() == 0
        assert Claims(url).claim([_command()]) == {}
    # and once it has ended, its domain is served by nobody here
    assert Claims(url).claim([_command()]) == {}


async def test_messages_claimed_for_a_consumer_that_stopped_go_back_at_once(dsn: str) -> None:
    """Its stop comes between the claim and the commit: the messages are refused, made
    visible (unread) at once, and a worker started later runs them."""
    cmds = [_command(), _command()]
    async with _payments(dsn) as (w, ran):
        claims = Claims(w._url)
        assert claims.claim(cmds) == {DOMAIN: 30.0}
        claims.reset()
        granted = await _send_claimed(dsn, claims, cmds)
        assert granted == {DOMAIN: 30.0}
        w.request_stop(1)
        refused = claims.hand_over(*claims.sent)  # type: ignore[misc]
        assert sorted(refused) == [DOMAIN] and len(refused[DOMAIN]) == 2
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            await command_store.release_claimed(conn, DOMAIN, refused[DOMAIN])
        assert ran == []
    for c in cmds:
        assert await _queue_row(dsn, c.command_id) == (0, True)
    async with _payments(dsn) as (w2, ran2):
        await wait_for(lambda: len(ran2) == 2, timeout=10)
        for c in cmds:
            await wait_for(lambda c=c: _status_is(dsn, c.command_id, "COMPLETED"), timeout=10)
        assert w2.stats.handed_over == 0


async def test_a_claimed_message_never_handed_over_comes_back_after_its_vt(dsn: str) -> None:
    """The process that claimed it died before handing it over: after the visibility
    timeout a worker reads it (its second delivery, a suspect) and runs it, once."""
    cmd = _command()
    async with _payments(dsn, visibility_timeout=timedelta(seconds=1)) as (w, ran):
        claims = Claims(w._url)
        granted = await _send_claimed(dsn, claims, [cmd])
        assert granted == {DOMAIN: 1.0}
        # ... and never handed over
        await asyncio.sleep(0.5)
        assert ran == []
        await wait_for(lambda: ran == [str(cmd.command_id)], timeout=10)
        await wait_for(lambda: _status_is(dsn, cmd.command_id, "COMPLETED"), timeout=10)
        assert w.stats.handed_over == 0
        assert w.stats.completed == 1


async def test_only_the_claimed_domains_messages_are_sent_read(dsn: str) -> None:
    """One send to two domains, one of them served here: only its message is claimed."""
    other = _command(domain="shipping")
    async with CommandBus(dsn) as bus:
        await bus.create_queues(["shipping"])
    async with _payments(dsn) as (w, ran):
        mine = _command()
        claims = Claims(w._url)
        assert await _send_claimed(dsn, claims, [other, mine]) == {DOMAIN: 30.0}
        assert await _queue_row(dsn, mine.command_id) == (1, False)
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            cur = await conn.execute(
                "SELECT read_ct, vt <= clock_timestamp() FROM pgmq.q_shipping"
                " WHERE message->>'command_id' = %s",
                (str(other.command_id),),
            )
            assert await cur.fetchone() == (0, True)
        assert claims.hand_over(*claims.sent) == {}  # type: ignore[misc]
        await wait_for(lambda: ran == [str(mine.command_id)], timeout=10)


async def test_nothing_is_claimed_beyond_a_workers_room(dsn: str) -> None:
    """A worker holds at most two batches (here 2 x 2): four commands to its domain
    are claimed, five are sent as usual; and it takes no more than its room."""
    async with _payments(dsn, concurrency=1, batch_size=2) as (w, _ran):
        url = w._url
        assert w._domains[0].room() == 4
        assert Claims(url).claim([_command() for _ in range(5)]) == {}
        claims = Claims(url)
        four = [_command() for _ in range(4)]
        assert claims.claim(four) == {DOMAIN: 30.0}
        claims.reset()
        await _send_claimed(dsn, claims, four)
        # meanwhile the worker filled up: it takes what it has room for
        with_room = w._domains[0].room()
        w._domains[0].consumer._capacity = 2  # type: ignore[attr-defined]
        refused = claims.hand_over(*claims.sent)  # type: ignore[misc]
        assert with_room == 4 and len(refused[DOMAIN]) == 2
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            await command_store.release_claimed(conn, DOMAIN, refused[DOMAIN])
        for c in four:
            await wait_for(lambda c=c: _status_is(dsn, c.command_id, "COMPLETED"), timeout=10)
        assert w.stats.handed_over == 2
