"""The programs in examples/ run as a user runs them: a subprocess against a fresh database.

Each test gives the example an empty database of its own (no PGMQ, no
migrations: the example migrates it), checks what it printed and then what it
left in the database. The quick start is covered by tests/test_quickstart.py.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import psycopg

from support import fetch, scalar

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run_example(name: str, dsn: str) -> str:
    """Run ``examples/NAME`` with DATABASE_URL=dsn; return its stdout (it must succeed)."""
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / name)],
        env=dict(os.environ, DATABASE_URL=dsn),
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.stdout


def test_every_example_says_how_to_run_it() -> None:
    names = sorted(p.name for p in EXAMPLES.glob("*.py"))
    assert names == ["quickstart.py", "saga.py", "saga_quickstart.py", "web_request_outbox.py"]
    for name in names:
        text = (EXAMPLES / name).read_text()
        assert text.startswith('"""'), name
        assert f"python examples/{name}" in text.split('"""')[1], name


async def test_web_request_outbox(empty_dsn: str) -> None:
    out = run_example("web_request_outbox.py", empty_dsn)
    lines = out.splitlines()

    created = re.fullmatch(
        r"POST /orders A-1 x2 -> 201 \{.*'command_id': '([0-9a-f-]{36})'\}", lines[0]
    )
    assert created, out
    refused = re.fullmatch(
        r"POST /orders A-2 x50 -> 409 \{'error': 'not enough lamp in stock', "
        r"'command_id': '([0-9a-f-]{36})'\}",
        lines[1],
    )
    assert refused, out
    sent_id, rolled_back_id = created[1], refused[1]
    assert lines[2] == f"  command {rolled_back_id}: not found, nothing sent"
    assert lines[3] == "order A-1: ShipOrder COMPLETED {'shipped': 'A-1'}"
    assert lines[4] == "lamps in stock: 8; shipped: A-1"
    assert len(lines) == 5, out

    async with await psycopg.AsyncConnection.connect(empty_dsn, autocommit=True) as conn:
        # the rolled-back request left nothing: no order, no command, no event, no message
        assert await fetch(
            conn, "SELECT order_id, command_id::text FROM outbox_example.orders"
        ) == [("A-1", sent_id)]
        assert await fetch(
            conn, "SELECT command_id::text, command_type, status FROM commandbus.command"
        ) == [(sent_id, "ShipOrder", "COMPLETED")]
        events = await fetch(
            conn, "SELECT stream_id, event_type FROM commandbus.event ORDER BY position"
        )
        assert all(rolled_back_id not in stream for stream, _ in events), events
        assert [t for _, t in events] == ["CommandSent", "CommandCompleted"], events
        assert await scalar(conn, "SELECT count(*) FROM pgmq.q_shipping") == 0
        assert await scalar(conn, "SELECT in_stock FROM outbox_example.stock") == 8
        assert await fetch(conn, "SELECT order_id FROM outbox_example.shipments") == [("A-1",)]


def test_saga_quickstart(empty_dsn: str) -> None:
    out = run_example("saga_quickstart.py", empty_dsn)
    assert out.splitlines() == [
        "released R-B",
        "COMPLETED {'reserve': {'reservation': 'R-A'}, 'charge': {'charge': 'C-1'}}",
        "COMPENSATED {'reserve': {'reservation': 'R-B'}}",
    ]


async def test_saga(empty_dsn: str) -> None:
    out = run_example("saga.py", empty_dsn)
    blocks = out.split("\norder ")
    completed, compensated, totals = blocks[0], blocks[1], out.splitlines()[-1]

    def timeline(block: str) -> list[tuple[str, str]]:
        rows = re.findall(r"^ +[+-]\d+ ms  (\w+) *(\w*) *([\w/]*)$", block, flags=re.MULTILINE)
        return [(event, f"{step} {sent}".strip()) for event, step, sent in rows]

    assert re.match(r"order A-1: COMPLETED in \d+ ms\n", completed), out
    assert timeline(completed) == [
        ("SagaStarted", ""),
        ("SagaStepStarted", "reserve inventory/ReserveStock"),
        ("SagaStepCompleted", "reserve"),
        ("SagaStepStarted", "charge payments/ChargeCard"),
        ("SagaStepCompleted", "charge"),
        ("SagaStepStarted", "ship shipping/ShipOrder"),
        ("SagaStepCompleted", "ship"),
        ("SagaCompleted", ""),
    ], out
    assert (
        "  results: {'reserve': {'reservation': 'R-A-1'}, 'charge': {'charge': 'C-A-1'}, "
        "'ship': {'tracking': 'T-A-1'}}"
    ) in completed

    assert re.match(r"A-2: COMPENSATED in \d+ ms, card declined for 500\n", compensated), out
    assert timeline(compensated) == [
        ("SagaStarted", ""),
        ("SagaStepStarted", "reserve inventory/ReserveStock"),
        ("SagaStepCompleted", "reserve"),
        ("SagaStepStarted", "charge payments/ChargeCard"),
        ("SagaStepFailed", "charge"),
        ("SagaCompensationStarted", ""),
        ("SagaStepCompensating", "reserve inventory/ReleaseStock"),
        ("SagaStepCompensated", "reserve"),
        ("SagaCompensated", ""),
    ], out
    assert "  results: {'reserve': {'reservation': 'R-A-2'}}" in compensated
    assert totals == "lamps reserved: 2; charged: A-1; shipped: A-1"

    async with await psycopg.AsyncConnection.connect(empty_dsn, autocommit=True) as conn:
        sagas = await fetch(
            conn, "SELECT state->'input'->>'order_id', status FROM commandbus.saga ORDER BY 1"
        )
        assert sagas == [("A-1", "COMPLETED"), ("A-2", "COMPENSATED")]
        commands = await fetch(
            conn,
            "SELECT domain, command_type, status FROM commandbus.command"
            " ORDER BY created_at, domain, command_type",
        )
        assert sorted(commands) == sorted(
            [
                ("inventory", "ReserveStock", "COMPLETED"),
                ("payments", "ChargeCard", "COMPLETED"),
                ("shipping", "ShipOrder", "COMPLETED"),
                ("inventory", "ReserveStock", "COMPLETED"),
                ("payments", "ChargeCard", "FAILED"),
                ("inventory", "ReleaseStock", "COMPLETED"),
            ]
        )
        assert await scalar(conn, "SELECT reserved FROM saga_example.stock") == 2
        assert await fetch(conn, "SELECT order_id FROM saga_example.charges") == [("A-1",)]
        assert await fetch(conn, "SELECT order_id FROM saga_example.shipments") == [("A-1",)]
