"""SIGTERM or SIGINT while a long-running command starts (importing the
application, checking it, starting its event loop, connecting): exit status 1
and one line, ``stopped before it was ready``, never a silent death by the
signal (status 143) or a traceback. The commands are held at each point by
``starting_apps`` (or a server that accepts and never answers), so the signal
comes there every time. The same holds for any command while the command line
itself is being imported (held there by ``holding_cli``)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from support import run_cli

TESTS = Path(__file__).parent

pytestmark = pytest.mark.slow

WORKER = ("worker", "--app", "starting_apps:registry", "--domain", "jobs")
COORDINATOR = ("coordinator", "--app", "starting_apps:sagas")
WEB = ("web", "--port", "0", "--app", "starting_apps:sagas")


def start(dsn: str, at: str, *args: str) -> subprocess.Popen[str]:
    env: dict[str, str | None] = {
        "DATABASE_URL": dsn,
        "STARTING_AT": at,
        "PYTHONPATH": str(TESTS),
        "COMMANDBUS_OTEL": None,
    }
    return run_cli(*args, env=env)


def signal_when_held(proc: subprocess.Popen[str], at: str, sig: int) -> tuple[int, str, str]:
    """Wait for ``holding at AT``, send ``sig``, and return the status, stdout and stderr."""
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if line != f"holding at {at}\n":
        stop(proc, None)
        raise AssertionError((line, proc.returncode))
    code, out, err = stop(proc, sig)
    return code, line + out, err


def stop(proc: subprocess.Popen[str], sig: int | None) -> tuple[int, str, str]:
    """Send ``sig`` (if any) and wait for the end; killed if it does not end."""
    try:
        if sig is not None:
            proc.send_signal(sig)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return proc.returncode, out, err


@pytest.mark.parametrize(
    ("args", "at", "sig"),
    [
        (WORKER, "import", signal.SIGTERM),
        (WORKER, "import", signal.SIGINT),
        (WORKER, "validate", signal.SIGTERM),
        (WORKER, "loop", signal.SIGTERM),
        (WORKER, "loop", signal.SIGINT),
        (COORDINATOR, "import", signal.SIGTERM),
        (COORDINATOR, "loop", signal.SIGINT),
        (WEB, "import", signal.SIGTERM),
    ],
    ids=lambda v: v[0] if isinstance(v, tuple) else getattr(v, "name", v),
)
def test_a_stop_while_starting_is_one_line_and_status_1(
    dsn: str, args: tuple[str, ...], at: str, sig: signal.Signals
) -> None:
    code, out, err = signal_when_held(start(dsn, at, *args), at, sig)
    assert code == 1, (code, err)
    assert err == f"error: stopped before it was ready ({sig.name} while starting)\n"
    assert out == f"holding at {at}\n"  # nothing served, nothing printed after


def test_with_json_logs_the_line_is_json(dsn: str) -> None:
    code, _out, err = signal_when_held(
        start(dsn, "import", *WORKER, "--log-format", "json"), "import", signal.SIGTERM
    )
    assert code == 1, err
    [line] = err.splitlines()
    record = json.loads(line)
    assert record["level"] == "ERROR"
    assert record["message"] == "error: stopped before it was ready (SIGTERM while starting)"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
def test_the_dashboard_stopped_while_connecting_is_one_line(sig: signal.Signals) -> None:
    """``commandbus web`` connects in its event loop, before uvicorn takes the signals:
    held there by a server that accepts the connection and never answers."""
    code, out, err = stopped_while_connecting(lambda url: start(url, "", *WEB[:3]), sig)
    assert code == 1, err
    assert err == f"error: stopped before it was ready ({sig.name} while starting)\n"
    assert out == ""


def test_more_stops_while_a_served_worker_ends_leave_its_status_alone(dsn: str) -> None:
    """A worker that served and was told to stop ends with status 0 even when the
    stop signal keeps coming while it exits (after its handlers are gone, a
    SIGTERM used to kill it with -15)."""
    proc = start(dsn, "", *WORKER)
    assert proc.stderr is not None
    try:
        while "commandbus.cli serving domain" not in (line := proc.stderr.readline()):
            assert line, proc.poll()
        while proc.poll() is None:  # SIGTERM every 10 ms until it has exited
            proc.send_signal(signal.SIGTERM)
            time.sleep(0.01)
    finally:
        code, _out, err = stop(proc, None)
    assert code == 0, err
    assert "Traceback" not in err


# -- while the command line itself is imported (commandbus.cli.entry) ----------------------

#: Never connected to: these commands are stopped before they use a database.
NOWHERE = "postgresql://nobody@127.0.0.1:1/none"


def stopped_while_connecting(
    begin: Callable[[str], subprocess.Popen[str]], sig: signal.Signals
) -> tuple[int, str, str]:
    """Start a command (``begin(url)``) against a server that accepts its connection
    and never answers, and send ``sig`` once it is connecting."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        proc = begin(f"postgresql://nobody@127.0.0.1:{port}/none")
        silent.settimeout(30)
        try:
            connection, _ = silent.accept()  # it is connecting now
        except BaseException:
            stop(proc, None)
            raise
        with connection:
            return stop(proc, sig)


def start_held(*args: str, swallows: bool = False) -> subprocess.Popen[str]:
    """``python -m commandbus.cli ARGS``, held while it imports commandbus.cli.main."""
    env = {k: v for k, v in os.environ.items() if k not in ("COMMANDBUS_OTEL", "STARTING_AT")}
    env.update(DATABASE_URL=NOWHERE, PYTHONPATH=str(TESTS), STARTING_AT="import")
    if swallows:
        env["HOLDING_SWALLOWS"] = "1"
    return subprocess.Popen(
        [sys.executable, str(TESTS / "holding_cli.py"), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.parametrize(
    ("args", "sig"),
    [
        (WORKER, signal.SIGTERM),
        (WORKER, signal.SIGINT),
        (COORDINATOR, signal.SIGTERM),
        (WEB, signal.SIGINT),
        (("list",), signal.SIGINT),
        (("list",), signal.SIGTERM),
        (("--help",), signal.SIGINT),
    ],
    ids=lambda v: v[0] if isinstance(v, tuple) else getattr(v, "name", v),
)
def test_a_stop_while_the_command_line_is_imported_is_one_line(
    args: tuple[str, ...], sig: signal.Signals
) -> None:
    code, out, err = signal_when_held(start_held(*args), "cli import", sig)
    assert code == 1, (code, err)
    assert err == f"error: stopped before it was ready ({sig.name} while starting)\n"
    assert out == "holding at cli import\n"


@pytest.mark.parametrize(
    ("args", "sig"),
    [(WORKER, signal.SIGTERM), (WEB, signal.SIGINT), (("list",), signal.SIGINT)],
    ids=lambda v: v[0] if isinstance(v, tuple) else getattr(v, "name", v),
)
def test_a_stop_swallowed_while_starting_ends_the_command_as_it_begins(
    args: tuple[str, ...], sig: signal.Signals
) -> None:
    """The stop's exception was swallowed by what ran then: the command line goes
    on, and the stop ends the command where it takes the signals over
    (starting(): before the application is imported, which would print ``holding
    at import``; any other command: as it begins)."""
    code, out, err = signal_when_held(start_held(*args, swallows=True), "cli import", sig)
    assert code == 1, (code, err)
    assert err == f"error: stopped before it was ready ({sig.name} while starting)\n"
    assert out == "holding at cli import\n"


def test_a_stop_swallowed_before_help_is_said_after_it() -> None:
    code, out, err = signal_when_held(
        start_held("--help", swallows=True), "cli import", signal.SIGTERM
    )
    assert code == 1, (code, err)
    assert err == "error: stopped before it was ready (SIGTERM while starting)\n"
    assert out.startswith("holding at cli import\nUsage: commandbus ")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
def test_a_short_command_stops_as_before_once_it_runs(sig: signal.Signals) -> None:
    """``commandbus list`` got the handlers from before back as it began: held while
    it connects (a server that accepts and never answers), SIGTERM kills it as
    the system does, SIGINT aborts it (``error: aborted``)."""
    code, out, err = stopped_while_connecting(
        lambda url: run_cli("list", env={"DATABASE_URL": url}), sig
    )
    if sig == signal.SIGTERM:
        assert (code, out, err) == (-signal.SIGTERM, "", "")
    else:
        assert code == 1, err
        assert err.splitlines()[-1] == "error: aborted", err
        assert "Traceback" not in err


def test_the_command_line_starts_from_its_light_entry() -> None:
    """The console script and ``python -m commandbus.cli`` run commandbus.cli.entry,
    which installs its handlers before anything heavy is imported."""
    [script] = entry_points(group="console_scripts", name="commandbus")
    assert script.value == "commandbus.cli.entry:main"
    assert (
        (TESTS.parent / "src/commandbus/cli/__main__.py")
        .read_text()
        .endswith("from commandbus.cli.entry import main\n\nmain()\n")
    )
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, commandbus.cli.entry; print(*sorted(sys.modules))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    heavy = [m for m in loaded if m.split(".")[0] in ("click", "psycopg", "asyncio", "typing")]
    assert heavy == [], heavy
    assert [m for m in loaded if m.startswith("commandbus")] == [
        "commandbus",
        "commandbus.cli",
        "commandbus.cli.entry",
    ]
