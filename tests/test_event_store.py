"""The append-only event store: expected versions, one-statement appends, reads."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import pytest

from commandbus import CommandBus, ConcurrencyError, NewEvent, StreamAppend
from support import assert_streams_contiguous, scalar

Conn = psycopg.AsyncConnection[Any]


def _events(*types: str) -> list[NewEvent]:
    return [NewEvent(event_type=t, data={"t": t}) for t in types]


async def test_append_to_many_streams_in_one_call(bus: CommandBus) -> None:
    last = await bus.events.append(
        [
            StreamAppend(
                stream_id="order:1",
                stream_type="order",
                expected_version=0,
                events=_events("Created", "Paid"),
            ),
            StreamAppend(
                stream_id="order:2",
                stream_type="order",
                expected_version=0,
                events=_events("Created"),
            ),
        ]
    )
    assert last == 3
    one = await bus.events.read_stream("order:1")
    assert [(e.event_type, e.stream_version, e.position) for e in one] == [
        ("Created", 1, 1),
        ("Paid", 2, 2),
    ]
    assert await bus.events.stream_version("order:1") == 2
    assert await bus.events.stream_version("order:404") == 0
    later = await bus.events.read_all(after=1)
    assert [e.position for e in later] == [2, 3]
    assert all(e.transaction_id > 0 for e in later)


async def test_conflicting_append_inserts_nothing_and_draws_no_position(
    bus: CommandBus, conn: Conn
) -> None:
    await bus.events.append(
        [StreamAppend(stream_id="s", stream_type="t", expected_version=0, events=_events("A"))]
    )
    with pytest.raises(ConcurrencyError) as info:
        await bus.events.append(
            [
                StreamAppend(
                    stream_id="fresh", stream_type="t", expected_version=0, events=_events("X")
                ),
                StreamAppend(
                    stream_id="s", stream_type="t", expected_version=0, events=_events("B")
                ),
            ]
        )
    assert info.value.details["streams"] == ["s"]
    assert info.value.retryable
    # all or nothing: the fresh stream was not created either
    assert await scalar(conn, "SELECT count(*) FROM commandbus.event") == 1
    assert await scalar(conn, "SELECT count(*) FROM commandbus.stream") == 1
    with pytest.raises(ConcurrencyError):
        await bus.events.append(
            [StreamAppend(stream_id="s", stream_type="t", expected_version=5, events=_events("C"))]
        )
    await bus.events.append(
        [StreamAppend(stream_id="s", stream_type="t", expected_version=1, events=_events("B"))]
    )
    # the conflict path never drew an identity value: positions have no gaps
    assert await scalar(conn, "SELECT max(position) FROM commandbus.event") == 2


async def test_racing_appenders_keep_streams_contiguous(bus: CommandBus, conn: Conn) -> None:
    conflicts = 0

    async def appender(i: int) -> None:
        nonlocal conflicts
        done = 0
        while done < 15:
            version = await bus.events.stream_version("hot")
            try:
                await bus.events.append(
                    [
                        StreamAppend(
                            stream_id="hot",
                            stream_type="t",
                            expected_version=version,
                            events=[NewEvent(event_type="Tick", data={"by": i})],
                        ),
                    ]
                )
                done += 1
            except ConcurrencyError:
                conflicts += 1

    await asyncio.gather(*(appender(i) for i in range(8)))
    events = await bus.events.read_stream("hot")
    assert [e.stream_version for e in events] == list(range(1, 121))
    assert await scalar(conn, "SELECT max(position) FROM commandbus.event") == 120
    assert conflicts > 0  # the race really happened
    await assert_streams_contiguous(conn)


async def test_event_table_is_append_only(bus: CommandBus, conn: Conn) -> None:
    await bus.events.append(
        [StreamAppend(stream_id="s", stream_type="t", expected_version=0, events=_events("A"))]
    )
    for statement in (
        "UPDATE commandbus.event SET data = '{}'",
        "DELETE FROM commandbus.event",
        "TRUNCATE commandbus.event",
    ):
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
            await conn.execute(statement)
    assert await scalar(conn, "SELECT count(*) FROM commandbus.event") == 1


async def test_bad_appends_are_refused(bus: CommandBus) -> None:
    with pytest.raises(ValueError, match="nothing to append"):
        await bus.events.append([])
    with pytest.raises(ValueError, match="twice"):
        await bus.events.append(
            [
                StreamAppend(
                    stream_id="s", stream_type="t", expected_version=0, events=_events("A")
                ),
                StreamAppend(
                    stream_id="s", stream_type="t", expected_version=0, events=_events("B")
                ),
            ]
        )
    from commandbus import PayloadError

    with pytest.raises(PayloadError):
        await bus.events.append(
            [
                StreamAppend(
                    stream_id="s",
                    stream_type="t",
                    expected_version=0,
                    events=[NewEvent(event_type="A", data={"x": object()})],
                ),
            ]
        )
