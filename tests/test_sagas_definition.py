"""Saga definitions are checked when built, and SagaClient refuses bad arguments,
each with a clear message and before anything is written."""

from __future__ import annotations

from datetime import timedelta
from typing import Any
from uuid import uuid4

import psycopg
import pytest

from commandbus import (
    CommandBus,
    CommandBusError,
    Compensation,
    InvalidStateError,
    Parallel,
    Saga,
    SagaClient,
    SagaDefinitionError,
    SagaFilter,
    SagaNotFoundError,
    SagaRegistry,
    SagaStart,
    Step,
    ValidationError,
)
from saga_apps import ORDER
from support import scalar


def step(name: str = "a", **kw: Any) -> Step:
    kw.setdefault("domain", "inventory")
    kw.setdefault("command", "Reserve")
    return Step(name, **kw)


def comp(command: str = "Release", **kw: Any) -> Compensation:
    return Compensation(command, **kw)


# (what is wrong, how the saga is built, words the message must hold)
BAD_DEFINITIONS: list[Any] = [
    ("duplicate step", lambda: Saga("s", steps=[step("a"), step("a")]), ["'a'", "used twice"]),
    (
        "duplicate step in a group",
        lambda: Saga("s", steps=[step("a"), Parallel("g", step("b"), step("a"))]),
        ["'a'", "used twice"],
    ),
    (
        "group named like a step",
        lambda: Saga("s", steps=[step("a"), Parallel("a", step("b"))]),
        ["'a'", "used twice"],
    ),
    (
        "compensation at the pivot",
        lambda: Saga("s", steps=[step("a", pivot=True, compensation=comp())]),
        ["'a'", "pivot", "never run"],
    ),
    (
        "compensation after the pivot",
        lambda: Saga("s", steps=[step("a", pivot=True), step("b", compensation=comp())]),
        ["'b'", "pivot"],
    ),
    (
        "compensation in a group after the pivot",
        lambda: Saga(
            "s", steps=[step("a", pivot=True), Parallel("g", step("b", compensation=comp()))]
        ),
        ["'b'", "pivot"],
    ),
    (
        "two pivots",
        lambda: Saga("s", steps=[step("a", pivot=True), step("b", pivot=True)]),
        ["only one step may be the pivot", "'b'"],
    ),
    (
        "pivot in a group",
        lambda: Saga("s", steps=[Parallel("g", step("a", pivot=True), step("b"))]),
        ["'g'", "pivot must be a step of its own"],
    ),
    ("data is a number", lambda: Saga("s", steps=[step("a", data=5)]), ["'a'", "data", "int"]),
    (
        "data is a string",
        lambda: Saga("s", steps=[step("a", data="{}")]),
        ["'a'", "data", "mapping", "str"],
    ),
    (
        "compensation data is a list",
        lambda: Saga("s", steps=[step("a", compensation=comp(data=[1]))]),
        ["'a'", "compensation data", "list"],
    ),
    ("bad domain", lambda: Saga("s", steps=[step("a", domain="no spaces")]), ["'a'", "domain"]),
    ("domain not a str", lambda: Saga("s", steps=[step("a", domain=7)]), ["'a'", "domain"]),
    (
        "the saga queue as a domain",
        lambda: Saga("s", steps=[step("a", domain="commandbus_sagas")]),
        ["'a'", "commandbus_sagas"],
    ),
    (
        "compensation to the saga queue",
        lambda: Saga("s", steps=[step("a", compensation=comp(domain="commandbus_sagas"))]),
        ["'a'", "commandbus_sagas"],
    ),
    ("bad command", lambda: Saga("s", steps=[step("a", command="1x")]), ["'a'", "command type"]),
    ("command missing", lambda: Saga("s", steps=[step("a", command=None)]), ["'a'", "None"]),
    (
        "bad compensation command",
        lambda: Saga("s", steps=[step("a", compensation=comp("no way"))]),
        ["'a'", "compensation", "command type"],
    ),
    (
        "bad compensation domain",
        lambda: Saga("s", steps=[step("a", compensation=comp(domain="x y"))]),
        ["'a'", "compensation", "domain"],
    ),
    (
        "compensation not a Compensation",
        lambda: Saga("s", steps=[step("a", compensation="Release")]),
        ["'a'", "compensation must be a Compensation", "str"],
    ),
    ("bad step name", lambda: Saga("s", steps=[step("9a")]), ["step name", "'9a'"]),
    ("step name not a str", lambda: Saga("s", steps=[step(3)]), ["step name", "3"]),
    ("bad saga name", lambda: Saga("my saga", steps=[step()]), ["saga name", "'my saga'"]),
    ("version 0", lambda: Saga("s", steps=[step()], version=0), ["version", "0"]),
    ("version a str", lambda: Saga("s", steps=[step()], version="1"), ["version", "'1'"]),
    ("version a bool", lambda: Saga("s", steps=[step()], version=True), ["version", "True"]),
    ("no steps", lambda: Saga("s", steps=[]), ["'s'", "no steps"]),
    ("steps a string", lambda: Saga("s", steps="abc"), ["steps must be a list"]),
    ("steps not iterable", lambda: Saga("s", steps=5), ["steps must be a list"]),
    ("a stage of another type", lambda: Saga("s", steps=[step(), "b"]), ["steps[1]", "str"]),  # type: ignore[list-item]
    ("an empty group", lambda: Saga("s", steps=[Parallel("g")]), ["'g'", "no steps"]),
    (
        "a group member of another type",
        lambda: Saga("s", steps=[Parallel("g", step("a"), {"name": "b"})]),
        ["members must be Step", "dict"],
    ),
    ("timeout a number", lambda: Saga("s", steps=[step(timeout=5)]), ["timeout", "5"]),
    (
        "timeout zero",
        lambda: Saga("s", steps=[step(timeout=timedelta(0))]),
        ["timeout", "positive"],
    ),
    (
        "timeout past 100 years",  # (its timer was set for the year 4764)
        lambda: Saga("s", steps=[step(timeout=timedelta(days=999_999))]),
        ["timeout", "at most 36525 days"],
    ),
    ("max_attempts 0", lambda: Saga("s", steps=[step(max_attempts=0)]), ["max_attempts", "0"]),
    (
        "max_attempts a bool",
        lambda: Saga("s", steps=[step(max_attempts=True)]),
        ["max_attempts", "True"],
    ),
    (
        "compensation max_attempts a float",
        lambda: Saga("s", steps=[step(compensation=comp(max_attempts=2.5))]),
        ["compensation max_attempts", "2.5"],
    ),
    ("pivot not a bool", lambda: Saga("s", steps=[step(pivot="yes")]), ["pivot", "'yes'"]),
    (
        "static data that is not JSON",
        lambda: Saga("s", steps=[step("a", data={"when": object()})]),
        ["'a'", "data", "JSON"],
    ),
]


@pytest.mark.parametrize(
    ("build", "words"), [pytest.param(b, w, id=i) for i, b, w in BAD_DEFINITIONS]
)
def test_a_bad_definition_is_refused_with_a_clear_message(build: Any, words: list[str]) -> None:
    with pytest.raises(SagaDefinitionError) as info:
        build()
    message = str(info.value)
    assert isinstance(info.value, CommandBusError)
    for word in words:
        assert word in message, message


def test_a_good_definition_reads_like_the_process() -> None:
    saga = Saga(
        "order",
        version=3,
        steps=[
            step("reserve", compensation=comp(domain="stock")),
            Parallel("tell", step("email", domain="notify"), step("sms", domain="notify")),
            step("charge", domain="payments", command="Charge", pivot=True),
            step("ship", domain="shipping", command="Ship", timeout=timedelta(seconds=5)),
        ],
    )
    assert saga.key == ("order", 3)
    assert saga.stage_names == ("reserve", "tell", "charge", "ship")
    assert saga.pivot_stage == 2
    assert saga.domains == {"inventory", "stock", "notify", "payments", "shipping"}
    assert [s.name for s in saga.steps()] == ["reserve", "email", "sms", "charge", "ship"]


def test_the_registry_keeps_versions_apart_and_refuses_a_second_definition() -> None:
    v1 = Saga("s", steps=[step()], version=1)
    v2 = Saga("s", steps=[step("b")], version=2)
    reg = SagaRegistry([v1, v2])
    assert reg.get("s", 1) is v1 and reg.get("s", 2) is v2 and reg.get("s", 3) is None
    reg.register(v1)  # the same object again is fine
    with pytest.raises(SagaDefinitionError, match="'s' version 1 is already registered"):
        reg.register(Saga("s", steps=[step()], version=1))
    with pytest.raises(SagaDefinitionError, match="expected a Saga, got str"):
        reg.register("s")  # type: ignore[arg-type]


# -- SagaClient arguments ---------------------------------------------------------------------

SAGA_ID = uuid4()

BAD_CALLS: list[Any] = [
    ("definition a name", lambda s: s.start_saga("order", {}), ["definition must be a Saga"]),
    ("input a list", lambda s: s.start_saga(ORDER, [1]), ["input must be a mapping"]),
    ("input not JSON", lambda s: s.start_saga(ORDER, {"x": {1, 2}}), ["saga input", "JSON"]),
    ("saga_id not a UUID", lambda s: s.start_saga(ORDER, {}, saga_id="x"), ["saga_id"]),
    ("key empty", lambda s: s.start_saga(ORDER, {}, idempotency_key=""), ["idempotency_key"]),
    ("key a number", lambda s: s.start_saga(ORDER, {}, idempotency_key=5), ["idempotency_key"]),
    ("bad correlation", lambda s: s.start_saga(ORDER, {}, correlation_id=1), ["correlation_id"]),
    ("conn a string", lambda s: s.start_saga(ORDER, {}, conn="dsn"), ["conn"]),
    ("starts a mapping", lambda s: s.start_sagas(ORDER, {"a": 1}), ["starts must be a list"]),
    ("starts a string", lambda s: s.start_sagas(ORDER, "abc"), ["starts must be a list"]),
    ("a start not a mapping", lambda s: s.start_sagas(ORDER, [{}, 5]), ["starts[1]"]),
    (
        "a start with a bad id",
        lambda s: s.start_sagas(ORDER, [{}, SagaStart(input={}, saga_id="nope")]),
        ["saga_id"],
    ),
    ("get: bad id", lambda s: s.get_saga("nope"), ["saga_id must be a UUID"]),
    ("history: bad id", lambda s: s.saga_history(42), ["saga_id must be a UUID"]),
    ("list: where a dict", lambda s: s.list_sagas({"status": "RUNNING"}), ["where"]),
    ("list: limit 0", lambda s: s.list_sagas(limit=0), ["limit"]),
    ("list: bad cursor", lambda s: s.list_sagas(cursor="zzz"), ["cursor"]),
    ("filter: bad status", lambda s: s.list_sagas(SagaFilter(status="DONE")), ["status"]),
    ("filter: stuck_for", lambda s: s.list_sagas(SagaFilter(stuck_for=5)), ["stuck_for"]),
    ("filter: version", lambda s: s.list_sagas(SagaFilter(version=0)), ["version"]),
    ("filter: name no saga has", lambda s: s.list_sagas(SagaFilter(name="a b")), ["saga name"]),
    ("mark: step", lambda s: s.mark_compensated(SAGA_ID, 5), ["step must be a string"]),
    ("cancel: bad id", lambda s: s.cancel_saga("x"), ["saga_id"]),
    ("cancel: reason", lambda s: s.cancel_saga(SAGA_ID, reason=5), ["reason"]),
    ("pause: operator", lambda s: s.pause_saga(SAGA_ID, operator=[]), ["operator"]),
    ("resume: conn", lambda s: s.resume_saga(SAGA_ID, conn=object()), ["conn"]),
    ("rebuild: table", lambda s: s.rebuild_projection(table="saga"), ["_rebuild"]),
    ("rebuild: replace", lambda s: s.rebuild_projection(replace_live="yes"), ["replace_live"]),
]


async def test_bad_arguments_are_a_validation_error_and_write_nothing(
    bus: CommandBus, conn: psycopg.AsyncConnection[Any]
) -> None:
    sagas = SagaClient(bus)
    for what, call, words in BAD_CALLS:
        with pytest.raises(ValidationError) as info:
            await call(sagas)
        for word in words:
            assert word in str(info.value), (what, str(info.value))
    assert await scalar(conn, "SELECT count(*) FROM commandbus.event") == 0
    assert await scalar(conn, "SELECT count(*) FROM commandbus.saga") == 0


def test_a_client_needs_a_bus() -> None:
    with pytest.raises(ValidationError, match="bus must be a CommandBus"):
        SagaClient("postgresql://")  # type: ignore[arg-type]


async def test_operators_are_refused_for_unknown_or_ended_sagas(bus: CommandBus) -> None:
    sagas = SagaClient(bus)
    with pytest.raises(SagaNotFoundError):
        await sagas.cancel_saga(uuid4())
    with pytest.raises(SagaNotFoundError):
        await sagas.pause_saga(uuid4())
    started = await sagas.start_saga(ORDER, {"order_id": "r1"})
    # the status row says RUNNING: resuming a saga that is not paused is refused
    with pytest.raises(InvalidStateError, match="not paused"):
        await sagas.resume_saga(started.saga_id)
    assert await sagas.get_saga(uuid4()) is None


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"url": ""}, "url"),
        ({"registry": [ORDER]}, "registry must be a SagaRegistry"),
        ({"batch_size": 0}, "batch_size"),
        ({"flushers": "2"}, "flushers"),
        ({"visibility_timeout": 30}, "visibility_timeout"),
        ({"visibility_timeout": timedelta(milliseconds=10)}, "visibility_timeout"),
        ({"reconnect_timeout": timedelta(seconds=-1)}, "reconnect_timeout"),
        ({"config": {}}, "config must be a Config"),
    ],
)
def test_a_coordinator_refuses_bad_arguments(kwargs: dict[str, Any], words: str) -> None:
    from commandbus import Coordinator

    args: dict[str, Any] = {"url": "postgresql://x", "registry": SagaRegistry([ORDER])}
    args.update(kwargs)
    with pytest.raises(ValidationError, match=words):
        Coordinator(args.pop("url"), args.pop("registry"), **args)
