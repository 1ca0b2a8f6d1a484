"""``commandbus send``, ``list``, ``show command [DOMAIN] ID`` and ``cancel``, run as the
real executable against a real database, and the library's listing and lookup
beneath them (keyset pages that never skip or repeat)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import psycopg
import pytest

from commandbus import (
    Command,
    CommandBus,
    CommandFilter,
    CommandRequest,
    CommandStatus,
    Config,
    HandlerContext,
    HandlerRegistry,
    PermanentCommandError,
    TransientCommandError,
    ValidationError,
    Worker,
)
from support import FAST, wait_for

Conn = psycopg.AsyncConnection[Any]

#: The installed console script when there is one (else the module, as it runs the same).
_EXE = shutil.which("commandbus", path=str(Path(sys.executable).parent))
COMMANDBUS = [_EXE] if _EXE else [sys.executable, "-m", "commandbus.cli"]


def cli(dsn: str, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """``commandbus ARGS`` in a subprocess on ``dsn`` (standard input never a terminal)."""
    return subprocess.run(
        [*COMMANDBUS, *args],
        env=dict(os.environ, DATABASE_URL=dsn),
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout


def one_error(result: subprocess.CompletedProcess[str], *expected: str) -> str:
    """The one ``error: ...`` line a refused command prints (exit 1 or 2, no traceback)."""
    assert result.returncode in (1, 2), (result.returncode, result.stdout, result.stderr)
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    for text in expected:
        assert text in result.stderr, result.stderr
    return result.stderr


# -- send ------------------------------------------------------------------------------------


async def test_send_prints_the_id_and_writes_the_command(
    dsn: str, bus: CommandBus, tmp_path: Path
) -> None:
    out = ok(cli(dsn, "send", "payments", "Charge", "--data", '{"amount": 40}'))
    cid = UUID(out.strip())  # stdout is the id alone
    record = await bus.get_command("payments", cid)
    assert record is not None and record.status is CommandStatus.PENDING
    assert record.correlation_id == cid and record.max_attempts == 3
    sent = (await bus.command_history("payments", cid))[0]
    assert sent.data["data"] == {"amount": 40} and sent.data["delay_seconds"] == 0

    chosen, corr = uuid4(), uuid4()
    payload = tmp_path / "order.json"
    payload.write_text('{"order": {"lines": [1, 2]}}')
    out = ok(
        cli(
            dsn,
            "send",
            "shipping",
            "Ship",
            "--data",
            f"@{payload}",
            "--id",
            str(chosen).upper(),
            "--correlation-id",
            str(corr),
            "--delay",
            "5m",
            "--max-attempts",
            "7",
        )
    )
    assert out.strip() == str(chosen)
    record = await bus.get_command("shipping", chosen)
    assert record is not None and record.correlation_id == corr and record.max_attempts == 7
    sent = (await bus.command_history("shipping", chosen))[0]
    assert sent.data["data"] == {"order": {"lines": [1, 2]}} and sent.data["delay_seconds"] == 300

    from_stdin = cli(dsn, "send", "payments", "Charge", "--data", "-", stdin='{"via": "stdin"}')
    cid = UUID(ok(from_stdin).strip())
    assert (await bus.command_history("payments", cid))[0].data["data"] == {"via": "stdin"}

    # the same id again: refused, nothing written
    again = cli(dsn, "send", "shipping", "Ship", "--id", str(chosen))
    one_error(again, "already exists in domain 'shipping'")
    assert len(await bus.command_history("shipping", chosen)) == 1


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--data", "{oops"], "--data is not JSON"),
        (["--data", "[1, 2]"], "--data must be a JSON object, got list"),
        (["--data", "null"], "--data must be a JSON object, got NoneType"),
        (["--data", "@/nonexistent/data.json"], "cannot read /nonexistent/data.json"),
        (["--id", "not-a-uuid"], "not a command id: 'not-a-uuid'"),
        (["--correlation-id", "123"], "not a correlation id: '123'"),
        (["--delay", "-5"], "--delay must be a duration"),
        (["--delay", "soon"], "--delay must be a duration"),
        (["--delay", "200y"], "--delay must be a duration"),
        (["--max-attempts", "0"], "--max-attempts must be an integer from 1"),
    ],
)
async def test_send_refuses_bad_input_in_one_line(dsn: str, args: list[str], expected: str) -> None:
    one_error(cli(dsn, "send", "payments", "Charge", *args), expected)
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute("SELECT count(*) FROM commandbus.event")
        assert await cur.fetchone() == (0,)  # nothing written


async def test_send_refuses_data_over_the_size_limit(dsn: str, conn: Conn) -> None:
    big = json.dumps({"big": "x" * 1_100_000})  # from stdin: too long for an argument
    one_error(cli(dsn, "send", "payments", "Charge", "--data", "-", stdin=big), "over the limit")
    one_error(cli(dsn, "send", "payments", "Charge", "--data", "-", stdin=""), "not JSON")
    cur = await conn.execute("SELECT count(*) FROM commandbus.event")
    assert await cur.fetchone() == (0,)


async def test_send_refuses_bad_names(dsn: str) -> None:
    one_error(cli(dsn, "send", "Bad Domain", "Charge"), "domain")
    one_error(cli(dsn, "send", "payments", "no spaces"), "command type")
    one_error(cli(dsn, "send", "payments"), "Missing argument 'TYPE'")


# -- list ------------------------------------------------------------------------------------


async def _fill(bus: CommandBus) -> dict[str, list[UUID]]:
    """Commands in two domains; a batch of equal created_at; a failed one."""
    ids: dict[str, list[UUID]] = {"payments": [], "shipping": []}
    for i in range(3):
        ids["payments"].append((await bus.send("payments", "Charge", {"i": i})).unwrap().command_id)
    batch = (
        await bus.send_batch(
            [
                CommandRequest(domain="shipping", command_type="Ship", data={"i": i})
                for i in range(4)
            ]
        )
    ).unwrap()
    ids["shipping"] += batch.command_ids
    return ids


async def test_list_filters_pages_and_prints_a_table_or_json(dsn: str, bus: CommandBus) -> None:
    ids = await _fill(bus)
    await bus.cancel_command("payments", ids["payments"][0], operator="ana")

    table = cli(dsn, "list")
    lines = ok(table).splitlines()
    assert lines[0].split() == ["SENT", "DOMAIN", "TYPE", "STATUS", "ATTEMPTS", "COMMAND", "ID",
                                "LAST", "ERROR"]  # fmt: skip
    assert len(lines) == 8 and table.stderr == "7 command(s)\n"
    # newest first: the batch (sent last) on top, the first command sent at the bottom
    assert str(ids["payments"][0]) in lines[-1] and "CANCELLED" in lines[-1]
    assert {line.split()[3] for line in lines[1:5]} == {"shipping"}

    def listed(*args: str) -> list[dict[str, Any]]:
        return [json.loads(line) for line in ok(cli(dsn, "list", "--json", *args)).splitlines()]

    assert {r["command_id"] for r in listed("--domain", "shipping")} == {
        str(i) for i in ids["shipping"]
    }
    assert [r["command_id"] for r in listed("--status", "cancelled")] == [str(ids["payments"][0])]
    assert len(listed("--status", "PENDING", "--domain", "payments")) == 2
    assert len(listed("--type", "Ship")) == 4
    batch_id = (await bus.get_command("shipping", ids["shipping"][0])).batch_id  # type: ignore[union-attr]
    assert len(listed("--batch", str(batch_id))) == 4
    corr = (await bus.get_command("payments", ids["payments"][1])).correlation_id  # type: ignore[union-attr]
    assert [r["command_id"] for r in listed("--correlation-id", str(corr))] == [
        str(ids["payments"][1])
    ]
    oldest = listed("--oldest-first")
    assert oldest[0]["command_id"] == str(ids["payments"][0])
    assert [r["command_id"] for r in oldest] == [r["command_id"] for r in reversed(listed())]

    # nothing matches: no rows, a count of 0, success
    empty = cli(dsn, "list", "--domain", "nowhere")
    assert ok(empty) == "" and empty.stderr == "0 command(s)\n"


async def test_list_pages_through_many_equal_timestamps_via_the_printed_cursor(
    dsn: str, bus: CommandBus
) -> None:
    # one statement: every command has the same created_at, ids in two domains alike
    same = [uuid4() for _ in range(11)]
    requests = [
        CommandRequest(domain=d, command_type="Charge", command_id=cid)
        for cid in same
        for d in ("payments", "refunds")
    ]
    (await bus.send_batch(requests)).unwrap()
    expected = {(d, str(cid)) for cid in same for d in ("payments", "refunds")}

    for order in ([], ["--oldest-first"]):
        seen: list[tuple[str, str]] = []
        cursor: list[str] = []
        pages = 0
        while True:
            page = cli(dsn, "list", "--json", "--limit", "4", *order, *cursor)
            seen += [(r["domain"], r["command_id"]) for r in map(json.loads, ok(page).splitlines())]
            pages += 1
            more = [line for line in page.stderr.splitlines() if line.startswith("more: ")]
            if not more:
                break
            cursor = more[0].removeprefix("more: ").split()  # ["--cursor", "..."]
        assert pages == 6  # 22 commands, 4 a page
        assert len(seen) == len(set(seen)) == 22 and set(seen) == expected
        keys = [(cid, d) for d, cid in seen]
        assert keys == sorted(keys, reverse=not order)  # id, then domain, breaks the tie

    # a cursor belongs to its order
    first = cli(dsn, "list", "--limit", "4")
    cursor_args = first.stderr.splitlines()[-1].removeprefix("more: ").split()
    one_error(cli(dsn, "list", "--oldest-first", *cursor_args), "the other order")


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--status", "DONE"], "--status must be one of PENDING, RETRY_SCHEDULED"),
        (["--status", ""], "--status must be one of"),
        (["--limit", "0"], "'--limit': 0 is not in the range 1<=x<=1000"),
        (["--limit", "-1"], "'--limit'"),
        (["--limit", "1001"], "'--limit'"),
        (["--limit", "99999999999999999999"], "'--limit'"),
        (["--limit", "ten"], "'--limit'"),
        (["--cursor", "garbage"], "invalid page cursor"),
        (["--cursor", ""], "cursor must not be empty"),
        (["--correlation-id", "nope"], "not a correlation id: 'nope'"),
        (["--batch", "nope"], "not a batch id: 'nope'"),
        (["--domain", "Bad Domain"], "domain"),
        (["--type", "no spaces"], "command type"),
        (["--nosuch"], "No such option '--nosuch'"),
    ],
)
async def test_list_refuses_bad_input_in_one_line(dsn: str, args: list[str], expected: str) -> None:
    one_error(cli(dsn, "list", *args), expected)


async def test_library_pages_never_skip_or_repeat(bus: CommandBus, dsn: str) -> None:
    """Keyset pages under every plan (by domain and status, by correlation, by batch,
    across domains), both orders, over rows sharing one created_at."""
    corr = uuid4()
    async with await psycopg.AsyncConnection.connect(dsn) as conn:  # one transaction:
        for d in ("payments", "refunds", "audit"):  # one now() for every row
            batch = [
                CommandRequest(domain=d, command_type="T", command_id=uuid4()) for _ in range(9)
            ]
            (await bus.send_batch(batch, correlation_id=corr, conn=conn)).unwrap()
        await conn.commit()
    all_rows = (await bus.list_commands(limit=1000)).items
    assert len(all_rows) == 27 and len({r.created_at for r in all_rows}) == 1
    batch_id = all_rows[0].batch_id
    for where in (
        CommandFilter(),
        CommandFilter(domain="refunds"),
        CommandFilter(status="PENDING"),
        CommandFilter(domain="audit", status="PENDING"),
        CommandFilter(correlation_id=corr),
        CommandFilter(correlation_id=corr, domain="payments"),
        CommandFilter(batch_id=batch_id),
        CommandFilter(command_type="T"),
    ):
        expected = {(r.domain, r.command_id) for r in all_rows if _matches(r, where)}
        for newest_first in (False, True):
            seen: list[tuple[str, UUID]] = []
            cursor = None
            while True:
                page = await bus.list_commands(
                    where, limit=2, cursor=cursor, newest_first=newest_first
                )
                seen += [(r.domain, r.command_id) for r in page.items]
                if page.next_cursor is None:
                    break
                cursor = page.next_cursor
            assert len(seen) == len(set(seen)) and set(seen) == expected, where
            keys = [(cid, d) for d, cid in seen]
            assert keys == sorted(keys, reverse=newest_first), where
    with pytest.raises(ValidationError, match="newest_first"):
        await bus.list_commands(newest_first="yes")  # type: ignore[arg-type]


async def test_library_pages_hold_while_statuses_change(bus: CommandBus) -> None:
    """Commands moving to another status between pages (each status is its own scan)
    are still listed once, in their place."""
    ids = (
        await bus.send_batch([CommandRequest(domain="payments", command_type="T")] * 12)
    ).unwrap()
    ordered = sorted(ids.command_ids)  # one created_at: by id
    seen: list[UUID] = []
    cursor = None
    while True:
        page = await bus.list_commands(CommandFilter(domain="payments"), limit=3, cursor=cursor)
        seen += [r.command_id for r in page.items]
        # one already listed and one still to come change status before the next page
        for cid in (seen[-1], ordered[-1 - len(seen) // 3]):
            record = await bus.get_command("payments", cid)
            assert record is not None
            if record.status is CommandStatus.PENDING:
                await bus.cancel_command("payments", cid)
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == ordered
    cancelled = await bus.list_commands(CommandFilter(status="CANCELLED"))
    assert len(cancelled.items) >= 6  # statuses did change under the listing


def _matches(r: Any, where: CommandFilter) -> bool:
    return (
        (where.domain is None or r.domain == where.domain)
        and (where.status is None or r.status is where.status)
        and (where.correlation_id is None or r.correlation_id == where.correlation_id)
        and (where.batch_id is None or r.batch_id == where.batch_id)
        and (where.command_type is None or r.command_type == where.command_type)
    )


async def test_find_commands_looks_in_every_domain(bus: CommandBus) -> None:
    cid = uuid4()
    assert await bus.find_commands(cid) == []
    (await bus.send("refunds", "T", {}, command_id=cid)).unwrap()
    (await bus.send("payments", "T", {})).unwrap()
    assert [r.domain for r in await bus.find_commands(str(cid))] == ["refunds"]
    (await bus.send("payments", "T", {}, command_id=cid)).unwrap()
    assert [r.domain for r in await bus.find_commands(cid)] == ["payments", "refunds"]
    with pytest.raises(ValidationError, match="command_id"):
        await bus.find_commands("nope")


# -- show command [DOMAIN] ID, cancel ---------------------------------------------------------


async def test_show_without_the_domain_and_ambiguous_ids(dsn: str, bus: CommandBus) -> None:
    cid = uuid4()
    (await bus.send("refunds", "Refund", {}, command_id=cid)).unwrap()
    text = ok(cli(dsn, "show", "command", str(cid)))
    assert text.startswith(f"refunds/Refund {cid}\n")
    as_json = json.loads(ok(cli(dsn, "show", "command", str(cid), "--json")))
    assert as_json["command"]["domain"] == "refunds"

    (await bus.send("payments", "Charge", {}, command_id=cid)).unwrap()
    one_error(
        cli(dsn, "show", "command", str(cid)),
        f"command id {cid} is in several domains (payments, refunds): give the domain too",
    )
    assert ok(cli(dsn, "show", "command", "payments", str(cid))).startswith("payments/Charge")
    unknown = uuid4()
    one_error(cli(dsn, "show", "command", str(unknown)), f"no command {unknown} in any domain")
    one_error(cli(dsn, "show", "command", "payments"), "not a command id: 'payments'")
    one_error(cli(dsn, "show", "command", "payments", "x"), "not a command id: 'x'")


async def test_show_says_what_broke_who_acted_and_when_it_runs_next(
    dsn: str, bus: CommandBus
) -> None:
    reg = HandlerRegistry()

    @reg.handler("payments", "Charge")
    async def charge(cmd: Command, ctx: HandlerContext) -> None:
        if cmd.data.get("transient"):
            raise TransientCommandError("warehouse busy", code="WAREHOUSE_BUSY")
        if cmd.data.get("bug"):
            raise KeyError("missing")  # an unexpected exception
        raise PermanentCommandError("card declined", code="DECLINED")

    slow = Config(backoff_base=FAST.backoff_base * 3000, backoff_max=FAST.backoff_base * 3000)
    async with CommandBus(dsn, config=slow) as slow_bus:
        retried = (await slow_bus.send("payments", "Charge", {"transient": 1})).unwrap()
        declined = (await slow_bus.send("payments", "Charge", {})).unwrap()
        bug = (await slow_bus.send("payments", "Charge", {"bug": 1}, max_attempts=1)).unwrap()
        async with Worker(dsn, reg, domain="payments", config=slow):

            async def settled() -> bool:
                statuses = [
                    (await bus.get_command("payments", s.command_id)).status  # type: ignore[union-attr]
                    for s in (retried, declined, bug)
                ]
                return statuses == [
                    CommandStatus.RETRY_SCHEDULED,
                    CommandStatus.IN_TROUBLESHOOTING_QUEUE,
                    CommandStatus.IN_TROUBLESHOOTING_QUEUE,
                ]

            await wait_for(settled)

    text = ok(cli(dsn, "show", "command", str(retried.command_id)))
    assert "status:       RETRY_SCHEDULED (attempts 1 of 3)" in text
    assert re.search(r"\n  next retry:   \d{4}-\d\d-\d\d .+ \(in \d+m\d\ds\)\n", text), text
    assert "last error:   WAREHOUSE_BUSY: warehouse busy (TransientCommandError)" in text
    assert "CommandRetryScheduled  attempt 1; WAREHOUSE_BUSY: warehouse busy; retry at" in text

    ok(cli(dsn, "tsq", "cancel", "payments", str(declined.command_id), "--reason", "fraud",
           "--operator", "ana"))  # fmt: skip
    text = ok(cli(dsn, "show", "command", str(declined.command_id)))
    assert "status:       CANCELLED" in text
    assert "operator:     ana (cancelled it)" in text and "reason:       fraud" in text
    assert "last error:   DECLINED: card declined (PermanentCommandError)" in text
    assert "CommandCancelledByOperator  by ana; reason: fraud" in text
    assert "next retry" not in text

    text = ok(cli(dsn, "show", "command", str(bug.command_id)))
    assert "KeyError" in text
    record = await bus.get_command("payments", bug.command_id)
    assert record is not None and record.last_error is not None
    if record.last_error.get("traceback"):  # recorded for unexpected exceptions
        assert "  traceback:\n    Traceback (most recent call last):" in text

    delayed = (await bus.send("payments", "Charge", {}, delay=3600)).unwrap()
    text = ok(cli(dsn, "show", "command", str(delayed.command_id)))
    assert re.search(r"\n  runs at:      \d{4}-\d\d-\d\d .+ \(in 59m\d\ds\)\n", text), text


async def test_cancel_from_the_shell(dsn: str, bus: CommandBus) -> None:
    cid = (await bus.send("payments", "Charge", {})).unwrap().command_id
    out = ok(cli(dsn, "cancel", str(cid), "--reason", "duplicate", "--operator", "ana"))
    assert out == f"cancelled payments/Charge {cid} (was PENDING)\n"
    history = await bus.command_history("payments", cid)
    assert history[-1].event_type == "CommandCancelledByOperator"
    assert history[-1].data == {"reason": "duplicate", "operator": "ana", "source": "cli"}

    one_error(cli(dsn, "cancel", str(cid)), f"cannot cancel command {cid}: it is already CANCELLED")
    unknown = uuid4()
    one_error(cli(dsn, "cancel", "payments", str(unknown)), f"no command {unknown} in domain")
    one_error(cli(dsn, "cancel", str(unknown)), f"no command {unknown} in any domain")
    one_error(cli(dsn, "cancel", "payments", "12"), "not a command id: '12'")

    other = (await bus.send("payments", "Charge", {}, delay=60)).unwrap().command_id
    ok(cli(dsn, "cancel", "payments", str(other)))
    assert (await bus.get_command("payments", other)).status is CommandStatus.CANCELLED  # type: ignore[union-attr]
    assert (await bus.verify_projection()).ok

    done = (await bus.send("payments", "Charge", {})).unwrap().command_id
    reg = HandlerRegistry()
    reg.register("payments", "Charge", _ok)
    async with Worker(dsn, reg, domain="payments", config=FAST):

        async def completed() -> bool:
            rec = await bus.get_command("payments", done)
            return rec is not None and rec.status is CommandStatus.COMPLETED

        await wait_for(completed)
    one_error(cli(dsn, "cancel", str(done)), "it is already COMPLETED")


async def _ok(cmd: Command, ctx: HandlerContext) -> None:
    return None
