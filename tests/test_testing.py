"""commandbus.testing: a user's saga in a throwaway database, with time moved forward."""

from __future__ import annotations

from collections.abc import Awaitable
from datetime import timedelta
from typing import Any

import psycopg
import pytest

from commandbus import Config, SagaStatus, TransientCommandError, ValidationError
from commandbus.testing import Testbed
from saga_apps import ORDER, Journal, build_handlers
from support import wait_for


async def _is(value: Awaitable[str], expected: str) -> bool:
    return await value == expected


async def test_testbed_runs_a_saga_and_advances_time_past_a_timeout(server_url: str) -> None:
    journal = Journal()
    async with Testbed(build_handlers(journal), [ORDER], url=server_url) as tb:
        dbname = psycopg.conninfo.conninfo_to_dict(tb.url)["dbname"]
        ok = await tb.sagas.start_saga(ORDER, {"order_id": "t1"})
        assert (await tb.wait_for_saga(ok.saga_id)).status is SagaStatus.COMPLETED
        hung = await tb.sagas.start_saga(ORDER, {"order_id": "t2", "behaviour": {"Charge": "hang"}})
        await wait_for(lambda: "Charge" in journal.of("t2"), timeout=5)
        # the charge step's timer (2 s) fires at once when time moves on
        await tb.advance(timedelta(seconds=2))
        rec = await tb.wait_for_saga(hung.saga_id, timeout=1.5)
        assert rec.status is SagaStatus.COMPENSATED
    async with await psycopg.AsyncConnection.connect(server_url, autocommit=True) as c:
        cur = await c.execute("SELECT count(*) FROM pg_database WHERE datname = %s", (dbname,))
        assert (await cur.fetchone()) == (0,)  # the database is gone


async def test_advance_brings_a_scheduled_retry_forward(server_url: str) -> None:
    journal = Journal()
    handlers = build_handlers(journal)
    tries: list[int] = []

    async def flaky(cmd: Any, ctx: Any) -> Any:
        tries.append(ctx.attempt)
        if ctx.attempt == 1:
            raise TransientCommandError("busy")
        return {"ok": True}

    handlers.register("billing", "Flaky", flaky)
    slow_backoff = Config(backoff_base=timedelta(minutes=10), backoff_max=timedelta(hours=1))
    async with Testbed(handlers, url=server_url, config=slow_backoff) as tb:
        sent = (await tb.bus.send("billing", "Flaky", {})).unwrap()

        async def status() -> str:
            rec = await tb.bus.get_command("billing", sent.command_id)
            assert rec is not None
            return rec.status.value

        await wait_for(lambda: _is(status(), "RETRY_SCHEDULED"), timeout=5)
        await tb.advance(timedelta(minutes=10))
        await wait_for(lambda: _is(status(), "COMPLETED"), timeout=3)
    assert tries == [1, 2]


async def test_testbed_refuses_a_bad_registry() -> None:
    with pytest.raises(ValidationError, match="HandlerRegistry"):
        Testbed(object())  # type: ignore[arg-type]
