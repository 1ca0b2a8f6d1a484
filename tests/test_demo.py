"""``commandbus demo``: the order saga tour says what happened, and runs again."""

from __future__ import annotations

import re
import time

import pytest

from support import run_cli

pytestmark = pytest.mark.slow


def _demo(dsn: str) -> tuple[str, float]:
    started = time.monotonic()
    proc = run_cli("demo", env={"DATABASE_URL": dsn})
    out, err = proc.communicate(timeout=90)
    assert proc.returncode == 0, (out, err)
    assert err == "", err
    return out, time.monotonic() - started


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


def test_demo_tells_what_happened_to_each_order(dsn: str) -> None:
    out, took = _demo(dsn)
    assert "\x1b[" not in out  # not a terminal: no colours
    assert out.startswith("schema: up to date\n")
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

    # the same database again: a second run sees only its own orders
    again, _ = _demo(dsn)
    assert "sagas by status:    COMPENSATED 2, COMPLETED 2\n" in again
    assert re.search(r"projection check: \d+ commands and 8 sagas, equal to a replay", again)
