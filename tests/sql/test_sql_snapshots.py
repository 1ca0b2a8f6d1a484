"""Snapshots of the multi-queue statements, rendered against a real connection.

The statements that record outcomes and send batches are composed per set of
queues (one CTE group per domain queue and per reply queue), so what runs is only
visible once rendered. Each case below is compared with its expected text in
``tests/sql/snapshots/<case>.sql``; a difference fails the test and prints a
unified diff.

After an intended change to the SQL, regenerate the snapshots and review them
like code::

    UPDATE_SQL_SNAPSHOTS=1 pytest -q tests/sql
    git diff tests/sql/snapshots
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from commandbus.engine.commands import recording
from commandbus.engine.commands import store as command_store

SNAPSHOTS = Path(__file__).parent / "snapshots"
UPDATE = os.environ.get("UPDATE_SQL_SNAPSHOTS") == "1"

CASES: dict[str, Callable[[], sql.Composed]] = {
    # recording outcomes (record_transitions)
    "record_1_domain": lambda: recording.transition_statement(("payments",), ()),
    "record_2_domains_and_a_reply_queue": lambda: recording.transition_statement(
        ("payments", "shipments"), ("replies",)
    ),
    # send_batch (send_many)
    "send_batch_1_domain": lambda: command_store.send_batch_statement(("payments",)),
    "send_batch_2_domains": lambda: command_store.send_batch_statement(("payments", "shipments")),
    # ... then the batch itself, after its commands
    "create_batch": command_store.create_batch_statement,
    # send_commands (commands of several domains, no batch)
    "send_commands_2_domains": lambda: command_store.send_commands_statement(
        ("payments", "shipments")
    ),
    # a worker moving sagas in one round trip: each statement applies in full or
    # undoes the whole script (commandbus.all_applied)
    "record_all_applied_1_domain": lambda: recording.transition_statement(
        ("payments",), (), all_applied=True
    ),
    "send_commands_all_applied_2_domains": lambda: command_store.send_commands_statement(
        ("payments", "shipments"), all_applied=True
    ),
    # a saga's next commands, those of one domain claimed for a consumer of this process
    "send_commands_claiming_1_of_2_domains": lambda: command_store.send_commands_statement(
        ("payments", "shipments"), all_applied=True, claimed=("shipments",)
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
async def test_rendered_statement_matches_its_snapshot(
    case: str, conn: psycopg.AsyncConnection[Any]
) -> None:
    rendered = CASES[case]().as_string(conn).strip() + "\n"
    path = SNAPSHOTS / f"{case}.sql"
    if UPDATE:
        SNAPSHOTS.mkdir(exist_ok=True)
        path.write_text(rendered)
        print(f"wrote {path}")
        return
    assert path.exists(), f"no snapshot {path}: run with UPDATE_SQL_SNAPSHOTS=1 to write it"
    expected = path.read_text()
    if rendered != expected:
        diff = "".join(
            difflib.unified_diff(
                expected.splitlines(keepends=True),
                rendered.splitlines(keepends=True),
                fromfile=f"{path.name} (snapshot)",
                tofile=f"{path.name} (rendered now)",
            )
        )
        print(diff)
        pytest.fail(
            f"{case}: the rendered statement differs from {path} (diff above; if the "
            "change is intended, regenerate with UPDATE_SQL_SNAPSHOTS=1 and review it)",
            pytrace=False,
        )


def test_every_snapshot_has_a_case() -> None:
    """A stale snapshot (a case renamed or removed) is not left behind."""
    assert {p.stem for p in SNAPSHOTS.glob("*.sql")} == set(CASES)
