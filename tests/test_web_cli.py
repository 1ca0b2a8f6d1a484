"""``commandbus web`` as an operator runs it: it refuses a public bind without
credentials, and serves until SIGTERM, then exits 0."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from support import run_cli


def test_a_public_bind_without_credentials_is_refused(dsn: str) -> None:
    env = {"DATABASE_URL": dsn, "COMMANDBUS_WEB_TOKEN": None, "COMMANDBUS_WEB_USER": None}
    proc = run_cli("web", "--host", "0.0.0.0", "--port", "0", env=env)
    _out, err = proc.communicate(timeout=30)
    assert proc.returncode != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: refusing to serve on 0.0.0.0")
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--refresh", "0s"], "--refresh must be whole seconds"),
        (["--refresh", "1.5s"], "--refresh must be whole seconds"),
        (["--refresh", "2h"], "--refresh must be whole seconds"),
        (["--refresh", "soon"], "--refresh"),
        (["--timeout", "0s"], "--timeout must be over 0"),
    ],
)
def test_bad_options_are_one_line_errors(dsn: str, args: list[str], says: str) -> None:
    proc = run_cli("web", "--port", "0", *args, env={"DATABASE_URL": dsn})
    _out, err = proc.communicate(timeout=30)
    assert proc.returncode != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and says in lines[0], err
    assert "Traceback" not in err


def test_a_jaeger_url_that_is_no_http_url_is_one_line(dsn: str) -> None:
    env = {"DATABASE_URL": dsn, "COMMANDBUS_JAEGER_URL": "localhost:16686"}
    proc = run_cli("web", "--port", "0", env=env)
    _out, err = proc.communicate(timeout=30)
    assert proc.returncode != 0
    lines = err.strip().splitlines()
    assert lines == ["error: COMMANDBUS_JAEGER_URL must be an http(s) URL, got 'localhost:16686'"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_the_server_starts_answers_healthz_and_stops_on_sigterm(dsn: str) -> None:
    port = _free_port()
    env = {**os.environ, "DATABASE_URL": dsn}
    env.pop("COMMANDBUS_WEB_TOKEN", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "commandbus.cli", "web", "--port", str(port), "--read-only"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.strip() == f"commandbus web: serving on http://127.0.0.1:{port}/"
        deadline = time.monotonic() + 10
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
                    assert r.status == 200 and r.read() == b"ok"
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as r:
            assert b'data-testid="read-only-badge"' in r.read()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)  # closes the pipes
