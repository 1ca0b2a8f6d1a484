"""Scripts: several statements in one round trip, as ONE transaction, on a real server.

A worker that moves sagas sends a step's outcome, the saga's transition and its next
command this way; a start of new sagas too. Each statement that must apply in full
ends with ``commandbus.all_applied``, which undoes everything when it did not.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import psycopg
import pytest

from commandbus.engine.db.script import NOT_ALL_APPLIED, Script, not_all_applied

Conn = psycopg.AsyncConnection[Any]


async def _table(conn: Conn) -> None:
    await conn.execute("CREATE TABLE public.script_t (i int PRIMARY KEY)")


async def _rows(conn: Conn) -> list[int]:
    cur = await conn.execute("SELECT i FROM public.script_t ORDER BY i")
    return [r[0] for r in await cur.fetchall()]


async def test_a_script_commits_its_statements_together_and_returns_each_ones_rows(
    conn: Conn,
) -> None:
    await _table(conn)
    script = Script()
    first = script.add("INSERT INTO public.script_t VALUES (%(i)s) RETURNING i", {"i": 1})
    script.add("INSERT INTO public.script_t VALUES (2)")
    last = script.add("SELECT count(*) FROM public.script_t")
    assert (first, last, len(script)) == (0, 2, 3)
    results = await script.run(conn)
    # the last statement sees the ones before it: one transaction
    assert results == [[(1,)], [], [(2,)]]
    assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    async with await psycopg.AsyncConnection.connect(conn.info.dsn) as other:
        assert await _rows(other) == [1, 2]  # committed


async def test_a_failing_statement_undoes_the_ones_before_it(conn: Conn) -> None:
    await _table(conn)
    script = Script()
    script.add("INSERT INTO public.script_t VALUES (1)")
    script.add("INSERT INTO public.script_t VALUES (1)")  # a duplicate key
    script.add("INSERT INTO public.script_t VALUES (3)")
    with pytest.raises(psycopg.errors.UniqueViolation) as info:
        await script.run(conn)
    assert not not_all_applied(info.value)
    assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    assert await _rows(conn) == []
    # the connection goes on
    again = Script()
    again.add("INSERT INTO public.script_t VALUES (5)")
    await again.run(conn)
    assert await _rows(conn) == [5]


@pytest.mark.parametrize(("applied", "expected"), [(1, 2), (3, 2), (None, 0)])
async def test_all_applied_undoes_the_script_when_a_count_differs(
    conn: Conn, applied: int | None, expected: int
) -> None:
    await _table(conn)
    script = Script()
    script.add("INSERT INTO public.script_t VALUES (1)")
    script.add(
        "SELECT commandbus.all_applied(%(a)s, %(e)s, 'widgets')", {"a": applied, "e": expected}
    )
    with pytest.raises(psycopg.Error) as info:
        await script.run(conn)
    assert not_all_applied(info.value)
    assert info.value.sqlstate == NOT_ALL_APPLIED
    assert f"{applied if applied is not None else ''} of {expected} widgets applied" in str(
        info.value
    )
    assert await _rows(conn) == []


async def test_all_applied_passes_the_count_through_when_it_matches(conn: Conn) -> None:
    script = Script()
    script.add("SELECT commandbus.all_applied(2, 2, 'widgets')")
    assert await script.run(conn) == [[(2,)]]


async def test_a_script_refuses_a_connection_inside_a_transaction(dsn: str) -> None:
    """It would commit behind the caller (autocommit off) or join the caller's
    transaction and abort it on a failed check: it refuses both."""
    async with await psycopg.AsyncConnection.connect(dsn) as c:  # autocommit off
        script = Script()
        script.add("SELECT 1")
        with pytest.raises(RuntimeError, match="idle autocommit connection only"):
            await script.run(c)
        await c.rollback()
        await c.set_autocommit(True)
        async with c.transaction():
            with pytest.raises(RuntimeError, match="idle autocommit connection only"):
                await script.run(c)
        assert await script.run(c) == [[(1,)]]


@pytest.mark.parametrize("threshold", [0, 5], ids=["prepared-at-once", "prepared-on-6th-use"])
async def test_failed_scripts_leave_the_prepared_statements_in_line(
    dsn: str, threshold: int, caplog: pytest.LogCaptureFixture
) -> None:
    """In an aborted pipeline psycopg counts a skipped statement as prepared (the server
    never saw it) and forgets the failed one (the server keeps it). A script resets
    both sides after a failure: the same statements keep working on that connection,
    and the server holds no more prepared statements than there are statements."""
    async with await psycopg.AsyncConnection.connect(
        dsn, autocommit=True, prepare_threshold=threshold
    ) as c:
        await _table(c)

        def script(i: int, expected: int) -> Script:
            s = Script()
            s.add("INSERT INTO public.script_t VALUES (%(i)s)", {"i": i})
            s.add("SELECT commandbus.all_applied(%(a)s, %(e)s, 'rows')", {"a": 1, "e": expected})
            s.add("INSERT INTO public.script_t VALUES (%(i)s + 1000)", {"i": i})
            return s

        for i in range(12):
            if i % 3 == 2:  # every third one is undone
                with pytest.raises(psycopg.Error) as info:
                    await script(i, 2).run(c)
                assert not_all_applied(info.value)
            else:
                await script(i, 1).run(c)
        for i in range(20, 30):
            await script(i, 1).run(c)
        cur = await c.execute("SELECT count(*) FROM pg_prepared_statements")
        row = await cur.fetchone()
        assert row is not None and row[0] <= 4
    # an undone script is a normal event: no warning of psycopg's about the pipeline
    # ("error ignored terminating ...: pipeline aborted")
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as c:
        done = await _rows(c)
    kept = [i for i in range(12) if i % 3 != 2] + list(range(20, 30))
    assert done == sorted(kept + [i + 1000 for i in kept])


async def test_a_script_cancelled_midway_closes_its_connection(dsn: str) -> None:
    """Cancelled while the server runs it, a script writes nothing, and its connection
    (whose prepared statements are then unknown) is closed for its owner to replace."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as c:
        await _table(c)
        script = Script()
        script.add("INSERT INTO public.script_t VALUES (1)")
        script.add("SELECT pg_sleep(5)")
        task = asyncio.create_task(script.run(c))
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert c.closed
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as other:
        assert await _rows(other) == []
