"""CommandBus.send / send_batch against a real PostgreSQL: atomicity and bad input."""

from __future__ import annotations

import asyncio
import math
from typing import Any
from uuid import UUID, uuid4

import psycopg
import pytest
from psycopg import sql

from commandbus import (
    CommandBus,
    CommandFilter,
    CommandRequest,
    CommandStatus,
    Config,
    DatabaseUnavailableError,
    Failure,
    InvalidNameError,
    PayloadError,
    PayloadTooLargeError,
    SchemaNotReadyError,
    Success,
    ValidationError,
)
from commandbus.engine.commands import store as command_store
from support import assert_streams_contiguous, counts, fetch, scalar

Conn = psycopg.AsyncConnection[Any]


async def test_send_writes_event_message_and_projection(bus: CommandBus, conn: Conn) -> None:
    corr = uuid4()
    result = await bus.send("payments", "Charge", {"amount": 12}, correlation_id=corr)
    assert isinstance(result, Success)
    sent = result.value
    assert sent.correlation_id == corr

    message = await fetch(conn, "SELECT msg_id, message FROM pgmq.q_payments")
    assert [m[0] for m in message] == [sent.msg_id]
    assert message[0][1]["command_id"] == str(sent.command_id)
    assert message[0][1]["data"] == {"amount": 12}

    history = await bus.command_history("payments", sent.command_id)
    assert [(e.event_type, e.stream_version) for e in history] == [("CommandSent", 1)]
    assert history[0].correlation_id == corr
    assert history[0].data["msg_id"] == sent.msg_id
    assert history[0].data["data"] == {"amount": 12}

    record = await bus.get_command("payments", sent.command_id)
    assert record is not None
    assert record.status is CommandStatus.PENDING
    assert record.msg_id == sent.msg_id
    assert record.max_attempts == bus.config.max_attempts
    assert record.version == 1
    assert record.created_at == history[0].recorded_at


async def test_error_inside_the_send_statement_leaves_nothing(bus: CommandBus, conn: Conn) -> None:
    await bus.create_domain("payments")
    # The projection insert is the last write of the send statement: make it fail.
    await conn.execute(
        """
        CREATE FUNCTION public.boom() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN RAISE EXCEPTION 'boom'; END $$;
        CREATE TRIGGER boom BEFORE INSERT ON commandbus.command
            FOR EACH ROW EXECUTE FUNCTION public.boom();
        """
    )
    with pytest.raises(psycopg.errors.RaiseException):
        await bus.send("payments", "Charge", {"amount": 1})
    assert await counts(conn) == {"streams": 0, "events": 0, "commands": 0, "messages": 0}


async def test_send_in_callers_transaction_rolls_back_with_it(bus: CommandBus, conn: Conn) -> None:
    await conn.execute("CREATE TABLE public.orders (id uuid PRIMARY KEY)")
    order = uuid4()
    with pytest.raises(RuntimeError):
        async with conn.transaction():
            await conn.execute("INSERT INTO public.orders VALUES (%s)", (order,))
            r = await bus.send("payments", "Charge", {"order": str(order)}, conn=conn)
            assert r.ok
            raise RuntimeError("application failed after sending")
    assert await counts(conn) == {"streams": 0, "events": 0, "commands": 0, "messages": 0}
    assert await scalar(conn, "SELECT count(*) FROM public.orders") == 0

    async with conn.transaction():
        await conn.execute("INSERT INTO public.orders VALUES (%s)", (order,))
        r = await bus.send("payments", "Charge", {"order": str(order)}, conn=conn)
    assert r.ok
    assert await counts(conn) == {"streams": 1, "events": 1, "commands": 1, "messages": 1}


async def test_duplicate_command_id_is_a_failure_and_writes_nothing(
    bus: CommandBus, conn: Conn
) -> None:
    cid = uuid4()
    first = await bus.send("payments", "Charge", {"n": 1}, command_id=cid)
    assert first.ok
    again = await bus.send("payments", "Charge", {"n": 2}, command_id=cid)
    assert isinstance(again, Failure)
    assert again.code == "DUPLICATE_COMMAND"
    assert str(cid) in again.message
    assert await counts(conn) == {"streams": 1, "events": 1, "commands": 1, "messages": 1}
    # the same id in another domain is another command
    other = await bus.send("shipping", "Ship", {}, command_id=cid)
    assert other.ok


@pytest.mark.parametrize(
    ("domain", "command_type", "reply_to"),
    [
        ("Payments", "Charge", None),
        ("pay-ments", "Charge", None),
        ("", "Charge", None),
        ("x" * 48, "Charge", None),
        ("payments; DROP TABLE commandbus.event", "Charge", None),
        ('pay"ments', "Charge", None),
        ("payments", "", None),
        ("payments", "Charge'; --", None),
        ("payments", "1Charge", None),
        ("payments", "Charge", "Bad Queue"),
    ],
)
async def test_invalid_names_are_refused_before_any_sql(
    bus: CommandBus, conn: Conn, domain: str, command_type: str, reply_to: str | None
) -> None:
    with pytest.raises(InvalidNameError):
        await bus.send(domain, command_type, {}, reply_to=reply_to)
    assert await scalar(conn, "SELECT count(*) FROM pgmq.meta") == 0
    assert await scalar(conn, "SELECT count(*) FROM commandbus.event") == 0


@pytest.mark.parametrize(
    "data",
    [{"x": object()}, {"x": {1, 2}}, {"x": math.nan}, {"x": math.inf}, ["not", "a", "mapping"]],
)
async def test_unserialisable_data_is_refused(bus: CommandBus, conn: Conn, data: Any) -> None:
    with pytest.raises(ValidationError):
        await bus.send("payments", "Charge", data)
    assert await scalar(conn, "SELECT count(*) FROM commandbus.event") == 0


async def test_oversize_data_is_refused(dsn: str, conn: Conn) -> None:
    async with CommandBus(dsn, config=Config(max_payload_bytes=1000)) as small:
        with pytest.raises(PayloadTooLargeError, match="over the limit of 1000 bytes"):
            await small.send("payments", "Charge", {"blob": "é" * 600})
        assert (await small.send("payments", "Charge", {"blob": "x" * 100})).ok
    assert await scalar(conn, "SELECT count(*) FROM commandbus.event") == 1
    assert issubclass(PayloadTooLargeError, PayloadError)


async def test_bad_max_attempts_and_delay(bus: CommandBus) -> None:
    from datetime import timedelta

    with pytest.raises(ValidationError, match="max_attempts"):
        await bus.send("payments", "Charge", {}, max_attempts=0)
    with pytest.raises(ValidationError, match="delay"):
        await bus.send("payments", "Charge", {}, delay=timedelta(seconds=-1))


async def test_delayed_send_is_invisible_until_due(bus: CommandBus, conn: Conn) -> None:
    from datetime import timedelta

    r = await bus.send("payments", "Charge", {}, delay=timedelta(seconds=30))
    assert r.ok
    vt_in = await scalar(
        conn,
        "SELECT extract(epoch FROM vt - now()) FROM pgmq.q_payments WHERE msg_id = %s",
        r.value.msg_id,
    )
    assert 25 < vt_in <= 31


async def test_concurrent_senders_lose_and_duplicate_nothing(bus: CommandBus, conn: Conn) -> None:
    per_sender = 60

    async def sender(i: int) -> list[Any]:
        out = []
        for n in range(per_sender):
            r = await bus.send("payments", "Charge", {"sender": i, "n": n})
            assert r.ok
            out.append(r.value.command_id)
        return out

    results = await asyncio.gather(*(sender(i) for i in range(8)))
    ids = [c for group in results for c in group]
    assert len(set(ids)) == 8 * per_sender
    assert await counts(conn) == {
        "streams": 8 * per_sender,
        "events": 8 * per_sender,
        "commands": 8 * per_sender,
        "messages": 8 * per_sender,
    }
    rows = await fetch(conn, "SELECT count(DISTINCT message->>'command_id') FROM pgmq.q_payments")
    assert rows[0][0] == 8 * per_sender
    await assert_streams_contiguous(conn)


async def test_send_batch_is_one_transaction_with_a_batch_stream(
    bus: CommandBus, conn: Conn
) -> None:
    reqs = [
        CommandRequest(domain="payments", command_type="Charge", data={"i": i}) for i in range(5)
    ]
    reqs.append(CommandRequest(domain="shipping", command_type="Ship", data={"i": 5}))
    result = await bus.send_batch(reqs, name="nightly")
    assert isinstance(result, Success)
    batch = result.value
    assert len(batch.command_ids) == 6 and len(batch.msg_ids) == 6
    assert len(set(batch.msg_ids[:5])) == 5  # message ids are per queue

    record = await bus.get_batch(batch.batch_id)
    assert record is not None
    assert record.name == "nightly" and record.total == 6
    assert record.counts == {"PENDING": 6}
    assert not record.is_complete

    events = await bus.events.read_stream(f"batch:{batch.batch_id}")
    assert [e.event_type for e in events] == ["BatchCreated"]
    assert events[0].data["total"] == 6
    page = await bus.list_commands(CommandFilter(batch_id=batch.batch_id))
    assert {c.command_id for c in page.items} == set(batch.command_ids)
    assert await scalar(conn, "SELECT count(*) FROM pgmq.q_shipping") == 1


async def test_a_batch_of_several_parts_keeps_each_command_with_its_message_and_its_order(
    bus: CommandBus, conn: Conn
) -> None:
    # 650 commands: seven parts of up to 100, three domains interleaved, some with a
    # reply queue; every result lines up with the caller's order
    domains = ("payments", "shipping", "billing")
    reqs = [
        CommandRequest(
            domain=domains[i % 3],
            command_type="Charge",
            data={"i": i},
            reply_to="replies" if i % 7 == 0 else None,
        )
        for i in range(650)
    ]
    result = await bus.send_batch(reqs, name="big")
    assert isinstance(result, Success)
    sent = result.value
    assert len(sent.command_ids) == len(sent.msg_ids) == 650
    for domain in domains:
        rows = await fetch(
            conn,
            sql.SQL(
                "SELECT msg_id, message->>'command_id', (message->'data'->>'i')::int,"
                " message->>'batch_id' FROM pgmq.{} ORDER BY msg_id"
            ).format(sql.Identifier(f"q_{domain}")),
        )
        mine = [i for i in range(650) if reqs[i].domain == domain]
        assert [r[2] for r in rows] == mine  # all there, in the caller's order
        for msg_id, command_id, i, batch_id in rows:
            assert (sent.msg_ids[i], str(sent.command_ids[i])) == (msg_id, command_id)
            assert batch_id == str(sent.batch_id)
    record = await bus.get_batch(sent.batch_id)
    assert record is not None and record.total == 650 and record.counts == {"PENDING": 650}
    # the batch's event comes after its commands' (the batch is created last)
    last = await fetch(
        conn, "SELECT event_type, data->>'domains' FROM commandbus.event ORDER BY position DESC"
    )
    assert last[0][0] == "BatchCreated" and last[0][1] == '["billing", "payments", "shipping"]'
    assert [r[0] for r in last[1:]] == ["CommandSent"] * 650
    replies = "SELECT count(*) FROM commandbus.command WHERE reply_to = 'replies'"
    assert await scalar(conn, replies) == len(range(0, 650, 7))
    report = await bus.verify_projection()
    assert report.ok and (report.checked, report.checked_batches) == (650, 1), report


async def test_send_batch_with_an_existing_id_writes_nothing(bus: CommandBus, conn: Conn) -> None:
    existing = await bus.send("payments", "Charge", {})
    assert existing.ok
    before = await counts(conn)
    reqs = [CommandRequest(domain="payments", command_type="Charge") for _ in range(3)]
    reqs.append(
        CommandRequest(
            domain="payments", command_type="Charge", command_id=existing.value.command_id
        )
    )
    result = await bus.send_batch(reqs)
    assert isinstance(result, Failure)
    assert result.code == "DUPLICATE_COMMAND"
    assert result.details["command_ids"] == [str(existing.value.command_id)]
    assert await counts(conn) == before
    assert await scalar(conn, "SELECT count(*) FROM commandbus.batch") == 0

    twice = uuid4()
    result = await bus.send_batch(
        [CommandRequest(domain="payments", command_type="Charge", command_id=twice)] * 2
    )
    assert isinstance(result, Failure) and str(twice) in result.message
    assert await counts(conn) == before


async def test_send_batch_rolls_back_with_the_callers_transaction(
    bus: CommandBus, conn: Conn
) -> None:
    with pytest.raises(RuntimeError):
        async with conn.transaction():
            r = await bus.send_batch(
                [CommandRequest(domain="payments", command_type="Charge")] * 1, conn=conn
            )
            assert r.ok
            raise RuntimeError
    assert (await counts(conn))["events"] == 0


def _outgoing(bus: CommandBus, domain: str, command_id: UUID | None = None, **kw: Any) -> Any:
    """A command rendered as the bus renders it, for the store functions."""
    return bus._outgoing(
        domain,
        "Charge",
        kw.pop("data", {}),
        command_id=command_id,
        correlation_id=None,
        causation_id=None,
        reply_to=None,
        saga_id=kw.pop("saga_id", None),
        batch_id=None,
        max_attempts=None,
        delay=None,
        trace=kw.pop("trace", {}),
    )


async def test_send_commands_without_a_batch_is_one_statement_in_input_order(
    bus: CommandBus, conn: Conn
) -> None:
    shared = uuid4()  # the same id in two domains is two commands
    saga = uuid4()
    cmds = [
        _outgoing(bus, "shipping", data={"i": 0}),
        _outgoing(bus, "payments", shared, data={"i": 1}, saga_id=saga),
        _outgoing(
            bus,
            "payments",
            data={"i": 2},
            trace={"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"},
        ),
        _outgoing(bus, "shipping", shared, data={"i": 3}),
        _outgoing(bus, "payments", data={"i": 4}),
    ]
    for domain in ("payments", "shipping"):
        await bus.create_domain(domain)
    async with conn.transaction():
        rows = await command_store.send_commands(conn, cmds)
    assert [(d, cid) for d, cid, _m in rows] == [(c.domain, c.command_id) for c in cmds]
    assert all(m is not None for _d, _c, m in rows)
    for domain, cid, msg_id in rows:
        message = await fetch(
            conn,
            f"SELECT message->>'command_id', message->'data' FROM pgmq.q_{domain}"  # noqa: S608
            " WHERE msg_id = %s",
            msg_id,
        )
        assert message[0][0] == str(cid)
        record = await bus.get_command(domain, cid)
        assert record is not None
        assert record.status is CommandStatus.PENDING and record.version == 1
        assert record.msg_id == msg_id and record.batch_id is None
        history = await bus.command_history(domain, cid)
        assert [(e.event_type, e.stream_version) for e in history] == [("CommandSent", 1)]
        assert history[0].data["msg_id"] == msg_id
    assert (await bus.get_command("payments", shared)).saga_id == saga  # type: ignore[union-attr]
    # each command's event carries its own metadata (trace context)
    traced = await bus.command_history("payments", cmds[2].command_id)
    assert traced[0].metadata == {
        "trace": {"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"}
    }
    assert (await bus.command_history("payments", cmds[4].command_id))[0].metadata == {}
    assert await scalar(conn, "SELECT count(*) FROM commandbus.batch") == 0
    assert await scalar(conn, "SELECT count(DISTINCT stream_id) FROM commandbus.event") == 5
    assert await command_store.send_commands(conn, []) == []
    await assert_streams_contiguous(conn)


async def test_send_commands_with_an_existing_or_repeated_id_writes_nothing(
    bus: CommandBus, conn: Conn
) -> None:
    existing = await bus.send("payments", "Charge", {})
    assert existing.ok
    await bus.create_domain("shipping")
    before = await counts(conn), await counts(conn, "shipping")
    fresh = [_outgoing(bus, "shipping"), _outgoing(bus, "payments")]
    duplicate = _outgoing(bus, "payments", existing.value.command_id)
    for cmds in ([*fresh, duplicate], [*fresh, fresh[1]]):
        with pytest.raises(RuntimeError):
            async with conn.transaction():
                rows = await command_store.send_commands(conn, cmds)
                assert rows == [(c.domain, c.command_id, None) for c in cmds]
                raise RuntimeError  # the caller rolls back the streams created
        assert (await counts(conn), await counts(conn, "shipping")) == before
    # nothing of the refused sends is left behind: the same commands go through now
    async with conn.transaction():
        rows = await command_store.send_commands(conn, fresh)
    assert all(m is not None for _d, _c, m in rows)


async def test_list_commands_pages_by_keyset(bus: CommandBus) -> None:
    corr = uuid4()
    sent = []
    for i in range(7):
        r = await bus.send("payments", "Charge", {"i": i}, correlation_id=corr if i % 2 else None)
        sent.append(r.value.command_id)
    seen = []
    cursor = None
    while True:
        page = await bus.list_commands(CommandFilter(domain="payments"), limit=3, cursor=cursor)
        seen.extend(c.command_id for c in page.items)
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == sent  # oldest first, every command once
    by_corr = await bus.list_commands(CommandFilter(correlation_id=corr))
    assert [c.command_id for c in by_corr.items] == sent[1::2]
    pending = await bus.list_commands(CommandFilter(domain="payments", status="PENDING"), limit=100)
    assert len(pending.items) == 7
    with pytest.raises(ValidationError):
        await bus.list_commands(cursor="garbage!")
    with pytest.raises(ValidationError):
        await bus.list_commands(limit=0)


async def test_open_refuses_an_unmigrated_database(empty_dsn: str) -> None:
    with pytest.raises(SchemaNotReadyError, match="commandbus migrate"):
        async with CommandBus(empty_dsn):
            pass


async def test_open_reports_a_dead_database() -> None:
    dead = CommandBus("postgresql://postgres@127.0.0.1:1/nope?connect_timeout=1")
    with pytest.raises(DatabaseUnavailableError, match="cannot connect"):
        await dead.open()
    await dead.close()


async def test_failure_unwrap_raises_the_matching_error(bus: CommandBus) -> None:
    from commandbus import DuplicateCommandError

    sent = await bus.send("payments", "Charge", {})
    assert sent.ok
    again = await bus.send("payments", "Charge", {}, command_id=sent.value.command_id)
    assert not again.ok
    with pytest.raises(DuplicateCommandError, match="already exists"):
        again.unwrap()


async def test_a_lost_connection_is_a_clear_error_and_the_bus_recovers(
    bus: CommandBus, conn: Conn
) -> None:
    assert (await bus.send("payments", "Charge", {})).ok
    await conn.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        "   AND backend_type = 'client backend'"
    )
    with pytest.raises(DatabaseUnavailableError):
        await bus.send("payments", "Charge", {})
    # the pool drops the broken connection; the next send gets a fresh one
    assert (await bus.send("payments", "Charge", {})).ok
