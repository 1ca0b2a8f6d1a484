"""The dashboard (commandbus.web) against a real database: pages show what the
database holds, search, paging, TSQ actions audited, bulk actions on exactly the
confirmed set, read-only, CSRF and Sec-Fetch-Site, logins, bad ids and arguments."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any
from uuid import UUID, uuid4

import httpx
import pytest

from commandbus import (
    Command,
    CommandBus,
    CommandRequest,
    CommandStatus,
    HandlerContext,
    HandlerRegistry,
    PermanentCommandError,
    ValidationError,
    Worker,
)
from commandbus.web import Auth, create_app
from support import FAST, wait_for

CSRF = re.compile(r'name="csrf_token" value="([0-9a-f]+)"')


@asynccontextmanager
async def client(bus: CommandBus, **kw: Any) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(bus, local_user="tester", **kw)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        yield c


def registry() -> HandlerRegistry:
    reg = HandlerRegistry()

    @reg.handler("payments", "Charge")
    async def charge(cmd: Command, ctx: HandlerContext) -> Any:
        if cmd.data.get("fail"):
            raise PermanentCommandError("card network down", code="NETWORK")
        return {"charged": cmd.data.get("amount", 0)}

    return reg


async def tsq_commands(bus: CommandBus, dsn: str, fails: int, ok: int = 0) -> list[UUID]:
    """``fails`` commands in the TSQ (and ``ok`` completed); returns the TSQ ids."""
    ids, sent_ids = [], []
    for i in range(fails + ok):
        sent = await bus.send("payments", "Charge", {"fail": i < fails, "amount": i})
        sent_ids.append(sent.unwrap().command_id)
        if i < fails:
            ids.append(sent.unwrap().command_id)
    settled = {CommandStatus.IN_TROUBLESHOOTING_QUEUE, CommandStatus.COMPLETED}
    async with Worker(dsn, registry(), domain="payments", config=FAST):

        async def done() -> bool:
            # these commands themselves (others may already wait in the TSQ)
            records = [await bus.get_command("payments", cid) for cid in sent_ids]
            return all(r is not None and r.status in settled for r in records)

        await wait_for(done, timeout=20)
    return ids


async def csrf(c: httpx.AsyncClient, url: str) -> str:
    page = await c.get(url)
    found = CSRF.search(page.text)
    assert found, page.text[:500]
    return found.group(1)


async def test_overview_shows_the_counts_the_database_holds(bus: CommandBus, dsn: str) -> None:
    await tsq_commands(bus, dsn, fails=2, ok=3)
    async with client(bus) as c:
        page = await c.get("/")
        live = await c.get("/overview/live")
    assert page.status_code == 200 and live.status_code == 200
    text = page.text
    assert 'data-testid="count-COMPLETED">3<' in text
    assert 'data-testid="count-IN_TROUBLESHOOTING_QUEUE">2<' in text
    assert 'data-testid="tsq-count">2<' in text
    assert 'data-testid="queue-depth-payments">0<' in text
    assert 'data-testid="refresh-toggle"' in text and "every 5s" in text
    assert "completed / min" in text and "<svg" in text
    assert "password" not in text.lower()


async def test_search_resolves_each_kind_of_id(bus: CommandBus, dsn: str) -> None:
    corr = uuid4()
    sent = (await bus.send("payments", "Charge", {}, correlation_id=corr)).unwrap()
    batch = (
        await bus.send_batch([CommandRequest(domain="payments", command_type="Charge", data={})])
    ).unwrap()
    async with client(bus) as c:
        r = await c.get("/search", params={"q": str(sent.command_id)})
        assert r.status_code == 303
        assert r.headers["location"] == f"/commands/payments/{sent.command_id}"
        r = await c.get("/search", params={"q": str(corr)})
        assert r.headers["location"] == f"/trace/{corr}"
        r = await c.get("/search", params={"q": str(batch.batch_id)})
        assert r.headers["location"] == f"/batches/{batch.batch_id}"
        assert (await c.get(r.headers["location"])).status_code == 200
        assert (await c.get(f"/trace/{corr}")).status_code == 200
        r = await c.get("/search", params={"q": str(uuid4())})
        assert r.status_code == 404
        r = await c.get("/search", params={"q": "not-an-id"})
        assert r.status_code == 400


async def test_command_list_pages_and_detail(bus: CommandBus, dsn: str) -> None:
    for i in range(55):
        await bus.send("payments", "Charge", {"amount": i})
    async with client(bus) as c:
        first = await c.get("/commands", params={"domain": "payments"})
        assert first.status_code == 200
        ids = re.findall(r'data-testid="command-row" data-id="([0-9a-f-]+)"', first.text)
        assert len(ids) == 50
        nxt = re.search(r'data-testid="next-page" href="([^"]+)"', first.text)
        assert nxt is not None
        second = await c.get(nxt.group(1).replace("&amp;", "&"))
        more = re.findall(r'data-testid="command-row" data-id="([0-9a-f-]+)"', second.text)
        assert len(more) == 5 and not set(ids) & set(more)
        detail = await c.get(f"/commands/payments/{ids[0]}")
        assert detail.status_code == 200
        assert 'data-testid="command-status">PENDING<' in detail.text
        assert 'data-event-type="CommandSent"' in detail.text
        assert (await c.get(f"/commands/payments/{uuid4()}")).status_code == 404
        assert (await c.get("/commands/payments/nope")).status_code == 404
        assert (await c.get("/commands/Bad Domain!/" + ids[0])).status_code == 404
        assert (await c.get("/commands", params={"status": "NOPE"})).status_code == 400
        assert (await c.get("/commands", params={"cursor": "garbage"})).status_code == 400
        assert (await c.get(f"/sagas/{uuid4()}")).status_code == 404
        assert (await c.get("/sagas", params={"status": "NOPE"})).status_code == 400


async def test_a_tsq_retry_from_the_page_is_audited_and_leaves_the_tsq(
    bus: CommandBus, dsn: str
) -> None:
    [cid] = await tsq_commands(bus, dsn, fails=1)
    async with client(bus) as c:
        listed = await c.get("/tsq")
        assert f'data-testid="tsq-row" data-id="{cid}"' in listed.text
        confirm = await c.get("/tsq/confirm", params={"action": "retry", "ids": f"payments:{cid}"})
        assert 'data-testid="confirm-count">1<' in confirm.text
        token = CSRF.search(confirm.text)
        assert token is not None
        r = await c.post(
            "/tsq/retry",
            data={"csrf_token": token.group(1), "reason": "network back", "ids": f"payments:{cid}"},
            headers={"Sec-Fetch-Site": "same-origin"},
        )
        assert r.status_code == 303
        assert (await c.get(r.headers["location"])).status_code == 200
        detail = await c.get(f"/commands/payments/{cid}")
    record = await bus.get_command("payments", cid)
    assert record is not None and record.status is CommandStatus.PENDING
    retried = (await bus.command_history("payments", cid))[-1]
    assert retried.event_type == "CommandRetriedByOperator"
    assert retried.data["operator"] == "tester"
    assert retried.data["reason"] == "network back"
    assert retried.data["source"] == "web"
    assert 'data-event-type="CommandRetriedByOperator"' in detail.text
    assert "network back" in detail.text


async def test_bulk_all_matching_acts_on_exactly_that_set_and_refuses_a_changed_one(
    bus: CommandBus, dsn: str
) -> None:
    ids = await tsq_commands(bus, dsn, fails=3)
    async with client(bus) as c:
        confirm = await c.get(
            "/tsq/confirm", params={"action": "cancel", "all_matching": "1", "domain": "payments"}
        )
        assert 'data-testid="confirm-count">3<' in confirm.text
        token = CSRF.search(confirm.text)
        assert token is not None
        digest = re.search(r'name="expected_digest" value="([0-9a-f]+)"', confirm.text)
        assert digest is not None
        form = {
            "csrf_token": token.group(1),
            "reason": "dup",
            "all_matching": "1",
            "domain": "payments",
            "expected_count": "3",
            "expected_digest": digest.group(1),
        }
        # the set changes: one more command lands in the TSQ
        extra = await tsq_commands(bus, dsn, fails=1)
        refused = await c.post("/tsq/cancel", data=form)
        assert refused.status_code == 303
        flash = await c.get(refused.headers["location"])
        assert "refused" in flash.text and 'data-testid="flash"' in flash.text
        assert len((await bus.troubleshooting.list()).items) == 4
        # confirmed anew: exactly those four, and nothing else
        confirm = await c.get(
            "/tsq/confirm", params={"action": "cancel", "all_matching": "1", "domain": "payments"}
        )
        digest = re.search(r'name="expected_digest" value="([0-9a-f]+)"', confirm.text)
        assert digest is not None
        done = await c.post(
            "/tsq/cancel",
            data={**form, "expected_count": "4", "expected_digest": digest.group(1)},
        )
        assert done.status_code == 303
    assert (await bus.troubleshooting.list()).items == ()
    for cid in [*ids, *extra]:
        last = (await bus.command_history("payments", cid))[-1]
        assert last.event_type == "CommandCancelledByOperator"
        assert (last.data["operator"], last.data["source"]) == ("tester", "web")


async def test_read_only_hides_actions_and_refuses_posts(bus: CommandBus, dsn: str) -> None:
    [cid] = await tsq_commands(bus, dsn, fails=1)
    async with client(bus, read_only=True) as c:
        page = await c.get("/tsq")
        assert 'data-testid="read-only-badge"' in page.text
        for hook in ("tsq-retry", "tsq-cancel", "bulk-", "cancel-saga"):
            assert f'data-testid="{hook}' not in page.text
        r = await c.post("/tsq/retry", data={"ids": f"payments:{cid}"})
        assert r.status_code == 403
    record = await bus.get_command("payments", cid)
    assert record is not None and record.status is CommandStatus.IN_TROUBLESHOOTING_QUEUE


async def test_cross_site_and_bad_csrf_posts_are_refused(bus: CommandBus, dsn: str) -> None:
    [cid] = await tsq_commands(bus, dsn, fails=1)
    async with client(bus) as c:
        token = await csrf(c, f"/tsq/confirm?action=retry&ids=payments:{cid}")
        form = {"csrf_token": token, "ids": f"payments:{cid}"}
        r = await c.post("/tsq/retry", data=form, headers={"Sec-Fetch-Site": "cross-site"})
        assert r.status_code == 403
        r = await c.post("/tsq/retry", data={**form, "csrf_token": "0" * 64})
        assert r.status_code == 403
        r = await c.post("/tsq/retry", data={"ids": f"payments:{cid}"})
        assert r.status_code == 403
    # another browser session's token does not fit this one's cookie
    async with client(bus) as other:
        r = await other.post("/tsq/retry", data=form)
        assert r.status_code == 403
    record = await bus.get_command("payments", cid)
    assert record is not None and record.status is CommandStatus.IN_TROUBLESHOOTING_QUEUE


async def test_logins_are_required_when_configured(bus: CommandBus) -> None:
    async with client(bus, auth=Auth(user="ana", password="s3cret")) as c:
        assert (await c.get("/")).status_code == 401
        assert (await c.get("/healthz")).text == "ok"
        ok = await c.get("/", auth=("ana", "s3cret"))
        assert ok.status_code == 200 and "ana" in ok.text
        assert (await c.get("/", auth=("ana", "wrong"))).status_code == 401
    async with client(bus, auth=Auth(token="tok-123")) as c:
        assert (await c.get("/sagas")).status_code == 401
        bearer = await c.get("/sagas", headers={"Authorization": "Bearer tok-123"})
        assert bearer.status_code == 200
        login = await c.get("/sagas", params={"token": "tok-123"})
        assert login.status_code == 303 and login.headers["location"] == "/sagas"
        assert (await c.get("/sagas")).status_code == 200  # the cookie logs it in
        assert "tok-123" not in (await c.get("/sagas")).text


@pytest.mark.parametrize("path", ["/batches/nope", f"/batches/{uuid4()}", f"/trace/{uuid4()}"])
async def test_unknown_things_are_404_pages(bus: CommandBus, path: str) -> None:
    async with client(bus) as c:
        r = await c.get(path)
    assert r.status_code == 404 and "<h1>404" in r.text


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"bus": "postgresql://x"}, "bus must be a CommandBus"),
        ({"read_only": "yes"}, "read_only must be True or False"),
        ({"auth": "tok-123"}, "auth must be an Auth"),
        ({"jaeger_url": "localhost:16686"}, "jaeger_url must be an http(s) URL"),
        ({"jaeger_url": 16686}, "jaeger_url must be a string"),
        ({"sagas": []}, "sagas must be a SagaRegistry"),
        ({"statement_timeout": 5}, "statement_timeout must be a timedelta"),
        ({"statement_timeout": timedelta(0)}, "statement_timeout must be a timedelta over 0"),
        ({"statement_timeout": timedelta(hours=1)}, "at most 10 minutes"),
        ({"local_user": 7}, "local_user must be a string"),
        ({"local_user": "x" * 201}, "local_user must be at most 200 characters"),
        ({"refresh_seconds": 0}, "refresh_seconds must be between 1 and 3600"),
        ({"refresh_seconds": 2.5}, "refresh_seconds must be an integer"),
    ],
)
async def test_create_app_refuses_bad_arguments_with_a_validation_error(
    bus: CommandBus, kw: dict[str, Any], message: str
) -> None:
    args: dict[str, Any] = {"bus": bus, **kw}
    with pytest.raises(ValidationError, match=re.escape(message)):
        create_app(args.pop("bus"), **args)
