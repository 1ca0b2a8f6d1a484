"""Tracing in one process: ids inherited through a ContextVar, spans, metrics, logs.

Spans and metrics are recorded with providers given to ``use_providers`` (never the
global ones: nothing here leaks into other tests). The same flow across processes,
exported with the real OTLP exporter, is ``test_tracing_otlp.py``.
"""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any
from uuid import UUID

import psycopg
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import commandbus
from commandbus import (
    BusinessRuleError,
    Command,
    CommandBus,
    CommandRequest,
    CommandStatus,
    ConfigError,
    HandlerContext,
    HandlerRegistry,
    Worker,
)
from commandbus.engine.observability import tracing
from support import FAST, fetch, wait_for

Conn = psycopg.AsyncConnection[Any]


class Recorded:
    """What the test's own providers recorded."""

    def __init__(self) -> None:
        self.spans = InMemorySpanExporter()
        self.metrics = InMemoryMetricReader()
        self.tracer_provider = TracerProvider(shutdown_on_exit=False)
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.spans))
        self.meter_provider = MeterProvider(metric_readers=[self.metrics], shutdown_on_exit=False)

    def finished(self) -> list[ReadableSpan]:
        return list(self.spans.get_finished_spans())

    def named(self, name: str) -> list[ReadableSpan]:
        return [s for s in self.finished() if s.name == name]

    def counters(self, name: str) -> dict[tuple[tuple[str, Any], ...], Any]:
        """The data points of metric ``name``: attributes (sorted) -> value (or count)."""
        out: dict[tuple[tuple[str, Any], ...], Any] = {}
        data = self.metrics.get_metrics_data()
        assert data is not None
        for rm in data.resource_metrics:
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    if metric.name != name:
                        continue
                    for point in metric.data.data_points:
                        key = tuple(sorted((point.attributes or {}).items()))
                        out[key] = getattr(point, "value", None) or getattr(point, "count", None)
        return out


@pytest.fixture
def recorded() -> Iterator[Recorded]:
    r = Recorded()
    with tracing.use_providers(r.tracer_provider, r.meter_provider):
        yield r
    r.tracer_provider.shutdown()
    r.meter_provider.shutdown()


def hexid(n: int, width: int) -> str:
    return format(n, f"0{width}x")


def attrs_of(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


def ids_of(headers: dict[str, str]) -> tuple[str, str]:
    """(trace id, parent span id) of W3C headers."""
    _version, trace_id, span_id, _flags = headers["traceparent"].split("-")
    return trace_id, span_id


async def until_final(bus: CommandBus, domain: str, command_id: UUID) -> None:
    async def final() -> bool:
        record = await bus.get_command(domain, command_id)
        return record is not None and record.status in (
            CommandStatus.COMPLETED,
            CommandStatus.FAILED,
            CommandStatus.IN_TROUBLESHOOTING_QUEUE,
        )

    await wait_for(final)


def chain_registry(children: list[Any]) -> HandlerRegistry:
    """orders.Place sends payments.Charge and a batch of one shipping.Ship, no ids given."""
    reg = HandlerRegistry()
    bus_box: dict[str, CommandBus] = {}

    @reg.handler("orders", "Place")
    async def place(cmd: Command, ctx: HandlerContext) -> None:
        bus = bus_box["bus"]
        fail = cmd.data.get("fail", False)
        sent = (await bus.send("payments", "Charge", {"fail": fail})).unwrap()
        batch = (
            await bus.send_batch([CommandRequest(domain="shipping", command_type="Ship")])
        ).unwrap()
        children.append((cmd, sent.command_id, batch.command_ids[0]))

    @reg.handler("payments", "Charge")
    async def charge(cmd: Command, ctx: HandlerContext) -> dict[str, int]:
        if cmd.data["fail"]:
            raise BusinessRuleError("card declined", code="DECLINED")
        logging.getLogger("commandbus.tests.tracing").warning("charged")
        return {"charged": 1}

    @reg.handler("shipping", "Ship")
    async def ship(cmd: Command, ctx: HandlerContext) -> None:
        return None

    reg.bus_box = bus_box  # type: ignore[attr-defined]
    return reg


# -- ids inherited from the handled command ----------------------------------------------


async def test_a_command_sent_from_a_handler_inherits_the_correlation_and_causation_ids(
    dsn: str, bus: CommandBus
) -> None:
    children: list[Any] = []
    reg = chain_registry(children)
    reg.bus_box["bus"] = bus  # type: ignore[attr-defined]
    parent = (await bus.send("orders", "Place", {})).unwrap()
    assert parent.correlation_id == parent.command_id  # a new flow: its own id
    async with Worker(dsn, reg, domain="orders", config=FAST):
        await until_final(bus, "orders", parent.command_id)
    [(handled, charge_id, ship_id)] = children
    assert handled.command_id == parent.command_id
    charge = await bus.get_command("payments", charge_id)
    ship = await bus.get_command("shipping", ship_id)
    assert charge is not None and ship is not None
    assert charge.correlation_id == parent.correlation_id
    assert ship.correlation_id == parent.correlation_id
    for domain, cid in (("payments", charge_id), ("shipping", ship_id)):
        sent = (await bus.command_history(domain, cid))[0]
        assert sent.causation_id == parent.command_id
        assert sent.correlation_id == parent.correlation_id
    # the batch's own stream carries the inherited correlation id too
    batch = await bus.get_batch(ship.batch_id)  # type: ignore[arg-type]
    assert batch is not None and batch.correlation_id == parent.correlation_id
    # outside a handler nothing is inherited (the ContextVars are the handler's)
    alone = (await bus.send("payments", "Charge", {"fail": False})).unwrap()
    assert alone.correlation_id == alone.command_id
    assert (await bus.command_history("payments", alone.command_id))[0].causation_id is None


async def test_ids_given_explicitly_win_over_the_inherited_ones(dsn: str, bus: CommandBus) -> None:
    reg = HandlerRegistry()
    mine, cause = UUID(int=7), UUID(int=8)
    sent: list[UUID] = []

    @reg.handler("orders", "Place")
    async def place(cmd: Command, ctx: HandlerContext) -> None:
        r = await bus.send("payments", "Charge", {}, correlation_id=mine, causation_id=cause)
        sent.append(r.unwrap().command_id)

    parent = (await bus.send("orders", "Place", {})).unwrap()
    async with Worker(dsn, reg, domain="orders", config=FAST):
        await until_final(bus, "orders", parent.command_id)
    event = (await bus.command_history("payments", sent[0]))[0]
    assert (event.correlation_id, event.causation_id) == (mine, cause)


# -- without a recording SDK the sender's context still travels ---------------------------


async def test_without_an_sdk_the_handled_messages_context_travels_on(
    dsn: str, bus: CommandBus, conn: Conn
) -> None:
    """The worker records nothing: a send from its handler and the reply carry the
    context the handled message came with, and so do its log records."""
    assert not tracing.tracing_active()
    children: list[Any] = []
    reg = chain_registry(children)
    reg.bus_box["bus"] = bus  # type: ignore[attr-defined]
    # the sender traces with a provider of its own (not the global one)
    sender = TracerProvider(shutdown_on_exit=False).get_tracer("tests")
    with sender.start_as_current_span("checkout") as span:
        parent = (await bus.send("orders", "Place", {}, reply_to="replies")).unwrap()
    trace_id = hexid(span.get_span_context().trace_id, 32)
    span_id = hexid(span.get_span_context().span_id, 16)
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.addFilter(commandbus.CorrelationFilter())
    handler.setFormatter(logging.Formatter("%(trace_id)s %(span_id)s %(message)s"))
    app_log = logging.getLogger("commandbus.tests.tracing")
    app_log.addHandler(handler)
    try:
        async with (
            Worker(dsn, reg, domain="orders", config=FAST),
            Worker(dsn, reg, domain="payments", config=FAST),
        ):
            await until_final(bus, "orders", parent.command_id)
            [(_h, charge_id, ship_id)] = children
            await until_final(bus, "payments", charge_id)
    finally:
        app_log.removeHandler(handler)
    [(_h, charge_id, ship_id)] = children
    for domain, cid in (("payments", charge_id), ("shipping", ship_id)):
        sent = (await bus.command_history(domain, cid))[0]
        assert ids_of(sent.metadata["trace"]) == (trace_id, span_id)
    [(headers,)] = await fetch(conn, "SELECT headers FROM pgmq.q_shipping")  # not handled
    assert ids_of(headers) == (trace_id, span_id)
    [(reply,)] = await fetch(conn, "SELECT headers FROM pgmq.q_replies")
    assert ids_of(reply) == (trace_id, span_id)
    assert out.getvalue().splitlines() == [f"{trace_id} {span_id} charged"]


# -- spans and metrics ------------------------------------------------------------------------


async def test_send_and_process_spans_form_one_trace_per_flow(
    dsn: str, bus: CommandBus, conn: Conn, recorded: Recorded
) -> None:
    children: list[Any] = []
    reg = chain_registry(children)
    reg.bus_box["bus"] = bus  # type: ignore[attr-defined]
    ok = (await bus.send("orders", "Place", {})).unwrap()
    bad = (await bus.send("orders", "Place", {"fail": True}, reply_to="replies")).unwrap()
    async with (
        Worker(dsn, reg, domain="orders", config=FAST),
        Worker(dsn, reg, domain="payments", config=FAST),
        Worker(dsn, reg, domain="shipping", config=FAST),
    ):
        await until_final(bus, "orders", ok.command_id)
        await until_final(bus, "orders", bad.command_id)
        for _h, charge_id, ship_id in children:
            await until_final(bus, "payments", charge_id)
            await until_final(bus, "shipping", ship_id)

    spans = recorded.finished()
    by_id = {s.context.span_id: s for s in spans}
    for flow in (ok, bad):
        corr = str(flow.correlation_id)
        mine = [s for s in spans if attrs_of(s)["messaging.message.conversation_id"] == corr]
        assert len({s.context.trace_id for s in mine}) == 1  # one flow, one trace
        names = sorted(s.name for s in mine)
        assert names == [
            "process orders",
            "process payments",
            "process shipping",
            "send orders",
            "send payments",
            "send shipping",
        ]
        for s in mine:
            assert attrs_of(s)["messaging.system"] == "pgmq"
            assert s.kind is (SpanKind.PRODUCER if s.name.startswith("send") else SpanKind.CONSUMER)
        named = {s.name: s for s in mine}
        root = named["send orders"]
        assert root.parent is None
        assert attrs_of(root)["commandbus.command_id"] == str(flow.command_id)
        assert attrs_of(root)["messaging.message.id"] == str(flow.msg_id)
        assert attrs_of(root)["messaging.operation.type"] == "send"
        # the chain: send -> process -> send (from the handler) -> process
        chain = [
            ("process orders", "send orders"),
            ("send payments", "process orders"),
            ("send shipping", "process orders"),
            ("process payments", "send payments"),
            ("process shipping", "send shipping"),
        ]
        for child, parent in chain:
            assert named[child].parent is not None, child
            assert by_id[named[child].parent.span_id].name == parent, child
        process = named["process orders"]
        assert attrs_of(process)["messaging.operation.type"] == "process"
        assert attrs_of(process)["messaging.destination.name"] == "orders"
        assert attrs_of(process)["commandbus.attempt"] == 1
        assert attrs_of(process)["commandbus.command_type"] == "Place"
        assert attrs_of(process)["commandbus.outcome"] == "completed"
        assert process.status.status_code is StatusCode.UNSET
        batch = named["send shipping"]
        assert attrs_of(batch)["messaging.batch.message_count"] == 1
        caused = attrs_of(named["process payments"])["commandbus.causation_id"]
        assert caused == str(flow.command_id)

    failed = next(
        s
        for s in recorded.named("process payments")
        if attrs_of(s)["messaging.message.conversation_id"] == str(bad.correlation_id)
    )
    assert failed.status.status_code is StatusCode.ERROR
    assert attrs_of(failed)["commandbus.outcome"] == "failed"
    assert attrs_of(failed)["commandbus.error.kind"] == "business"
    assert attrs_of(failed)["error.type"] == "commandbus.errors.BusinessRuleError"
    assert attrs_of(failed)["commandbus.error.code"] == "DECLINED"
    assert [e.name for e in failed.events] == ["exception"]

    # the outcome events keep the process span's context and the attempt's timing
    [(_h, charge_id, _s)] = [c for c in children if c[0].command_id == bad.command_id]
    outcome = (await bus.command_history("payments", charge_id))[-1]
    assert outcome.event_type == "CommandFailed"
    assert ids_of(outcome.metadata["trace"])[1] == hexid(failed.context.span_id, 16)
    timing = outcome.metadata["timing"]
    assert timing["duration_us"] >= 0
    assert abs(timing["started_us"] / 1e6 - outcome.recorded_at.timestamp()) < 60

    # metrics by domain, type and outcome
    processed = recorded.counters("commandbus.commands.processed")
    key = (
        ("commandbus.command_type", "Charge"),
        ("commandbus.domain", "payments"),
        ("commandbus.outcome", "completed"),
    )
    assert processed[key] == 1
    failed_counts = recorded.counters("commandbus.commands.failed")
    assert list(failed_counts.values()) == [1]
    [failed_key] = failed_counts
    assert ("error.type", "commandbus.errors.BusinessRuleError") in failed_key
    durations = recorded.counters("commandbus.handler.duration")
    assert sum(durations.values()) == 6
    sent = recorded.counters("commandbus.commands.sent")
    assert sent[(("commandbus.command_type", "Place"), ("commandbus.domain", "orders"))] == 2


async def test_the_reply_carries_the_process_spans_context(
    dsn: str, bus: CommandBus, conn: Conn, recorded: Recorded
) -> None:
    reg = HandlerRegistry()

    @reg.handler("payments", "Charge")
    async def charge(cmd: Command, ctx: HandlerContext) -> None:
        return None

    sent = (await bus.send("payments", "Charge", {}, reply_to="replies")).unwrap()
    async with Worker(dsn, reg, domain="payments", config=FAST):
        await until_final(bus, "payments", sent.command_id)
    [process] = recorded.named("process payments")
    [(headers,)] = await fetch(conn, "SELECT headers FROM pgmq.q_replies")
    ctx = process.context
    assert ids_of(headers) == (hexid(ctx.trace_id, 32), hexid(ctx.span_id, 16))


async def test_every_retry_is_its_own_process_span(
    dsn: str, bus: CommandBus, recorded: Recorded
) -> None:
    reg = HandlerRegistry()
    calls: list[int] = []

    @reg.handler("payments", "Charge")
    async def charge(cmd: Command, ctx: HandlerContext) -> None:
        calls.append(ctx.attempt)
        if ctx.attempt == 1:
            raise RuntimeError("connection reset")

    sent = (await bus.send("payments", "Charge", {})).unwrap()
    async with Worker(dsn, reg, domain="payments", config=FAST):
        await until_final(bus, "payments", sent.command_id)
    first, second = sorted(
        recorded.named("process payments"), key=lambda s: attrs_of(s)["commandbus.attempt"]
    )
    [send] = recorded.named("send payments")
    for s in (first, second):
        assert s.parent is not None and s.parent.span_id == send.context.span_id
    assert attrs_of(first)["commandbus.outcome"] == "retried"
    assert attrs_of(first)["commandbus.error.kind"] == "transient"
    assert attrs_of(first)["error.type"] == "RuntimeError"
    assert first.status.status_code is StatusCode.ERROR
    assert attrs_of(second)["commandbus.attempt"] == 2
    assert attrs_of(second)["commandbus.outcome"] == "completed"
    assert second.status.status_code is StatusCode.UNSET
    retried = recorded.counters("commandbus.commands.retried")
    assert list(retried.values()) == [1]


async def test_a_refused_send_is_an_error_span(bus: CommandBus, recorded: Recorded) -> None:
    sent = (await bus.send("payments", "Charge", {})).unwrap()
    again = await bus.send("payments", "Charge", {}, command_id=sent.command_id)
    assert not again.ok
    first, second = recorded.named("send payments")
    assert first.status.status_code is StatusCode.UNSET
    assert second.status.status_code is StatusCode.ERROR
    assert attrs_of(second)["error.type"] == "DUPLICATE_COMMAND"


async def test_json_logs_carry_the_process_spans_ids(
    dsn: str, bus: CommandBus, recorded: Recorded
) -> None:
    root = logging.getLogger()  # configure_logging sets up the root logger
    saved = (root.handlers[:], root.level, root.propagate)
    out = io.StringIO()
    try:
        commandbus.configure_logging(stream=out, json=True)
        reg = HandlerRegistry()

        @reg.handler("payments", "Charge")
        async def charge(cmd: Command, ctx: HandlerContext) -> None:
            logging.getLogger("commandbus.tests.json").info("charging", extra={"amount": 5})

        sent = (await bus.send("payments", "Charge", {})).unwrap()
        async with Worker(dsn, reg, domain="payments", config=FAST):
            await until_final(bus, "payments", sent.command_id)
    finally:
        root.handlers[:], root.level, root.propagate = saved
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    [line] = [r for r in lines if r["message"] == "charging"]
    [process] = recorded.named("process payments")
    assert line["trace_id"] == hexid(process.context.trace_id, 32)
    assert line["span_id"] == hexid(process.context.span_id, 16)
    assert line["correlation_id"] == str(sent.correlation_id)
    assert line["command_id"] == str(sent.command_id)
    assert line["logger"] == "commandbus.tests.json" and line["level"] == "INFO"
    assert line["amount"] == 5
    # outside a handler: nulls
    assert any(r["trace_id"] is None and r["logger"] == "commandbus.worker" for r in lines)


def test_the_text_format_adds_the_trace_ids_only_when_traced(recorded: Recorded) -> None:
    from commandbus.engine.observability.logging import CorrelationFilter, TextFormatter

    record = logging.LogRecord("commandbus.x", logging.INFO, "", 0, "hello", (), None)
    CorrelationFilter().filter(record)
    assert TextFormatter().format(record).endswith(" commandbus.x hello")  # no None noise
    tracer = recorded.tracer_provider.get_tracer("tests")
    with tracer.start_as_current_span("s") as span:
        CorrelationFilter().filter(record)
    ctx = span.get_span_context()
    assert (
        TextFormatter()
        .format(record)
        .endswith(
            f" commandbus.x trace_id={hexid(ctx.trace_id, 32)} "
            f"span_id={hexid(ctx.span_id, 16)} hello"
        )
    )


# -- set-up ------------------------------------------------------------------------------------


def test_the_switch_is_read_strictly() -> None:
    assert tracing.otel_requested({"COMMANDBUS_OTEL": "1"})
    assert tracing.otel_requested({"COMMANDBUS_OTEL": " On "})
    assert not tracing.otel_requested({"COMMANDBUS_OTEL": "0"})
    assert not tracing.otel_requested({})
    with pytest.raises(ConfigError, match="COMMANDBUS_OTEL must be"):
        tracing.otel_requested({"COMMANDBUS_OTEL": "maybe"})


_NO_SDK = """
import sys, asyncio
sys.modules["opentelemetry.sdk"] = None  # as if commandbus[otel] were not installed
from commandbus import CommandBus, ConfigError
from commandbus.engine.observability.tracing import configure_tracing
try:
    configure_tracing()
except ConfigError as exc:
    print("configure:", exc)
async def main():
    try:
        async with CommandBus(sys.argv[1]):
            pass
    except ConfigError as exc:
        print("open:", exc)
asyncio.run(main())
"""


def test_without_the_sdk_the_set_up_says_what_to_install(dsn: str) -> None:
    env = {**os.environ, "COMMANDBUS_OTEL": "1"}
    done = subprocess.run(
        [sys.executable, "-c", _NO_SDK, dsn],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    lines = done.stdout.splitlines()
    assert len(lines) == 2, done
    for line in lines:
        assert "pip install 'commandbus[otel]'" in line


# -- the saga coordinator's spans ----------------------------------------------------------------


def test_saga_span_is_a_child_of_the_reply_and_parents_what_it_sends(recorded: Recorded) -> None:
    reply_headers = {"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01", "other": "x"}
    saga_id, corr = UUID(int=5), UUID(int=6)
    with tracing.saga_span(
        "saga order: charge failed",
        saga_id=saga_id,
        correlation_id=corr,
        step="charge",
        parent_headers=reply_headers,
        saga_name="order",
        queue="commandbus_sagas",
        message_id=42,
        kind="consumer",
        attributes={"commandbus.saga_version": 1, "skipped": None},
    ) as span:
        assert span.recording
        sent_with = span.headers
        span.fail("card declined", error_type="DECLINED", business=True, outcome="compensating")
        span.event("compensation started", {"steps": "reserve"})
        with tracing.saga_span(
            "compensate reserve", saga_id=saga_id, correlation_id=corr, step="reserve"
        ) as inner:
            inner.set("commandbus.command_id", "c")
    with (
        pytest.raises(RuntimeError),
        tracing.saga_span("boom", saga_id=saga_id, correlation_id=None),
    ):
        raise RuntimeError("decider crashed")
    transition, compensation, boom = (
        recorded.named("saga order: charge failed")[0],
        recorded.named("compensate reserve")[0],
        recorded.named("boom")[0],
    )
    assert transition.context.trace_id == int("1" * 32, 16)
    assert transition.parent is not None and transition.parent.span_id == int("2" * 16, 16)
    assert transition.kind is SpanKind.CONSUMER
    a = attrs_of(transition)
    assert a["commandbus.saga_id"] == str(saga_id)
    assert a["commandbus.saga_step"] == "charge"
    assert a["messaging.message.conversation_id"] == str(corr)
    assert a["messaging.system"] == "pgmq" and a["messaging.operation.type"] == "process"
    assert a["messaging.message.id"] == "42" and a["commandbus.saga_version"] == 1
    assert "skipped" not in a
    assert a["commandbus.error.kind"] == "business" and a["error.type"] == "DECLINED"
    assert transition.status.status_code is StatusCode.ERROR
    assert [e.name for e in transition.events] == ["compensation started"]
    assert ids_of(sent_with) == (
        hexid(transition.context.trace_id, 32),
        hexid(transition.context.span_id, 16),
    )
    # a span opened inside is the transition's child (the current context)
    assert compensation.parent is not None
    assert compensation.parent.span_id == transition.context.span_id
    assert attrs_of(compensation)["commandbus.command_id"] == "c"
    assert boom.status.status_code is StatusCode.ERROR
    assert [e.name for e in boom.events] == ["exception"]


def test_saga_span_without_an_sdk_passes_the_parents_context_on() -> None:
    assert not tracing.tracing_active()
    parent = {"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01", "junk": "x"}
    with tracing.saga_span(
        "t", saga_id=UUID(int=1), correlation_id=None, parent_headers=parent
    ) as s:
        assert not s.recording
        assert s.headers == {"traceparent": parent["traceparent"]}
        s.fail("x", error_type="y")  # no-ops
        s.set("k", 1)
    with tracing.saga_span("t", saga_id=UUID(int=1), correlation_id=None) as s:
        assert s.headers == {}


def test_saga_metrics(recorded: Recorded) -> None:
    tracing.count_saga_transition("order", "COMPENSATING", compensations={"reserve": 1})
    tracing.count_saga_transition("order", "COMPENSATED")
    transitions = recorded.counters("commandbus.saga.transitions")
    assert transitions == {
        (("commandbus.saga_name", "order"), ("commandbus.saga_status", "COMPENSATING")): 1,
        (("commandbus.saga_name", "order"), ("commandbus.saga_status", "COMPENSATED")): 1,
    }
    compensations = recorded.counters("commandbus.saga.compensations")
    assert compensations == {
        (("commandbus.saga_name", "order"), ("commandbus.saga_step", "reserve")): 1
    }


def test_saga_metrics_cost_nothing_without_a_meter_provider() -> None:
    assert not tracing.metrics_active()
    tracing.count_saga_transition("order", "COMPLETED")  # no error, nothing recorded
