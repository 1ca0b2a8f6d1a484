"""What the tests share besides fixtures (those are in conftest.py): settings,
queries, polling, database URLs and the CLI in a subprocess."""

from __future__ import annotations

import asyncio
import inspect
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from commandbus import Config


def with_dbname(url: str, dbname: str) -> str:
    """``url`` pointing at database ``dbname`` (URL or key=value, TCP or unix socket)."""
    params = conninfo_to_dict(url)
    params["dbname"] = dbname
    return make_conninfo("", **params)


def run_cli(*args: str, env: dict[str, str | None] | None = None) -> subprocess.Popen[str]:
    """Start ``commandbus ARGS`` in a subprocess (``None`` in ``env`` unsets a variable)."""
    environ = dict(os.environ)
    for key, value in (env or {}).items():
        if value is None:
            environ.pop(key, None)
        else:
            environ[key] = value
    return subprocess.Popen(
        [sys.executable, "-m", "commandbus.cli", *args],
        env=environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


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


async def wait_for(
    predicate: Callable[[], bool | Awaitable[bool]],
    *,
    timeout: float = 15.0,  # noqa: ASYNC109
    interval: float = 0.02,
) -> None:
    """Poll a predicate (plain or async) until it is true; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)


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
