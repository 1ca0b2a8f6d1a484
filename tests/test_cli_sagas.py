"""``commandbus coordinator``, ``commandbus saga ...`` and the sagas of ``commandbus
projection``, run as an operator runs them: real processes on a real database."""

from __future__ import annotations

import asyncio
import itertools
import json
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import click
import pytest
from click.testing import CliRunner

from commandbus import (
    CommandBus,
    CommandFilter,
    CommandStatus,
    Coordinator,
    SagaClient,
    SagaRegistry,
    SagaStatus,
    Worker,
)
from commandbus.cli._common import CLIError
from commandbus.cli.coordinator import load_sagas
from commandbus.cli.demo_app import ORDER, Shop, build_handlers
from commandbus.cli.main import cli as cli_group
from saga_apps import ORDER as STEERED
from saga_apps import final, running, status_is
from support import FAST, run_cli, wait_for

DOMAINS = ("inventory", "payments", "shipping")


def order(order_id: str, **changes: Any) -> dict[str, Any]:
    """An order for the demo's saga (a lamp, a good card, a served postcode)."""
    data = {
        "order_id": order_id,
        "sku": "lamp",
        "qty": 1,
        "card": "4242",
        "amount": 40,
        "postcode": "10115",
    }
    return {**data, **changes}


def run(dsn: str, *args: str) -> tuple[int, str, str]:
    """``commandbus ARGS`` against ``dsn``: exit status, stdout, stderr."""
    return run_many(dsn, args)[0]


def run_many(dsn: str, *commands: Sequence[str]) -> list[tuple[int, str, str]]:
    """Several ``commandbus`` commands at once (each process takes a second to start)."""
    procs = [run_cli(*args, env={"DATABASE_URL": dsn}) for args in commands]
    out = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=60)
        out.append((proc.returncode, stdout, stderr))
    return out


def invoke(dsn: str, *args: str) -> tuple[int, str, str]:
    """``commandbus ARGS`` in this process (faster; not inside a running event loop)."""
    result = CliRunner().invoke(
        cli_group, list(args), env={"DATABASE_URL": dsn}, prog_name="commandbus"
    )
    return result.exit_code, result.stdout, result.stderr


async def invoke_async(dsn: str, *args: str) -> tuple[int, str, str]:
    """:func:`invoke` from an async test: the command runs its own event loop."""
    return await asyncio.to_thread(invoke, dsn, *args)


def assert_one_error_line(result: tuple[int, str, str], *expected: str, code: int = 1) -> None:
    status, out, err = result
    assert status == code, (status, out, err)
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for text in expected:
        assert text in lines[0], (text, lines[0])


@asynccontextmanager
async def shop_running(
    dsn: str, *, domains: Sequence[str] = DOMAINS, coordinator: bool = True
) -> AsyncIterator[tuple[CommandBus, SagaClient, Shop]]:
    """The demo application's workers (and a coordinator) in this process."""
    shop = Shop()
    handlers = build_handlers(shop)
    async with AsyncExitStack() as stack:
        bus = await stack.enter_async_context(CommandBus(dsn, config=FAST))
        for domain in domains:
            await stack.enter_async_context(
                Worker(dsn, handlers, domain=domain, config=FAST, concurrency=4)
            )
        if coordinator:
            await stack.enter_async_context(Coordinator(dsn, SagaRegistry([ORDER]), config=FAST))
        yield bus, SagaClient(bus), shop
        shop.network_answers.set()


async def wait_status(sagas: SagaClient, saga_id: UUID, *statuses: SagaStatus) -> None:
    async def reached() -> bool:
        rec = await sagas.get_saga(saga_id)
        return rec is not None and rec.status in statuses

    await wait_for(reached, timeout=30)


# -- commandbus coordinator ---------------------------------------------------------------


def _stop(proc: subprocess.Popen[str]) -> tuple[int, str]:
    proc.send_signal(signal.SIGTERM)
    try:
        _out, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        _out, err = proc.communicate()
    return proc.returncode, err


@pytest.mark.slow
async def test_coordinator_and_worker_processes_run_the_demo_sagas(dsn: str) -> None:
    coordinator = run_cli(
        "coordinator",
        "--app",
        "commandbus.cli.demo_app:sagas",
        "--batch-size",
        "10",
        env={"DATABASE_URL": dsn},
    )
    inventory = run_cli(
        "worker",
        "--app",
        "commandbus.cli.demo_app:handlers",
        "--domain",
        "inventory",
        "--sagas",
        "commandbus.cli.demo_app:sagas",
        env={"DATABASE_URL": dsn},
    )
    try:
        async with shop_running(dsn, domains=("payments", "shipping"), coordinator=False) as (
            bus,
            sagas,
            _shop,
        ):
            good = await sagas.start_saga(ORDER, order("P-1"))
            bad = await sagas.start_saga(ORDER, order("P-2", card="0002"))
            await wait_status(sagas, good.saga_id, SagaStatus.COMPLETED)
            await wait_status(sagas, bad.saga_id, SagaStatus.COMPENSATED)
            released = await bus.list_commands(CommandFilter(command_type="ReleaseStock"))
            assert [c.status for c in released.items] == [CommandStatus.COMPLETED]
    finally:
        coordinator_code, coordinator_err = _stop(coordinator)
        inventory_code, inventory_err = _stop(inventory)
    assert coordinator_code == 0, coordinator_err
    assert "Traceback" not in coordinator_err
    banner = (
        "coordinating sagas order v1 over domains inventory, payments, shipping (batch size 10)"
    )
    assert coordinator_err.count(banner) == 1, coordinator_err
    # the inventory worker moved the sagas on after its steps (the declined order's
    # last compensation, the release, ended it there); the shipping worker left the
    # good order's end to the coordinator
    assert "1 sagas completed, 0 compensated" in coordinator_err.splitlines()[-1]
    assert inventory_code == 0, inventory_err
    assert "serving domain 'inventory': ReleaseStock, ReserveStock" in inventory_err
    assert "moves sagas order v1 in its outcomes' transactions" in inventory_err
    summary = inventory_err.splitlines()[-1]
    assert "3 saga replies acted on in the outcome's transaction" in summary, summary


def test_coordinator_refuses_bad_apps_and_options_in_one_line(dsn: str) -> None:
    app = "commandbus.cli.demo_app"
    subprocess_cases = [
        (["--app", "nonsense"], "--app must look like 'package.module:sagas'"),
        (["--app", f"{app}:handlers"], "is not a SagaRegistry, a Saga or a list of Saga"),
        (["--app", f"{app}:sagas", "--batch-size", "0"], "--batch-size must be an integer"),
    ]
    results = run_many(
        dsn, *(["coordinator", *args] for args, _ in subprocess_cases), ["coordinator"]
    )
    for (_args, message), result in zip(
        subprocess_cases, results[: len(subprocess_cases)], strict=True
    ):
        assert_one_error_line(result, message)
    assert_one_error_line(results[-1], "Missing option '--app'", code=2)
    for args, message in (
        (["--app", "no_such_module_here:sagas"], "cannot import 'no_such_module_here'"),
        (["--app", f"{app}:nothing"], "has no attribute 'nothing'"),
        (["--app", f"{app}:sagas", "--grace", "soon"], "--grace must be a number"),
    ):
        assert_one_error_line(invoke(dsn, "coordinator", *args), message)


def test_worker_refuses_bad_sagas_in_one_line(dsn: str) -> None:
    app = "commandbus.cli.demo_app"
    for spec, message in (
        ("nonsense", "--sagas must look like 'package.module:sagas'"),
        ("no_such_module_here:sagas", "cannot import 'no_such_module_here' for --sagas"),
        (f"{app}:handlers", "is not a SagaRegistry, a Saga or a list of Saga"),
        (f"{app}:nothing", "has no attribute 'nothing'"),
        ("saga_apps:NO_SAGAS", "'saga_apps:NO_SAGAS' holds no saga definitions"),
    ):
        result = invoke(
            dsn, "worker", "--app", f"{app}:handlers", "--domain", "inventory", "--sagas", spec
        )
        assert_one_error_line(result, message)


def test_coordinator_on_an_unmigrated_database_is_one_line(empty_dsn: str) -> None:
    started = time.monotonic()
    result = run(empty_dsn, "coordinator", "--app", "commandbus.cli.demo_app:sagas")
    assert_one_error_line(result, "commandbus migrate")
    assert "coordinator:" not in result[2]  # no summary of a run that never started
    assert time.monotonic() - started < 30


def test_coordinator_app_may_be_a_registry_a_saga_or_a_list(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "cli_saga_defs.py").write_text(
        "from commandbus import Saga, SagaRegistry, Step\n"
        "def saga(version):\n"
        "    return Saga('s', version=version, steps=[Step('a', domain='d', command='C')])\n"
        "one = saga(1)\n"
        "both = [one, saga(2)]\n"
        "registry = SagaRegistry(both)\n"
        "twice = [one, saga(1)]\n"
        "empty = []\n"
        "mixed = [one, 'not a saga']\n"
    )
    (tmp_path / "cli_saga_broken.py").write_text("raise ValueError('no database here')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert [s.version for s in load_sagas("cli_saga_defs:one")] == [1]
    assert sorted(s.version for s in load_sagas("cli_saga_defs:both")) == [1, 2]
    assert len(load_sagas("cli_saga_defs:registry")) == 2
    for attr, message in (
        ("empty", "holds no saga definitions"),
        ("mixed", "is not a SagaRegistry"),
    ):
        with pytest.raises(CLIError, match=message):
            load_sagas(f"cli_saga_defs:{attr}")
    with pytest.raises(Exception, match="already registered"):
        load_sagas("cli_saga_defs:twice")
    with pytest.raises(CLIError, match="importing 'cli_saga_broken' for --app failed: ValueError"):
        load_sagas("cli_saga_broken:sagas")


# -- commandbus saga list / show ----------------------------------------------------------


async def test_saga_list_and_show_from_the_shell(dsn: str) -> None:
    async with shop_running(dsn) as (_bus, sagas, _shop):
        done = await sagas.start_saga(ORDER, order("L-1", sku="desk"))  # a busy warehouse
        declined = await sagas.start_saga(ORDER, order("L-2", card="0002"))
        stuck = await sagas.start_saga(ORDER, order("L-3", postcode="99999"))
        await wait_status(sagas, done.saga_id, SagaStatus.COMPLETED)
        await wait_status(sagas, declined.saga_id, SagaStatus.COMPENSATED)
        await wait_status(sagas, stuck.saga_id, SagaStatus.WAITING_ON_OPERATOR)
    ids = [done.saga_id, declined.saga_id, stuck.saga_id]

    header = ["SAGA", "DEFINITION", "STATUS", "CURRENT STEPS", "TIMING", "LAST ERROR"]

    def cells(out: str) -> list[list[str]]:
        """The table's rows as cells, checking the header and the columns' alignment."""
        lines = out.splitlines()
        starts = [lines[0].index(name) for name in header]  # where each column starts
        widths = [b - a for a, b in itertools.pairwise(starts)]  # all but the last column
        rows = [
            [line[a : a + w].strip() for a, w in zip(starts, widths, strict=False)]
            + [line[starts[-1] :].strip()]
            for line in lines
        ]
        assert rows[0] == header
        for row, line in zip(rows, lines, strict=True):  # each cell padded to its column
            rebuilt = "".join(c.ljust(w) for c, w in zip(row, widths, strict=False))
            assert (rebuilt + row[-1]).rstrip() == line
        for i, w in enumerate(widths):  # as wide as the widest cell, two blanks
            assert w == max(len(row[i]) for row in rows) + 2, (header[i], lines)
        return rows[1:]

    def listed(out: str) -> list[UUID]:
        return [UUID(row[0]) for row in cells(out)] if out else []

    everything, completed, stuck_now, first = run_many(
        dsn,
        ["saga", "list"],
        ["saga", "list", "--status", "completed"],
        ["saga", "list", "--stuck-for", "0s"],
        ["saga", "list", "--limit", "1"],
    )
    compensated = await invoke_async(
        dsn, "saga", "list", "--status", "COMPENSATED", "--name", "order", "--version", "1"
    )
    version_two = await invoke_async(dsn, "saga", "list", "--version", "2")
    # a saga's correlation id is its own id unless given (named as in 'commandbus list')
    by_correlation = await invoke_async(
        dsn, "saga", "list", "--correlation-id", str(declined.saga_id)
    )
    assert listed(by_correlation[1]) == [declined.saga_id], by_correlation
    stuck_long = await invoke_async(dsn, "saga", "list", "--stuck-for", "1h30m")
    as_json = await invoke_async(dsn, "saga", "list", "--json")
    assert everything[0] == 0, everything
    assert sorted(listed(everything[1])) == sorted(ids)
    assert everything[2] == "3 saga(s)\n"
    assert everything[1].splitlines()[0].split() == [
        "SAGA", "DEFINITION", "STATUS", "CURRENT", "STEPS", "TIMING", "LAST", "ERROR"
    ]  # fmt: skip
    rows = {UUID(row[0]): row[1:] for row in cells(everything[1])}
    assert rows[stuck.saga_id][:3] == ["order v1", "WAITING_ON_OPERATOR", "ship"]
    assert rows[stuck.saga_id][3].startswith("idle ")
    assert rows[stuck.saga_id][4].startswith("NO_COURIER: no courier serves postcode 99999")
    assert rows[done.saga_id][1:5] == ["COMPLETED", "-", rows[done.saga_id][3], ""]
    assert rows[done.saga_id][3].startswith("ended after ")
    assert rows[declined.saga_id][1] == "COMPENSATED"
    assert rows[declined.saga_id][4] == "CARD_DECLINED: card 0002 declined"
    assert "\x1b[" not in everything[1]  # no colours when stdout is not a terminal
    assert listed(completed[1]) == [done.saga_id]
    assert listed(compensated[1]) == [declined.saga_id]
    assert version_two == (0, "", "0 saga(s)\n")  # nothing matches: no table, not even a header
    assert listed(stuck_now[1]) == [stuck.saga_id]  # only sagas not ended
    assert stuck_long[:2] == (0, "")
    assert len(listed(first[1])) == 1
    cursor = first[2].split("more: --cursor ")[1].strip()
    rest = await invoke_async(dsn, "saga", "list", "--cursor", cursor, "--limit", "10")
    assert sorted(listed(first[1]) + listed(rest[1])) == sorted(ids)
    docs = [json.loads(x) for x in as_json[1].splitlines()]
    assert {UUID(d["saga_id"]): d["status"] for d in docs} == {
        done.saga_id: "COMPLETED",
        declined.saga_id: "COMPENSATED",
        stuck.saga_id: "WAITING_ON_OPERATOR",
    }

    shown_done, shown_declined, shown_stuck = run_many(
        dsn,
        ["saga", "show", str(done.saga_id)],
        ["saga", "show", str(declined.saga_id).upper()],  # any text form of a UUID
        ["saga", "show", str(stuck.saga_id)],
    )
    shown_json = await invoke_async(dsn, "saga", "show", str(done.saga_id), "--json")
    code, out, err = shown_done
    assert code == 0, err
    assert out.splitlines()[0] == f"saga {done.saga_id}  order v1  COMPLETED"
    assert "\x1b[" not in out
    timeline = out.split("  timeline\n")[1].splitlines()
    assert all(x.lstrip().startswith("+") for x in timeline)
    whats = [x.split()[1:3] for x in timeline]
    assert whats[0] == ["saga", "started"] and whats[-1] == ["saga", "COMPLETED"]
    assert ["reserve", "retry"] in whats  # the warehouse was busy: the command's own retry
    assert any("completed" in x and "attempt 2" in x for x in timeline if " reserve " in x)
    assert [w[0] for w in whats if w[1] == "sent"] == ["reserve", "schedule", "charge", "ship"]
    assert "(timeout 1.00s)" in next(x for x in timeline if " charge " in x)

    code, out, err = shown_declined
    assert code == 0, err
    assert f"saga {declined.saga_id}  order v1  COMPENSATED" in out
    assert "last error   CARD_DECLINED: card 0002 declined" in out
    lines = out.splitlines()
    undo = [
        x.split()[1:3] for x in lines if "compensat" in x.lower() and x.lstrip().startswith("+")
    ]
    assert undo == [
        ["saga", "compensating"],
        ["schedule", "compensating"],
        ["schedule", "compensated"],
        ["reserve", "compensating"],
        ["reserve", "compensated"],
        ["saga", "COMPENSATED"],
    ]
    assert any("shipping/CancelDelivery" in x for x in lines)

    code, out, err = shown_stuck
    assert code == 0, err
    assert "WAITING_ON_OPERATOR" in out.splitlines()[0]
    assert "  current      ship\n" in out
    assert "waiting on operator" in out and "(troubleshooting queue)" in out

    doc = json.loads(shown_json[1])
    assert doc["saga"]["status"] == "COMPLETED"
    assert doc["events"][0]["event_type"] == "SagaStarted"
    assert len(doc["commands"]) == 4


async def test_saga_show_is_coloured_on_a_terminal(dsn: str) -> None:
    async with shop_running(dsn) as (_bus, sagas, _shop):
        done = await sagas.start_saga(ORDER, order("C-1"))
        await wait_status(sagas, done.saga_id, SagaStatus.COMPLETED)
    result = await asyncio.to_thread(
        CliRunner().invoke,
        cli_group,
        ["saga", "show", str(done.saga_id)],
        env={"DATABASE_URL": dsn},
        color=True,
        prog_name="commandbus",
    )
    assert result.exit_code == 0, result.output
    assert "\x1b[32mCOMPLETED" in result.output  # green
    listed = await asyncio.to_thread(
        CliRunner().invoke,
        cli_group,
        ["saga", "list"],
        env={"DATABASE_URL": dsn},
        color=True,
        prog_name="commandbus",
    )
    assert listed.exit_code == 0, listed.output
    lines = listed.stdout.splitlines()
    assert "\x1b[32mCOMPLETED" in lines[1]
    # the colour codes take no room: the columns line up as they would uncoloured
    assert click.unstyle(lines[1]).index("ended after") == lines[0].index("TIMING")


def test_saga_user_errors_are_one_line(dsn: str) -> None:
    unknown = str(uuid4())
    subprocess_cases = [
        (["saga", "show", "not-a-uuid"], "not a saga id: 'not-a-uuid'"),
        (["saga", "show", unknown], f"no saga {unknown}"),
        (["saga", "cancel", unknown], f"no saga {unknown}"),
        (["saga", "list", "--stuck-for", "5x"], "--stuck-for must be a duration"),
    ]
    results = run_many(dsn, *(args for args, _ in subprocess_cases))
    for (_args, message), result in zip(
        subprocess_cases, results[: len(subprocess_cases)], strict=True
    ):
        assert_one_error_line(result, message)
        assert result[1] == ""
    bad_status = run(dsn, "saga", "list", "--status", "LOST")
    assert_one_error_line(bad_status, "status must be one of RUNNING, PAUSED", "got 'LOST'")
    for args, message in (
        (["saga", "pause", "nope"], "not a saga id: 'nope'"),
        (["saga", "resume", unknown], f"no saga {unknown}"),
        (["saga", "list", "--cursor", "garbage"], "invalid page cursor"),
        (["saga", "list", "--version", "0"], "--version must be an integer from 1"),
        (["saga", "list", "--correlation", "xyz"], "not a correlation id: 'xyz'"),
    ):
        result = invoke(dsn, *args)
        assert_one_error_line(result, message)
        assert result[1] == ""


# -- commandbus saga cancel / pause / resume ----------------------------------------------


async def test_pause_resume_and_cancel_from_the_shell(dsn: str) -> None:
    # no inventory worker yet: the saga waits on its first step
    async with shop_running(dsn, domains=("payments", "shipping")) as (_bus, sagas, shop):
        started = await sagas.start_saga(ORDER, order("X-1"))
        sid = str(started.saga_id)
        code, out, err = run(dsn, "saga", "pause", sid, "--reason", "checking the address")
        assert code == 0, err
        assert out == f"pause of saga {sid} requested (a running coordinator carries it out)\n"
        await wait_status(sagas, started.saga_id, SagaStatus.PAUSED)

        code, _out, err = run(dsn, "saga", "resume", sid, "--operator", "ana")
        assert code == 0, err
        await wait_status(sagas, started.saga_id, SagaStatus.RUNNING)
        refused = await invoke_async(dsn, "saga", "resume", sid)
        assert_one_error_line(refused, "is RUNNING, not paused")

        code, out, err = run(dsn, "saga", "cancel", sid, "--reason", "the customer cancelled")
        assert code == 0, err
        assert out.startswith(f"cancel of saga {sid} requested")
        async with Worker(dsn, build_handlers(shop), domain="inventory", config=FAST):
            await wait_status(sagas, started.saga_id, SagaStatus.COMPENSATED)
        assert shop.stock["lamp"] == 10  # reserved, then released

    after = run_many(dsn, ["saga", "cancel", sid], ["saga", "pause", sid], ["saga", "show", sid])
    assert_one_error_line(after[0], "COMPENSATED: it has ended")
    assert_one_error_line(after[1], "COMPENSATED: it has ended")
    code, out, err = after[2]
    assert code == 0, err
    whats = [" ".join(x.split()[1:3]) for x in out.split("  timeline\n")[1].splitlines()]
    for expected in (
        "saga paused",
        "saga resumed",
        "saga cancel",
        "reserve completed",
        "reserve compensating",
        "saga COMPENSATED",
    ):
        assert expected in whats, (expected, out)
    assert "checking the address" in out and "the customer cancelled" in out
    assert any(" resumed " in x and x.endswith(" (by ana)") for x in out.splitlines())
    assert "schedule" not in whats  # cancelled before its second step


# -- commandbus projection covers sagas ---------------------------------------------------


async def test_projection_verify_and_rebuild_cover_sagas(dsn: str, conn: Any) -> None:
    async with shop_running(dsn) as (_bus, sagas, _shop):
        started = await sagas.start_saga(ORDER, order("V-1"))
        await wait_status(sagas, started.saga_id, SagaStatus.COMPLETED)

    code, out, err = run(dsn, "projection", "verify")
    assert code == 0, err
    assert "1 sagas: the projection equals a replay of the events" in out.splitlines()

    await conn.execute(
        "UPDATE commandbus.saga"
        "   SET status = 'RUNNING', state = jsonb_set(state, '{paused}', 'true')"
    )
    code, out, err = run(dsn, "projection", "verify")
    assert code == 1
    assert sorted(out.splitlines()) == [  # of a JSON document, only the keys that differ
        f"saga {started.saga_id} state: paused: live=True replayed=False",
        f"saga {started.saga_id} status: live='RUNNING' replayed='COMPLETED'",
    ]
    assert err == "error: 2 difference(s) in 4 commands and 1 sagas\n"

    code, out, err = await invoke_async(dsn, "projection", "rebuild")
    assert code == 0, err
    assert "rebuilt 1 sagas into commandbus.saga_rebuild" in out
    rebuilt = await conn.execute("SELECT status FROM commandbus.saga_rebuild")
    assert await rebuilt.fetchall() == [("COMPLETED",)]

    code, out, err = run(dsn, "projection", "rebuild", "--replace", "--yes")
    assert code == 0, err
    assert "rebuilt 1 sagas into commandbus.saga\n" in out
    code, out, err = await invoke_async(dsn, "projection", "verify")
    assert code == 0, err


# -- commandbus saga mark-compensated -----------------------------------------------------


async def test_mark_compensated_from_the_shell(dsn: str) -> None:
    async with running(dsn, STEERED) as h:
        started = await h.sagas.start_saga(
            STEERED, {"order_id": "mc1", "behaviour": {"Ship": "business", "Refund": "business"}}
        )
        sid = str(started.saga_id)
        await status_is(h, started.saga_id, SagaStatus.COMPENSATION_FAILED, idle=True)
        refused = await invoke_async(dsn, "saga", "mark-compensated", sid, "reserve")
        assert_one_error_line(refused, "'reserve'", "is COMPLETED, not COMPENSATION_FAILED")
        bad = await invoke_async(dsn, "saga", "mark-compensated", "nope", "charge")
        assert_one_error_line(bad, "not a saga id: 'nope'")
        code, out, err = await invoke_async(
            dsn,
            "saga",
            "mark-compensated",
            sid,
            "charge",
            "--reason",
            "refunded by phone",
            "--operator",
            "ann",
        )
        assert code == 0, err
        assert out == (
            f"step charge of saga {sid} marked compensated (a running coordinator carries it out)\n"
        )
        rec = await final(h, started.saga_id, timeout=10)
    assert rec.status is SagaStatus.COMPENSATED
    code, out, err = await invoke_async(dsn, "saga", "show", sid)
    assert code == 0, err
    line = next(x for x in out.splitlines() if " charge " in x and "by hand" in x)
    assert line.split()[1:3] == ["charge", "compensated"], line
    assert line.endswith("by hand: refunded by phone (by ann)"), line
