"""Workers given the sagas (``Worker(..., sagas=registry)``) move them in the
transaction that records a step's outcome; what they cannot move goes to the
coordinator as the reply it would have been, and a failure undoes nothing but
the saga's part.

(Every test of test_sagas.py, test_sagas_operators.py, test_sagas_concurrency.py
and test_sagas_versions.py also runs this way: the ``saga_path`` fixture.)
"""

from __future__ import annotations

import logging
from typing import Any

import pytest

from commandbus import (
    Compensation,
    Config,
    HandlerRegistry,
    Saga,
    SagaRegistry,
    SagaStatus,
    Step,
    ValidationError,
    Worker,
)
from commandbus.sagas.decide import Decider
from saga_apps import (
    ORDER,
    assert_consistent,
    commands_of,
    coordinating,
    final,
    history,
    pending_messages,
    running,
    status_is,
)
from support import wait_for


def _order(ctx: Any) -> dict[str, Any]:
    return {"order_id": ctx.input["order_id"], "behaviour": ctx.input.get("behaviour", {})}


def _broken_builder(ctx: Any) -> dict[str, Any]:
    raise RuntimeError("this data builder is broken")


BROKEN = Saga(
    "broken",
    steps=[
        Step("reserve", domain="inventory", command="Reserve", data=_order),
        Step("charge", domain="payments", command="Charge", data=_broken_builder),
    ],
)


async def _reply_waits(h: Any, saga_id: Any) -> bool:
    return await pending_messages(h, saga_id) > 0


async def _step_completed(h: Any, saga_id: Any, step: str) -> bool:
    return ("SagaStepCompleted", step) in await history(h, saga_id)


async def test_workers_alone_run_a_saga_to_its_end(dsn: str) -> None:
    """No coordinator at all: every step's outcome moves the saga on at once."""
    async with running(dsn, ORDER, coordinators=0, inline=True) as h:
        started = await h.sagas.start_saga(ORDER, {"order_id": "w1"})
        rec = await final(h, started.saga_id)
        assert rec.status is SagaStatus.COMPLETED
        assert await pending_messages(h, started.saga_id) == 0  # no reply was ever queued
        assert [c[1:] for c in await commands_of(h, started.saga_id)] == [
            ("Reserve", "COMPLETED"),
            ("Charge", "COMPLETED"),
            ("Ship", "COMPLETED"),
        ]
        assert sum(w.stats.inline_replies for w in h.workers) == 3
        await assert_consistent(h)


async def test_workers_alone_compensate_in_reverse(dsn: str) -> None:
    async with running(dsn, ORDER, coordinators=0, inline=True) as h:
        started = await h.sagas.start_saga(
            ORDER, {"order_id": "w2", "behaviour": {"Ship": "business"}}
        )
        rec = await final(h, started.saga_id)
        assert rec.status is SagaStatus.COMPENSATED
        steps = [s for t, s in await history(h, started.saga_id) if t == "SagaStepCompensated"]
        assert steps == ["charge", "reserve"]
        await assert_consistent(h)


async def test_a_saga_the_worker_does_not_know_is_left_to_the_coordinator(dsn: str) -> None:
    """The workers are given another registry: the reply waits for a coordinator."""
    other = Saga("other", steps=[Step("s", domain="inventory", command="Reserve", data=_order)])
    async with running(dsn, other, ORDER, coordinators=0, inline=False) as h:
        # a worker of inventory that knows only "other", beside the harness's workers
        # (which are stopped first, so this one takes the command)
        for w in h.workers:
            await w.stop(1)
        handlers = h.workers[0].registry
        async with Worker(
            h.bus.url, handlers, domain="inventory", sagas=SagaRegistry([other])
        ) as w:
            started = await h.sagas.start_saga(ORDER, {"order_id": "w3"})
            await wait_for(lambda: _reply_waits(h, started.saga_id), timeout=10)
            # the worker counts once its transaction's COMMIT has returned, which
            # may be a moment after the reply shows
            await wait_for(lambda: w.stats.completed == 1, timeout=10)
            assert w.stats.inline_replies == 0
        assert not await _step_completed(h, started.saga_id, "reserve")


async def test_a_failing_data_builder_is_decided_in_the_worker(dsn: str) -> None:
    """The next step's data builder raises: the worker decides that like the
    coordinator would (the saga compensates what it did)."""
    async with running(dsn, BROKEN, coordinators=0, inline=True) as h:
        started = await h.sagas.start_saga(BROKEN, {"order_id": "w4"})
        rec = await final(h, started.saga_id)
        assert rec.status is SagaStatus.COMPENSATED
        assert rec.last_error is not None and rec.last_error["code"] == "DATA_BUILDER_FAILED"
        assert await pending_messages(h, started.saga_id) == 0


async def test_a_deciding_error_leaves_the_reply_to_the_coordinator(
    dsn: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug while deciding (simulated: the decider raises on any reply): the outcome
    is recorded, the saga does not move, its reply waits for the coordinator."""

    def broken(self: Decider, msg_id: int | None, body: Any) -> None:
        raise RuntimeError("a bug in deciding")

    async with running(dsn, ORDER, coordinators=0, inline=True) as h:
        monkeypatch.setattr(Decider, "reply", broken)
        started = await h.sagas.start_saga(ORDER, {"order_id": "w4b"})
        await wait_for(lambda: _reply_waits(h, started.saga_id), timeout=10)
        assert [c[1:] for c in await commands_of(h, started.saga_id)] == [("Reserve", "COMPLETED")]
        assert not await _step_completed(h, started.saga_id, "reserve")
        assert sum(w.stats.inline_replies for w in h.workers) == 0
        monkeypatch.undo()
        async with coordinating(h.bus.url, ORDER):
            rec = await final(h, started.saga_id)
        assert rec.status is SagaStatus.COMPLETED
    assert "deciding failed; its replies go to the coordinator" in caplog.text


async def test_a_failing_saga_write_undoes_only_the_sagas_part(
    dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The database refuses the saga's writes (a trigger raises) inside the outcome's
    transaction: it rolls back, the outcome is recorded again with its reply, and
    once the writes are allowed the coordinator moves the saga."""
    caplog.set_level(logging.WARNING, "commandbus.worker")
    async with running(dsn, ORDER, coordinators=0, inline=True) as h:
        async with h.bus.pool.connection() as c:
            await c.execute(
                "CREATE FUNCTION public.refuse_saga() RETURNS trigger LANGUAGE plpgsql AS"
                " $$ BEGIN RAISE EXCEPTION 'saga writes refused for this test'; END $$"
            )
            await c.execute(
                "CREATE TRIGGER refuse BEFORE UPDATE ON commandbus.saga"
                " FOR EACH ROW EXECUTE FUNCTION public.refuse_saga()"
            )
        started = await h.sagas.start_saga(ORDER, {"order_id": "w5"})
        await wait_for(lambda: _reply_waits(h, started.saga_id), timeout=10)
        assert [c[1:] for c in await commands_of(h, started.saga_id)] == [("Reserve", "COMPLETED")]
        assert not await _step_completed(h, started.saga_id, "reserve")
        assert "could not be acted on with their outcomes" in caplog.text
        assert "saga writes refused for this test" in caplog.text
        async with h.bus.pool.connection() as c:
            await c.execute("DROP TRIGGER refuse ON commandbus.saga")
            await c.execute("DROP FUNCTION public.refuse_saga()")
        async with coordinating(h.bus.url, ORDER):
            rec = await final(h, started.saga_id)
        assert rec.status is SagaStatus.COMPLETED
        await assert_consistent(h)


async def test_a_saga_moved_behind_the_workers_back_is_decided_again(
    dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A worker keeps the state of each saga it moved; a pause carried out meanwhile
    by the coordinator makes that state stale. The next step's outcome, the saga's
    transition and next command, sent together, are undone by the saga's version
    check (``commandbus.all_applied``), and the group is recorded again statement by
    statement with the saga read afresh: the step is completed, the saga stays
    paused and nothing is sent twice."""
    caplog.set_level(logging.INFO, "commandbus.worker")
    async with running(dsn, ORDER, coordinators=0, inline=True) as h:
        started = await h.sagas.start_saga(
            ORDER, {"order_id": "w9", "behaviour": {"Charge": "gate"}}
        )
        sid = started.saga_id
        await wait_for(lambda: _step_completed(h, sid, "reserve"), timeout=10)
        async with coordinating(h.bus.url, ORDER):  # the charge waits in its handler
            await h.sagas.pause_saga(sid, reason="stale state test")
            await status_is(h, sid, SagaStatus.PAUSED)
        assert "could not be recorded at once" not in caplog.text
        h.journal.gate("w9").set()
        await wait_for(lambda: _step_completed(h, sid, "charge"), timeout=10)
        assert "a group could not be recorded at once" in caplog.text
        assert "saga transitions applied; the group is undone" in caplog.text
        assert sum(w.stats.inline_replies for w in h.workers) == 2
        rec = await h.sagas.get_saga(sid)
        assert rec is not None and rec.status is SagaStatus.PAUSED
        assert [c[1:] for c in await commands_of(h, sid)] == [
            ("Reserve", "COMPLETED"),
            ("Charge", "COMPLETED"),
        ]
        async with coordinating(h.bus.url, ORDER):
            await h.sagas.resume_saga(sid)
            rec = await final(h, sid)
        assert rec.status is SagaStatus.COMPLETED
        assert [c[1:] for c in await commands_of(h, sid)] == [
            ("Reserve", "COMPLETED"),
            ("Charge", "COMPLETED"),
            ("Ship", "COMPLETED"),
        ]
        await assert_consistent(h)


@pytest.mark.parametrize("bad", ["order", 3, object(), HandlerRegistry()])
def test_sagas_must_be_a_saga_registry(bad: Any) -> None:
    with pytest.raises(ValidationError, match="sagas must be a SagaRegistry"):
        Worker("postgresql://x", HandlerRegistry(), domain="d", sagas=bad)


def test_the_registry_gives_workers_its_own_definitions() -> None:
    """What a worker given the registry uses decides with that very registry."""
    saga = Saga(
        "s",
        steps=[
            Step(
                "a",
                domain="inventory",
                command="Reserve",
                compensation=Compensation("Release"),
            )
        ],
    )
    registry = SagaRegistry([saga])
    config = Config()
    inline = registry.inline_replies(config)
    assert inline.queue == "commandbus_sagas" and inline.registry is registry
    # the workers of a process share it (and the states it keeps), per config
    assert registry.inline_replies(config) is inline
    assert registry.inline_replies(Config()) is not inline
    assert SagaRegistry([saga]).inline_replies(config) is not inline
