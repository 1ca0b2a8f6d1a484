"""The one psycopg -> CommandBusError translation, keyed on SQLSTATE, and retrying."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time

import psycopg
import pytest
import tenacity
from psycopg import errors as pg

from commandbus import DatabaseError, DatabaseUnavailableError, MigrationError
from commandbus.engine.db import connect
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


@pytest.fixture
def fast_backoff(monkeypatch: pytest.MonkeyPatch) -> float:
    """Backoff from 10 ms instead of 100 ms (then doubling, as always)."""
    monkeypatch.setattr(connect, "_FIRST_WAIT", 0.01)
    return 0.01


async def test_retrying_waits_longer_each_time_and_numbers_its_attempts(
    caplog: pytest.LogCaptureFixture, fast_backoff: float
) -> None:
    """The first attempt runs outside tenacity; the retries after it keep the
    backoff (the first wait, then twice as long each time) and the attempt
    numbers of the log lines."""
    times: list[float] = []

    async def flaky() -> str:
        times.append(time.monotonic())
        if len(times) < 4:
            raise pg.DeadlockDetected("deadlock")
        return "done"

    with caplog.at_level(logging.INFO, logger="commandbus.db"):
        assert await retrying(flaky, retry_for=5, what="t") == "done"
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert len(gaps) == 3
    for gap, factor in zip(gaps, (1, 2, 4), strict=True):
        assert fast_backoff * factor <= gap < fast_backoff * factor + 0.5, gaps
    assert [r.getMessage() for r in caplog.records] == [
        f"t: deadlock; trying again (attempt {n})" for n in (2, 3, 4)
    ]


async def test_retrying_warns_once_while_the_database_is_unavailable(
    caplog: pytest.LogCaptureFixture, fast_backoff: float
) -> None:
    calls: list[int] = []

    async def lost() -> None:
        calls.append(1)
        raise pg.AdminShutdown("terminating connection")

    with (
        caplog.at_level(logging.INFO, logger="commandbus.db"),
        pytest.raises(DatabaseUnavailableError, match="reader: database lost"),
    ):
        await retrying(lost, retry_for=0.05, what="reader")
    # at 0, 10, 30 and 70 ms unless the machine is slow: the first failure after
    # 50 ms is the last
    assert 2 <= len(calls) <= 4
    [warning] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.getMessage() == (
        "reader: the database is unavailable (terminating connection); trying again for up to 0.05s"
    )


async def test_retrying_stops_at_once_when_told_to_give_up(fast_backoff: float) -> None:
    """A stop request set before a failure makes it the last; set during a wait,
    it ends the wait and the attempt after it is the last. A lost connection is
    then reported as unavailable."""
    calls: list[int] = []
    give_up = asyncio.Event()

    async def lost() -> None:
        calls.append(1)
        raise pg.AdminShutdown("terminating connection")

    give_up.set()
    with pytest.raises(DatabaseUnavailableError):
        await retrying(lost, retry_for=30, what="t", give_up=give_up)
    assert len(calls) == 1

    loop = asyncio.get_running_loop()

    for stopped_after in (1, 3):  # the wait after the first attempt, and a later one
        calls.clear()
        give_up.clear()

        async def lost_then_stopped(n: int = stopped_after) -> None:
            calls.append(1)
            if len(calls) == n:
                loop.call_soon(give_up.set)  # runs while the wait after this failure waits
            raise pg.AdminShutdown("terminating connection")

        with pytest.raises(DatabaseUnavailableError):
            await retrying(lost_then_stopped, retry_for=30, what="t", give_up=give_up)
        assert len(calls) == stopped_after + 1


async def test_retrying_a_success_costs_no_retry_machinery(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The common case (the first attempt succeeds) is a plain await: tenacity's
    machinery (~45 us a call) is entered only after a failure."""

    def refused(*args: object, **kwargs: object) -> None:
        raise AssertionError("tenacity entered")

    monkeypatch.setattr(tenacity, "AsyncRetrying", refused)

    async def ok() -> int:
        return 1

    assert await retrying(ok, retry_for=5, what="t") == 1
    calls: list[int] = []

    async def flaky() -> int:
        calls.append(1)
        if len(calls) == 1:
            raise pg.DeadlockDetected("deadlock")
        return 2

    with pytest.raises(AssertionError, match="tenacity entered"):
        await retrying(flaky, retry_for=5, what="t")
