"""``commandbus trace ID``, and ``--otel`` / ``--log-format`` on the long-running commands."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import psycopg
import pytest

from commandbus import (
    Command,
    CommandBus,
    CommandStatus,
    HandlerContext,
    HandlerRegistry,
    Saga,
    SagaClient,
    Step,
    Worker,
)
from support import FAST, run_cli, scalar, wait_for

Conn = psycopg.AsyncConnection[Any]
TESTS = Path(__file__).parent

pytestmark = pytest.mark.slow


def trace(dsn: str, *args: str) -> tuple[int, str, str]:
    proc = run_cli("trace", *args, env={"DATABASE_URL": dsn, "NO_COLOR": None})
    out, err = proc.communicate(timeout=60)
    return proc.returncode, out, err


def handlers(bus: CommandBus) -> HandlerRegistry:
    reg = HandlerRegistry()

    @reg.handler("payments", "Charge")
    async def charge(cmd: Command, ctx: HandlerContext) -> None:
        # sent from the handler: same correlation id, caused by the charge
        sent = await bus.send("shipping", "Ship", {"order": cmd.data["order"]})
        assert sent.ok

    return reg


async def _flow(dsn: str, bus: CommandBus) -> tuple[UUID, UUID]:
    """A charge whose handler sends a shipment, worked in-process: (correlation, charge id)."""
    sent = await bus.send("payments", "Charge", {"order": "A-1"})
    assert sent.ok
    async with Worker(dsn, handlers(bus), domain="payments", config=FAST):

        async def done() -> bool:
            record = await bus.get_command("payments", sent.value.command_id)
            return record is not None and record.status is CommandStatus.COMPLETED

        await wait_for(done)
    return sent.value.correlation_id, sent.value.command_id


async def test_trace_draws_the_commands_of_a_correlation_id(dsn: str, bus: CommandBus) -> None:
    correlation_id, charge_id = await _flow(dsn, bus)

    code, out, err = trace(dsn, str(correlation_id), "--no-color")
    assert code == 0, err
    assert "\x1b[" not in out
    assert out.startswith(f"flow {correlation_id}")
    lines = out.splitlines()
    charge = next(line for line in lines if "Charge" in line)
    ship = next(line for line in lines if "Ship" in line)
    assert "payments" in charge and "completed" in charge
    assert "shipping" in ship and "pending" in ship  # nobody serves shipping
    # the shipment sits under the charge that sent it (indented deeper)
    assert lines.index(ship) > lines.index(charge)
    assert len(ship) - len(ship.lstrip()) > len(charge) - len(charge.lstrip())
    assert any("attempt" in line and "completed" in line for line in lines)

    code, out, err = trace(dsn, str(correlation_id), "--json")
    assert code == 0, err
    flow = json.loads(out)
    assert flow["correlation_id"] == str(correlation_id)
    kinds = [(r["kind"], r["status"]) for r in flow["rows"]]
    assert ("command", "completed") in kinds and ("attempt", "completed") in kinds
    assert any(str(charge_id)[:8] in r["label"] for r in flow["rows"])

    code, out, err = trace(dsn, str(correlation_id), "--color")
    assert code == 0, err
    assert "\x1b[32m" in out  # completed is green


async def test_trace_takes_a_saga_id(dsn: str, bus: CommandBus) -> None:
    order = Saga("order", version=1, steps=[Step("reserve", domain="inventory", command="Hold")])
    started = await SagaClient(bus).start_saga(order, {"sku": "desk"})

    code, out, err = trace(dsn, str(started.saga_id), "--no-color")
    assert code == 0, err
    assert "saga order v1" in out
    assert "Hold" in out  # the first step's command, sent with the start


async def test_trace_errors_are_one_line(dsn: str) -> None:
    code, out, err = trace(dsn, "not-a-uuid")
    assert code == 1 and out == ""
    assert err.splitlines() == ["error: not a correlation or saga id: 'not-a-uuid'"]

    unknown = uuid4()
    code, out, err = trace(dsn, str(unknown))
    assert code == 1 and out == ""
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: nothing recorded for {unknown}")

    proc = run_cli("worker", "--app", "x:y", "--domain", "jobs", "--log-format", "yaml")
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "--log-format" in err and "Traceback" not in err


async def test_worker_with_otel_and_json_logs(dsn: str, bus: CommandBus, conn: Conn) -> None:
    """--otel sets up the SDK (console exporter here); --log-format json logs JSON lines."""
    await conn.execute("CREATE TABLE public.effects (command_id uuid, attempt int)")
    env: dict[str, str | None] = {
        "DATABASE_URL": dsn,
        "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
        "TEST_HANDLER_SLEEP": "0",
        "OTEL_TRACES_EXPORTER": "console",
        "OTEL_METRICS_EXPORTER": "none",
        "COMMANDBUS_OTEL": None,
    }
    args = ("--app", "worker_apps:registry", "--domain", "jobs", "--otel", "--log-format", "json")
    proc = run_cli("worker", *args, env=env)
    try:
        sent = await bus.send("jobs", "Work", {"i": 1})
        assert sent.ok

        async def done() -> bool:
            sql = "SELECT count(*) FROM commandbus.command WHERE status = 'COMPLETED'"
            return int(await scalar(conn, sql)) == 1

        await wait_for(done, timeout=30)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
    assert proc.returncode == 0, err
    records = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert any("connected for domain jobs" in str(r.get("message")) for r in records), err
    # the console exporter printed the process span of the command, at exit
    assert '"name": "process jobs"' in out, out[-2000:]
    assert str(sent.value.correlation_id) in out
