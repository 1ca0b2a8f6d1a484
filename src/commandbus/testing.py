"""Testing your sagas and handlers: a throwaway database with everything in-process.

::

    from commandbus.testing import Testbed

    async def test_order_is_compensated():
        async with Testbed(handlers, [order_saga]) as tb:
            started = await tb.sagas.start_saga(order_saga, {"order_id": "o-1"})
            await tb.advance(timedelta(minutes=5))      # timers and retry backoffs are due
            saga = await tb.wait_for_saga(started.saga_id)
            assert saga.status is SagaStatus.COMPENSATED

A :class:`Testbed` creates a database of its own on the server (``url``, else
``DATABASE_URL``, else the embedded PostgreSQL), migrates it, runs a worker for
every domain of ``handlers`` (given the ``sagas``, as ``Worker(..., sagas=)``) and
a coordinator for ``sagas``, and drops the
database when the block ends. :meth:`Testbed.advance` moves time forward for
what waits in the queues (step timers, scheduled retries, delayed sends), so a
test never sleeps through a timeout or a backoff.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterable
from contextlib import AsyncExitStack
from datetime import timedelta
from types import TracebackType
from typing import Final, LiteralString, Self
from uuid import UUID

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from commandbus.arguments import delay_arg, uuid_arg
from commandbus.config import Config
from commandbus.engine.commands.bus import CommandBus
from commandbus.engine.db.embedded import Database
from commandbus.engine.worker.registry import HandlerRegistry
from commandbus.engine.worker.worker import Worker
from commandbus.errors import ValidationError
from commandbus.migrations import migrate
from commandbus.sagas.client import SagaClient
from commandbus.sagas.coordinator import Coordinator
from commandbus.sagas.decide import SAGA_QUEUE
from commandbus.sagas.definition import Saga, SagaRegistry
from commandbus.sagas.read import SagaRecord
from commandbus.sagas.state import SagaStatus

__all__ = ["Testbed"]

#: Settings that keep tests quick: short polls and backoffs.
TEST_CONFIG = Config(
    poll_interval=timedelta(milliseconds=100),
    backoff_base=timedelta(milliseconds=100),
    backoff_max=timedelta(seconds=2),
)

# Pull forward every message of a queue that waits on time: never read yet (a
# timer, a delayed send), or a command whose retry is scheduled. A message being
# handled right now (read, not yet recorded) keeps its visibility timeout.
_ADVANCE_SAGA: Final[LiteralString] = """
UPDATE pgmq.{queue} SET vt = vt - %(seconds)s * interval '1 second'
 WHERE vt > clock_timestamp() AND read_ct = 0
"""
_ADVANCE_DOMAIN: Final[LiteralString] = """
UPDATE pgmq.{queue} m SET vt = m.vt - %(seconds)s * interval '1 second'
 WHERE m.vt > clock_timestamp()
   AND (m.read_ct = 0 OR EXISTS (
        SELECT 1 FROM commandbus.command c
         WHERE c.domain = %(domain)s AND c.msg_id = m.msg_id
           AND c.status = 'RETRY_SCHEDULED'))
"""


class Testbed:
    """A throwaway database with workers and a coordinator in this process."""

    __test__ = False  # not a pytest test class

    def __init__(
        self,
        handlers: HandlerRegistry,
        sagas: Iterable[Saga] | SagaRegistry = (),
        *,
        url: str | None = None,
        config: Config | None = None,
        concurrency: int = 4,
    ) -> None:
        if not isinstance(handlers, HandlerRegistry):
            raise ValidationError(f"handlers must be a HandlerRegistry, got {handlers!r:.60}")
        self.registry = sagas if isinstance(sagas, SagaRegistry) else SagaRegistry(sagas)
        self.handlers = handlers
        self.config = config or TEST_CONFIG
        self._server_url = url
        self._concurrency = concurrency
        self._stack = AsyncExitStack()
        self._server: Database | None = None
        self._dbname = f"commandbus_test_{uuid.uuid4().hex[:12]}"
        self.url = ""
        self._bus: CommandBus | None = None
        self.workers: list[Worker] = []
        self.coordinator: Coordinator | None = None

    @property
    def bus(self) -> CommandBus:
        if self._bus is None:
            raise RuntimeError("the testbed is not running: use 'async with Testbed(...)'")
        return self._bus

    @property
    def sagas(self) -> SagaClient:
        return SagaClient(self.bus)

    async def __aenter__(self) -> Self:
        try:
            # the server: the URL given, else DATABASE_URL, else the embedded one
            env = Config.from_env()
            server = Database(self._server_url or env.database_url, env)
            await server.open()
            self._server = server
            admin = server.url
            await _admin(admin, sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self._dbname)))
            params = conninfo_to_dict(admin)
            params["dbname"] = self._dbname
            self.url = make_conninfo("", **params)
            await migrate(self.url)
            self._bus = await self._stack.enter_async_context(
                CommandBus(self.url, config=self.config)
            )
            for domain in sorted(set(self.handlers.domains()) | self.registry.domains):
                if not self.handlers.command_types(domain):
                    continue
                worker = Worker(
                    self.url,
                    self.handlers,
                    domain=domain,
                    config=self.config,
                    concurrency=self._concurrency,
                    # as in production: a step's outcome moves its saga at once
                    sagas=self.registry if len(self.registry) else None,
                )
                self.workers.append(await self._stack.enter_async_context(worker))
            if len(self.registry):
                self.coordinator = await self._stack.enter_async_context(
                    Coordinator(self.url, self.registry, config=self.config)
                )
        except BaseException:
            await self._close()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._close()

    async def _close(self) -> None:
        for w in self.workers:
            w.request_stop(0.5)  # a handler a test left hanging is cut short
        try:
            await self._stack.aclose()
        finally:
            self._bus = None
            self.workers = []
            self.coordinator = None
            server, self._server = self._server, None
            if server is not None:
                try:
                    if self.url:
                        await _admin(
                            server.url,
                            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                                sql.Identifier(self._dbname)
                            ),
                        )
                finally:
                    await server.close()

    # -- time and waiting ---------------------------------------------------------------

    async def advance(self, by: timedelta | float) -> None:
        """Move time forward by ``by`` for everything waiting in the queues.

        Step timers, scheduled retries and delayed sends due within ``by`` become
        due now; the coordinator and workers are woken. Handlers running now are
        not affected (their messages keep their visibility timeout).
        """
        seconds = delay_arg(by, "by")
        async with self.bus.pool.connection() as conn:
            if self.coordinator is not None:
                await conn.execute(
                    sql.SQL(_ADVANCE_SAGA).format(queue=sql.Identifier("q_" + SAGA_QUEUE)),
                    {"seconds": seconds},
                )
            for w in self.workers:
                await conn.execute(
                    sql.SQL(_ADVANCE_DOMAIN).format(queue=sql.Identifier("q_" + w.domain)),
                    {"seconds": seconds, "domain": w.domain},
                )
            woken = [w.domain for w in self.workers]
            if self.coordinator is not None:
                woken.append(SAGA_QUEUE)
            for queue in woken:
                await conn.execute("SELECT pg_notify(%s, '')", ("commandbus_" + queue,))

    async def wait_for_saga(
        self,
        saga_id: UUID | str,
        *,
        status: SagaStatus | None = None,
        timeout: timedelta | float = 30.0,  # noqa: ASYNC109
    ) -> SagaRecord:
        """Wait until the saga ends (or reaches ``status``); its record then.

        Raises ``TimeoutError`` naming the saga's status and current steps.
        """
        sid = uuid_arg(saga_id, "saga_id")
        deadline = time.monotonic() + delay_arg(timeout, "timeout")
        record = None
        while time.monotonic() < deadline:
            record = await self.sagas.get_saga(sid)
            if record is not None and (
                record.status is status if status is not None else record.status.is_final
            ):
                return record
            await asyncio.sleep(0.02)
        where = (
            "not found"
            if record is None
            else (f"{record.status.value}, waiting on {list(record.current_steps)}")
        )
        raise TimeoutError(f"saga {sid} did not get there in time: it is {where}")


async def _admin(url: str, statement: sql.Composed) -> None:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute(statement)
