"""The waterfall of a flow, from the audit stream: built from real flows and rendered."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import psycopg

from commandbus import (
    BusinessRuleError,
    Command,
    CommandBus,
    CommandStatus,
    Compensation,
    Coordinator,
    HandlerContext,
    HandlerRegistry,
    Saga,
    SagaClient,
    SagaRegistry,
    Step,
    StoredEvent,
    TransientCommandError,
    Worker,
)
from commandbus.engine.observability.waterfall import (
    Row,
    Waterfall,
    build_waterfall,
    load_flow,
    render_waterfall,
)
from support import FAST, wait_for

Conn = psycopg.AsyncConnection[Any]
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def shape(wf: Waterfall) -> list[tuple[int, str, str, str]]:
    """(depth, kind, label without ids, status) of each row."""
    return [(r.depth, r.kind, re.sub(r" [0-9a-f]{8}$", "", r.label), r.status) for r in wf.rows]


# -- a saga with a retry, a business failure and a compensation ----------------------------

ORDER = Saga(
    "order",
    version=1,
    steps=[
        Step(
            "reserve",
            domain="inventory",
            command="Reserve",
            compensation=Compensation("Release"),
        ),
        Step("charge", domain="payments", command="Charge"),
    ],
)


def saga_handlers() -> HandlerRegistry:
    reg = HandlerRegistry()

    @reg.handler("inventory", "Reserve")
    async def reserve(cmd: Command, ctx: HandlerContext) -> dict[str, str]:
        if ctx.attempt == 1:
            raise TransientCommandError("stock service busy")
        return {"reservation": "r-1"}

    @reg.handler("inventory", "Release")
    async def release(cmd: Command, ctx: HandlerContext) -> None:
        return None

    @reg.handler("payments", "Charge")
    async def charge(cmd: Command, ctx: HandlerContext) -> None:
        raise BusinessRuleError("card declined", code="DECLINED")

    return reg


async def test_a_compensated_saga_as_a_waterfall(dsn: str, bus: CommandBus, conn: Conn) -> None:
    reg = saga_handlers()
    sagas = SagaClient(bus)
    async with (
        Worker(dsn, reg, domain="inventory", config=FAST),
        Worker(dsn, reg, domain="payments", config=FAST),
        Coordinator(dsn, SagaRegistry([ORDER]), config=FAST),
    ):
        started = await sagas.start_saga(ORDER, {"amount": 500})

        async def ended() -> bool:
            saga = await sagas.get_saga(started.saga_id)
            return saga is not None and saga.status.is_final

        await wait_for(ended, timeout=30)

    by_saga = await load_flow(conn, started.saga_id)
    saga = await sagas.get_saga(started.saga_id)
    assert saga is not None
    by_correlation = await load_flow(conn, saga.correlation_id)
    assert by_saga == by_correlation and by_saga
    assert await load_flow(conn, uuid4()) == []

    wf = build_waterfall(by_saga)
    assert wf.correlation_id == saga.correlation_id
    assert shape(wf) == [
        (0, "saga", "saga order v1", "compensated"),
        (1, "step", "reserve", "completed"),
        (2, "command", "inventory.Reserve", "completed"),
        (3, "attempt", "attempt 1", "retried"),
        (3, "attempt", "attempt 2", "completed"),
        (1, "step", "charge", "failed"),
        (2, "command", "payments.Charge", "failed"),
        (3, "attempt", "attempt 1", "failed"),
        (1, "compensation", "compensate reserve", "compensated"),
        (2, "command", "inventory.Release", "completed"),
        (3, "attempt", "attempt 1", "completed"),
    ]
    rows = {(r.kind, r.label.split(" ")[0], r.status): r for r in wf.rows}
    retried = wf.rows[3]
    assert "stock service busy" in retried.detail and "retry in" in retried.detail
    failed = wf.rows[7]
    assert failed.detail == "DECLINED: card declined"
    # the worker's timing splits every attempt into its wait in the queue and its run
    for r in wf.rows:
        if r.kind == "attempt":
            assert r.run_start is not None and r.run_end is not None
            assert r.start <= r.run_start <= r.run_end
            assert r.end is not None and r.run_end <= r.end + timedelta(seconds=1)
    # the second attempt waited out the retry's backoff
    second = wf.rows[4]
    assert second.run_start is not None
    assert second.run_start - retried.end >= timedelta(milliseconds=150)  # type: ignore[operator]
    assert rows  # every kind is there

    text = render_waterfall(wf, width=140)
    assert "\x1b[" not in text
    lines = text.splitlines()
    assert lines[0].startswith(f"flow {saga.correlation_id}")
    assert len(lines) == 2 + len(wf.rows) + 1
    attempt = next(line for line in lines if "attempt 2" in line)
    assert "█" in attempt and "(wait " in attempt
    # its wait in the queue is drawn when it spans two columns or more (how long the
    # worker took to pick the retry up varies: test_an_attempt_is_drawn_as_its_wait_
    # then_its_run draws both for sure)
    bar = attempt.split("|")[1]
    assert second.start is not None and wf.start is not None and wf.end is not None
    column = (wf.end - wf.start) / len(bar)
    if second.run_start - second.start >= 2 * column:
        assert "░" in bar, (attempt, second)
    charge = next(line for line in lines if "payments.Charge" in line)
    assert charge.endswith("failed: DECLINED: card declined")
    coloured = render_waterfall(wf, width=140, color=True)
    assert "\x1b[1;31m" in coloured and "\x1b[32m" in coloured  # red failures, green success
    assert ANSI.sub("", coloured) == text  # colour changes nothing else
    assert wf.to_json()["rows"][0]["kind"] == "saga"


async def test_commands_sent_from_handlers_nest_under_their_cause(
    dsn: str, bus: CommandBus, conn: Conn
) -> None:
    reg = HandlerRegistry()

    @reg.handler("orders", "Place")
    async def place(cmd: Command, ctx: HandlerContext) -> None:
        await bus.send("payments", "Charge", {})

    @reg.handler("payments", "Charge")
    async def charge(cmd: Command, ctx: HandlerContext) -> None:
        return None

    sent = (await bus.send("orders", "Place", {})).unwrap()
    async with (
        Worker(dsn, reg, domain="orders", config=FAST),
        Worker(dsn, reg, domain="payments", config=FAST),
    ):

        async def done() -> bool:
            page = await bus.list_commands()
            return len(page.items) == 2 and all(
                c.status is CommandStatus.COMPLETED for c in page.items
            )

        await wait_for(done)
    wf = build_waterfall(await load_flow(conn, sent.correlation_id))
    assert shape(wf) == [
        (0, "command", "orders.Place", "completed"),
        (1, "attempt", "attempt 1", "completed"),
        (1, "command", "payments.Charge", "completed"),
        (2, "attempt", "attempt 1", "completed"),
    ]


# -- rendering, on made-up events ------------------------------------------------------------

T0 = datetime(2026, 11, 28, 12, 0, 0, tzinfo=UTC)
CORR = UUID(int=1)
CMD = UUID(int=2)


def event(n: int, ms: float, event_type: str, data: dict[str, Any], **meta: Any) -> StoredEvent:
    return StoredEvent(
        position=n,
        transaction_id=n,
        stream_id=f"command:payments:{CMD}",
        stream_version=n,
        event_type=event_type,
        data=data,
        correlation_id=CORR,
        causation_id=None,
        metadata=meta,
        recorded_at=T0 + timedelta(milliseconds=ms),
    )


def timing(ms: float, run_ms: float) -> dict[str, int]:
    started = T0 + timedelta(milliseconds=ms)
    return {"started_us": round(started.timestamp() * 1e6), "duration_us": round(run_ms * 1000)}


def made_up() -> list[StoredEvent]:
    trace = {"traceparent": "00-" + "a" * 32 + "-" + "b" * 16 + "-01"}
    return [
        event(
            1,
            0,
            "CommandSent",
            {"domain": "payments", "command_id": str(CMD), "command_type": "Charge"},
            trace=trace,
        ),
        event(
            2,
            30,
            "CommandRetryScheduled",
            {
                "attempt": 1,
                "error": {"code": "TRANSIENT", "message": "timeout"},
                "delay_seconds": 0.05,
                "retry_at": (T0 + timedelta(milliseconds=80)).isoformat(),
            },
            timing=timing(10, 20),
        ),
        event(3, 100, "CommandCompleted", {"attempt": 2, "result": None}, timing=timing(90, 8)),
    ]


def test_the_rendering_of_a_retried_command() -> None:
    wf = build_waterfall(made_up())
    assert wf.trace_ids == ("a" * 32,)
    assert wf.duration == timedelta(milliseconds=100)
    assert [r.kind for r in wf.rows] == ["command", "attempt", "attempt"]
    first, second = wf.rows[1], wf.rows[2]
    assert (first.start, first.run_start, first.end) == (
        T0,
        T0 + timedelta(milliseconds=10),
        T0 + timedelta(milliseconds=30),
    )
    assert second.start == T0 + timedelta(milliseconds=80)  # visible again at retry_at
    text = render_waterfall(wf, width=100)
    assert text.splitlines()[1:] == [
        "                          0                               100.0 ms",
        "payments.Charge 00000000 |████████████████████████████████████████|  100.0 ms completed",
        "  attempt 1              |░░░░█████████                           |   30.0 ms retried "
        "(wait 10.0 ms, run 20.0 ms): TRANSIENT: timeout; retry in 50.0 ms",
        "  attempt 2              |                                ░░░░████|   20.0 ms completed "
        "(wait 10.0 ms, run 8.0 ms)",
        "                          ░ waiting in queue  █ running / open  "
        "▒ attempt (no timing recorded)",
    ]
    assert text.splitlines()[0].endswith("trace " + "a" * 32)


def test_an_open_row_and_old_events_without_timing() -> None:
    tsq = {"attempt": 1, "error": {"message": "x"}}
    events = [*made_up()[:1], event(2, 40, "CommandMovedToTroubleshootingQueue", tsq)]
    wf = build_waterfall(events)
    command, attempt = wf.rows
    assert command.end is None and command.status == "in troubleshooting queue"
    assert attempt.run_start is None
    text = render_waterfall(wf, width=100, now=T0 + timedelta(seconds=1))
    assert "▒" in text.splitlines()[3]
    assert "1.00 s+" in text.splitlines()[2]  # still open: up to now


def test_no_events() -> None:
    assert render_waterfall([]) == "no events for this id\n"
    assert Waterfall(
        correlation_id=None, start=None, end=None, rows=(), trace_ids=()
    ).to_json() == {"correlation_id": None, "start": None, "end": None, "trace_ids": [], "rows": []}


def test_an_attempt_is_drawn_as_its_wait_then_its_run() -> None:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    ms = timedelta(milliseconds=1)
    attempt = Row(
        kind="attempt",
        label="attempt 1",
        depth=1,
        start=t0 + 100 * ms,
        end=t0 + 900 * ms,
        status="completed",
        run_start=t0 + 500 * ms,
        run_end=t0 + 900 * ms,
    )
    command = Row(
        kind="command", label="a.B", depth=0, start=t0, end=t0 + 1000 * ms, status="completed"
    )
    wf = Waterfall(
        correlation_id=uuid4(), start=t0, end=t0 + 1000 * ms, rows=(command, attempt), trace_ids=()
    )
    line = render_waterfall(wf, width=110).splitlines()[3]
    bar = line.split("|")[1]
    # a 1 s flow: 10% blank, 40% waiting, 40% running, 10% blank
    n = len(bar)
    assert bar == " " * (n // 10) + "░" * (n * 4 // 10) + "█" * (n * 4 // 10 + 1) + " " * (
        n - n // 10 - n * 4 // 10 - n * 4 // 10 - 1
    ), bar
    assert line.endswith("800.0 ms completed (wait 400.0 ms, run 400.0 ms)"), line
