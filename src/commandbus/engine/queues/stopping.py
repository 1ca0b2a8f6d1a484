"""Ending a consumer's tasks within bounds, whatever the database does.

A stop has a deadline for handlers (its grace, which a second request may cut
short: :class:`Deadline`) and then about a second for the rest: :func:`end_tasks`
cancels what is left and frees tasks stuck on a server that stopped answering,
and :func:`last_writes` hands back what is still held in one bounded try.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable

import psycopg

from commandbus.engine.db.connect import Conn, ResilientConnection, connect
from commandbus.errors import DatabaseUnavailableError

log = logging.getLogger("commandbus.consumer")

#: seconds running handlers get when a stop names no timeout
DEFAULT_GRACE = 30.0
#: seconds a stop may take past its grace to record what finished and hand back the rest
FINAL_SECONDS = 1.0
#: seconds a cancelled task gets before the connections it may be stuck on are closed
STUCK_SECONDS = 0.25


async def end_tasks(
    tasks: Iterable[asyncio.Task[None]],
    what: str,
    connections: Iterable[ResilientConnection | Conn],
) -> None:
    """Cancel ``tasks`` and wait for them, at most about two seconds.

    A task stuck in a statement on a server that stopped answering (psycopg
    waits for its cancel request to time out) is cancelled once more, then
    freed by closing the connections it may be using; one that still does not
    end is abandoned.
    """
    tasks = list(tasks)
    try:
        await _end(tasks, what, connections)
    finally:
        for task in tasks:  # what they died of was logged, or is a stop's doing
            if task.done() and not task.cancelled():
                task.exception()


async def _end(
    tasks: list[asyncio.Task[None]],
    what: str,
    connections: Iterable[ResilientConnection | Conn],
) -> None:
    late = [t for t in tasks if not t.done()]
    for task in late:
        task.cancel()
    if not late:
        return
    _, stuck = await asyncio.wait(late, timeout=STUCK_SECONDS)
    if stuck:
        # psycopg answers a cancelled statement by asking the server to cancel
        # it and waiting (5 s each); a second cancellation makes it give up
        # and close the connection
        for task in stuck:
            task.cancel()
        _, stuck = await asyncio.wait(stuck, timeout=STUCK_SECONDS)
    if stuck:
        for held in connections:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(FINAL_SECONDS):
                    await held.close()
        _, stuck = await asyncio.wait(stuck, timeout=FINAL_SECONDS)
    for task in stuck:
        name = task.get_name()
        log.error("%s task %s does not end; abandoning it", what, name)


class Deadline:
    """By when a stop's running handlers must end: set by the first stop request,
    only ever moved earlier by later ones (even while :meth:`wait` waits)."""

    def __init__(self) -> None:
        self._at: float | None = None  # monotonic time
        self._moved = asyncio.Event()

    def shorten(self, grace: float) -> None:
        at = time.monotonic() + grace
        if self._at is None or at < self._at:
            self._at = at
            self._moved.set()

    def left(self) -> float:
        """Seconds until the deadline (0 when passed or not set)."""
        return max(0.0, (self._at or 0) - time.monotonic())

    async def wait(self, pending: Callable[[], list[asyncio.Task[None]]], what: str) -> None:
        """Wait for ``pending()`` tasks to end, until the deadline."""
        while running := pending():
            left = self.left()
            if left <= 0:
                return
            self._moved.clear()
            moved = asyncio.create_task(self._moved.wait(), name=f"commandbus-deadline-{what}")
            try:
                await asyncio.wait(
                    [*running, moved], timeout=left, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                moved.cancel()
                await asyncio.gather(moved, return_exceptions=True)


async def last_writes(
    url: str,
    what: str,
    *,
    release: Callable[[Conn], Awaitable[None]] | None,
    held: int,
    stopped: Callable[[Conn], Awaitable[None]] | None,
) -> bool:
    """A stopped consumer's last words, on one fresh connection, in one bounded try:
    make the ``held`` messages visible again (``release``), then mark its heartbeat
    stopped. Returns whether the messages were released (they reappear after their
    vt otherwise; a heartbeat not marked goes stale)."""
    if release is None and stopped is None:
        return False
    released = False
    try:
        async with asyncio.timeout(FINAL_SECONDS):
            conn = await connect(url)
            async with conn:
                if release is not None:
                    await release(conn)
                    released = True
                if stopped is not None:
                    await stopped(conn)
    except (TimeoutError, psycopg.Error, DatabaseUnavailableError) as exc:
        if release is not None and not released:
            log.warning(
                "%s: could not release %d messages (%r); they reappear after their vt",
                what,
                held,
                exc,
            )
        else:
            log.info("%s: could not mark its heartbeat stopped (%r)", what, exc)
    return released
