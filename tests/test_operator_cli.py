"""``commandbus tsq`` and ``commandbus show`` against a real database, as an operator would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

from commandbus import (
    Command,
    CommandBus,
    CommandStatus,
    HandlerContext,
    HandlerRegistry,
    PermanentCommandError,
    Worker,
)
from support import FAST, wait_for


def cli(dsn: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "commandbus.cli", *args],
        env=dict(os.environ, DATABASE_URL=dsn),
        stdin=subprocess.DEVNULL,  # never a terminal, whoever runs the tests
        capture_output=True,
        text=True,
        timeout=60,
    )


def tsq(dsn: str, *args: str) -> subprocess.CompletedProcess[str]:
    return cli(dsn, "tsq", *args)


def show(dsn: str, *args: str) -> subprocess.CompletedProcess[str]:
    return cli(dsn, "show", *args)


async def test_list_retry_cancel_complete_from_the_shell(
    dsn: str, bus: CommandBus, tmp_path: Path
) -> None:
    reg = HandlerRegistry()

    @reg.handler("payments", "Charge")
    async def charge(cmd: Command, ctx: HandlerContext) -> Any:
        raise PermanentCommandError("card declined", code="DECLINED")

    ids = [(await bus.send("payments", "Charge", {"n": i})).unwrap().command_id for i in range(3)]
    async with Worker(dsn, reg, domain="payments", config=FAST):

        async def all_in_tsq() -> bool:
            return len((await bus.troubleshooting.list()).items) == 3

        await wait_for(all_in_tsq)

    listed = tsq(dsn, "list", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert {UUID(r["command_id"]) for r in rows} == set(ids)
    assert rows[0]["last_error"]["code"] == "DECLINED"
    plain = tsq(dsn, "list", "--error", "declined")
    assert plain.returncode == 0 and "3 command(s)" in plain.stderr
    # the table of `commandbus list`: a header, then one aligned row per command
    header, *lines = plain.stdout.splitlines()
    assert header.split()[:4] == ["SENT", "DOMAIN", "TYPE", "STATUS"], header
    assert len(lines) == 3 and all("IN_TROUBLESHOOTING_QUEUE" in line for line in lines)
    assert sorted(str(i) for i in ids for line in lines if str(i) in line) == sorted(map(str, ids))

    assert tsq(dsn, "retry", "payments", str(ids[0]), "--operator", "ana").returncode == 0
    # the domain may be left out, as for `commandbus cancel` and `show command`
    assert tsq(dsn, "cancel", str(ids[1]), "--reason", "dup").returncode == 0
    result_file = tmp_path / "result.json"
    result_file.write_text('{"refund": 12}')  # as --data takes one
    done = tsq(dsn, "complete", "payments", str(ids[2]), "--result", f"@{result_file}")
    assert done.returncode == 0, done.stderr

    statuses = {i: (await bus.get_command("payments", i)) for i in ids}
    assert statuses[ids[0]] is not None and statuses[ids[0]].status is CommandStatus.PENDING
    assert statuses[ids[1]] is not None and statuses[ids[1]].status is CommandStatus.CANCELLED
    assert statuses[ids[2]] is not None and statuses[ids[2]].result == {"refund": 12}

    # refused, with one clear line and a non-zero status
    again = tsq(dsn, "cancel", "payments", str(ids[1]))
    assert again.returncode != 0
    assert again.stderr.strip().startswith("error: cannot cancel")
    assert "Traceback" not in again.stderr
    bad_id = tsq(dsn, "retry", "payments", "not-a-uuid")
    assert bad_id.returncode != 0 and "not a command id" in bad_id.stderr
    unknown = uuid4()
    nowhere = tsq(dsn, "retry", str(unknown))
    assert nowhere.returncode == 1 and f"no command {unknown} in any domain" in nowhere.stderr
    two_ids = tsq(dsn, "retry", str(ids[0]), str(ids[0]))  # a slip: the id twice
    assert two_ids.returncode == 1 and "Traceback" not in two_ids.stderr
    assert two_ids.stderr.strip().startswith("error: expected [DOMAIN] ID, got two ids")
    bad_json = tsq(dsn, "complete", "payments", str(ids[0]), "--result", "{oops")
    assert bad_json.returncode != 0 and "--result is not JSON" in bad_json.stderr


async def test_show_a_command_and_a_batch(dsn: str, bus: CommandBus) -> None:
    from commandbus import CommandRequest

    batch = (
        await bus.send_batch(
            [CommandRequest(domain="payments", command_type="Charge", data={"n": 1})] * 1,
            name="nightly",
        )
    ).unwrap()
    cid = batch.command_ids[0]

    text = show(dsn, "command", "payments", str(cid))
    assert text.returncode == 0, text.stderr
    assert "PENDING (attempts 0 of 3)" in text.stdout
    assert "v1 " in text.stdout and "CommandSent" in text.stdout

    as_json = json.loads(show(dsn, "command", "payments", str(cid), "--json").stdout)
    assert as_json["command"]["command_id"] == str(cid)
    assert [e["event_type"] for e in as_json["events"]] == ["CommandSent"]

    progress = show(dsn, "batch", str(batch.batch_id))
    assert progress.returncode == 0, progress.stderr
    assert "0 of 1 finished" in progress.stdout and "PENDING: 1" in progress.stdout

    missing = show(dsn, "command", "payments", "6f1c9e4e-1111-4b5b-9c55-000000000000")
    assert missing.returncode != 0
    assert missing.stderr.strip() == (
        "error: no command 6f1c9e4e-1111-4b5b-9c55-000000000000 in domain 'payments'"
    )
    assert show(dsn, "batch", "nope").returncode != 0


async def test_projection_verify_and_rebuild_from_the_shell(
    dsn: str, bus: CommandBus, conn: Any
) -> None:
    for _ in range(3):
        (await bus.send("payments", "Charge", {})).unwrap()
    ok = cli(dsn, "projection", "verify")
    assert ok.returncode == 0, ok.stderr
    assert "3 commands: the projection equals a replay" in ok.stdout

    await conn.execute("UPDATE commandbus.command SET attempts = 7")
    bad = cli(dsn, "projection", "verify", "--limit", "1")
    assert bad.returncode == 1
    assert len(bad.stdout.splitlines()) == 1 and "attempts" in bad.stdout
    assert bad.stderr.strip() == "error: 3 difference(s) in 3 commands"

    as_json = cli(dsn, "projection", "verify", "--json", "--limit", "2")
    assert as_json.returncode == 1 and as_json.stderr == ""
    report = json.loads(as_json.stdout)
    assert report["ok"] is False and report["difference_count"] == 3
    assert report["checked"] == {"commands": 3, "batches": 0, "sagas": 0}
    assert [d["field"] for d in report["differences"]] == ["attempts", "attempts"]
    assert {(d["live"], d["replayed"]) for d in report["differences"]} == {(7, 0)}

    # replacing the live tables asks first: with no terminal to ask on, --yes is needed
    refused = cli(dsn, "projection", "rebuild", "--replace")
    assert refused.returncode == 1 and refused.stdout == ""
    assert refused.stderr.count("\n") == 1 and "add --yes" in refused.stderr
    assert cli(dsn, "projection", "verify").returncode == 1  # nothing was rebuilt

    fixed = cli(dsn, "projection", "rebuild", "--replace", "--yes")
    assert fixed.returncode == 0 and "rebuilt 3 commands into commandbus.command" in fixed.stdout
    assert cli(dsn, "projection", "verify").returncode == 0
    clean = json.loads(cli(dsn, "projection", "verify", "--json").stdout)
    assert clean["ok"] is True and clean["differences"] == []
