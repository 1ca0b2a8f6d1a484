"""SIGTERM or SIGINT while a long-running command starts (importing the
application, checking it, starting its event loop, connecting): exit status 1
and one line, ``stopped before it was ready``, never a silent death by the
signal (status 143) or a traceback. The commands are held at each point by
``starting_apps`` (or a server that accepts and never answers), so the signal
comes there every time."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).parent

pytestmark = pytest.mark.slow

WORKER = ("worker", "--app", "starting_apps:registry", "--domain", "jobs")
COORDINATOR = ("coordinator", "--app", "starting_apps:sagas")
WEB = ("web", "--port", "0", "--app", "starting_apps:sagas")


def start(dsn: str, at: str, *args: str) -> subprocess.Popen[str]:
    env = dict(os.environ, DATABASE_URL=dsn, STARTING_AT=at, PYTHONPATH=str(TESTS))
    env.pop("COMMANDBUS_OTEL", None)
    return subprocess.Popen(
        [sys.executable, "-m", "commandbus.cli", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def signal_when_held(proc: subprocess.Popen[str], at: str, sig: int) -> tuple[int, str, str]:
    """Wait for ``holding at AT``, send ``sig``, and return the status, stdout and stderr."""
    assert proc.stdout is not None
    try:
        line = proc.stdout.readline()
        assert line == f"holding at {at}\n", (line, proc.poll())
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return proc.returncode, line + out, err


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
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        proc = start(f"postgresql://nobody@127.0.0.1:{port}/none", "", *WEB[:3])
        try:
            silent.settimeout(30)
            connection, _ = silent.accept()  # it is connecting now
            with connection:
                proc.send_signal(sig)
                out, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert proc.returncode == 1, err
    assert err == f"error: stopped before it was ready ({sig.name} while starting)\n"
    assert out == ""
