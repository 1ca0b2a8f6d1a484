"""send_batch in parts: the character budget of a part (the limit lowered)."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from commandbus import CommandBus, CommandRequest
from commandbus.engine.commands import outgoing

Conn = psycopg.AsyncConnection[Any]


async def test_budget_multibyte_and_oversized(
    bus: CommandBus, conn: Conn, monkeypatch: pytest.MonkeyPatch
) -> None:
    from commandbus import codec

    await bus.send("payments", "Charge", {})
    monkeypatch.setattr(codec, "MAX_STATEMENT_JSON_BYTES", 40_000)
    sizes: list[int] = []
    orig = outgoing.BatchParts._parts

    def spy(self: Any) -> Any:
        for part in orig(self):
            sizes.append(sum(len(o.message) + len(o.headers) + len(o.metadata) for o in part))
            yield part

    monkeypatch.setattr(outgoing.BatchParts, "_parts", spy)
    reqs = [
        CommandRequest(
            domain="payments", command_type="C", data={"i": i, "s": "\U0001f600" * (i % 7) * 300}
        )
        for i in range(60)
    ]
    reqs[30] = CommandRequest(
        domain="payments", command_type="C", data={"i": 30, "s": "y" * 15_000}
    )
    r = await bus.send_batch(reqs)
    assert r.ok, r
    assert all(s <= 10_000 or s == max(sizes) for s in sizes)
    cur = await conn.execute(
        "SELECT (message->'data'->>'i')::int FROM pgmq.q_payments"
        " WHERE msg_id = ANY(%s) ORDER BY msg_id",
        (list(r.value.msg_ids),),
    )
    assert [x[0] for x in await cur.fetchall()] == list(range(60))
    # bytes per part stay under the (lowered) statement limit
    enc = [len(q.data["s"].encode()) for q in reqs]
    assert max(enc) < 40_000
