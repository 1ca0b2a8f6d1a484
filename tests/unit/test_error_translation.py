"""The one psycopg -> CommandBusError translation, keyed on SQLSTATE, and retrying."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import errors as pg

from commandbus import DatabaseError, DatabaseUnavailableError, MigrationError
from commandbus.engine.db.connect import database_error, is_transient, is_unavailable, retrying

UNAVAILABLE = [
    pg.AdminShutdown,  # 57P01: a terminated backend, a server shutting down
    pg.CrashShutdown,
    pg.CannotConnectNow,
    pg.IdleSessionTimeout,
    pg.TooManyConnections,
    pg.ConnectionFailure,  # class 08
    pg.ConnectionException,
]
# OperationalError in psycopg, but the server is there: not "unavailable"
OPERATIONAL_NOT_UNAVAILABLE = [
    pg.SerializationFailure,
    pg.DeadlockDetected,
    pg.LockNotAvailable,
    pg.QueryCanceled,
    pg.DiskFull,
    pg.ProgramLimitExceeded,
    pg.ObjectInUse,
]


@pytest.mark.parametrize("cls", UNAVAILABLE)
def test_a_lost_connection_is_unavailable_by_its_sqlstate(cls: type[psycopg.Error]) -> None:
    exc = cls("gone")
    assert is_unavailable(exc) and is_transient(exc)
    err = database_error(exc, "doing it", other=MigrationError)
    assert type(err) is DatabaseUnavailableError and err.retryable
    assert err.details == {"sqlstate": cls.sqlstate}
    assert str(err) == f"doing it: gone (SQLSTATE {cls.sqlstate})"


def test_a_driver_error_without_sqlstate_is_unavailable_only_if_operational() -> None:
    assert is_unavailable(psycopg.OperationalError("connection failed: refused"))
    assert not is_unavailable(psycopg.InterfaceError("bad use"))
    assert not is_unavailable(psycopg.ProgrammingError("bad query"))
    err = database_error(psycopg.OperationalError("line one\nline two"), "connecting")
    assert type(err) is DatabaseUnavailableError
    assert str(err) == "connecting: line one"  # one line, no SQLSTATE to show


@pytest.mark.parametrize("cls", OPERATIONAL_NOT_UNAVAILABLE)
def test_other_operational_errors_are_not_unavailable(cls: type[psycopg.Error]) -> None:
    exc = cls("busy")
    assert not is_unavailable(exc)
    err = database_error(exc, "migrating", other=MigrationError)
    assert type(err) is MigrationError and err.details["sqlstate"] == cls.sqlstate
    assert type(database_error(exc, "reading")) is DatabaseError


def test_what_is_worth_retrying() -> None:
    for cls in (pg.SerializationFailure, pg.DeadlockDetected, pg.LockNotAvailable, pg.DiskFull):
        assert is_transient(cls("x")), cls
    for cls in (pg.UniqueViolation, pg.ProgramLimitExceeded, pg.ObjectInUse, pg.DivisionByZero):
        assert not is_transient(cls("x")), cls
    assert is_transient(DatabaseUnavailableError("cannot connect"))
    assert not is_transient(ValueError("x"))


async def test_retrying_retries_transient_errors_and_passes_others_at_once() -> None:
    calls: list[int] = []

    async def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise pg.DeadlockDetected("deadlock")
        return "done"

    assert await retrying(flaky, retry_for=5, what="t") == "done"
    assert len(calls) == 3

    calls.clear()

    async def refused() -> str:
        calls.append(1)
        raise pg.UniqueViolation("duplicate")

    with pytest.raises(pg.UniqueViolation):
        await retrying(refused, retry_for=5, what="t")
    assert len(calls) == 1


async def test_retrying_gives_up_on_a_lost_connection_as_unavailable() -> None:
    async def lost() -> None:
        raise pg.AdminShutdown("terminating connection")

    with pytest.raises(DatabaseUnavailableError, match="flusher: database lost") as info:
        await retrying(lost, retry_for=0.05, what="flusher")
    assert isinstance(info.value.__cause__, pg.AdminShutdown)
