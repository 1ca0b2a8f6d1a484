"""Fixtures and helpers for the engine tests (imported by their modules)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import psycopg

from commandbus import Config

FAST = Config(
    backoff_base=timedelta(milliseconds=200),
    backoff_multiplier=2.0,
    backoff_max=timedelta(seconds=5),
    poll_interval=timedelta(milliseconds=200),
)


async def fetch(conn: psycopg.AsyncConnection[Any], query: Any, *params: Any) -> list[Any]:
    cur = await conn.execute(query, params or None)
    return await cur.fetchall()


async def scalar(conn: psycopg.AsyncConnection[Any], query: Any, *params: Any) -> Any:
    rows = await fetch(conn, query, *params)
    return rows[0][0]


async def counts(conn: psycopg.AsyncConnection[Any], domain: str = "payments") -> dict[str, int]:
    """How many streams, events, queue messages and projection rows exist."""
    queue = await scalar(
        conn,
        "SELECT count(*) FROM pgmq.meta WHERE queue_name = %s",
        domain,
    )
    messages = 0
    if queue:
        messages = await scalar(conn, f'SELECT count(*) FROM pgmq."q_{domain}"')  # noqa: S608
    return {
        "streams": await scalar(conn, "SELECT count(*) FROM commandbus.stream"),
        "events": await scalar(conn, "SELECT count(*) FROM commandbus.event"),
        "commands": await scalar(conn, "SELECT count(*) FROM commandbus.command"),
        "messages": messages,
    }


async def wait_for(predicate: Any, *, timeout: float = 15.0, interval: float = 0.02) -> None:  # noqa: ASYNC109
    """Poll an async predicate until it is true; fail the test after ``timeout``."""
    import asyncio
    import time

    deadline = time.monotonic() + timeout
    while True:
        if await predicate():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)


class RunningWorker:
    """``async with RunningWorker(worker):`` runs it in a task and stops it after."""

    def __init__(self, worker: Any) -> None:
        self.worker = worker
        self.task: Any = None

    async def __aenter__(self) -> Any:
        import asyncio

        self.task = asyncio.create_task(self.worker.run(), name="test-worker")
        return self.worker

    async def __aexit__(self, *exc: object) -> None:
        await self.worker.stop(timeout=5)
        await self.task


STREAM_GAPS = """
SELECT s.stream_id, s.version, array_agg(e.stream_version ORDER BY e.stream_version)
  FROM commandbus.stream s
  LEFT JOIN commandbus.event e USING (stream_id)
 GROUP BY s.stream_id, s.version
HAVING array_agg(e.stream_version ORDER BY e.stream_version)
       IS DISTINCT FROM array(SELECT generate_series(1, s.version))
"""


async def assert_streams_contiguous(conn: Any) -> None:
    """Every stream's events are numbered 1..version with no gap or duplicate."""
    bad = await fetch(conn, STREAM_GAPS)
    assert bad == [], bad
    orphans = await scalar(
        conn,
        "SELECT count(*) FROM commandbus.event e"
        " WHERE NOT EXISTS (SELECT 1 FROM commandbus.stream s WHERE s.stream_id = e.stream_id)",
    )
    assert orphans == 0
