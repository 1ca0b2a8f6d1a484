"""The command line as a whole: help for every option, --json on every read command, a
confirmation before replacing the live tables, and every user error one line on
stderr with a non-zero exit, never a traceback (the real executable, a real database)."""

from __future__ import annotations

import json
import os
import pty
import select
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import click
import pytest

from commandbus import CommandBus, CommandRequest
from commandbus.cli.main import cli as cli_group

_EXE = shutil.which("commandbus", path=str(Path(sys.executable).parent))
COMMANDBUS = [_EXE] if _EXE else [sys.executable, "-m", "commandbus.cli"]
UNKNOWN = "6f1c9e4e-1111-4b5b-9c55-000000000000"


def _commands(
    command: click.Command, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    yield path, command
    if isinstance(command, click.Group):
        for name, sub in sorted(command.commands.items()):
            yield from _commands(sub, (*path, name))


COMMANDS = list(_commands(cli_group))


@pytest.mark.parametrize(
    ("path", "command"), COMMANDS, ids=[" ".join(p) or "commandbus" for p, _ in COMMANDS]
)
def test_every_command_and_option_has_help(path: tuple[str, ...], command: click.Command) -> None:
    assert (command.help or "").strip(), f"commandbus {' '.join(path)} has no help"
    for param in command.params:
        if isinstance(param, click.Option) and not param.hidden:
            assert (param.help or "").strip(), f"{' '.join(path)} {param.opts[0]} has no help"


#: The read commands (the ones that only look): each takes --json.
READ_COMMANDS = [
    ("show", "command"),
    ("show", "batch"),
    ("saga", "list"),
    ("saga", "show"),
    ("tsq", "list"),
    ("list",),
    ("trace",),
    ("projection", "verify"),
    ("status",),
    ("db", "status"),
]


@pytest.mark.parametrize("path", READ_COMMANDS, ids=" ".join)
def test_every_read_command_takes_json(path: tuple[str, ...]) -> None:
    command = dict(COMMANDS)[path]
    assert any("--json" in p.opts for p in command.params if isinstance(p, click.Option))


def run(dsn: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*COMMANDBUS, *args],
        env={**os.environ, "DATABASE_URL": dsn, **(env or {})},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


async def test_show_batch_json(dsn: str, bus: CommandBus) -> None:
    batch = (
        await bus.send_batch(
            [CommandRequest(domain="payments", command_type="Charge")] * 3, name="nightly"
        )
    ).unwrap()
    await bus.cancel_command("payments", batch.command_ids[0])
    proc = run(dsn, "show", "batch", str(batch.batch_id), "--json")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    doc = json.loads(out)
    assert doc["batch_id"] == str(batch.batch_id) and doc["name"] == "nightly"
    assert doc["total"] == 3 and doc["counts"] == {"PENDING": 2, "CANCELLED": 1}
    assert doc["finished"] == 1 and doc["is_complete"] is False


def _on_a_terminal(dsn: str, answer: bytes, *args: str) -> tuple[int, str]:
    """``commandbus ARGS`` with a terminal for stdin (and output), answering ``answer``."""
    controller, terminal = pty.openpty()
    proc = subprocess.Popen(
        [*COMMANDBUS, *args],
        env={**os.environ, "DATABASE_URL": dsn},
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
        close_fds=True,
    )
    os.close(terminal)
    seen = b""
    deadline = time.monotonic() + 60
    try:
        while b"[y/N]" not in seen and proc.poll() is None and time.monotonic() < deadline:
            ready, _, _ = select.select([controller], [], [], 0.1)
            if ready:
                seen += os.read(controller, 4096)
        os.write(controller, answer)
        proc.wait(timeout=60)
        while select.select([controller], [], [], 0.1)[0]:
            try:
                chunk = os.read(controller, 4096)
            except OSError:  # the terminal closed with the process
                break
            if not chunk:
                break
            seen += chunk
    finally:
        os.close(controller)
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, seen.decode(errors="replace").replace("\r\n", "\n")


async def test_rebuild_replace_asks_first(dsn: str, bus: CommandBus, conn: object) -> None:
    (await bus.send("payments", "Charge", {})).unwrap()
    await conn.execute("UPDATE commandbus.command SET attempts = 9")  # type: ignore[attr-defined]

    code, screen = _on_a_terminal(dsn, b"n\n", "projection", "rebuild", "--replace")
    assert "Replace the live tables" in screen and "[y/N]" in screen
    assert code == 1 and screen.rstrip().endswith("error: aborted"), screen
    assert "rebuilt" not in screen and "Traceback" not in screen
    cur = await conn.execute("SELECT attempts FROM commandbus.command")  # type: ignore[attr-defined]
    assert await cur.fetchall() == [(9,)]  # untouched

    code, screen = _on_a_terminal(dsn, b"y\n", "projection", "rebuild", "--replace")
    assert code == 0 and "rebuilt 1 commands into commandbus.command" in screen, screen
    cur = await conn.execute("SELECT attempts FROM commandbus.command")  # type: ignore[attr-defined]
    assert await cur.fetchall() == [(0,)]

    proc = run(dsn, "projection", "rebuild", "--replace")  # no terminal, no --yes
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1 and out == ""
    assert err == (
        "error: --replace rewrites the live status tables: add --yes to confirm "
        "(standard input is not a terminal to ask on)\n"
    )
    proc = run(dsn, "projection", "rebuild")  # into rebuild tables: nothing to confirm
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0 and "commandbus.command_rebuild" in out, err


#: Bad invocations, each refused in one line: (arguments, text the line says).
BAD = [
    (["nosuch"], "No such command 'nosuch'"),
    # a group without its command names them (it printed the group's whole help)
    (["show"], "missing command: commandbus show batch|command (see"),
    (["--database-url", "not a url", "list"], "--database-url is not a valid PostgreSQL"),
    (["saga"], "missing command: commandbus saga cancel|list|mark-compensated|pause|"),
    (["list", "--status", "done"], "--status must be one of"),
    (["list", "--limit", "0"], "'--limit'"),
    (["list", "--cursor", "x"], "invalid page cursor"),
    (["list", "--correlation-id", "x"], "not a correlation id"),
    (["send"], "Missing argument 'DOMAIN'"),
    (["send", "payments", "Charge", "--data", "{"], "--data is not JSON: Expecting"),
    (["send", "a", "B", "--max-attempts", "0"], "an integer from 1 to 2147483647, got '0'"),
    (["send", "payments", "Charge", "--data", "7"], "must be a JSON object"),
    (["send", "payments", "Charge", "--data", '{"a": NaN}'], "not JSON-serialisable"),
    (["send", "payments", "Charge", "--data", '{"a": "\\u0000"}'], "NUL character"),
    (["send", "payments", "Charge", "--data", "@/"], "cannot read /"),
    (["send", "payments", "Charge", "--delay", "-1s"], "--delay must be a duration"),
    (["send", "payments", "Charge", "--id", "1234"], "not a command id"),
    (["send", "pay ments", "Charge"], "domain"),
    (["cancel"], "Missing argument '[DOMAIN]'"),
    (["cancel", UNKNOWN], f"no command {UNKNOWN} in any domain"),
    (["cancel", "payments", "nope"], "not a command id: 'nope'"),
    (["show", "command"], "Missing argument '[DOMAIN]'"),
    (["show", "command", UNKNOWN], f"no command {UNKNOWN} in any domain"),
    (["show", "command", "payments", UNKNOWN, "--json"], f"no command {UNKNOWN} in domain"),
    (["show", "batch", "nope"], "not a batch id"),
    (["show", "batch", UNKNOWN, "--json"], f"no batch {UNKNOWN}"),
    (["tsq", "list", "--limit", "1001"], "'--limit'"),
    (["tsq", "list", "--cursor", "x"], "invalid page cursor"),
    (["tsq", "retry", "payments", UNKNOWN], f"no command {UNKNOWN}"),
    (["tsq", "cancel", "payments", "x"], "not a command id"),
    (["tsq", "complete", "payments", UNKNOWN, "--result", "{"], "--result is not JSON"),
    (["tsq", "complete", "payments", UNKNOWN, "--result", "[" * 5000], "nested too deeply"),
    # longer than Python reads an integer (4300 digits): was a traceback
    (["send", "payments", "Charge", "--data", '{"a": ' + "1" * 5000 + "}"], "--data is not JSON"),
    (["tsq", "complete", "payments", UNKNOWN, "--result", "1" * 5000], "--result is not JSON"),
    (["tsq", "complete", "payments", UNKNOWN, "--result", "@/"], "--result: cannot read /"),
    (["send", "payments", "Charge", "--data", '{"a": 1, "a": 2}'], "the key 'a' is given twice"),
    (["saga", "list", "--status", "nope"], "status must be one of"),
    (["saga", "list", "--name", "a b"], "name must be a saga name"),  # (was: 0 sagas)
    (["saga", "list", "--cursor", "x"], "invalid page cursor"),
    (["saga", "show", "x"], "not a saga id"),
    (["saga", "cancel", UNKNOWN], f"no saga {UNKNOWN}"),
    (["trace", "x"], "not a correlation or saga id"),
    (["trace", UNKNOWN, "--json"], "nothing recorded"),
    (["projection", "verify", "--limit", "-1"], "'--limit'"),
    (["projection", "rebuild", "--table", "command"], "cannot rebuild into table 'command'"),
    (["projection", "rebuild", "--replace"], "add --yes"),
    (["--database-url", "nonsense", "list"], "not a valid PostgreSQL connection string"),
    (["--database-url", "", "status"], "--database-url is empty"),
    (["cancel", UNKNOWN, "--reason", "r" * 2001], "reason must be at most 2000 characters"),
    (["--database-url", "  ", "list"], "--database-url is empty"),
]


def _assert_one_line(
    args: list[str], expected: str, proc: subprocess.Popen[str], stdin: str | None = None
) -> None:
    out, err = proc.communicate(stdin, timeout=120)
    assert proc.returncode in (1, 2), (args, proc.returncode, out, err)
    assert err.count("\n") == 1 and err.startswith("error: "), (args, err)
    assert expected in err, (args, err)
    assert "Traceback" not in out + err, args


def test_bad_invocations_are_one_line_each(dsn: str) -> None:
    for start in range(0, len(BAD), 6):  # a few processes at a time
        chunk = BAD[start : start + 6]
        procs = [run(dsn, *args) for args, _ in chunk]
        for (args, expected), proc in zip(chunk, procs, strict=True):
            _assert_one_line(args, expected, proc)


def test_bad_data_from_stdin_is_one_line(dsn: str) -> None:
    deep = '{"a": ' + "[" * 100_000 + "]" * 100_000 + "}"
    proc = subprocess.Popen(
        [*COMMANDBUS, "send", "payments", "Charge", "--data", "-"],
        env={**os.environ, "DATABASE_URL": dsn},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    expected = "--data is nested too deeply (standard input)"
    _assert_one_line(["send", "--data", "-"], expected, proc, stdin=deep)


@pytest.mark.parametrize(
    "args", [["list"], ["show", "command", UNKNOWN], ["cancel", UNKNOWN], ["send", "a", "B"]]
)
def test_an_unmigrated_or_unreachable_database_is_one_line(empty_dsn: str, args: list[str]) -> None:
    _assert_one_line(args, "migrate", run(empty_dsn, *args))
    down = "postgresql://postgres@127.0.0.1:1/postgres"
    _assert_one_line(args, "cannot connect", run(down, *args))


def _list_into_a_closed_pipe(dsn: str) -> str:
    """``commandbus list`` whose reader has gone before it writes; its stderr."""
    proc = subprocess.Popen(
        [*COMMANDBUS, "list"],
        env={**os.environ, "DATABASE_URL": dsn},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    with proc:
        proc.stdout.close()  # type: ignore[union-attr]  # before the process writes a line
        err = proc.stderr.read()  # type: ignore[union-attr]
    return err


async def test_a_broken_pipe_is_no_traceback(dsn: str, bus: CommandBus) -> None:
    """``commandbus list | head -1``: the reader goes away; no traceback follows."""
    (await bus.send_batch([CommandRequest(domain="payments", command_type="Charge")] * 50)).unwrap()
    err = _list_into_a_closed_pipe(dsn)
    assert "Traceback" not in err and "Exception" not in err, err
