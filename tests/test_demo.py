"""``commandbus demo``: the order saga tour says what happened, runs again, and with
DATABASE_URL writes only into a database of its own (named, created, reused)."""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from commandbus.engine.db.connect import describe_url
from support import run_cli, with_dbname

pytestmark = pytest.mark.slow

DEMO_DATABASE = "commandbus_demo"


def _with_password(url: str, password: str) -> str:
    """``url`` with a password (the test servers trust local users: it is never checked)."""
    params = conninfo_to_dict(url)
    params["password"] = password
    return make_conninfo("", **params)


def _run(*args: str, url: str) -> tuple[int, str, str]:
    proc = run_cli("demo", *args, env={"DATABASE_URL": url})
    out, err = proc.communicate(timeout=90)
    return proc.returncode, out, err


def _demo(url: str, database: str) -> tuple[str, float]:
    started = time.monotonic()
    code, out, err = _run("--database", database, url=url)
    assert code == 0, (out, err)
    assert err == "", err
    return out, time.monotonic() - started


def _query(url: str, query: Any, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(query, params)
        return cur.fetchall() if cur.description is not None else []


def _exists(server_url: str, name: str) -> bool:
    return bool(_query(server_url, "SELECT 1 FROM pg_database WHERE datname = %s", name))


def _drop(server_url: str, name: str) -> None:
    _query(
        server_url, sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
    )


@pytest.fixture
def demo_database(server_url: str) -> Iterator[str]:
    """A database name of the test's own for --database; dropped after."""
    name = f"cbtest_demo_{secrets.token_hex(4)}"
    try:
        yield name
    finally:
        _drop(server_url, name)


def _blocks(out: str) -> dict[str, list[str]]:
    """Each order's printed timeline, by order id."""
    blocks: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in out.splitlines():
        header = re.match(r"order (A-\d+): ", line)
        if header:
            current = blocks.setdefault(header.group(1), [])
        elif not line.strip():
            current = None
        elif current is not None:
            current.append(line)
    return blocks


def _timeline(block: list[str]) -> list[tuple[str, str]]:
    """(step, what) of each timeline line."""
    out = []
    for line in block[block.index("  timeline") + 1 :]:
        parts = line.split()
        out.append((parts[1], parts[2]))
    return out


def test_demo_tells_what_happened_to_each_order(server_url: str, demo_database: str) -> None:
    out, took = _demo(server_url, demo_database)
    assert "\x1b[" not in out  # not a terminal: no colours
    where = describe_url(with_dbname(server_url, demo_database))
    lines = out.splitlines()
    assert lines[0].startswith(f"database: {where} ")  # then "(the embedded ...)" if it is
    assert lines[0].endswith(" (created for the demo)")
    assert lines[1].startswith("schema: applied 0001_")
    blocks = _blocks(out)
    assert sorted(blocks) == ["A-1001", "A-1002", "A-1003", "A-1004"]

    # A-1001 completes, after the command-level retry of its reservation
    done = blocks["A-1001"]
    assert "order v1  COMPLETED" in done[0]
    steps = _timeline(done)
    assert ("reserve", "retry") in steps
    assert steps[-1] == ("saga", "COMPLETED")
    assert any("attempt 2" in line for line in done if " reserve " in line)

    # A-1002 fails at payment and is compensated in reverse order
    declined = blocks["A-1002"]
    assert "order v1  COMPENSATED" in declined[0]
    assert "  last error   CARD_DECLINED: card 0002 declined" in declined
    steps = _timeline(declined)
    assert ("charge", "failed") in steps
    undo = [s for s in steps if s[1].startswith("compensat") or s[1] == "COMPENSATED"]
    assert undo == [
        ("saga", "compensating"),
        ("schedule", "compensating"),
        ("schedule", "compensated"),
        ("reserve", "compensating"),
        ("reserve", "compensated"),
        ("saga", "COMPENSATED"),
    ]
    text = "\n".join(declined)
    assert text.index("shipping/CancelDelivery") < text.index("inventory/ReleaseStock")

    # A-1003 times out at payment and is compensated; the late refusal is ignored
    silent = blocks["A-1003"]
    assert "order v1  COMPENSATED" in silent[0]
    assert "last error   STEP_TIMED_OUT" in "\n".join(silent)
    steps = _timeline(silent)
    assert ("charge", "timed") in steps
    assert ("reserve", "compensated") in steps and ("saga", "COMPENSATED") in steps
    assert steps[-1] == ("charge", "reply")  # "reply ignored": the step had timed out

    # A-1004 waits on an operator, who retries the command; the order completes
    stuck = blocks["A-1004"]
    assert "order v1  COMPLETED" in stuck[0]
    steps = _timeline(stuck)
    assert steps.index(("ship", "waiting")) < steps.index(("ship", "operator"))
    assert steps[-2:] == [("ship", "completed"), ("saga", "COMPLETED")]
    assert "troubleshooting queue: shipping/Ship" in out
    assert "operator: a courier now serves 99999; command re-queued" in out

    assert "sagas by status:    COMPENSATED 2, COMPLETED 2\n" in out
    assert "commands by status: COMPLETED 16, FAILED 2\n" in out
    assert "stock: desk 5 -> 4, lamp 10 -> 9 (2 orders shipped, 2 reservations released)" in out
    assert re.search(r"projection check: \d+ commands and 4 sagas, equal to a replay", out)
    assert took < 30, took

    # the same database again: reused, and a second run sees only its own orders
    again, _ = _demo(server_url, demo_database)
    assert again.splitlines()[0].startswith(f"database: {where} ")
    assert again.splitlines()[0].endswith(
        " (reused: earlier runs stay in it; drop it to start afresh)"
    )
    assert again.splitlines()[1] == "schema: up to date"
    assert "sagas by status:    COMPENSATED 2, COMPLETED 2\n" in again
    assert re.search(r"projection check: \d+ commands and 8 sagas, equal to a replay", again)


def test_with_database_url_the_demo_writes_only_into_a_database_of_its_own(
    server_url: str, empty_dsn: str
) -> None:
    if _exists(server_url, DEMO_DATABASE):
        pytest.skip(f"the server already has a database {DEMO_DATABASE} (not this test's)")
    target = _with_password(empty_dsn, "s3cret-demo-pw")
    try:
        code, out, err = _run(url=target)
        assert code == 0, (out, err)
        assert err == ""
        where = describe_url(with_dbname(server_url, DEMO_DATABASE))
        first = out.splitlines()[0]
        assert first.startswith(f"database: {where} ") and first.endswith(" (created for the demo)")
        assert "s3cret-demo-pw" not in out
        assert "sagas by status:    COMPENSATED 2, COMPLETED 2\n" in out
        # the database DATABASE_URL names is untouched: no schema, no queues, no tables
        assert _query(
            empty_dsn, "SELECT to_regnamespace('commandbus'), to_regnamespace('pgmq')"
        ) == [(None, None)]
        assert _query(
            empty_dsn,
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')",
        ) == [(0,)]
        # everything is in the demo's database
        demo_url = with_dbname(server_url, DEMO_DATABASE)
        assert _query(demo_url, "SELECT count(*) FROM commandbus.saga") == [(4,)]
        assert _query(demo_url, "SELECT to_regclass('pgmq.q_payments') IS NOT NULL") == [(True,)]
    finally:
        _drop(server_url, DEMO_DATABASE)


@pytest.mark.parametrize("name", ["", " ", "x" * 64])
def test_a_bad_database_name_is_one_line(server_url: str, name: str) -> None:
    code, out, err = _run("--database", name, url=server_url)
    assert code == 1 and out == ""
    assert err.startswith("error: a database name must be 1 to 63 bytes") and err.count("\n") == 1
    assert not _exists(server_url, name)


def test_a_role_that_may_not_create_databases_is_told_so(server_url: str) -> None:
    role = f"cbtest_nocreate_{secrets.token_hex(4)}"
    _query(server_url, sql.SQL("CREATE ROLE {} LOGIN NOCREATEDB").format(sql.Identifier(role)))
    try:
        params = conninfo_to_dict(server_url)
        params["user"] = role
        code, out, err = _run("--database", f"{role}_db", url=make_conninfo("", **params))
        assert code == 1 and out == ""
        assert err.count("\n") == 1 and "Traceback" not in err
        assert err.startswith(f"error: cannot create database '{role}_db' on {role}@")
        assert "permission denied" in err and "42501" in err
        assert not _exists(server_url, f"{role}_db")
    finally:
        _query(server_url, sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
