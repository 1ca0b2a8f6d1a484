"""Logging: the correlation and command ids reach records of every logger, via handlers."""

from __future__ import annotations

import io
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
    Worker,
)
from commandbus.engine.observability.logging import CorrelationFilter
from support import FAST, wait_for


@pytest.fixture
def restore_commandbus_logger() -> Iterator[logging.Logger]:
    """configure_logging changes the ``commandbus`` logger: put it back after the test."""
    root = logging.getLogger("commandbus")
    saved = (root.handlers[:], root.filters[:], root.level, root.propagate)
    try:
        yield root
    finally:
        root.handlers[:], root.filters[:], root.level, root.propagate = saved


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
    # outside a handler the fields are there too, as None
    logging.getLogger("commandbus.tests.child.outside").info("idle")
    assert (
        out.getvalue()
        .splitlines()[-1]
        .endswith(" INFO commandbus.tests.child.outside correlation_id=None command_id=None idle")
    )


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
