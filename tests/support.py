"""What the tests share besides fixtures (those are in conftest.py): settings,
queries, polling, database URLs and the CLI in a subprocess."""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import psycopg
from psycopg import sql
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
        "streams": await scalar(conn, STREAMS),
        "events": await scalar(conn, "SELECT count(*) FROM commandbus.event"),
        "commands": await scalar(conn, "SELECT count(*) FROM commandbus.command"),
        "messages": messages,
    }


#: How many streams exist: those with a commandbus.stream row and those with events
#: only (a command's stream has no row: its status row carries the version).
STREAMS = """
SELECT count(*) FROM (SELECT stream_id FROM commandbus.stream
                      UNION SELECT stream_id FROM commandbus.event) s
"""


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


#: Streams whose events are not numbered 1..n, and streams whose commandbus.stream
#: row is wrong: every stream but a command's has one, at its last event's version;
#: a command's has none (its status row carries the version).
STREAM_GAPS = """
SELECT e.stream_id, s.version, array_agg(e.stream_version ORDER BY e.stream_version)
  FROM commandbus.event e
  LEFT JOIN commandbus.stream s USING (stream_id)
 GROUP BY e.stream_id, s.version
HAVING array_agg(e.stream_version ORDER BY e.stream_version)
       IS DISTINCT FROM array(SELECT generate_series(1, max(e.stream_version)))
    OR CASE WHEN e.stream_id LIKE 'command:%' THEN s.version IS NOT NULL
            ELSE s.version IS DISTINCT FROM max(e.stream_version) END
"""


async def assert_streams_contiguous(conn: Any) -> None:
    """Every stream's events are numbered 1..version with no gap or duplicate, and
    its version is where it belongs (see STREAM_GAPS); no stream row lacks events."""
    bad = await fetch(conn, STREAM_GAPS)
    assert bad == [], bad
    empty = await scalar(
        conn,
        "SELECT count(*) FROM commandbus.stream s"
        " WHERE NOT EXISTS (SELECT 1 FROM commandbus.event e WHERE e.stream_id = s.stream_id)",
    )
    assert empty == 0


async def table_counts(conn: psycopg.AsyncConnection[Any]) -> dict[str, int]:
    """Row counts of every table in the commandbus and pgmq schemas (queues included):
    what "nothing was written" compares."""
    cur = await conn.execute(
        "SELECT n.nspname, c.relname FROM pg_class c"
        " JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname IN ('commandbus', 'pgmq') AND c.relkind IN ('r', 'p')"
        " ORDER BY 1, 2"
    )
    out: dict[str, int] = {}
    for schema, table in await cur.fetchall():
        query = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, table))
        out[f"{schema}.{table}"] = await scalar(conn, query)
    return out


def psycopg_warnings(caplog: Any) -> list[str]:
    """psycopg's warnings (such as "error ignored terminating") among the captured logs."""
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.WARNING
        and (r.name.startswith("psycopg") or "error ignored" in r.getMessage())
    ]
