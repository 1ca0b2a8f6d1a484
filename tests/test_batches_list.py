"""The batch list (monitoring.list_batches and the dashboard's /batches)."""

from __future__ import annotations

import re
from typing import Any

import pytest

from commandbus import CommandBus, CommandRequest, ValidationError
from commandbus.monitoring import list_batches
from commandbus.monitoring import sql as q
from test_web import client


async def _batches(bus: CommandBus, n: int) -> list[Any]:
    """``n`` batches of i + 1 commands each, sent one after another (oldest first)."""
    ids = []
    for i in range(n):
        requests = [
            CommandRequest(domain="payments", command_type="Charge", data={"i": k})
            for k in range(i + 1)
        ]
        ids.append((await bus.send_batch(requests, name=f"b{i}")).unwrap().batch_id)
    return ids


async def test_batches_are_listed_newest_first_page_by_page(bus: CommandBus) -> None:
    ids = await _batches(bus, 5)
    seen, cursor, pages = [], None, 0
    while True:
        page = await list_batches(bus, limit=2, cursor=cursor)
        pages += 1
        seen.extend(page.items)
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert pages == 3
    assert [b.batch_id for b in seen] == list(reversed(ids))
    assert [(b.name, b.total, b.counts) for b in seen] == [
        (f"b{i}", i + 1, {"PENDING": i + 1}) for i in reversed(range(5))
    ]


async def test_an_empty_list_has_no_next_page(bus: CommandBus) -> None:
    page = await list_batches(bus)
    assert page.items == () and page.next_cursor is None


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": 501}, "limit"),
        ({"limit": "5"}, "limit"),
        ({"cursor": "not a cursor"}, "cursor"),
        ({"cursor": 5}, "cursor"),
    ],
)
async def test_bad_arguments_are_refused(bus: CommandBus, kw: dict[str, Any], match: str) -> None:
    with pytest.raises(ValidationError, match=match):
        await list_batches(bus, **kw)


async def test_a_cursor_of_another_list_is_refused(bus: CommandBus) -> None:
    await bus.send_batch([CommandRequest(domain="payments", command_type="Charge")] * 1)
    await bus.send("payments", "Charge", {})
    await bus.send("payments", "Charge", {})
    commands = await bus.list_commands(limit=1)
    assert commands.next_cursor is not None
    with pytest.raises(ValidationError, match="cursor"):
        await list_batches(bus, cursor=commands.next_cursor)


async def test_a_page_is_one_range_scan_of_the_batch_index(bus: CommandBus) -> None:
    async with bus.pool.connection() as c, c.transaction():
        await c.execute("SET LOCAL enable_seqscan = off")
        cur = await c.execute(
            "EXPLAIN " + q.LIST_BATCHES,
            {"after_ts": None, "after_id": None, "limit": 51},
            prepare=False,
        )
        plan = "\n".join(str(r[0]) for r in await cur.fetchall())
    assert "batch_created_idx" in plan, plan


async def test_the_dashboard_lists_the_batches(bus: CommandBus) -> None:
    ids = await _batches(bus, 3)
    async with client(bus) as c:
        page = await c.get("/batches")
        assert page.status_code == 200
        rows = re.findall(r'data-testid="batch-row" data-id="([0-9a-f-]+)"', page.text)
        assert rows == [str(i) for i in reversed(ids)]
        assert 'href="/batches"' in page.text  # in the navigation
        bad = await c.get("/batches?cursor=garbage")
        assert bad.status_code == 400
