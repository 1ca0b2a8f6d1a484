"""A command's stream has no ``commandbus.stream`` row; those of earlier releases do.

A command's version is its status row's (and its last event's). The stream row an
earlier release gave every command is neither read nor bumped any more, so a
command sent before an upgrade goes on through every path: the worker, operator
actions, ``EventStore.stream_version``, verify and rebuild. A command whose status
row is missing is recorded against the version of its last event.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

import psycopg

from commandbus import (
    Command,
    CommandBus,
    CommandRequest,
    CommandStatus,
    Failure,
    HandlerContext,
    HandlerRegistry,
    NewEvent,
    PermanentCommandError,
    Worker,
)
from commandbus.engine.commands import recording
from commandbus.engine.commands.store import Transition
from support import FAST, assert_streams_contiguous, scalar, wait_for

Conn = psycopg.AsyncConnection[Any]

STREAM_ROWS = "SELECT count(*) FROM commandbus.stream"


def stream_of(command_id: UUID) -> str:
    return f"command:payments:{command_id}"


async def status_of(bus: CommandBus, command_id: UUID) -> CommandStatus | None:
    record = await bus.get_command("payments", command_id)
    return None if record is None else record.status


async def test_a_command_stream_has_no_stream_row(bus: CommandBus, conn: Conn) -> None:
    sent = (await bus.send("payments", "Charge", {})).unwrap()
    assert await scalar(conn, STREAM_ROWS) == 0
    batch = (
        await bus.send_batch([CommandRequest(domain="payments", command_type="Charge")])
    ).unwrap()
    # a batch's stream keeps its row
    assert (
        await scalar(conn, "SELECT stream_id FROM commandbus.stream") == f"batch:{batch.batch_id}"
    )
    assert await bus.events.stream_version(stream_of(sent.command_id)) == 1
    again = await bus.send("payments", "Charge", {}, command_id=sent.command_id)
    assert isinstance(again, Failure) and again.code == "DUPLICATE_COMMAND"
    await assert_streams_contiguous(conn)


async def test_commands_sent_by_an_earlier_release_go_on(
    dsn: str, bus: CommandBus, conn: Conn
) -> None:
    reg = HandlerRegistry()
    refused: set[UUID] = set()

    @reg.handler("payments", "Charge")
    async def charge(cmd: Command, ctx: HandlerContext) -> Any:
        if cmd.data["refuse"] and cmd.command_id not in refused:
            refused.add(cmd.command_id)
            raise PermanentCommandError("refused once")
        return "charged"

    done = (await bus.send("payments", "Charge", {"refuse": False})).unwrap().command_id
    tsq = (await bus.send("payments", "Charge", {"refuse": True})).unwrap().command_id
    # what an earlier release also wrote for every command: a stream row
    for cid in (done, tsq):
        await conn.execute(
            "INSERT INTO commandbus.stream (stream_id, stream_type, version)"
            " VALUES (%s, 'command', 1)",
            (stream_of(cid),),
        )
    again = await bus.send("payments", "Charge", {}, command_id=done)
    assert isinstance(again, Failure) and again.code == "DUPLICATE_COMMAND"

    async with Worker(dsn, reg, domain="payments", config=FAST):

        async def settled() -> bool:
            return (await status_of(bus, done), await status_of(bus, tsq)) == (
                CommandStatus.COMPLETED,
                CommandStatus.IN_TROUBLESHOOTING_QUEUE,
            )

        await wait_for(settled)
        await bus.troubleshooting.retry("payments", tsq)

        async def retried() -> bool:
            return await status_of(bus, tsq) is CommandStatus.COMPLETED

        await wait_for(retried)

    histories = {
        cid: [e.event_type for e in await bus.command_history("payments", cid)]
        for cid in (done, tsq)
    }
    assert histories == {
        done: ["CommandSent", "CommandCompleted"],
        tsq: [
            "CommandSent",
            "CommandMovedToTroubleshootingQueue",
            "CommandRetriedByOperator",
            "CommandCompleted",
        ],
    }
    for cid, events in histories.items():
        assert await bus.events.stream_version(stream_of(cid)) == len(events)
        record = await bus.get_command("payments", cid)
        assert record is not None and record.version == len(events)
    # the old rows stay as they were: nothing reads or bumps them
    assert await scalar(conn, "SELECT array_agg(DISTINCT version) FROM commandbus.stream") == [1]
    assert (await bus.verify_projection()).ok
    await bus.rebuild_projection(replace_live=True)
    assert (await bus.verify_projection()).ok


async def test_without_its_status_row_a_command_is_recorded_at_its_last_events_version(
    bus: CommandBus, conn: Conn
) -> None:
    sent = (await bus.send("payments", "Charge", {})).unwrap()
    await conn.execute("DELETE FROM commandbus.command")

    def completion(expected: int) -> Transition:
        return Transition(
            domain="payments",
            command_id=sent.command_id,
            expected_version=expected,
            events=[NewEvent(event_type="CommandCompleted", data={"attempt": 1, "result": None})],
            msg_id=sent.msg_id,
            queue_op="delete",
        )

    for stale in (0, 2):
        assert await recording.record_transitions(conn, [completion(stale)]) == set()
    assert await recording.record_transitions(conn, [completion(1)]) == {stream_of(sent.command_id)}
    # a second delivery's outcome, read at the same version, is not recorded
    assert await recording.record_transitions(conn, [completion(1)]) == set()
    history = [e.event_type for e in await bus.command_history("payments", sent.command_id)]
    assert history == ["CommandSent", "CommandCompleted"]
    assert await bus.events.stream_version(stream_of(sent.command_id)) == 2
    assert await scalar(conn, "SELECT count(*) FROM pgmq.q_payments") == 0
