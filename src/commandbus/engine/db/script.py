"""Several statements in one round trip, as one transaction.

A :class:`Script` sends its statements in a psycopg pipeline with a single
synchronisation point at the end: on an idle autocommit connection PostgreSQL
runs everything before that point as ONE implicit transaction, committed after
the last statement and rolled back entirely if any statement fails (the
statements after a failed one are skipped). The statements stay prepared and
their parameters bound on the server. It is for paths whose latency is a chain
of round trips (BEGIN, a few statements, COMMIT) that depend only on what was
decided beforehand; run it only on the library's own connections (after a
failure it resets the connection's prepared statements, see :func:`_resync`).
Statements that must apply in full end with
``commandbus.all_applied`` (migration 0010), whose SQLSTATE is
:data:`NOT_ALL_APPLIED`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import psycopg
from psycopg import sql
from psycopg.pq import TransactionStatus

from commandbus.engine.db.connect import Conn

#: SQLSTATE raised by ``commandbus.all_applied`` when a statement did not apply in full
NOT_ALL_APPLIED = "CB409"

Query = bytes | sql.SQL | sql.Composed


def not_all_applied(exc: BaseException) -> bool:
    """Whether ``exc`` is a script undone by ``commandbus.all_applied``."""
    return isinstance(exc, psycopg.Error) and exc.sqlstate == NOT_ALL_APPLIED


class Script:
    """Statements to send at once; :meth:`run` returns each one's rows."""

    def __init__(self) -> None:
        self._statements: list[tuple[Query, Mapping[str, Any] | None]] = []

    def __len__(self) -> int:
        return len(self._statements)

    def add(self, query: Query, params: Mapping[str, Any] | None = None) -> int:
        """Add a statement; returns its index in :meth:`run`'s result."""
        self._statements.append((query, params))
        return len(self._statements) - 1

    async def run(self, conn: Conn) -> list[list[tuple[Any, ...]]]:
        """Run the statements as one transaction (``conn`` must be idle, autocommit)."""
        if not conn.autocommit or conn.info.transaction_status != TransactionStatus.IDLE:
            raise RuntimeError("a script runs on an idle autocommit connection only")
        cursors: list[psycopg.AsyncCursor[Any]] = []
        try:
            await send_pipelined(conn, self._statements, cursors)
            return [await c.fetchall() if c.description is not None else [] for c in cursors]
        except BaseException as exc:
            await _resync(conn, exc)
            raise
        finally:
            for c in cursors:
                await c.close()


async def send_pipelined(
    conn: Conn,
    statements: Iterable[tuple[Query, Mapping[str, Any] | None]],
    cursors: list[psycopg.AsyncCursor[Any]],
) -> None:
    """Send ``statements`` in a psycopg pipeline, one cursor each (appended to
    ``cursors``, for the caller to read and close), with one Sync when it ends.

    Each statement is on its way to the server once it is sent: ``statements`` may be
    a generator that prepares the next one meanwhile (an error it raises ends the
    sending and comes through). On an idle autocommit connection the statements
    form one transaction; inside a transaction they are part of it.

    A failure the server reports while statements are still being sent ends the
    sending, and so does an error of ``statements`` or a cancellation; either way
    the pipeline is left normally (leaving it with an exception would log
    psycopg's "error ignored terminating" warning), and then the error that ended
    the sending is raised: the statement's own, not the "pipeline aborted" of the
    statements skipped after it, or the generator's, or the cancellation.
    """
    first: psycopg.Error | None = None
    ended: BaseException | None = None
    try:
        async with conn.pipeline():
            try:
                for query, params in statements:
                    cur = conn.cursor()
                    cursors.append(cur)
                    try:
                        await cur.execute(query, params)
                    except psycopg.Error as exc:
                        first = exc
                        break
            except BaseException as exc:  # raised below, once the pipeline is left
                ended = exc
    except psycopg.Error as exc:
        if ended is None:
            raise first or exc from None
    if ended is not None:
        raise ended
    if first is not None:
        raise first


async def run_all_applied(script: Script, conn: Conn) -> str | None:
    """Run ``script``: None when it committed, or why ``commandbus.all_applied`` undid
    it (nothing is written then). Any other error comes through."""
    ran = await run_all_applied_rows(script, conn)
    return ran if isinstance(ran, str) else None


async def run_all_applied_rows(script: Script, conn: Conn) -> list[list[tuple[Any, ...]]] | str:
    """:func:`run_all_applied` that returns each statement's rows when it committed."""
    try:
        return await script.run(conn)
    except psycopg.Error as exc:
        if not_all_applied(exc):
            return exc.diag.message_primary or str(exc)
        raise


async def _resync(conn: Conn, exc: BaseException) -> None:
    """Bring psycopg's prepared statements and the server's back in line after a
    script that did not complete.

    After an aborted pipeline outside an explicit transaction, psycopg's bookkeeping
    is off both ways (it resets it only on a ROLLBACK): a statement skipped after the
    failure may count as prepared although the server never saw it (its next use
    fails: "prepared statement ... does not exist"), and the failed one is forgotten
    by psycopg but kept by the server (a leak per failure). So psycopg's side is
    emptied and then the server's (``DEALLOCATE ALL``): every statement is prepared
    afresh on its next use. Where that cannot be done, and on a connection the script
    was cancelled on (its state is unknown), the connection is closed instead: a
    pool or a :class:`ResilientConnection` replaces it.
    """
    if conn.closed or conn.broken:
        return
    # psycopg's own bookkeeping (private: if it is ever gone, the connection is closed)
    clear: Any = getattr(getattr(conn, "_prepared", None), "clear", None)
    if (
        isinstance(exc, psycopg.Error)
        and conn.info.transaction_status == TransactionStatus.IDLE
        and callable(clear)
    ):
        try:
            clear()
            await conn.execute("DEALLOCATE ALL", prepare=False)
            return
        except psycopg.Error:
            pass  # closed below
    await conn.close()
