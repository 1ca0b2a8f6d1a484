"""send_batch in parts: batches across domains keep ids and msg ids in the caller order."""

from __future__ import annotations

import logging
from typing import Any
from uuid import UUID, uuid4

import psycopg
import pytest
from psycopg import sql

from commandbus import CommandBus, CommandRequest
from commandbus.ids import new_id
from support import psycopg_warnings

Conn = psycopg.AsyncConnection[Any]
DOMAINS = ["payments", "shipping", "alpha"]


@pytest.mark.parametrize("n", [1, 199, 200, 201, 601, 1000, 2503])
@pytest.mark.parametrize("explicit", [True, False])
async def test_multi_domain_order(
    bus: CommandBus, conn: Conn, n: int, explicit: bool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    await bus.send("payments", "Charge", {})  # one domain known, others new
    batch = [
        CommandRequest(
            domain=DOMAINS[(i * 7) % 3],
            command_type=f"T{i % 5}",
            data={"i": i},
            command_id=uuid4() if explicit and i % 2 else None,
            reply_to=[None, "replies_a", "replies_b"][i % 3],
            delay=[None, 0, 5][i % 3],
        )
        for i in range(n)
    ]
    r = (await bus.send_batch(batch, name="multi")).unwrap()
    assert len(r.command_ids) == len(r.msg_ids) == n
    if explicit:
        for i, req in enumerate(batch):
            if req.command_id is not None:
                assert r.command_ids[i] == req.command_id
    assert all(m > 0 for m in r.msg_ids)
    for d in DOMAINS:
        if not any(q.domain == d for q in batch):
            continue
        cur = await conn.execute(
            sql.SQL("SELECT msg_id, message FROM pgmq.{}").format(sql.Identifier(f"q_{d}"))
        )
        by_msg = {m: msg for m, msg in await cur.fetchall()}
        for i, req in enumerate(batch):
            if req.domain != d:
                continue
            msg = by_msg[r.msg_ids[i]]
            assert msg["command_id"] == str(r.command_ids[i]), i
            assert msg["data"] == {"i": i}
            assert msg.get("reply_to") == req.reply_to
    # status rows carry the same msg id, batch and reply queue
    cur = await conn.execute(
        "SELECT domain, command_id, msg_id, reply_to, batch_id FROM commandbus.command"
        " WHERE batch_id = %s",
        (r.batch_id,),
    )
    rows = {(d, c): (m, rt, b) for d, c, m, rt, b in await cur.fetchall()}
    assert len(rows) == n
    for i, req in enumerate(batch):
        m, rt, b = rows[(req.domain, r.command_ids[i])]
        assert m == r.msg_ids[i] and rt == req.reply_to and b == r.batch_id
    got = await bus.get_batch(r.batch_id)
    assert got is not None and got.total == n
    # ids the library made are v7 and in creation order
    made = [r.command_ids[i] for i, q in enumerate(batch) if q.command_id is None]
    assert all(c.version == 7 for c in made)
    assert made == sorted(made)
    assert r.batch_id.version == 7
    assert psycopg_warnings(caplog) == []
    report = await bus.verify_projection()
    assert not report.differences


def test_new_id_is_stdlib_uuid_v7() -> None:
    ids = [new_id() for _ in range(10000)]
    assert all(
        type(i) is UUID and i.version == 7 and i.variant == "specified in RFC 4122" for i in ids
    )
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
