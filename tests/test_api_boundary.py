"""The public API boundary: ids normalised, the same id in two domains, library streams.

Every id that enters the public API is turned into a ``uuid.UUID`` (its text forms
name the same command); the same id may exist in two domains in a batch as with
``send``; library-owned streams cannot be written through ``bus.events``.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID, uuid4

import psycopg
import pytest

from commandbus import (
    Command,
    CommandBus,
    CommandFilter,
    CommandRequest,
    CommandStatus,
    Failure,
    HandlerContext,
    HandlerRegistry,
    InvalidStateError,
    NewEvent,
    PermanentCommandError,
    StreamAppend,
    Success,
    ValidationError,
    Worker,
)
from support import FAST, counts, fetch, scalar, wait_for

Conn = psycopg.AsyncConnection[Any]


def text_forms(u: UUID) -> list[str]:
    return [str(u).upper(), "{" + str(u) + "}", u.hex, f"urn:uuid:{u}", u.hex.upper()]


# -- 6: ids are normalised to UUID wherever they enter -------------------------------------


@pytest.mark.parametrize("form", range(5), ids=["upper", "braces", "hex", "urn", "HEX"])
async def test_a_text_command_id_names_the_same_command(
    bus: CommandBus, conn: Conn, form: int
) -> None:
    u = uuid4()
    text = text_forms(u)[form]
    corr, caus, saga = uuid4(), uuid4(), uuid4()
    sent = await bus.send(
        "payments",
        "Charge",
        {},
        command_id=text,  # type: ignore[arg-type]
        correlation_id=str(corr).upper(),  # type: ignore[arg-type]
        causation_id=caus.hex,  # type: ignore[arg-type]
        saga_id=f"urn:uuid:{saga}",  # type: ignore[arg-type]
    )
    assert isinstance(sent, Success)
    assert type(sent.value.command_id) is UUID and sent.value.command_id == u
    assert sent.value.correlation_id == corr
    assert await scalar(conn, "SELECT stream_id FROM commandbus.event") == f"command:payments:{u}"
    message = await scalar(conn, "SELECT message FROM pgmq.q_payments")
    assert message["command_id"] == str(u)
    assert message["correlation_id"] == str(corr)
    assert message["causation_id"] == str(caus)
    assert message["saga_id"] == str(saga)
    for other in [u, *text_forms(u)]:
        record = await bus.get_command("payments", other)  # type: ignore[arg-type]
        assert record is not None and record.command_id == u
        assert record.correlation_id == corr and record.saga_id == saga
        history = await bus.command_history("payments", other)  # type: ignore[arg-type]
        assert [e.event_type for e in history] == ["CommandSent"]
        assert history[0].causation_id == caus
        # another text form of the same id is the same command: a duplicate
        again = await bus.send("payments", "Charge", {}, command_id=other)  # type: ignore[arg-type]
        assert isinstance(again, Failure) and again.code == "DUPLICATE_COMMAND"
    page = await bus.list_commands(CommandFilter(correlation_id=str(corr).upper()))
    assert [c.command_id for c in page.items] == [u]
    assert await counts(conn) == {"streams": 1, "events": 1, "commands": 1, "messages": 1}


async def test_text_ids_in_a_batch_are_normalised(bus: CommandBus, conn: Conn) -> None:
    bid, cid, corr = uuid4(), uuid4(), uuid4()
    result = await bus.send_batch(
        [
            CommandRequest(domain="payments", command_type="Charge", command_id=cid.hex),  # type: ignore[arg-type]
            CommandRequest(domain="payments", command_type="Charge", command_id=str(cid)),  # type: ignore[arg-type]
        ],
        batch_id="{" + str(bid).upper() + "}",  # type: ignore[arg-type]
        correlation_id=f"urn:uuid:{corr}",  # type: ignore[arg-type]
    )
    # the two text forms are one id: repeated within the batch
    assert isinstance(result, Failure) and str(cid) in result.message
    assert (await counts(conn))["events"] == 0

    result = await bus.send_batch(
        [CommandRequest(domain="payments", command_type="Charge", command_id=cid.hex)],  # type: ignore[arg-type]
        batch_id="{" + str(bid).upper() + "}",  # type: ignore[arg-type]
        correlation_id=f"urn:uuid:{corr}",  # type: ignore[arg-type]
    )
    assert isinstance(result, Success)
    assert result.value.batch_id == bid and result.value.command_ids == (cid,)
    streams = {r[0] for r in await fetch(conn, "SELECT stream_id FROM commandbus.event")}
    assert streams == {f"batch:{bid}", f"command:payments:{cid}"}
    batch = await bus.get_batch(str(bid).upper())  # type: ignore[arg-type]
    assert batch is not None and batch.batch_id == bid and batch.correlation_id == corr
    page = await bus.list_commands(CommandFilter(batch_id=bid.hex))
    assert [c.command_id for c in page.items] == [cid]


async def test_troubleshooting_actions_take_text_ids(dsn: str, bus: CommandBus) -> None:
    sent = (await bus.send("payments", "Charge", {})).unwrap()
    u = sent.command_id
    with pytest.raises(InvalidStateError, match="PENDING"):
        await bus.troubleshooting.cancel("payments", str(u).upper())  # type: ignore[arg-type]
    reg = HandlerRegistry()

    @reg.handler("payments", "Charge")
    async def charge(cmd: Command, ctx: HandlerContext) -> None:
        raise PermanentCommandError("no")

    async with Worker(dsn, reg, domain="payments", config=FAST):

        async def in_tsq() -> bool:
            r = await bus.get_command("payments", u)
            return r is not None and r.status is CommandStatus.IN_TROUBLESHOOTING_QUEUE

        await wait_for(in_tsq)
    await bus.troubleshooting.complete("payments", f"urn:uuid:{u}", result=1)  # type: ignore[arg-type]
    history = await bus.command_history("payments", u)
    assert history[-1].event_type == "CommandCompletedByOperator"
    assert history[-1].causation_id == u


# -- 7: the same id in two domains of one batch --------------------------------------------


async def test_the_same_id_in_two_domains_of_one_batch(bus: CommandBus, conn: Conn) -> None:
    cid = uuid4()
    result = await bus.send_batch(
        [
            CommandRequest(domain="payments", command_type="Charge", command_id=cid),
            CommandRequest(domain="shipping", command_type="Ship", command_id=cid),
            CommandRequest(domain="shipping", command_type="Ship"),
        ]
    )
    assert isinstance(result, Success), result
    assert result.value.command_ids[:2] == (cid, cid)
    pay = await bus.get_command("payments", cid)
    ship = await bus.get_command("shipping", cid)
    assert pay is not None and ship is not None
    assert pay.command_type == "Charge" and ship.command_type == "Ship"
    assert result.value.msg_ids[0] == pay.msg_id
    assert result.value.msg_ids[1] == ship.msg_id
    assert await scalar(conn, "SELECT count(*) FROM pgmq.q_shipping") == 2
    assert await scalar(conn, "SELECT count(*) FROM commandbus.command") == 3
    assert len(await bus.command_history("shipping", cid)) == 1

    # and in a later batch, the id existing in one domain only is a duplicate there only
    again = await bus.send_batch(
        [CommandRequest(domain="billing", command_type="Bill", command_id=cid)]
    )
    assert again.ok
    dup = await bus.send_batch(
        [
            CommandRequest(domain="audit", command_type="Note", command_id=cid),
            CommandRequest(domain="shipping", command_type="Ship", command_id=cid),
        ]
    )
    assert isinstance(dup, Failure) and dup.details["command_ids"] == [str(cid)]
    assert "shipping" in dup.message


# -- 8: library-owned streams are not writable through bus.events --------------------------


def _append(stream_id: str, stream_type: str, version: int = 0) -> list[StreamAppend]:
    return [
        StreamAppend(
            stream_id=stream_id,
            stream_type=stream_type,
            expected_version=version,
            events=[NewEvent(event_type="Tampered", data={})],
        )
    ]


async def test_library_streams_cannot_be_appended_to_publicly(
    dsn: str, bus: CommandBus, conn: Conn
) -> None:
    sent = (await bus.send("payments", "Charge", {})).unwrap()
    batch = (
        await bus.send_batch([CommandRequest(domain="payments", command_type="Charge")])
    ).unwrap()
    before = await counts(conn)
    refused = [
        _append(f"command:payments:{sent.command_id}", "command", 1),
        _append(f"command:payments:{sent.command_id}", "order", 1),
        _append(f"command:payments:{uuid4()}", "order"),
        _append(f"batch:{batch.batch_id}", "batch", 1),
        _append(f"batch:{uuid4()}", "order"),
        _append("quarantine:payments:1", "quarantine"),
        _append("order:1", "command"),
        _append("order:1", "batch"),
        # one library stream among user streams refuses the whole append
        [*_append("order:2", "order"), *_append(f"batch:{batch.batch_id}", "order", 1)],
    ]
    for appends in refused:
        with pytest.raises(ValidationError, match="library") as info:
            await bus.events.append(appends)
        assert "stream" in str(info.value)
    assert await counts(conn) == before

    # user streams are fine, and the command still runs to completion
    await bus.events.append(_append("order:1", "order"))
    reg = HandlerRegistry()

    @reg.handler("payments", "Charge")
    async def charge(cmd: Command, ctx: HandlerContext) -> str:
        return "ok"

    async with Worker(dsn, reg, domain="payments", config=FAST):

        async def done() -> bool:
            r = await bus.get_command("payments", sent.command_id)
            return r is not None and r.status is CommandStatus.COMPLETED

        await wait_for(done)
    assert (await bus.verify_projection()).ok
