"""A consumer's listener: LISTENs for its queue's wake-up channel, reconnecting."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import psycopg

from commandbus.engine.db.connect import Conn, connect
from commandbus.errors import DatabaseUnavailableError

log = logging.getLogger("commandbus.consumer")


class Listener:
    """Sets ``wake`` (and :attr:`notified`) on every NOTIFY of ``channel``.

    ``ready`` is set once it listens; after each (re)connection ``wake`` is set
    too, to catch up on anything sent while it was not listening. A lost
    connection is opened again (``retrying``) until ``stop`` is set.
    """

    def __init__(
        self,
        url: str,
        channel: str,
        *,
        what: str,
        wake: asyncio.Event,
        ready: asyncio.Event,
        stop: asyncio.Event,
        retrying: Callable[[Callable[[], Awaitable[Conn]]], Awaitable[Conn]],
    ) -> None:
        self._url = url
        self._channel = channel
        self._what = what
        self._wake = wake
        self._ready = ready
        self._stop = stop
        self._retrying = retrying
        #: the connection listening now, if any
        self.conn: Conn | None = None
        #: a NOTIFY arrived (the reader clears it when it reads)
        self.notified = False

    async def run(self) -> None:
        while True:
            try:
                conn = await self._retrying(lambda: connect(self._url))
                self.conn = conn
                async with conn:
                    # the channel is built from a validated queue name
                    await conn.execute(f'LISTEN "{self._channel}"')
                    self._wake.set()
                    self._ready.set()
                    async for _ in conn.notifies():
                        self.notified = True
                        self._wake.set()
            except (psycopg.OperationalError, DatabaseUnavailableError) as exc:
                if self._stop.is_set():
                    return
                log.warning("%s: listener lost its connection (%s); reconnecting", self._what, exc)
                await asyncio.sleep(0.5)
