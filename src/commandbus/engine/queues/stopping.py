"""Ending a consumer's tasks within bounds, whatever the database does.

A stop has a deadline for handlers (its grace, which a second request may cut
short) and then about a second for the rest: :func:`end_tasks` cancels what is
left and frees tasks stuck on a server that stopped answering.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable

from commandbus.engine.db.connect import Conn, ResilientConnection

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
