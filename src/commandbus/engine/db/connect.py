"""Connections: open one, use the caller's or borrow one, make a block atomic, reconnect.

:func:`connect` is the one way a connection is opened (workers, the bus's schema
check, migrations, the command line). :func:`database_error` is the one
translation of a psycopg error into a :class:`~commandbus.errors.DatabaseError`,
keyed on the exception's SQLSTATE (its class when it has none), never on its
text; :func:`translated` applies it to a block. The stores take a caller's
connection or borrow one from a pool (:func:`borrow`), and make multi-statement
work one unit without ever committing behind the caller (:func:`atomic`). The
worker's and consumer's dedicated connections reconnect with tenacity backoff
when the server restarts or a backend is terminated (:class:`ResilientConnection`,
:func:`retrying`), for up to ``retry_for`` seconds, or until a stop gives up on
them.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager, suppress
from pathlib import Path
from typing import Any, Final, LiteralString, NoReturn, TypeVar

import psycopg
import tenacity
from psycopg import AsyncConnection
from psycopg.conninfo import conninfo_to_dict
from psycopg.pq import TransactionStatus
from psycopg.rows import tuple_row
from psycopg.types.json import set_json_loads
from psycopg_pool import AsyncConnectionPool

from commandbus.arguments import conn_arg
from commandbus.codec import loads
from commandbus.errors import ConfigError, DatabaseError, DatabaseUnavailableError

Conn = AsyncConnection[Any]

#: Seconds to wait for a server to accept a connection before giving up.
CONNECT_TIMEOUT_SECONDS = 10

# -- the one translation --------------------------------------------------------------------

# SQLSTATEs (a two-character entry is a whole class) saying the server cannot be
# used right now: connection exceptions, the server shutting down or not accepting
# connections yet, a terminated backend, too many connections. A driver error with
# no SQLSTATE that psycopg raises as OperationalError (refused, unknown host, lost
# in the middle of a statement, closed) means the same.
_UNAVAILABLE: Final = ("08", "57P01", "57P02", "57P03", "57P04", "57P05", "53300")
# Worth running again (on the same or a fresh connection): the above, and
# serialization failures and deadlocks, lock and statement timeouts, a server short
# of resources, system errors.
_TRANSIENT: Final = (*_UNAVAILABLE, "40", "53", "55P03", "57014", "58")

_log = logging.getLogger("commandbus.db")


def _matches(exc: BaseException, states: tuple[str, ...]) -> bool:
    if isinstance(exc, DatabaseUnavailableError):
        return True
    if not isinstance(exc, psycopg.Error):
        return False
    state = exc.sqlstate
    if state is None:
        return isinstance(exc, psycopg.OperationalError)
    return any(state.startswith(s) if len(s) == 2 else state == s for s in states)


def is_unavailable(exc: BaseException) -> bool:
    """The server cannot be reached or the connection is gone (by SQLSTATE or class)."""
    return _matches(exc, _UNAVAILABLE)


def is_transient(exc: BaseException) -> bool:
    """Running the same work again may succeed (lost connections included)."""
    return _matches(exc, _TRANSIENT)


def first_line(exc: BaseException) -> str:
    """The first line of an error's message (driver errors span several)."""
    text = str(exc).strip()
    return text.splitlines()[0].strip() if text else type(exc).__name__


def database_error(
    exc: psycopg.Error,
    doing: str,
    *,
    other: type[DatabaseError] = DatabaseError,
    hint: str = "",
) -> DatabaseError:
    """THE translation of a psycopg error met while ``doing`` something.

    A lost connection or an unreachable server (see :func:`is_unavailable`) is a
    :class:`DatabaseUnavailableError` (retryable); anything else is ``other``. The
    message is one line, ``<doing>: <the driver's first line> (SQLSTATE ...)``,
    and ``details`` carry the SQLSTATE. Raise it ``from exc``.
    """
    cls: type[DatabaseError] = DatabaseUnavailableError if is_unavailable(exc) else other
    state = f" (SQLSTATE {exc.sqlstate})" if exc.sqlstate else ""
    return cls(
        f"{doing}: {first_line(exc)}{state}{f' ({hint})' if hint else ''}",
        details={"sqlstate": exc.sqlstate},
    )


@contextmanager
def translated(
    doing: str, *, other: type[DatabaseError] | None = None, hint: str = ""
) -> Iterator[None]:
    """Raise a psycopg error of the block as :func:`database_error` says.

    Without ``other`` only a lost connection is translated: any other error (say,
    raised by a trigger on the caller's own tables) comes through as the psycopg
    error it is. Works around awaits too (``with translated(...):`` in a coroutine).
    """
    try:
        yield
    except psycopg.Error as exc:
        if other is None and not is_unavailable(exc):
            raise
        raise database_error(exc, doing, other=other or DatabaseError, hint=hint) from exc


# -- connecting -----------------------------------------------------------------------------


def describe_url(url: str) -> str:
    """``user@host:port/dbname`` for messages: never the password."""
    try:
        params = conninfo_to_dict(url)
    except psycopg.Error:
        return "<invalid connection string>"
    host = params.get("host") or params.get("hostaddr") or "localhost"
    port = params.get("port") or "5432"
    user = params.get("user")
    dbname = params.get("dbname") or user or "(default database)"
    return f"{f'{user}@' if user else ''}{host}:{port}/{dbname}"


# The embedded servers this process knows, by (host, port): messages name their data
# directory (an embedded server listens on a unix socket, usually in that directory).
_EMBEDDED: dict[tuple[str, str], Path] = {}


def note_embedded(url: str, data_dir: Path) -> None:
    """Remember that ``url`` is the embedded server of ``data_dir`` (for messages)."""
    with suppress(psycopg.Error):
        params = conninfo_to_dict(url)
        _EMBEDDED[(str(params.get("host") or ""), str(params.get("port") or "5432"))] = data_dir


def embedded_data_dir(host: object, port: object) -> Path | None:
    """The data directory of the embedded server at ``host``/``port``, if it is one."""
    key = (str(host or ""), str(port or "5432"))
    known = _EMBEDDED.get(key)
    if known is not None:
        return known
    # a socket directory that is a data directory: an embedded (or local) cluster
    if key[0].startswith("/") and (Path(key[0]) / "PG_VERSION").is_file():
        return Path(key[0])
    return None


def describe_conn(conn: Conn) -> str:
    """Which database ``conn`` is in, for messages: ``database 'x' (user@host:port/x)``,
    or ``database 'x' of the embedded PostgreSQL in DATA_DIR``. Never the password."""
    info = conn.info
    data_dir = embedded_data_dir(info.host, info.port)
    if data_dir is not None:
        return f"database {info.dbname!r} of the embedded PostgreSQL in {data_dir}"
    return f"database {info.dbname!r} ({info.user}@{info.host}:{info.port}/{info.dbname})"


def migrate_hint(conn: Conn) -> str:
    """How to migrate the database of ``conn``: ``run `commandbus migrate` ...``."""
    data_dir = embedded_data_dir(conn.info.host, conn.info.port)
    if data_dir is not None:
        return f"run `commandbus migrate` with COMMANDBUS_DATA_DIR={data_dir}"
    return "run `commandbus migrate` with DATABASE_URL pointing at it"


def describe_server(url: str) -> str:
    """``user@host:port/dbname``, and the data directory of an embedded server."""
    described = describe_url(url)
    with suppress(psycopg.Error):
        params = conninfo_to_dict(url)
        data_dir = embedded_data_dir(params.get("host"), params.get("port"))
        if data_dir is not None:
            return f"{described} (the embedded PostgreSQL in {data_dir})"
    return described


async def connect(url: str, *, autocommit: bool = True, prepare_threshold: int | None = 5) -> Conn:
    """Open a connection (autocommit unless told otherwise): the one way commandbus does.

    A malformed ``url`` is a :class:`ConfigError`; a server that cannot be reached
    is a :class:`DatabaseUnavailableError` naming it without its password.
    ``prepare_threshold=0`` prepares statements on first use. Without a
    ``connect_timeout`` in ``url``, giving up takes
    :data:`CONNECT_TIMEOUT_SECONDS`.
    """
    try:
        params = conninfo_to_dict(url)
    except psycopg.ProgrammingError as exc:
        raise ConfigError(
            f"DATABASE_URL is not a valid PostgreSQL connection string: {first_line(exc)}"
        ) from None
    kwargs: dict[str, Any] = {}
    if "connect_timeout" not in params:
        kwargs["connect_timeout"] = CONNECT_TIMEOUT_SECONDS
    with translated(
        f"cannot connect to PostgreSQL at {describe_server(url)}",
        other=DatabaseUnavailableError,
        hint="check DATABASE_URL and that the server is running",
    ):
        conn = await psycopg.AsyncConnection.connect(
            url, autocommit=autocommit, prepare_threshold=prepare_threshold, **kwargs
        )
    await configure(conn)
    return conn


async def configure(conn: Conn) -> None:
    """What every connection of commandbus gets (``configure=`` of its pools): json
    and jsonb read by :func:`commandbus.codec.loads` (the same values, faster)."""
    set_json_loads(loads, conn)


async def check_connection(url: str) -> None:
    """Connect and run ``SELECT 1``; raise :class:`DatabaseUnavailableError` if that fails."""
    conn = await connect(url)
    try:
        with translated(
            f"PostgreSQL at {describe_server(url)} failed a test query",
            other=DatabaseUnavailableError,
        ):
            await conn.execute("SELECT 1")
    finally:
        await conn.close()


# -- the caller's connection, or a pooled one -------------------------------------------------


@asynccontextmanager
async def borrow(pool: AsyncConnectionPool[Conn], conn: Conn | None) -> AsyncIterator[Conn]:
    """Yield ``conn`` if given (the caller's transaction), else a pooled connection.

    A connection lost in the block is a :class:`DatabaseUnavailableError`; other
    driver errors come through as they are (see :func:`translated`).
    """
    if conn is not None:
        conn_arg(conn)
    with translated("database unavailable"):
        if conn is not None:
            # the library reads its rows as tuples, whatever the caller's rows are
            factory = conn.row_factory
            conn.row_factory = tuple_row
            try:
                yield conn
            finally:
                conn.row_factory = factory
            return
        async with pool.connection() as c:
            yield c


@asynccontextmanager
async def atomic(conn: Conn) -> AsyncIterator[None]:
    """Make the statements of the block one unit, never committing behind the caller.

    - in a transaction (the caller's, explicit or implicit): a savepoint, so a
      failure in the block undoes only the block's work and the caller's
      transaction goes on; the caller commits or rolls back the rest;
    - autocommit and idle: a transaction of its own, committed when the block ends;
    - not autocommit and idle: the block's first statement opens the caller's
      implicit transaction, which stays open for the caller to commit; if the block
      fails that transaction (holding only the block's work) is rolled back.
    """
    if conn.autocommit or conn.info.transaction_status is not TransactionStatus.IDLE:
        async with conn.transaction():
            yield
        return
    try:
        yield
    except BaseException:
        with suppress(psycopg.Error):  # a broken connection has nothing left to undo
            await conn.rollback()
        raise


# -- reconnecting --------------------------------------------------------------------------

T = TypeVar("T")


#: While the database stays unavailable, the retries are logged again every this many.
_RETRIES_BETWEEN_WARNINGS = 10


def _say_retrying(
    exc: BaseException, attempt: int, seconds: float, *, what: str, retry_for: float
) -> None:
    """Log a retry after failed attempt number ``attempt``: the first one that waits
    for an unavailable database as a warning (so an operator sees why nothing
    happens), then every tenth while it lasts."""
    if not is_unavailable(exc):
        _log.info("%s: %s; trying again (attempt %d)", what, first_line(exc), attempt + 1)
    elif attempt == 1:
        _log.warning(
            "%s: the database is unavailable (%s); trying again for up to %gs",
            what,
            first_line(exc),
            retry_for,
        )
    elif attempt % _RETRIES_BETWEEN_WARNINGS == 0:
        _log.warning(
            "%s: the database is still unavailable after %.0fs (%s)",
            what,
            seconds,
            first_line(exc),
        )


def _say_retrying_after(
    state: tenacity.RetryCallState, *, started: float, what: str, retry_for: float
) -> None:
    """:func:`_say_retrying` for tenacity's retries, which follow the first attempt
    (made outside tenacity: its attempt 1 is the second)."""
    exc = state.outcome.exception() if state.outcome is not None else None
    if exc is not None:
        _say_retrying(
            exc,
            state.attempt_number + 1,
            time.monotonic() - started,
            what=what,
            retry_for=retry_for,
        )


def _give_up(exc: Exception, what: str) -> NoReturn:
    """Raise a failure that is not retried: a lost connection as
    :class:`DatabaseUnavailableError`, anything else as it is."""
    if isinstance(exc, psycopg.Error) and is_unavailable(exc):
        raise database_error(exc, f"{what}: database lost") from exc
    raise exc


#: The wait after the first failed attempt; it doubles after each retry, up to 5 s.
_FIRST_WAIT = 0.1


async def retrying(
    fn: Callable[[], Awaitable[T]],
    *,
    retry_for: float,
    what: str,
    give_up: asyncio.Event | None = None,
) -> T:
    """``await fn()``, retried with exponential backoff while its errors are transient.

    Lost connections, deadlocks and the like (:func:`is_transient`) are retried
    (after 0.1 s, then twice as long each time, up to 5 s); a lost connection
    still failing after ``retry_for`` is a :class:`DatabaseUnavailableError`; any
    other error comes through at once. Setting ``give_up`` (a worker's stop
    request) ends the waiting at once: the next failure is final instead of being
    retried for up to ``retry_for``.

    The first attempt runs without tenacity's machinery (about 45 us a call,
    paid by every statement of a worker otherwise); only a failure enters it.
    """
    started = time.monotonic()
    try:
        return await fn()
    except Exception as exc:
        first = exc
    if (
        not is_transient(first)
        or (give_up is not None and give_up.is_set())
        or time.monotonic() - started >= retry_for
    ):
        _give_up(first, what)
    _say_retrying(first, 1, time.monotonic() - started, what=what, retry_for=retry_for)
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    if give_up is not None:
        event = give_up

        async def sleep(seconds: float) -> None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), seconds)

    await sleep(_FIRST_WAIT)
    # what is left of retry_for, counted from the first attempt (the second attempt
    # runs whatever is left, as it always did)
    stop: tenacity.stop.stop_base = tenacity.stop_after_delay(
        max(0.0, retry_for - (time.monotonic() - started))
    )
    if give_up is not None:
        stop = stop | tenacity.stop_when_event_set(give_up)  # type: ignore[arg-type]
    try:
        async for attempt in tenacity.AsyncRetrying(
            retry=tenacity.retry_if_exception(is_transient),
            # tenacity's attempt n is the (n+1)th: it waits 0.1 s x 2^n
            wait=tenacity.wait_exponential(multiplier=2 * _FIRST_WAIT, max=5),
            stop=stop,
            sleep=sleep,
            reraise=True,
            before_sleep=functools.partial(
                _say_retrying_after, started=started, what=what, retry_for=retry_for
            ),
        ):
            with attempt:
                return await fn()
    except psycopg.Error as exc:
        _give_up(exc, what)
    raise AssertionError("unreachable")  # pragma: no cover


class ResilientConnection:
    """One dedicated connection, replaced whenever it breaks."""

    def __init__(
        self,
        url: str,
        *,
        what: str,
        retry_for: float,
        setup: Sequence[LiteralString] = (),
        prepare_threshold: int | None = 0,
        give_up: asyncio.Event | None = None,
    ) -> None:
        self._url = url
        self._give_up = give_up
        self._what = what
        self._retry_for = retry_for
        self._setup = tuple(setup)
        self._prepare_threshold = prepare_threshold
        self._conn: Conn | None = None

    async def _fresh(self) -> Conn:
        conn = await connect(self._url, prepare_threshold=self._prepare_threshold)
        try:
            for statement in self._setup:
                await conn.execute(statement)
        except BaseException:
            # not ours yet: a stop (a cancellation) or an error during the set-up
            # must not leave it open for the garbage collector to find
            await conn.close()
            raise
        return conn

    async def run(self, op: Callable[[Conn], Awaitable[T]]) -> T:
        """Run ``op`` on the connection, reconnecting and retrying if it was lost."""

        async def attempt() -> T:
            if self._conn is None or self._conn.closed or self._conn.broken:
                self._conn = await self._fresh()
            return await op(self._conn)

        return await retrying(
            attempt, retry_for=self._retry_for, what=self._what, give_up=self._give_up
        )

    async def open(self) -> None:
        """Connect now (with the same retries), so start-up problems show at once."""
        await self.run(_noop)

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()


async def _noop(_conn: Conn) -> None:
    return None
