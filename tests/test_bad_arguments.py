"""Every public bus, event store and troubleshooting method refuses bad arguments.

A wrong type or an out-of-range value is a ``ValidationError`` (``PayloadError`` for
data that cannot be stored) whose message names the argument, raised before
anything is written: no stream, event, status row, batch or queue.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from typing import Any
from uuid import uuid4

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from commandbus import (
    CommandBus,
    CommandFilter,
    CommandRequest,
    CommandStatus,
    InvalidNameError,
    NewEvent,
    PayloadError,
    PayloadTooLargeError,
    Saga,
    SagaClient,
    Step,
    StreamAppend,
    ValidationError,
)
from conftest import create_database, drop_database
from support import FAST, STREAMS, scalar, with_dbname

Conn = psycopg.AsyncConnection[Any]
Call = Callable[[CommandBus], Awaitable[Any]]


def deep(n: int) -> dict[str, Any]:
    data: dict[str, Any] = {}
    for _ in range(n):
        data = {"a": data}
    return data


def req(**kw: Any) -> CommandRequest:
    return CommandRequest(**{"domain": "payments", "command_type": "Charge", **kw})


def app(**kw: Any) -> StreamAppend:
    return StreamAppend(
        **{
            "stream_id": "order:1",
            "stream_type": "order",
            "expected_version": 0,
            "events": [NewEvent(event_type="Created", data={})],
            **kw,
        }
    )


def ev(**kw: Any) -> NewEvent:
    return NewEvent(**{"event_type": "Created", "data": {}, **kw})


def send(**kw: Any) -> Call:
    args = {"domain": "payments", "command_type": "Charge", "data": {}}
    pos = {k: kw.pop(k) for k in list(kw) if k in args}
    args.update(pos)
    return lambda bus: bus.send(args["domain"], args["command_type"], args["data"], **kw)


NOT_UUIDS = ["x", "", 5, b"0" * 16, f"{uuid4()} ", "urn:uuid:nope", str(uuid4())[:-1], True]

CASES: list[Any] = []


def case(name: str, call: Call, arg: str, error: type[Exception] = ValidationError) -> None:
    CASES.append(pytest.param(call, arg, error, id=name))


# -- send ---------------------------------------------------------------------------------
for i, bad in enumerate([["a"], 5, None, "Payments", ("a",)]):
    case(f"send-domain-{i}", send(domain=bad), "domain", InvalidNameError)
for i, bad in enumerate([["a"], 5, None, "1x"]):
    case(f"send-command_type-{i}", send(command_type=bad), "command_type", InvalidNameError)
for i, bad in enumerate([[1], "x", 5, {"x": object()}, deep(5000), {"x": "a\x00b"}]):
    error = PayloadError if isinstance(bad, dict) else ValidationError
    case(f"send-data-{i}", send(data=bad), "data", error)
for key in ("command_id", "correlation_id", "causation_id", "saga_id"):
    for i, bad in enumerate(NOT_UUIDS):
        case(f"send-{key}-{i}", send(**{key: bad}), key)
for i, bad in enumerate([["q"], 5, "Bad Queue"]):
    case(f"send-reply_to-{i}", send(reply_to=bad), "reply_to", InvalidNameError)
for i, bad in enumerate([0, -1, 2**31, 2**100, True, 1.5, "3"]):
    case(f"send-max_attempts-{i}", send(max_attempts=bad), "max_attempts")
for i, bad in enumerate(
    [
        -1,
        -0.5,
        timedelta(seconds=-1),
        10**12,
        10**400,
        1e300,
        timedelta.max,
        float("nan"),
        float("inf"),
        "5",
        True,
        [5],
    ]
):
    case(f"send-delay-{i}", send(delay=bad), "delay")
for i, bad in enumerate(["postgresql://", 42, object()]):
    case(f"send-conn-{i}", send(conn=bad), "conn")


# -- send_batch ---------------------------------------------------------------------------
def batch(commands: Any = None, **kw: Any) -> Call:
    return lambda bus: bus.send_batch([req()] if commands is None else commands, **kw)


for i, bad in enumerate([[], "abc", 5, {"domain": "payments"}, b"x"]):
    case(f"batch-commands-{i}", batch(bad), "commands")
case("batch-dict", batch([{"domain": "payments", "command_type": "Charge"}]), "commands[0]")
case("batch-mixed", batch([req(), "x"]), "commands[1]")
case("batch-domain", batch([req(), req(domain=["a"])]), "commands[1]: invalid domain")
case("batch-type", batch([req(command_type=5)]), "command type", InvalidNameError)
for key in ("command_id", "correlation_id", "causation_id", "saga_id"):
    case(f"batch-{key}", batch([req(), req(**{key: "x"})]), f"commands[1]: {key}")
case("batch-max_attempts", batch([req(max_attempts=0)]), "max_attempts")
case("batch-delay", batch([req(delay=-1)]), "delay")
case("batch-delay-huge", batch([req(delay=timedelta.max)]), "delay")
case("batch-data", batch([req(data=deep(5000))]), "data", PayloadError)
case("batch-data-type", batch([req(data=[1])]), "data")
case("batch-reply_to", batch([req(reply_to="Bad")]), "reply_to", InvalidNameError)
for i, bad in enumerate(NOT_UUIDS):
    case(f"batch-batch_id-{i}", batch(batch_id=bad), "batch_id")
    case(f"batch-correlation_id-{i}", batch(correlation_id=bad), "correlation_id")
for i, bad in enumerate([5, ["n"], "a\x00b"]):
    case(f"batch-name-{i}", batch(name=bad), "name")
case("batch-conn", batch(conn="x"), "conn")

# -- queries -----------------------------------------------------------------------------
for i, bad in enumerate([["a"], 5, "Bad"]):
    case(
        f"get_command-domain-{i}",
        lambda bus, bad=bad: bus.get_command(bad, uuid4()),
        "domain",
        InvalidNameError,
    )
    case(
        f"command_history-domain-{i}",
        lambda bus, bad=bad: bus.command_history(bad, uuid4()),
        "domain",
        InvalidNameError,
    )
    case(
        f"create_domain-{i}",
        lambda bus, bad=bad: bus.create_domain(bad),
        "domain",
        InvalidNameError,
    )
for i, bad in enumerate([*NOT_UUIDS, None]):
    case(
        f"get_command-command_id-{i}",
        lambda bus, bad=bad: bus.get_command("payments", bad),
        "command_id",
    )
    case(
        f"command_history-command_id-{i}",
        lambda bus, bad=bad: bus.command_history("payments", bad),
        "command_id",
    )
    case(f"get_batch-{i}", lambda bus, bad=bad: bus.get_batch(bad), "batch_id")
case("get_command-conn", lambda bus: bus.get_command("payments", uuid4(), conn=5), "conn")
case("get_batch-conn", lambda bus: bus.get_batch(uuid4(), conn=5), "conn")

LIST_BAD: list[tuple[str, Any, type[Exception]]] = [
    ("domain", 5, InvalidNameError),
    ("domain", "Bad", InvalidNameError),
    ("status", "BOGUS", ValidationError),
    ("status", "pending", ValidationError),
    ("status", 5, ValidationError),
    ("correlation_id", "x", ValidationError),
    ("command_type", 5, InvalidNameError),
    ("batch_id", "x", ValidationError),
    ("error_contains", 5, ValidationError),
    ("error_contains", "a\x00", ValidationError),
    ("limit", 0, ValidationError),
    ("limit", -1, ValidationError),
    ("limit", 10**6, ValidationError),
    ("limit", True, ValidationError),
    ("limit", "5", ValidationError),
    ("limit", 2.0, ValidationError),
    ("cursor", 5, ValidationError),
    ("cursor", "garbage!", ValidationError),
    ("conn", "x", ValidationError),
]
FILTER_KEYS = {"domain", "status", "command_type", "correlation_id", "batch_id", "error_contains"}


def list_call(method: str, key: str, bad: Any) -> Call:
    """``list_commands`` or the TSQ ``list`` with one bad criterion or argument.

    A criterion is refused when its CommandFilter is built, before any call.
    """

    def call(bus: CommandBus) -> Awaitable[Any]:
        target = bus if method == "list_commands" else bus.troubleshooting
        fn = getattr(target, method)
        return fn(CommandFilter(**{key: bad})) if key in FILTER_KEYS else fn(**{key: bad})

    return call


for i, (key, bad, error) in enumerate(LIST_BAD):
    arg = "command type" if key == "command_type" else key
    case(f"list_commands-{key}-{i}", list_call("list_commands", key, bad), arg, error)
for i, bad in enumerate([{"domain": "payments"}, "payments", 5]):
    case(f"list_commands-where-{i}", lambda bus, bad=bad: bus.list_commands(bad), "where")
    case(f"tsq.list-where-{i}", lambda bus, bad=bad: bus.troubleshooting.list(bad), "where")
for i, status in enumerate(["PENDING", "COMPLETED"]):
    case(
        f"tsq.list-status-{i}",
        lambda bus, status=status: bus.troubleshooting.list(CommandFilter(status=status)),
        "status",
    )

for i, bad in enumerate(["yes", "false", 1, 0, None]):
    case(
        f"rebuild_projection-replace_live-{i}",
        lambda bus, bad=bad: bus.rebuild_projection(replace_live=bad),
        "replace_live",
    )
for i, bad in enumerate([5, None, "event", "command"]):
    case(
        f"rebuild_projection-table-{i}",
        lambda bus, bad=bad: bus.rebuild_projection(table=bad),
        "table",
    )

# -- troubleshooting ----------------------------------------------------------------------
TSQ_LIST_BAD: list[tuple[str, Any, type[Exception]]] = [
    ("domain", ["a"], InvalidNameError),
    ("command_type", 5, InvalidNameError),
    ("error_contains", 5, ValidationError),
    ("error_contains", ["x"], ValidationError),
    ("error_contains", "a\x00", ValidationError),
    ("limit", 0, ValidationError),
    ("limit", True, ValidationError),
    ("limit", 5000, ValidationError),
    ("cursor", 5, ValidationError),
    ("conn", "x", ValidationError),
]
for i, (key, bad, error) in enumerate(TSQ_LIST_BAD):
    arg = "command type" if key == "command_type" else key
    case(f"tsq.list-{key}-{i}", list_call("list", key, bad), arg, error)
for action in ("retry", "cancel", "complete"):
    for i, bad in enumerate(NOT_UUIDS):
        case(
            f"tsq.{action}-command_id-{i}",
            lambda bus, action=action, bad=bad: getattr(bus.troubleshooting, action)(
                "payments", bad
            ),
            "command_id",
        )
    case(
        f"tsq.{action}-domain",
        lambda bus, action=action: getattr(bus.troubleshooting, action)(["a"], uuid4()),
        "domain",
        InvalidNameError,
    )
    case(
        f"tsq.{action}-operator",
        lambda bus, action=action: getattr(bus.troubleshooting, action)(
            "payments", uuid4(), operator=5
        ),
        "operator",
    )
    for i, bad in enumerate(["postgresql://", 42]):
        case(
            f"tsq.{action}-conn-{i}",
            lambda bus, action=action, bad=bad: getattr(bus.troubleshooting, action)(
                "payments", uuid4(), conn=bad
            ),
            "conn",
        )
case(
    "tsq.cancel-reason",
    lambda bus: bus.troubleshooting.cancel("payments", uuid4(), reason=["r"]),
    "reason",
)
# an operator's reason and name stay in the append-only stream: both are bounded
for action in ("retry", "cancel", "complete"):
    case(
        f"tsq.{action}-operator-long",
        lambda bus, action=action: getattr(bus.troubleshooting, action)(
            "payments", uuid4(), operator="o" * 201
        ),
        "operator must be at most 200 characters",
    )
case(
    "tsq.cancel-reason-long",
    lambda bus: bus.troubleshooting.cancel("payments", uuid4(), reason="r" * 2001),
    "reason must be at most 2000 characters",
)
case(
    "cancel_command-reason-long",
    lambda bus: bus.cancel_command("payments", uuid4(), reason="r" * 2001),
    "reason must be at most 2000 characters",
)
case(
    "cancel_command-operator-long",
    lambda bus: bus.cancel_command("payments", uuid4(), operator="o" * 201),
    "operator must be at most 200 characters",
)
case(
    "tsq.complete-result",
    lambda bus: bus.troubleshooting.complete("payments", uuid4(), result=object()),
    "result",
    PayloadError,
)
case(
    "tsq.complete-result-deep",
    lambda bus: bus.troubleshooting.complete("payments", uuid4(), result=deep(5000)),
    "result",
    PayloadError,
)


# -- the event store ----------------------------------------------------------------------
def append(appends: Any, **kw: Any) -> Call:
    return lambda bus: bus.events.append(appends, **kw)


for i, bad in enumerate([[], "x", 5, None, {"a": 1}]):
    case(f"append-appends-{i}", append(bad), "appends")
case("append-item", append([{"stream_id": "s"}]), "appends[0]")
APPEND_BAD: list[tuple[str, dict[str, Any], str, type[Exception]]] = [
    ("stream_id-int", {"stream_id": 5}, "stream_id", ValidationError),
    ("stream_id-empty", {"stream_id": ""}, "stream_id", ValidationError),
    ("stream_id-nul", {"stream_id": "a\x00"}, "stream_id", ValidationError),
    ("stream_type-none", {"stream_type": None}, "stream_type", ValidationError),
    ("expected-neg", {"expected_version": -1}, "expected_version", ValidationError),
    ("expected-bool", {"expected_version": False}, "expected_version", ValidationError),
    ("expected-str", {"expected_version": "0"}, "expected_version", ValidationError),
    ("expected-huge", {"expected_version": 2**63}, "expected_version", ValidationError),
    ("events-empty", {"events": []}, "events", ValidationError),
    ("events-none", {"events": None}, "events", ValidationError),
    ("events-dict", {"events": [{"event_type": "A"}]}, "events[0]", ValidationError),
    ("event_type", {"events": [ev(event_type=5)]}, "event_type", ValidationError),
    ("event_type-empty", {"events": [ev(event_type="")]}, "event_type", ValidationError),
    ("event-data", {"events": [ev(data=[1])]}, "data", ValidationError),
    ("event-data-json", {"events": [ev(data={"x": object()})]}, "data", PayloadError),
    ("event-data-deep", {"events": [ev(data=deep(5000))]}, "data", PayloadError),
    ("event-corr", {"events": [ev(correlation_id="x")]}, "correlation_id", ValidationError),
    ("event-caus", {"events": [ev(causation_id=5)]}, "causation_id", ValidationError),
    ("event-meta", {"events": [ev(metadata="x")]}, "metadata", ValidationError),
    ("library-command", {"stream_id": f"command:payments:{uuid4()}"}, "stream", ValidationError),
    ("library-type", {"stream_type": "batch"}, "stream", ValidationError),
]
for name, kw, arg, error in APPEND_BAD:
    # the bad one second, after a good one: nothing is written for either
    case(f"append-{name}", append([app(stream_id="order:0"), app(**kw)]), arg, error)
case("append-conn", append([app()], conn="x"), "conn")
for i, bad in enumerate([5, None, "", "a\x00"]):
    case(
        f"read_stream-stream_id-{i}",
        lambda bus, bad=bad: bus.events.read_stream(bad),
        "stream_id",
    )
    case(
        f"stream_version-stream_id-{i}",
        lambda bus, bad=bad: bus.events.stream_version(bad),
        "stream_id",
    )
for i, bad in enumerate([-1, True, "1", 2**63]):
    case(
        f"read_stream-after_version-{i}",
        lambda bus, bad=bad: bus.events.read_stream("s", after_version=bad),
        "after_version",
    )
    case(f"read_all-after-{i}", lambda bus, bad=bad: bus.events.read_all(after=bad), "after")
for i, bad in enumerate([0, -1, True, "10"]):
    case(f"read_all-limit-{i}", lambda bus, bad=bad: bus.events.read_all(limit=bad), "limit")


async def written(conn: Conn) -> dict[str, int]:
    return {
        "streams": await scalar(conn, STREAMS),
        "events": await scalar(conn, "SELECT count(*) FROM commandbus.event"),
        "commands": await scalar(conn, "SELECT count(*) FROM commandbus.command"),
        "batches": await scalar(conn, "SELECT count(*) FROM commandbus.batch"),
        "queues": await scalar(conn, "SELECT count(*) FROM pgmq.meta"),
    }


@pytest.fixture(scope="module")
async def shared_dsn(server_url: str, template_url: str) -> AsyncIterator[str]:
    """One database for every case (each asserts that nothing was written to it)."""
    name = await create_database(server_url, template=conninfo_to_dict(template_url)["dbname"])
    try:
        yield with_dbname(server_url, name)
    finally:
        await drop_database(server_url, name)


@pytest.fixture(scope="module")
async def shared(shared_dsn: str) -> AsyncIterator[tuple[CommandBus, Conn]]:
    async with (
        CommandBus(shared_dsn, config=FAST) as bus,
        await psycopg.AsyncConnection.connect(shared_dsn, autocommit=True) as conn,
    ):
        yield bus, conn


@pytest.mark.parametrize(("call", "arg", "error"), CASES)
async def test_bad_argument_is_refused_naming_it(
    shared: tuple[CommandBus, Conn], call: Call, arg: str, error: type[Exception]
) -> None:
    bus, conn = shared
    with pytest.raises(error) as info:
        await call(bus)
    assert type(info.value) is error or issubclass(type(info.value), error)
    message = str(info.value)
    assert arg in message or arg.replace("_", " ") in message, message
    assert await written(conn) == dict.fromkeys(
        ("streams", "events", "commands", "batches", "queues"), 0
    )


async def test_a_closed_connection_is_refused(bus: CommandBus, dsn: str, conn: Conn) -> None:
    closed = await psycopg.AsyncConnection.connect(dsn)
    await closed.close()
    with pytest.raises(ValidationError, match="conn is closed"):
        await bus.send("payments", "Charge", {}, conn=closed)
    assert (await written(conn))["events"] == 0


async def test_a_connection_in_a_failed_transaction_is_refused(
    bus: CommandBus, dsn: str, conn: Conn
) -> None:
    async with await psycopg.AsyncConnection.connect(dsn) as failed:
        with pytest.raises(psycopg.errors.DivisionByZero):
            await failed.execute("SELECT 1/0")
        calls: list[Call] = [
            lambda bus: bus.send("payments", "Charge", {}, conn=failed),
            lambda bus: bus.send_batch([req()], conn=failed),
            lambda bus: bus.events.append([app()], conn=failed),
            lambda bus: bus.get_command("payments", uuid4(), conn=failed),
        ]
        for call in calls:
            with pytest.raises(ValidationError, match="conn is in a failed transaction"):
                await call(bus)
        await failed.rollback()
        assert (await bus.send("payments", "Charge", {}, conn=failed)).ok
        await failed.rollback()
    assert (await written(conn))["events"] == 0


@pytest.mark.parametrize("delay", [5, 5.0, timedelta(seconds=5)])
async def test_delay_is_a_timedelta_or_seconds(bus: CommandBus, conn: Conn, delay: Any) -> None:
    sent = (await bus.send("payments", "Charge", {}, delay=delay)).unwrap()
    vt_in = await scalar(
        conn,
        "SELECT extract(epoch FROM vt - now()) FROM pgmq.q_payments WHERE msg_id = %s",
        sent.msg_id,
    )
    assert 4 < vt_in <= 5.5
    half = (await bus.send("payments", "Charge", {}, delay=0.5)).unwrap()
    vt_half = await scalar(
        conn,
        "SELECT extract(epoch FROM vt - now()) FROM pgmq.q_payments WHERE msg_id = %s",
        half.msg_id,
    )
    assert 0 < vt_half <= 0.6


async def test_limits_that_fit_are_accepted(bus: CommandBus) -> None:
    deep_ok = deep(200)
    sent = (
        await bus.send(
            "payments",
            "Charge",
            deep_ok,
            max_attempts=2**31 - 1,
            delay=timedelta(days=36525),
        )
    ).unwrap()
    record = await bus.get_command("payments", sent.command_id)
    assert record is not None and record.max_attempts == 2**31 - 1
    history = await bus.command_history("payments", sent.command_id)
    assert history[0].data["data"] == deep_ok


async def test_a_reason_and_operator_at_their_limits_are_recorded(bus: CommandBus) -> None:
    sent = (await bus.send("payments", "Charge", {}, delay=3600)).unwrap()
    reason, operator = "r" * 2000, "o" * 200
    status = await bus.cancel_command("payments", sent.command_id, reason=reason, operator=operator)
    assert status is CommandStatus.PENDING  # what it was when cancelled
    record = await bus.get_command("payments", sent.command_id)
    assert record is not None and record.status is CommandStatus.CANCELLED
    events = await bus.events.read_stream(f"command:payments:{sent.command_id}")
    [event] = [e for e in events if "Cancel" in e.event_type]
    assert (event.data["reason"], event.data["operator"]) == (reason, operator)


async def test_a_batch_too_large_for_one_statement_goes_in_several_and_sagas_are_refused(
    bus: CommandBus, conn: Conn, monkeypatch: pytest.MonkeyPatch
) -> None:
    # PostgreSQL refuses a statement over 1 GB by closing the connection (it read as
    # a retryable DatabaseUnavailableError) and a jsonb over 256 MB with a raw
    # psycopg error (the limits are lowered here, not to send 300 MB): a batch goes
    # in parts that each stay under, in one transaction; sagas started at once that
    # one statement cannot hold are refused before anything is sent
    from commandbus import codec
    from commandbus.sagas import client as saga_client

    monkeypatch.setattr(codec, "MAX_STATEMENT_JSON_BYTES", 20_000)
    monkeypatch.setattr(saga_client, "MAX_STATEMENT_JSON_BYTES", 20_000)
    before = await scalar(conn, STREAMS)
    events_before = await scalar(conn, "SELECT count(*) FROM commandbus.event")
    requests = [
        CommandRequest(domain="payments", command_type="Charge", data={"pad": "x" * 1000, "i": i})
        for i in range(30)
    ]
    sent = await bus.send_batch(requests)  # parts of at most 5,000 characters: 4 commands
    assert sent.ok, sent
    cur = await conn.execute(
        "SELECT (message->'data'->>'i')::int FROM pgmq.q_payments"
        " WHERE msg_id = ANY(%s) ORDER BY msg_id",
        (list(sent.value.msg_ids),),
    )
    assert [r[0] for r in await cur.fetchall()] == list(range(30))  # all there, in order
    batch = await bus.get_batch(sent.value.batch_id)
    assert batch is not None and batch.total == 30
    assert await scalar(conn, "SELECT count(*) FROM commandbus.event") == events_before + 31
    saga = Saga("big", steps=[Step("a", domain="payments", command="Charge")])
    with pytest.raises(PayloadTooLargeError, match=r"the inputs of 10 sagas .* in parts"):
        await SagaClient(bus).start_sagas(saga, [{"pad": "y" * 1000}] * 10)
    assert await scalar(conn, STREAMS) == before + 31  # the 30 commands and their batch
