"""PGMQ queue management: one queue per domain, created once, with a wake-up trigger."""

from __future__ import annotations

from typing import Final, LiteralString

import psycopg
from psycopg import sql

from commandbus.engine.db.connect import Conn
from commandbus.engine.queues import sql as queue_sql
from commandbus.errors import ConcurrencyError, InvalidNameError
from commandbus.names import validate_queue_name

#: At most one wake-up NOTIFY per queue per this many milliseconds (counted at commit).
DEFAULT_WAKEUP_THROTTLE_MS = 2


def queue_table(queue: str) -> sql.Identifier:
    """The PGMQ table of a (validated) queue, to use after ``pgmq.``."""
    return sql.Identifier("q_" + validate_queue_name(queue))


def archive_table(queue: str) -> sql.Identifier:
    return sql.Identifier("a_" + validate_queue_name(queue))


def next_msg_id(queue: str) -> sql.Composed:
    """An expression drawing the next message id of a queue from its own sequence.

    For a statement that must know a message's id before inserting it (the
    insert then says ``OVERRIDING SYSTEM VALUE``). The sequence is looked up once
    per statement (an InitPlan), by name of its table, so it is whatever PGMQ
    made it (an identity or a serial column).
    """
    table = "pgmq.q_" + validate_queue_name(queue)
    return sql.SQL("nextval((SELECT pg_get_serial_sequence({}, 'msg_id')::regclass))").format(
        sql.Literal(table)
    )


def with_queue(template: str, queue: str) -> sql.Composed:
    """Fill ``{queue}`` (and ``{archive}`` if present) in a statement template."""
    return sql.SQL(template).format(queue=queue_table(queue), archive=archive_table(queue))


async def wakeup_throttle_ms(conn: Conn, queue: str) -> int | None:
    """How often, at most, senders wake a queue's readers (None: no wake-up installed)."""
    cur = await conn.execute(queue_sql.WAKEUP_THROTTLE, {"queue": validate_queue_name(queue)})
    row = await cur.fetchone()
    return None if row is None else int(row[0])


_CHANNEL_PREFIX: Final = "commandbus_"


def wakeup_channel(queue: str) -> str:
    """The LISTEN channel on which a queue's readers are woken."""
    return _CHANNEL_PREFIX + validate_queue_name(queue)


def wakeup_setting(queue: str) -> str:
    """The transaction-local setting by which a queue's wake-up trigger (migration 0004)
    marks a transaction that already queued its wake-up: set beforehand, it sends none."""
    return "commandbus.wakeup_" + validate_queue_name(queue)


def queue_of_channel(channel: str) -> str | None:
    """The queue whose readers :func:`wakeup_channel` wakes on ``channel`` (None: no queue's)."""
    queue = channel.removeprefix(_CHANNEL_PREFIX)
    if queue == channel:
        return None
    try:
        return validate_queue_name(queue)
    except InvalidNameError:
        return None


async def queue_exists(conn: Conn, queue: str) -> bool:
    """Whether ``conn`` sees ``queue`` (its own transaction's uncommitted one too)."""
    cur = await conn.execute(queue_sql.QUEUE_EXISTS, {"queue": queue})
    return await cur.fetchone() is not None


class QueueRegistry:
    """Creates queues on first use and remembers, per process, which exist."""

    def __init__(self, *, throttle_ms: int = DEFAULT_WAKEUP_THROTTLE_MS) -> None:
        self._known: set[str] = set()
        self._throttle_ms = throttle_ms

    def is_known(self, queue: str) -> bool:
        return queue in self._known

    async def ensure(
        self, conn: Conn, queue: str, *, remember: bool = True, lock_wait_ms: int | None = None
    ) -> None:
        """Create ``queue`` (PGMQ tables, wake-up trigger) unless it exists.

        ``remember=False`` when ``conn`` is in a transaction that may yet roll back:
        the queue is then not taken as existing by later calls. ``lock_wait_ms``
        bounds the wait for another transaction creating the same queue (on a
        connection of the library's own: the caller's settings are never touched);
        past it, :class:`~commandbus.errors.ConcurrencyError`.
        """
        validate_queue_name(queue)
        if queue in self._known:
            return
        cur = await conn.execute(queue_sql.QUEUE_EXISTS, {"queue": queue})
        if await cur.fetchone() is None:
            async with conn.transaction():
                if lock_wait_ms is not None:
                    await conn.execute(_LOCK_WAIT, {"ms": f"{lock_wait_ms}ms"})
                try:
                    await conn.execute(queue_sql.QUEUE_LOCK, {"queue": queue})
                except psycopg.errors.LockNotAvailable:
                    waited = "in time" if lock_wait_ms is None else f"in {lock_wait_ms / 1000:g} s"
                    raise ConcurrencyError(
                        f"queue {queue!r} is being created by a transaction that did not "
                        f"end {waited} (create_domain(conn=) in a transaction still open?): "
                        "try again once it has"
                    ) from None
                cur = await conn.execute(queue_sql.QUEUE_EXISTS, {"queue": queue})
                if await cur.fetchone() is None:
                    await conn.execute(queue_sql.CREATE_QUEUE, {"queue": queue})
                    await conn.execute(
                        _INSTALL_WAKEUP, {"queue": queue, "throttle_ms": self._throttle_ms}
                    )
                    await conn.execute(_REGISTER_QUEUE, {"queue": queue})
        if remember:
            self._known.add(queue)


# The wake-up (a deferred trigger deciding at commit, see migration 0004), then the
# queue's row, which marks it as complete.
_INSTALL_WAKEUP: Final[LiteralString] = (
    "SELECT commandbus.install_queue_wakeup(%(queue)s, %(throttle_ms)s)"
)
# For this transaction only (set_config(..., true) is SET LOCAL).
_LOCK_WAIT: Final[LiteralString] = "SELECT set_config('lock_timeout', %(ms)s, true)"

_REGISTER_QUEUE: Final[LiteralString] = (
    "INSERT INTO commandbus.queue (queue_name) VALUES (%(queue)s) ON CONFLICT DO NOTHING"
)
