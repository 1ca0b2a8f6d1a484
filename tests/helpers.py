"""Helpers the tests share (the fixtures are in conftest.py)."""

from __future__ import annotations

import os
import subprocess
import sys

from psycopg.conninfo import conninfo_to_dict, make_conninfo


def with_dbname(url: str, dbname: str) -> str:
    """``url`` pointing at database ``dbname`` (URL or key=value, TCP or unix socket)."""
    params = conninfo_to_dict(url)
    params["dbname"] = dbname
    return make_conninfo("", **params)


def run_cli(*args: str, env: dict[str, str | None] | None = None) -> subprocess.Popen[str]:
    """Start ``commandbus ARGS`` in a subprocess (``None`` in ``env`` unsets a variable)."""
    environ = dict(os.environ)
    for key, value in (env or {}).items():
        if value is None:
            environ.pop(key, None)
        else:
            environ[key] = value
    return subprocess.Popen(
        [sys.executable, "-m", "commandbus.cli", *args],
        env=environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
