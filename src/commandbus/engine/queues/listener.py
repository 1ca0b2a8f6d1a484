"""A consumer's listener: LISTENs for its queue's wake-up channel, reconnecting."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

import psycopg

from commandbus.engine.db.connect import Conn, connect
from commandbus.errors import DatabaseUnavailableError

log = logging.getLogger("commandbus.consumer")

#: How long a consumer whose listener cannot connect waits before it reads anyway,
#: by polling (its listener keeps trying; it is normally up in milliseconds).
LISTEN_GRACE_SECONDS = 5.0


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

    async def gate(self, reads_after: asyncio.Event, *, poll: float) -> None:
        """Wait until the consumer may read: once ``reads_after`` is set, or a stop.

        Nothing is read before this listener listens: ``ready`` (the CLI's banner, a
        supervisor's "started") then comes before the first message is taken, and a
        stop before it is a stop of a consumer that never served. The wake-up set
        once it listens stays set, so the first read is at once. A listener that
        still cannot connect after :data:`LISTEN_GRACE_SECONDS` does not hold the
        queue: the consumer says so, counts as ready and reads by polling (every
        ``poll`` seconds) until its listener gets through.
        """
        what = self._what
        deadline = time.monotonic() + LISTEN_GRACE_SECONDS
        while not reads_after.is_set() and not self._stop.is_set():
            left = None if self._ready.is_set() else deadline - time.monotonic()
            if left is not None and left <= 0:
                log.warning(
                    "%s: not listening yet (its listener cannot connect); serving by "
                    "polling every %gs until it does",
                    what,
                    poll,
                )
                self._ready.set()
                continue
            gate = asyncio.create_task(reads_after.wait(), name=f"commandbus-gate-{what}")
            stop = asyncio.create_task(self._stop.wait(), name=f"commandbus-stop-{what}")
            try:
                await asyncio.wait({gate, stop}, timeout=left, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for t in (gate, stop):
                    t.cancel()
                await asyncio.gather(gate, stop, return_exceptions=True)

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
