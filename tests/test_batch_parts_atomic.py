"""send_batch in parts: all-or-nothing across parts, bad arguments at any index."""

from __future__ import annotations

import logging
from typing import Any
from uuid import uuid4

import psycopg
import pytest

from commandbus import CommandBus, CommandRequest, Failure, ValidationError
from support import psycopg_warnings, table_counts

Conn = psycopg.AsyncConnection[Any]
N = 1000


def reqs(n: int = N, domain: str = "payments", **kw: Any) -> list[CommandRequest]:
    return [
        CommandRequest(domain=domain, command_type="Charge", data={"i": i}, **kw) for i in range(n)
    ]


@pytest.fixture(autouse=True)
def _logs(caplog: pytest.LogCaptureFixture) -> Any:
    caplog.set_level(logging.DEBUG)
    yield
    assert psycopg_warnings(caplog) == []


@pytest.mark.parametrize("where", [0, 150, 199, 200, 201, 600, 999])
async def test_existing_id_anywhere_writes_nothing(bus: CommandBus, conn: Conn, where: int) -> None:
    existing = (await bus.send("payments", "Charge", {})).unwrap().command_id
    before = await table_counts(conn)
    batch = reqs()
    batch[where] = CommandRequest(domain="payments", command_type="Charge", command_id=existing)
    r = await bus.send_batch(batch)
    assert isinstance(r, Failure), r
    assert r.code == "DUPLICATE_COMMAND"
    assert r.details["command_ids"] == [str(existing)]
    assert str(existing) in r.message
    assert await table_counts(conn) == before
    again = await bus.send_batch(reqs())
    assert again.ok


async def test_several_existing_ids_in_several_parts_all_listed(
    bus: CommandBus, conn: Conn
) -> None:
    ids = [(await bus.send("payments", "Charge", {})).unwrap().command_id for _ in range(4)]
    before = await table_counts(conn)
    batch = reqs()
    positions = [3, 399, 400, 998]
    for p, cid in zip(positions, ids, strict=True):
        batch[p] = CommandRequest(domain="payments", command_type="Charge", command_id=cid)
    r = await bus.send_batch(batch)
    assert isinstance(r, Failure)
    assert r.details["command_ids"] == [str(c) for c in ids]
    assert await table_counts(conn) == before


@pytest.mark.parametrize("first,second", [(0, 1), (0, 999), (150, 850), (998, 999), (199, 200)])
async def test_repeated_id_within_batch(
    bus: CommandBus, conn: Conn, first: int, second: int
) -> None:
    await bus.send("payments", "Charge", {})  # queue exists
    before = await table_counts(conn)
    twice = uuid4()
    batch = reqs()
    batch[first] = CommandRequest(domain="payments", command_type="Charge", command_id=twice)
    batch[second] = CommandRequest(domain="payments", command_type="Charge", command_id=str(twice))
    r = await bus.send_batch(batch)
    assert isinstance(r, Failure)
    assert r.details["command_ids"] == [str(twice)]
    assert await table_counts(conn) == before


async def test_repeated_id_new_domain_creates_no_queue(bus: CommandBus, conn: Conn) -> None:
    before = await table_counts(conn)
    twice = uuid4()
    batch = reqs(domain="newdom")
    batch[10] = CommandRequest(domain="newdom", command_type="Charge", command_id=twice)
    batch[900] = CommandRequest(domain="newdom", command_type="Charge", command_id=twice)
    r = await bus.send_batch(batch)
    assert isinstance(r, Failure)
    after = await table_counts(conn)
    assert after == before, {k: (before.get(k), v) for k, v in after.items() if before.get(k) != v}


async def test_existing_batch_id(bus: CommandBus, conn: Conn) -> None:
    bid = uuid4()
    assert (await bus.send_batch(reqs(3), batch_id=bid)).ok
    before = await table_counts(conn)
    r = await bus.send_batch(reqs(), batch_id=bid)
    assert isinstance(r, Failure)
    assert r.code == "DUPLICATE_COMMAND"
    assert str(bid) in r.message and r.details["batch_id"] == str(bid)
    assert r.details["command_ids"] == []
    assert await table_counts(conn) == before


async def test_same_id_in_two_domains_is_fine(bus: CommandBus, conn: Conn) -> None:
    cid = uuid4()
    batch = reqs(500) + reqs(500, domain="shipping")
    batch[10] = CommandRequest(domain="payments", command_type="Charge", command_id=cid)
    batch[990] = CommandRequest(domain="shipping", command_type="Charge", command_id=cid)
    r = await bus.send_batch(batch)
    assert r.ok, r


BAD = {
    "type": lambda i: {"x": 1},  # not a CommandRequest
    "domain": lambda i: CommandRequest(domain="Bad Domain!", command_type="Charge"),
    "ctype": lambda i: CommandRequest(domain="payments", command_type=""),
    "data": lambda i: CommandRequest(domain="payments", command_type="Charge", data=[1, 2]),  # type: ignore[arg-type]
    "data_unserializable": lambda i: CommandRequest(
        domain="payments", command_type="Charge", data={"x": object()}
    ),
    "attempts": lambda i: CommandRequest(domain="payments", command_type="Charge", max_attempts=0),
    "cid": lambda i: CommandRequest(domain="payments", command_type="Charge", command_id="nope"),
    "reply": lambda i: CommandRequest(domain="payments", command_type="Charge", reply_to="BAD Q"),
    "delay": lambda i: CommandRequest(domain="payments", command_type="Charge", delay=-5),
}


@pytest.mark.parametrize("known", [True, False], ids=["queue_exists", "new_queue"])
@pytest.mark.parametrize("where", [0, 450, 999])
@pytest.mark.parametrize("kind", sorted(BAD))
async def test_bad_argument_at_index(
    dsn: str, conn: Conn, where: int, kind: str, known: bool
) -> None:
    domain = "payments" if known else "fresh"
    async with CommandBus(dsn, min_connections=1, max_connections=1) as bus:
        if known:
            await bus.send("payments", "Charge", {})
        before = await table_counts(conn)
        batch: list[Any] = reqs(domain=domain)
        batch[where] = BAD[kind](where)
        if not known and kind != "type":
            batch[where] = _with_domain(batch[where], domain)
        with pytest.raises(ValidationError) as info:
            await bus.send_batch(batch)
        assert f"commands[{where}]" in str(info.value), str(info.value)
        after = await table_counts(conn)
        assert after == before, {
            k: (before.get(k), v) for k, v in after.items() if before.get(k) != v
        }
        # the single pooled connection still works
        assert (await bus.send_batch(reqs(domain="payments"))).ok
        assert (await bus.send("payments", "Charge", {})).ok


def _with_domain(r: CommandRequest, domain: str) -> CommandRequest:
    import attrs

    if r.domain != "payments":
        return r
    return attrs.evolve(r, domain=domain)
