"""What a handler's exception becomes: its kind, its recorded error (with a bounded
traceback when unexpected), and its log line; against a real PostgreSQL."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any
from uuid import UUID

import psycopg
import pytest

from commandbus import (
    BusinessRuleError,
    Command,
    CommandBus,
    CommandStatus,
    HandlerContext,
    HandlerRegistry,
    PermanentCommandError,
    TransientCommandError,
    ValidationError,
    Worker,
)
from commandbus.engine.worker.failures import (
    MAX_MESSAGE_CHARS,
    MAX_TRACEBACK_CHARS,
    ErrorKind,
    classify,
    error_info,
    format_traceback,
)
from commandbus.errors import HandlerRegistrationError
from commandbus.models import ErrorInfo, StoredEvent
from support import FAST, fetch, scalar, wait_for

Conn = psycopg.AsyncConnection[Any]


# -- what an exception means (no database) -------------------------------------------------


class Oddity(BaseException):
    """Not an Exception: what a handler should never raise, but may."""


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (TypeError("f() takes 1 positional argument but 2 were given"), ErrorKind.PROGRAMMING),
        (AttributeError("'NoneType' object has no attribute 'id'"), ErrorKind.PROGRAMMING),
        (NameError("name 'x' is not defined"), ErrorKind.PROGRAMMING),
        (UnboundLocalError("local variable"), ErrorKind.PROGRAMMING),
        (ModuleNotFoundError("No module named 'nope'"), ErrorKind.PROGRAMMING),
        (AssertionError(), ErrorKind.PROGRAMMING),
        (NotImplementedError(), ErrorKind.PROGRAMMING),
        (Oddity("a BaseException of the user's own"), ErrorKind.TRANSIENT),
        (ValueError("bad"), ErrorKind.TRANSIENT),
        (KeyError("k"), ErrorKind.TRANSIENT),
        (ConnectionError("lost"), ErrorKind.TRANSIENT),
        (TimeoutError(), ErrorKind.TRANSIENT),
        (ValidationError("a library refusal"), ErrorKind.PERMANENT),
        (TransientCommandError("later"), ErrorKind.TRANSIENT),
        (PermanentCommandError("never"), ErrorKind.PERMANENT),
        (BusinessRuleError("no"), ErrorKind.BUSINESS),
        # a TaskGroup's group: its most decisive member decides
        (ExceptionGroup("g", [ValueError("a")]), ErrorKind.TRANSIENT),
        (ExceptionGroup("g", [ValueError("a"), TypeError("b")]), ErrorKind.PROGRAMMING),
        (ExceptionGroup("g", [ConnectionError(), BusinessRuleError("no")]), ErrorKind.BUSINESS),
        (
            ExceptionGroup("g", [ExceptionGroup("inner", [PermanentCommandError("p")])]),
            ErrorKind.PERMANENT,
        ),
    ],
)
def test_each_exception_has_a_kind(exc: BaseException, kind: ErrorKind) -> None:
    assert classify(exc) is kind


def raised(exc: BaseException) -> BaseException:
    """``exc`` with a traceback (raised and caught here)."""
    try:
        raise exc
    except BaseException as caught:
        return caught


def test_errors_raised_on_purpose_carry_no_traceback_and_others_do() -> None:
    busy = error_info(raised(TransientCommandError("busy", code="WAREHOUSE_BUSY")))
    assert busy == ErrorInfo(type="TransientCommandError", code="WAREHOUSE_BUSY", message="busy")
    assert "traceback" not in busy.as_dict()
    bug = error_info(raised(KeyError("sku")))
    assert bug.traceback is not None and bug.traceback.startswith("Traceback")
    assert bug.traceback.rstrip().endswith("KeyError: 'sku'")
    # a failure chosen on purpose but raised from an unexpected error keeps the cause
    try:
        try:
            stock: dict[str, int] = {}
            stock["sku"] += 1
        except KeyError as exc:
            raise PermanentCommandError("no such sku") from exc
    except PermanentCommandError as exc:
        chained = error_info(exc)
    assert chained.code == "PERMANENT" and chained.traceback is not None
    assert "KeyError" in chained.traceback and "direct cause" in chained.traceback


class StrRaises(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no text for you")


class CodeRaises(Exception):
    @property
    def code(self) -> str:
        raise RuntimeError("no code either")


def test_any_exception_can_be_recorded() -> None:
    broken = error_info(raised(StrRaises()))
    assert broken.message == "<StrRaises: str() failed>" and broken.code == "StrRaises"
    assert broken.traceback is not None and "StrRaises" in broken.traceback
    assert error_info(raised(CodeRaises("x"))).code == "CodeRaises"
    assert error_info(ValueError(1, {"a": 2})).message == "(1, {'a': 2})"
    assert error_info(ValueError()).message == "ValueError"
    group = error_info(raised(ExceptionGroup("tasks", [ValueError("a"), TypeError("b")])))
    assert (group.type, group.message) == ("TypeError", "b (and 1 more in a ExceptionGroup)")


def deep(n: int, message: str) -> None:
    """``n`` frames, alternating with :func:`deeper` (so Python does not fold them)."""
    if n == 0:
        raise RuntimeError(message)
    deeper(n - 1, message)


def deeper(n: int, message: str) -> None:
    deep(n, message)


def test_huge_messages_and_tracebacks_are_bounded_keeping_the_innermost_frames() -> None:
    exc = raised(Exception("unused"))
    try:
        deep(300, "x" * 1_000_000)
    except RuntimeError as caught:
        exc = caught
    err = error_info(exc)
    assert len(err.message) == MAX_MESSAGE_CHARS and err.message.endswith("characters cut)")
    assert err.traceback is not None and len(err.traceback) <= MAX_TRACEBACK_CHARS
    lines = err.traceback.splitlines()
    assert lines[0].endswith("earlier lines cut)")  # the outer frames went
    assert lines[-1].startswith("RuntimeError: xxx") and lines[-1].endswith("characters cut)")
    assert "in deep" in lines[-3] and "raise RuntimeError(message)" in lines[-2]
    # a small one is whole
    assert format_traceback(raised(ValueError("v"))).startswith("Traceback (most recent call")


def test_old_errors_without_a_traceback_read_back() -> None:
    old = {"type": "E", "code": "NO_FUNDS", "message": "no"}
    assert ErrorInfo.from_dict(old) == ErrorInfo(type="E", code="NO_FUNDS", message="no")
    assert ErrorInfo.from_dict(old).as_dict() == old  # the wire shape is unchanged without one
    new = ErrorInfo.from_dict({**old, "traceback": "Traceback ..."})
    assert new.traceback == "Traceback ..."


def test_a_handler_that_cannot_take_command_and_ctx_is_refused_when_registered() -> None:
    reg = HandlerRegistry()

    async def one(cmd: Command) -> None:
        return None

    async def three(cmd: Command, ctx: HandlerContext, extra: int) -> None:
        return None

    for wrong in (one, three):
        with pytest.raises(HandlerRegistrationError, match=r"must take \(command, ctx\)"):
            reg.register("payments", "Charge", wrong)  # type: ignore[arg-type]

    class Callable_:
        async def __call__(self, cmd: Command, ctx: HandlerContext, *rest: Any) -> None:
            return None

    async def flexible(*args: Any, **kwargs: Any) -> None:
        return None

    reg.register("payments", "A", Callable_())
    reg.register("payments", "B", flexible)
    assert reg.command_types("payments") == ["A", "B"]


# -- what a worker does with them -----------------------------------------------------------


async def run_until_final(
    dsn: str, bus: CommandBus, reg: HandlerRegistry, command_id: UUID
) -> list[StoredEvent]:
    async def final() -> bool:
        record = await bus.get_command("payments", command_id)
        return record is not None and record.status in (
            CommandStatus.COMPLETED,
            CommandStatus.FAILED,
            CommandStatus.IN_TROUBLESHOOTING_QUEUE,
        )

    async with Worker(dsn, reg, domain="payments", config=FAST):
        await wait_for(final, timeout=30)
    return await bus.command_history("payments", command_id)


def worker_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "commandbus.worker" and "attempt" in r.msg]


async def test_a_programming_error_goes_to_the_tsq_at_once_with_its_traceback(
    dsn: str, bus: CommandBus, conn: Conn, caplog: pytest.LogCaptureFixture
) -> None:
    reg = HandlerRegistry()
    calls: list[int] = []

    def total(items: list[int]) -> int:
        return sum(items)

    @reg.handler("payments", "Charge")
    async def charge(cmd: Command, ctx: HandlerContext) -> int:
        calls.append(ctx.attempt)
        return total(cmd.data["items"], 2)  # type: ignore[call-arg]  # the mistake

    caplog.set_level(logging.INFO, logger="commandbus")
    sent = (await bus.send("payments", "Charge", {"items": [1]}, reply_to="replies")).unwrap()
    history = await run_until_final(dsn, bus, reg, sent.command_id)
    assert calls == [1]  # not retried as if it might pass
    last = history[-1]
    assert last.event_type == "CommandMovedToTroubleshootingQueue"
    assert last.data["reason"] == "programming_error" and last.data["attempt"] == 1
    error = last.data["error"]
    assert error["type"] == "TypeError" and "positional argument" in error["message"]
    assert "in charge" in error["traceback"] and "total(cmd.data" in error["traceback"]
    assert error["traceback"].rstrip().splitlines()[-1].startswith("TypeError: ")
    # the status row and the TSQ say it too; the reply does not carry the traceback
    record = await bus.get_command("payments", sent.command_id)
    assert record is not None and record.last_error == error
    [item] = (await bus.troubleshooting.list()).items
    assert item.last_error is not None and item.last_error["traceback"] == error["traceback"]
    reply = await scalar(conn, "SELECT message FROM pgmq.q_replies")
    assert reply["error"] == {k: error[k] for k in ("type", "code", "message")}
    # logged once, at ERROR, with the exception attached
    [line] = worker_records(caplog)
    assert line.levelno == logging.ERROR and line.exc_info is not None
    assert line.exc_info[0] is TypeError
    assert "programming_error" in line.getMessage() and str(sent.command_id) in line.getMessage()
    assert (await bus.verify_projection()).ok  # the replay agrees with the live row


async def test_an_unexpected_error_is_retried_with_its_traceback_logged(
    dsn: str, bus: CommandBus, caplog: pytest.LogCaptureFixture
) -> None:
    reg = HandlerRegistry()

    async def fetch_rate(n: int) -> float:
        raise ConnectionResetError(f"rate service reset the connection ({n})")

    @reg.handler("payments", "Charge")
    async def charge(cmd: Command, ctx: HandlerContext) -> None:
        # the failure happens in tasks the handler started
        async with asyncio.TaskGroup() as tg:
            tg.create_task(fetch_rate(1))
            tg.create_task(asyncio.sleep(10))

    caplog.set_level(logging.INFO, logger="commandbus")
    sent = (await bus.send("payments", "Charge", {}, max_attempts=2)).unwrap()
    history = await run_until_final(dsn, bus, reg, sent.command_id)
    assert [e.event_type for e in history] == [
        "CommandSent",
        "CommandRetryScheduled",
        "CommandMovedToTroubleshootingQueue",
    ]
    for event in history[1:]:
        error = event.data["error"]
        assert error["type"] == "ConnectionResetError"
        assert error["message"] == "rate service reset the connection (1)"
        assert "in fetch_rate" in error["traceback"] and "ExceptionGroup" in error["traceback"]
    assert history[-1].data["reason"] == "attempts_exhausted"
    retried, moved = worker_records(caplog)
    assert retried.levelno == logging.WARNING and retried.exc_info is not None
    assert moved.levelno == logging.ERROR and moved.exc_info is not None


async def test_a_base_exception_of_the_handler_s_own_fails_only_its_attempt(
    dsn: str, bus: CommandBus
) -> None:
    # (before: it killed its runner task, and the message waited out its vt)
    reg = HandlerRegistry()

    @reg.handler("payments", "Charge")
    async def charge(cmd: Command, ctx: HandlerContext) -> str:
        if cmd.data["odd"]:
            raise Oddity("odd")
        return "charged"

    odd = (await bus.send("payments", "Charge", {"odd": True}, max_attempts=2)).unwrap()
    plain = (await bus.send("payments", "Charge", {"odd": False})).unwrap()
    async with Worker(dsn, reg, domain="payments", config=FAST) as worker:
        await wait_for(
            lambda: _status_is(bus, odd.command_id, CommandStatus.IN_TROUBLESHOOTING_QUEUE),
            timeout=20,
        )
        await wait_for(lambda: _status_is(bus, plain.command_id, CommandStatus.COMPLETED))
        assert worker.stats.completed == 1
    history = await bus.command_history("payments", odd.command_id)
    # unknown to the library: retried while attempts last, then the TSQ
    assert [e.event_type for e in history][1:] == [
        "CommandRetryScheduled",
        "CommandMovedToTroubleshootingQueue",
    ]
    assert history[-1].data["error"]["type"] == "Oddity"


async def _status_is(bus: CommandBus, command_id: UUID, status: CommandStatus) -> bool:
    rec = await bus.get_command("payments", command_id)
    return rec is not None and rec.status is status


async def what_ends_its_own_loop(main: Callable[[], Awaitable[None]]) -> BaseException | None:
    """Run ``main`` in an event loop of its own (a thread): a SystemExit or
    KeyboardInterrupt leaves the loop it is raised in. What ended it, if either."""

    def run() -> BaseException | None:
        try:
            asyncio.run(main())
        except (SystemExit, KeyboardInterrupt) as exc:
            return exc
        return None

    return await asyncio.wait_for(asyncio.to_thread(run), timeout=30)


@pytest.mark.parametrize("ending", [SystemExit(3), KeyboardInterrupt()], ids=repr)
async def test_a_handler_that_ends_the_process_stops_the_worker_gracefully_first(
    dsn: str, bus: CommandBus, ending: BaseException
) -> None:
    # sys.exit() in a handler, a signal handler's sys.exit(), a second Ctrl-C under
    # asyncio.run: the process is to end, the command has not failed. (Before: the
    # worker's process died at once, outcomes other handlers had finished were lost;
    # then for a while it was recorded as the command's programming error)
    reg = HandlerRegistry()
    other_done = asyncio.Event()

    @reg.handler("payments", "Charge")
    async def charge(cmd: Command, ctx: HandlerContext) -> str:
        if cmd.data["end"]:
            await other_done.wait()
            raise ending
        other_done.set()
        return "charged"

    ending_cmd = (await bus.send("payments", "Charge", {"end": True})).unwrap()
    other = (await bus.send("payments", "Charge", {"end": False})).unwrap()

    async def main() -> None:
        await Worker(dsn, reg, domain="payments", config=FAST, concurrency=4).run()

    raised = await what_ends_its_own_loop(main)
    assert raised is ending  # raised once the worker had stopped
    done = await bus.get_command("payments", other.command_id)
    assert done is not None and done.status is CommandStatus.COMPLETED
    # handed back at once, for the next worker: no failure recorded
    back = await bus.get_command("payments", ending_cmd.command_id)
    assert back is not None and back.status is CommandStatus.PENDING and back.last_error is None
    assert [e.event_type for e in await bus.command_history("payments", back.command_id)] == [
        "CommandSent"
    ]
    visible = await bus.troubleshooting.list()
    assert visible.items == ()


async def test_a_programming_error_in_a_task_of_the_handler_is_one_too(
    dsn: str, bus: CommandBus
) -> None:
    reg = HandlerRegistry()

    async def lookup(cmd: Command) -> str:
        return cmd.data.customer  # type: ignore[attr-defined, no-any-return]

    @reg.handler("payments", "Charge")
    async def charge(cmd: Command, ctx: HandlerContext) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(lookup(cmd))

    sent = (await bus.send("payments", "Charge", {})).unwrap()
    history = await run_until_final(dsn, bus, reg, sent.command_id)
    assert history[-1].data["reason"] == "programming_error"
    assert history[-1].data["error"]["type"] == "AttributeError"


async def test_huge_and_unprintable_errors_are_recorded_bounded(dsn: str, bus: CommandBus) -> None:
    reg = HandlerRegistry()

    @reg.handler("payments", "Huge")
    async def huge(cmd: Command, ctx: HandlerContext) -> None:
        deep(200, "y" * 2_000_000)

    @reg.handler("payments", "Mute")
    async def mute(cmd: Command, ctx: HandlerContext) -> None:
        raise StrRaises()

    @reg.handler("payments", "Args")
    async def args(cmd: Command, ctx: HandlerContext) -> None:
        raise ValueError(7, b"\x00\xff", {"nested": [1.5, None]})

    ids = {
        t: (await bus.send("payments", t, {}, max_attempts=1)).unwrap().command_id
        for t in ("Huge", "Mute", "Args")
    }
    async with Worker(dsn, reg, domain="payments", config=FAST):

        async def all_in_tsq() -> bool:
            return len((await bus.troubleshooting.list()).items) == 3

        await wait_for(all_in_tsq, timeout=30)
    errors = {
        t: (await bus.command_history("payments", i))[-1].data["error"] for t, i in ids.items()
    }
    assert len(errors["Huge"]["message"]) == MAX_MESSAGE_CHARS
    assert len(errors["Huge"]["traceback"]) <= MAX_TRACEBACK_CHARS
    assert "in deep" in errors["Huge"]["traceback"]
    assert errors["Mute"]["message"] == "<StrRaises: str() failed>"
    assert errors["Args"]["message"] == "(7, b'\\x00\\xff', {'nested': [1.5, None]})"


async def test_errors_raised_on_purpose_are_logged_without_a_traceback(
    dsn: str, bus: CommandBus, caplog: pytest.LogCaptureFixture
) -> None:
    reg = HandlerRegistry()

    @reg.handler("payments", "Reserve")
    async def reserve(cmd: Command, ctx: HandlerContext) -> None:
        if ctx.attempt == 1:
            raise TransientCommandError("warehouse busy", code="WAREHOUSE_BUSY")
        raise BusinessRuleError("out of stock", code="OUT_OF_STOCK")

    caplog.set_level(logging.INFO, logger="commandbus")
    sent = (await bus.send("payments", "Reserve", {})).unwrap()
    history = await run_until_final(dsn, bus, reg, sent.command_id)
    assert [e.data["error"] for e in history[1:]] == [
        {"type": "TransientCommandError", "code": "WAREHOUSE_BUSY", "message": "warehouse busy"},
        {"type": "BusinessRuleError", "code": "OUT_OF_STOCK", "message": "out of stock"},
    ]
    lines = worker_records(caplog)
    assert [(r.levelno, r.exc_info) for r in lines] == [(logging.INFO, None)] * 2
    assert "WAREHOUSE_BUSY" not in lines[0].getMessage()  # the message, not the code
    assert "warehouse busy" in lines[0].getMessage()


async def test_an_unknown_command_type_is_a_warning_naming_the_registered_ones(
    dsn: str, bus: CommandBus, caplog: pytest.LogCaptureFixture
) -> None:
    reg = HandlerRegistry()

    @reg.handler("payments", "Charge")
    async def charge(cmd: Command, ctx: HandlerContext) -> None:
        return None

    @reg.handler("payments", "Capture")
    async def capture(cmd: Command, ctx: HandlerContext) -> None:
        return None

    caplog.set_level(logging.INFO, logger="commandbus")
    sent = (await bus.send("payments", "Refund", {})).unwrap()
    history = await run_until_final(dsn, bus, reg, sent.command_id)
    error = history[-1].data["error"]
    assert "traceback" not in error
    expected = (
        "no handler for command type 'Refund' in domain 'payments' (registered: Capture, Charge)"
    )
    assert error["message"] == expected
    [line] = worker_records(caplog)
    assert line.levelno == logging.WARNING and line.exc_info is None
    assert expected in line.getMessage()


async def test_a_failed_attempt_logs_with_the_commands_ids(
    dsn: str, bus: CommandBus, conn: Conn, caplog: pytest.LogCaptureFixture
) -> None:
    from commandbus.engine.observability.logging import CorrelationFilter

    reg = HandlerRegistry()

    @reg.handler("payments", "Charge")
    async def charge(cmd: Command, ctx: HandlerContext) -> None:
        raise PermanentCommandError("card blocked", code="BLOCKED")

    caplog.handler.addFilter(CorrelationFilter())
    caplog.set_level(logging.INFO, logger="commandbus")
    sent = (await bus.send("payments", "Charge", {})).unwrap()
    await run_until_final(dsn, bus, reg, sent.command_id)
    [line] = worker_records(caplog)
    assert line.levelno == logging.WARNING and line.exc_info is None
    assert line.command_id == str(sent.command_id)  # type: ignore[attr-defined]
    assert line.correlation_id == str(sent.correlation_id)  # type: ignore[attr-defined]
    rows = await fetch(conn, "SELECT last_error FROM commandbus.command")
    blocked = {"type": "PermanentCommandError", "code": "BLOCKED", "message": "card blocked"}
    assert rows == [(blocked,)]


def _saga_ending_in_its_second_step(code: int) -> tuple[Any, HandlerRegistry]:
    """A saga whose second step's data builder raises SystemExit(code), and handlers
    for its steps: the builder runs while recording (in a flusher, not a handler)."""
    from commandbus import Saga, Step

    def ends(ctx: Any) -> dict[str, Any]:
        raise SystemExit(code)

    saga = Saga(
        "ending",
        steps=[
            Step("first", domain="payments", command="Charge"),
            Step("second", domain="payments", command="Charge", data=ends),
        ],
    )
    reg = HandlerRegistry()

    @reg.handler("payments", "Charge")
    async def charge(cmd: Command, ctx: HandlerContext) -> str:
        return "charged"

    return saga, reg


async def test_a_saga_data_builder_that_ends_the_process_stops_the_coordinator_gracefully(
    dsn: str, bus: CommandBus, caplog: pytest.LogCaptureFixture
) -> None:
    # a data builder runs while the coordinator records (in a flusher, not a
    # handler): its sys.exit() ended the event loop at once (found by an
    # adversarial review); now the same graceful stop as a handler's
    from commandbus import Coordinator, SagaClient, SagaRegistry, SagaStatus

    saga, reg = _saga_ending_in_its_second_step(4)
    started = await SagaClient(bus).start_saga(saga, {})
    caplog.set_level(logging.WARNING, logger="commandbus")

    async def main() -> None:
        async with Worker(dsn, reg, domain="payments", config=FAST):
            await Coordinator(dsn, SagaRegistry([saga]), config=FAST).run()

    raised = await what_ends_its_own_loop(main)
    assert isinstance(raised, SystemExit) and raised.code == 4
    rec = await SagaClient(bus).get_saga(started.saga_id)
    assert rec is not None and rec.status is SagaStatus.RUNNING  # nothing decided or failed
    async with bus.pool.connection() as c:
        cur = await c.execute(
            "SELECT count(*) FILTER (WHERE vt <= clock_timestamp() + interval '1s'), count(*)"
            " FROM pgmq.q_commandbus_sagas"
        )
        visible, total = await cur.fetchone() or (0, 0)
    assert (visible, total) == (1, 1)  # the step's reply, handed back at once
    said = [r.getMessage() for r in caplog.records if r.name == "commandbus.consumer"]
    assert "coordinator: code run while recording raised SystemExit; stopping" in said
    assert not [m for m in said if "flusher failed" in m]  # (before: the loop ended at once)


@pytest.mark.parametrize("ending", [SystemExit(3), KeyboardInterrupt()], ids=repr)
async def test_a_handler_that_ends_the_process_interrupts_an_async_with_block(
    dsn: str, bus: CommandBus, ending: BaseException
) -> None:
    # Run in ``async with Worker(...)``, the SystemExit ended the event loop from
    # the worker's task: the block went on until the loop stopped under it, and
    # what the code around it held open (a bus, here) was left open. Now the block
    # is interrupted, the ``async with`` raises it, and the code around unwinds.
    reg = HandlerRegistry()

    @reg.handler("payments", "Charge")
    async def charge(cmd: Command, ctx: HandlerContext) -> str:
        raise ending

    sent = (await bus.send("payments", "Charge", {})).unwrap()
    seen: list[str] = []
    unhandled: list[dict[str, Any]] = []

    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _loop, ctx: unhandled.append(ctx))
        outer = CommandBus(dsn, config=FAST)
        try:
            async with outer, Worker(dsn, reg, domain="payments", config=FAST, concurrency=2):
                await asyncio.sleep(30)
                seen.append("the block went on")
        except BaseException as exc:
            seen.append(f"raised by the async with: {type(exc).__name__}")
            seen.append(f"the bus around it still open: {_still_open(outer)}")
            raise

    started = time.monotonic()
    raised = await what_ends_its_own_loop(main)
    assert raised is ending
    assert time.monotonic() - started < 10
    assert seen == [
        f"raised by the async with: {type(ending).__name__}",
        "the bus around it still open: False",
    ]
    assert unhandled == []
    back = await bus.get_command("payments", sent.command_id)
    assert back is not None and back.status is CommandStatus.PENDING  # handed back


def _still_open(bus: CommandBus) -> bool:
    try:
        return not bus.pool.closed
    except RuntimeError:  # "not open"
        return False


async def test_a_data_builder_that_ends_the_process_interrupts_a_coordinator_block(
    dsn: str, bus: CommandBus
) -> None:
    from commandbus import Coordinator, SagaClient, SagaRegistry

    saga, reg = _saga_ending_in_its_second_step(5)
    await SagaClient(bus).start_saga(saga, {})
    unhandled: list[dict[str, Any]] = []
    seen: list[str] = []

    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _loop, ctx: unhandled.append(ctx))
        try:
            async with (
                Worker(dsn, reg, domain="payments", config=FAST),
                Coordinator(dsn, SagaRegistry([saga]), config=FAST),
            ):
                await asyncio.sleep(30)
        except BaseException as exc:
            seen.append(f"raised by the async with: {exc!r}")
            raise

    started = time.monotonic()
    raised = await what_ends_its_own_loop(main)
    assert isinstance(raised, SystemExit) and raised.code == 5
    assert time.monotonic() - started < 10
    assert seen == ["raised by the async with: SystemExit(5)"]
    assert unhandled == []


async def test_a_worker_runs_for_one_async_with_block_at_a_time(dsn: str) -> None:
    # entering it again refused, and the first block still stops it at its end
    # (before, the second entry replaced the first's task: the worker ran on)
    reg = HandlerRegistry()

    @reg.handler("payments", "Charge")
    async def charge(cmd: Command, ctx: HandlerContext) -> str:
        return "charged"

    worker = Worker(dsn, reg, domain="payments", config=FAST)
    async with worker:
        with pytest.raises(
            RuntimeError, match="commandbus-worker-payments is already running for an async with"
        ):
            async with worker:
                pass
    assert [
        t.get_name()
        for t in asyncio.all_tasks()
        if t.get_name().startswith("commandbus-") and not t.done()
    ] == []
