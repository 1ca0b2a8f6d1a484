"""The dashboard's saga page: the cancel preview equals the compensations that then
run (a real coordinator and workers), shown in the order they ran."""

from __future__ import annotations

import re

import httpx

from commandbus import CommandStatus, SagaRegistry, SagaStatus
from commandbus.web import create_app
from saga_apps import final, running, status_is
from support import wait_for
from test_sagas_operators import PLAIN, command_of

CSRF = re.compile(r'name="csrf_token" value="([0-9a-f]+)"')


async def test_cancel_preview_equals_the_compensations_that_run(dsn: str) -> None:
    async with running(dsn, PLAIN) as h:
        started = await h.sagas.start_saga(
            PLAIN, {"order_id": "w1", "behaviour": {"Ship": "permanent"}}
        )
        sid = started.saga_id
        await status_is(h, sid, SagaStatus.WAITING_ON_OPERATOR, idle=True)
        app = create_app(
            h.bus, local_user="ops", sagas=SagaRegistry([PLAIN]), jaeger_url="http://j"
        )
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            page = await c.get(f"/sagas/{sid}")
            assert page.status_code == 200
            assert 'data-testid="saga-status"' in page.text and "WAITING_ON_OPERATOR" in page.text
            steps = re.findall(r'data-testid="step" data-step="(\w+)"', page.text)
            assert steps == ["reserve", "charge", "ship"]
            preview = re.findall(r'data-testid="preview-compensation" data-step="(\w+)"', page.text)
            assert preview == ["charge", "reserve"]
            token = CSRF.search(page.text)
            assert token is not None
            r = await c.post(
                f"/sagas/{sid}/cancel", data={"csrf_token": token.group(1), "reason": "fraud"}
            )
            assert r.status_code == 303
            rec = await final(h, sid)
            assert rec.status is SagaStatus.COMPENSATED
            done = await c.get(f"/sagas/{sid}")
            trace = await c.get(f"/trace/{rec.correlation_id}")
        ran = re.findall(r'data-testid="compensation" data-step="(\w+)"', done.text)
        assert ran == preview
        assert [t for t in h.journal.of("w1") if t in ("Refund", "Release")] == [
            "Refund",
            "Release",
        ]
        history = await h.sagas.saga_history(sid)
        cancel = next(e for e in history if e.event_type == "SagaCancelRequested")
        assert (cancel.data["operator"], cancel.data["reason"], cancel.data["source"]) == (
            "ops",
            "fraud",
            "web",
        )
        assert 'data-testid="cancel-saga"' not in done.text  # ended: nothing to cancel
        assert trace.status_code == 200 and "Refund" in trace.text


async def test_a_failed_compensation_is_marked_compensated_from_its_page(dsn: str) -> None:
    async with running(dsn, PLAIN) as h:
        started = await h.sagas.start_saga(
            PLAIN, {"order_id": "w2", "behaviour": {"Ship": "business", "Refund": "business"}}
        )
        sid = started.saga_id
        await status_is(h, sid, SagaStatus.COMPENSATION_FAILED, idle=True)
        app = create_app(h.bus, local_user="ops", sagas=SagaRegistry([PLAIN]))
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            page = await c.get(f"/sagas/{sid}")
            # the refund failed a business rule: nothing waits in the TSQ, the page
            # offers to mark it compensated (for that step only)
            assert 'data-testid="comp-tsq-link"' not in page.text
            assert page.text.count('data-testid="mark-compensated"') == 1
            assert '<input type="hidden" name="step" value="charge">' in page.text
            token = CSRF.search(page.text)
            assert token is not None
            wrong = await c.post(
                f"/sagas/{sid}/mark-compensated",
                data={"csrf_token": token.group(1), "step": "reserve"},
            )
            assert wrong.status_code == 303
            refused = await c.get(f"/sagas/{sid}")
            assert "refused: step &#39;reserve&#39;" in refused.text, refused.text
            r = await c.post(
                f"/sagas/{sid}/mark-compensated",
                data={"csrf_token": token.group(1), "step": "charge", "reason": "refunded by hand"},
            )
            assert r.status_code == 303
            rec = await final(h, sid)
            done = await c.get(f"/sagas/{sid}")
        assert rec.status is SagaStatus.COMPENSATED
        assert 'data-testid="mark-compensated"' not in done.text
        assert "undone by an operator" in done.text
        history = await h.sagas.saga_history(sid)
    by_hand = next(
        e for e in history if e.event_type == "SagaStepCompensated" and e.data.get("by_operator")
    )
    assert (by_hand.data["operator"], by_hand.data["reason"], by_hand.data["source"]) == (
        "ops",
        "refunded by hand",
        "web",
    )
    assert h.journal.of("w2")[-1] == "Release"


async def test_the_saga_page_follows_the_compensation_command_s_own_status(dsn: str) -> None:
    async with running(dsn, PLAIN) as h:
        started = await h.sagas.start_saga(
            PLAIN,
            {"order_id": "w3", "behaviour": {"Ship": "business", "Refund": "tsq_then_business"}},
        )
        sid = started.saga_id
        await status_is(h, sid, SagaStatus.COMPENSATION_FAILED, idle=True)
        app = create_app(h.bus, local_user="ops", sagas=SagaRegistry([PLAIN]))
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            in_tsq = await c.get(f"/sagas/{sid}")
            domain, refund = await command_of(h, sid, "Refund")
            await h.bus.troubleshooting.retry(domain, refund)

            async def failed_again() -> bool:
                rec = await h.bus.get_command(domain, refund)
                return rec is not None and rec.status is CommandStatus.FAILED

            await wait_for(failed_again, timeout=10)
            failed = await c.get(f"/sagas/{sid}")
    # in the TSQ: the link to it, and the button (which cancels it there too)
    assert 'data-testid="comp-tsq-link"' in in_tsq.text
    assert 'data-testid="mark-compensated"' in in_tsq.text
    # its retry failed a business rule: no TSQ entry any more, only the button
    assert 'data-testid="comp-tsq-link"' not in failed.text
    assert "TSQ entry" not in failed.text
    assert 'data-testid="mark-compensated"' in failed.text


async def test_a_saga_being_cancelled_offers_no_second_cancel(dsn: str) -> None:
    async with running(dsn, PLAIN) as h:
        started = await h.sagas.start_saga(
            PLAIN, {"order_id": "w4", "behaviour": {"Reserve": "gate"}}
        )
        sid = started.saga_id
        await wait_for(lambda: "Reserve" in h.journal.of("w4"))
        app = create_app(h.bus, local_user="ops", sagas=SagaRegistry([PLAIN]))
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            before = await c.get(f"/sagas/{sid}")
            await h.sagas.cancel_saga(sid)
            await status_is(h, sid, SagaStatus.COMPENSATING, idle=True)
            during = await c.get(f"/sagas/{sid}")
            h.journal.gate("w4").set()
            await final(h, sid)
    assert 'data-testid="cancel-saga"' in before.text
    assert 'data-testid="cancel-saga"' not in during.text  # it would be refused
    assert 'data-testid="pause-saga"' in during.text  # the rest stays
