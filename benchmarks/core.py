"""The scenario registry, result rows, the environment header and fresh databases."""

from __future__ import annotations

import contextlib
import os
import platform
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from commandbus.engine.db.connect import describe_url
from commandbus.migrations import migrate

DOMAIN = "bench"
COMMAND_TYPE = "Noop"
RAW_QUEUE = "raw_bench"

# -- results ------------------------------------------------------------------------------


@dataclass
class Row:
    """One line of a scenario's table: the library's figure against raw PGMQ's."""

    scenario: str
    case: str
    unit: str
    library: float | None
    raw: float | None = None
    #: library / raw (for throughput: the fraction of raw reached).
    ratio: float | None = None
    target: str = ""
    met: bool | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def ratio(library: float | None, raw: float | None) -> float | None:
    if library is None or not raw:
        return None
    return library / raw


# -- the registry -------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    #: What ``-n`` means for this scenario, its default and its ``--smoke`` value.
    n_meaning: str
    default_n: int
    smoke_n: int
    fn: Callable[[Context], Awaitable[list[Row]]]


SCENARIOS: dict[str, Scenario] = {}


def scenario(
    name: str, *, description: str, n_meaning: str, default_n: int, smoke_n: int
) -> Callable[
    [Callable[[Context], Awaitable[list[Row]]]], Callable[[Context], Awaitable[list[Row]]]
]:
    """Register ``async def fn(ctx) -> list[Row]`` as the scenario ``name`` (run order)."""

    def register(
        fn: Callable[[Context], Awaitable[list[Row]]],
    ) -> Callable[[Context], Awaitable[list[Row]]]:
        if name in SCENARIOS:
            raise ValueError(f"scenario {name!r} registered twice")
        SCENARIOS[name] = Scenario(name, description, n_meaning, default_n, smoke_n, fn)
        return fn

    return register


@dataclass
class Context:
    """What a scenario gets: its N, whether this is a smoke run, and fresh databases."""

    n: int
    smoke: bool
    databases: Databases
    log: Callable[[str], None]


# -- databases ----------------------------------------------------------------------------


class Databases:
    """A migrated template database and fresh copies of it, all dropped at the end.

    Every measured case gets its own copy, so no case sees another's dead tuples.
    """

    def __init__(self, server_url: str) -> None:
        self.server_url = server_url
        self.prefix = f"cb_bench_{secrets.token_hex(4)}"
        self.template = self.prefix
        self._created: list[str] = []
        self._counter = 0

    def url_of(self, dbname: str) -> str:
        return make_conninfo(self.server_url, dbname=dbname)

    async def _admin(self, statement: sql.Composed) -> None:
        async with await psycopg.AsyncConnection.connect(self.server_url, autocommit=True) as conn:
            await conn.execute(statement)

    async def setup(self) -> None:
        await self._admin(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.template)))
        self._created.append(self.template)
        await migrate(self.url_of(self.template))

    @contextlib.asynccontextmanager
    async def fresh(self) -> AsyncIterator[str]:
        """Yield the URL of a new copy of the migrated template; drop it afterwards."""
        self._counter += 1
        name = f"{self.prefix}_{self._counter}"
        await self._admin(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(self.template)
            )
        )
        self._created.append(name)
        try:
            yield self.url_of(name)
        finally:
            await self.drop(name)

    async def drop(self, name: str) -> None:
        await self._admin(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
        if name in self._created:
            self._created.remove(name)

    async def teardown(self) -> None:
        for name in reversed(list(self._created)):
            with contextlib.suppress(psycopg.Error):
                await self.drop(name)


async def settle(url: str) -> None:
    """Before a timed phase: fresh statistics, no dead tuples, no pending checkpoint."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute("VACUUM ANALYZE")
        with contextlib.suppress(psycopg.errors.InsufficientPrivilege):
            await conn.execute("CHECKPOINT")


async def server_now(conn: psycopg.AsyncConnection[Any]) -> Any:
    cur = await conn.execute("SELECT clock_timestamp()")
    row = await cur.fetchone()
    assert row is not None
    return row[0]


# -- environment --------------------------------------------------------------------------


def cpu_model() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


async def environment(server_url: str, *, embedded: bool) -> dict[str, Any]:
    async with await psycopg.AsyncConnection.connect(server_url, autocommit=True) as conn:
        settings = {}
        for name in ("server_version", "fsync", "synchronous_commit", "full_page_writes"):
            cur = await conn.execute(sql.SQL("SHOW {}").format(sql.Identifier(name)))
            row = await cur.fetchone()
            settings[name] = row[0] if row else None
    durable = settings["fsync"] == "on" and settings["synchronous_commit"] != "off"
    return {
        "database": ("embedded " if embedded else "DATABASE_URL ") + describe_url(server_url),
        **settings,
        "durable": durable,
        "cpu_model": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "python": platform.python_version(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "platform": platform.platform(),
    }
