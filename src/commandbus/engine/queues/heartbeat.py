"""A queue consumer's heartbeat: its row in ``commandbus.heartbeat``, kept fresh.

Each running consumer (a worker's domain, a saga coordinator) writes its row
every ``interval`` seconds from a side task of its own, on a connection of its
own, so a beat never waits on (or delays) reading and recording. A beat that
fails is logged (once per run of failures) and tried again at the next interval
with the consumers' reconnect logic: a heartbeat never stops a consumer. A
graceful stop marks the row stopped; a killed process just stops beating, and
readers take its row as gone after :data:`STALE_BEATS` missed intervals. Rows
that stopped or went silent more than :data:`KEEP_SECONDS` ago are deleted now
and then by the consumers themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import socket
import time
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Final
from uuid import UUID, uuid4

from commandbus.engine.db.connect import Conn, ResilientConnection, first_line
from commandbus.engine.observability import tracing
from commandbus.engine.queues import sql as queue_sql
from commandbus.engine.queues.stopping import end_tasks
from commandbus.engine.queues.tables import with_queue
from commandbus.errors import ConfigError, ValidationError

log = logging.getLogger("commandbus.consumer")

#: The environment variable giving the interval between beats, in seconds.
INTERVAL_VARIABLE: Final = "HEARTBEAT_SECONDS"
#: Seconds between two beats of a consumer, unless told otherwise.
DEFAULT_INTERVAL: Final = 10.0
#: The range of intervals accepted, in seconds.
MIN_INTERVAL: Final = 0.05
MAX_INTERVAL: Final = 3600.0
#: A consumer that has not beaten for this many of its intervals is taken as gone.
STALE_BEATS: Final = 3
#: Rows of consumers that stopped or went silent longer ago than this are deleted.
KEEP_SECONDS: Final = 24 * 3600.0
#: Seconds between two such clean-ups by one consumer.
PRUNE_EVERY: Final = 3600.0

_process: tuple[int, UUID] | None = None


def process_id() -> UUID:
    """An id of this process, shared by its consumers (a new one after a fork)."""
    global _process
    pid = os.getpid()
    if _process is None or _process[0] != pid:
        _process = (pid, uuid4())
    return _process[1]


def interval_from_env(environ: Mapping[str, str] | None = None) -> float:
    """``HEARTBEAT_SECONDS`` (default 10); a :class:`ConfigError` naming it if invalid."""
    raw = (os.environ if environ is None else environ).get(INTERVAL_VARIABLE, "").strip()
    if not raw:
        return DEFAULT_INTERVAL
    try:
        seconds = float(raw)
    except ValueError:
        seconds = float("nan")
    if not MIN_INTERVAL <= seconds <= MAX_INTERVAL:  # NaN fails too
        raise ConfigError(
            f"{INTERVAL_VARIABLE} must be a number of seconds from {MIN_INTERVAL:g} to "
            f"{MAX_INTERVAL:g}, got {raw[:40]!r}"
        )
    return seconds


def interval_arg(value: object) -> float:
    """A heartbeat interval given in code: seconds, from 0.05 to 3600."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValidationError(f"heartbeat_interval must be a number of seconds, got {value!r:.40}")
    if not MIN_INTERVAL <= value <= MAX_INTERVAL:
        raise ValidationError(
            f"heartbeat_interval must be from {MIN_INTERVAL:g} to {MAX_INTERVAL:g} seconds, "
            f"got {value!r}"
        )
    return float(value)


class Heartbeat:
    """The heartbeat of one consumer of ``queue``; :meth:`run` beats until cancelled.

    ``interval``: seconds between beats (None: ``HEARTBEAT_SECONDS``, else 10).
    """

    def __init__(
        self,
        url: str,
        *,
        queue: str,
        concurrency: int,
        interval: float | None,
        what: str,
        give_up: asyncio.Event,
    ) -> None:
        self.consumer_id = uuid4()
        interval = interval_from_env() if interval is None else interval_arg(interval)
        self.interval = interval
        self._what = what
        self._queue = queue
        self._started_at: datetime | None = None  # the server's time of the first beat
        self._task: asyncio.Task[None] | None = None
        self._row: dict[str, Any] = {
            "consumer_id": self.consumer_id,
            "host": socket.gethostname()[:255],
            "queue": queue,
            "concurrency": concurrency,
            "interval_ms": max(1, round(interval * 1000)),
        }
        # Retried for one interval at most; once a stop is requested (the consumer
        # is draining) each beat is one try: the stop never waits for a beat.
        self.connection = ResilientConnection(
            url,
            what=f"{what} heartbeat",
            retry_for=interval,
            give_up=give_up,
        )

    @property
    def started(self) -> bool:
        """Whether :meth:`start` was called (the row may exist)."""
        return self._task is not None

    def start(self) -> asyncio.Task[None]:
        """Start beating in a task of its own (ended by :meth:`end`)."""
        if self._task is None:
            self._task = asyncio.create_task(self.run(), name=f"commandbus-heartbeat-{self._what}")
        return self._task

    async def end(self) -> None:
        """Stop beating (within about a second, whatever the database does)."""
        task = self._task
        tracing.queue_readings.forget(self._queue)
        try:
            if task is not None:
                await end_tasks([task], f"{self._what} heartbeat", [self.connection])
        finally:
            with contextlib.suppress(Exception):
                await self.connection.close()

    async def run(self) -> None:
        """Beat every interval until cancelled; failures are logged, never raised."""
        failing = False
        next_prune = 0.0
        while True:
            prune = time.monotonic() >= next_prune
            try:
                await self.connection.run(functools.partial(self._beat, prune=prune))
            except Exception as exc:
                if not failing:
                    log.warning(
                        "%s: heartbeat failed (%s); trying again every %gs",
                        self._what,
                        first_line(exc),
                        self.interval,
                    )
                failing = True
            else:
                if failing:
                    log.info("%s: heartbeat written again", self._what)
                failing = False
                if prune:
                    next_prune = time.monotonic() + PRUNE_EVERY
            await asyncio.sleep(self.interval)

    async def mark_stopped(self, conn: Conn) -> None:
        """Mark the row stopped (written if missing), on ``conn``."""
        await self._write(conn, stopped=True)

    async def _beat(self, conn: Conn, *, prune: bool) -> None:
        await self._write(conn, stopped=False)
        if prune:
            await conn.execute(queue_sql.PRUNE_HEARTBEATS, {"keep": KEEP_SECONDS})
        if tracing.metrics_active():
            # the queue gauges (commandbus.queue.depth / .oldest_age) read this
            cur = await conn.execute(with_queue(queue_sql.QUEUE_READING, self._queue))
            row = await cur.fetchone()
            if row is not None:
                tracing.queue_readings.observe(self._queue, int(row[0]), float(row[1]))

    async def _write(self, conn: Conn, *, stopped: bool) -> None:
        cur = await conn.execute(
            queue_sql.HEARTBEAT,
            {
                **self._row,
                "process_id": process_id(),
                "pid": os.getpid(),
                "started_at": self._started_at,
                "stopped": stopped,
            },
        )
        row = await cur.fetchone()
        if row is not None and self._started_at is None:
            self._started_at = row[0]
