"""The dashboard attacked, against a real database: malformed numbers, a login page
that would send the token elsewhere, security headers on every answer, logging
out, a slow database (statement timeout), a database gone, double submits, an
ended saga, and hostile text everywhere. Each is a 4xx/503 page that says what
happened, never a 500, a traceback, a hang or a leaked secret."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any
from uuid import uuid4

import httpx
import psycopg
from psycopg.conninfo import make_conninfo

from commandbus import (
    Command,
    CommandBus,
    CommandStatus,
    HandlerContext,
    HandlerRegistry,
    PermanentCommandError,
    SagaRegistry,
    SagaStatus,
    Worker,
)
from commandbus.web import Auth, create_app
from proxy import Proxy
from saga_apps import final, running
from support import FAST, wait_for
from test_sagas_operators import PLAIN
from test_web import CSRF, client, csrf, tsq_commands

MESSAGE = re.compile(r'data-testid="error-message">([^<]*)<')
FLASH = re.compile(r'data-testid="flash"[^>]*>([^<]*)<')


def message(text: str) -> str:
    found = MESSAGE.search(text)
    assert found, text[:400]
    return found.group(1)


async def test_malformed_numbers_are_400_pages_not_500(bus: CommandBus, dsn: str) -> None:
    [cid] = await tsq_commands(bus, dsn, fails=1)
    # "²" passes str.isdigit() but not int(); 5000 digits exceed int()'s limit
    bad = ["%C2%B2", "9" * 5000, "-1", "1e3", "0x10", "%EF%BC%91", "0"]
    async with client(bus) as c:
        for raw in bad:
            for url in (f"/commands/payments/{cid}?hpage={raw}", f"/sagas?stuck={raw}"):
                r = await c.get(url)
                assert r.status_code == 400, (url, r.status_code)
                assert "must be a whole number" in message(r.text)
        # a malformed domain is refused on the confirmation page, not after it
        for ids in (f"<x>:{cid}", f":{cid}", f"Payments:{cid}"):
            r = await c.get("/tsq/confirm", params={"action": "retry", "ids": ids})
            assert r.status_code == 400 and "domain" in message(r.text), ids
        token = await csrf(c, f"/tsq/confirm?action=retry&ids=payments:{cid}")
        for raw in ("²", "9" * 5000, "", "-1", "3.0"):
            r = await c.post(
                "/tsq/retry",
                data={"csrf_token": token, "all_matching": "1", "expected_count": raw},
            )
            assert r.status_code == 400, (raw, r.status_code)
            assert "expected_count" in message(r.text)
    record = await bus.get_command("payments", cid)
    assert record is not None and record.status is CommandStatus.IN_TROUBLESHOOTING_QUEUE


async def test_the_login_page_and_its_redirect_stay_on_this_server(bus: CommandBus) -> None:
    async with client(bus, auth=Auth(token="tok-123")) as c:
        # a link to /%2F%2Fevil.example/x: its path is "//evil.example/x", which a
        # browser takes for another server (the form would send it the token)
        for path in ("/%2F%2Fevil.example/x", "/%2F%5Cevil.example/x", "/%09/evil.example/x"):
            page = await c.get(path)
            assert page.status_code == 401
            form = re.search(r'<form method="get" action="([^"]*)" class="login"', page.text)
            assert form is not None
            assert form.group(1).startswith("/") and not form.group(1).startswith(("//", "/\\"))
            assert "\t" not in form.group(1)
            login = await c.get(path, params={"token": "tok-123"})
            assert login.status_code == 303
            where = login.headers["location"]
            assert where.startswith("/") and not where.startswith(("//", "/\\")), where
            assert "evil.example" in where  # a path of this server, not a host
            c.cookies.clear()
        wrong = await c.get("/sagas", params={"token": "nope"})
        assert wrong.status_code == 401 and "not the one" in wrong.text


async def test_every_answer_carries_the_security_headers(bus: CommandBus, dsn: str) -> None:
    def secured(r: Any) -> bool:
        csp = r.headers.get("content-security-policy", "")
        return (
            "frame-ancestors 'none'" in csp
            and "script-src 'self'" in csp
            and r.headers.get("x-frame-options") == "DENY"
            and r.headers.get("x-content-type-options") == "nosniff"
        )

    async with client(bus, auth=Auth(user="ana", password="pw")) as c:
        login = await c.get("/")
        assert login.status_code == 401 and secured(login)
        static = await c.get("/static/app.js")
        assert static.status_code == 200 and secured(static)
        assert secured(await c.get("/healthz"))
        c.auth = ("ana", "pw")
        assert secured(await c.get("/nope"))
        assert secured(await c.get("/"))
    async with client(bus, read_only=True) as c:
        refused = await c.post("/tsq/retry", data={})
        assert refused.status_code == 403 and secured(refused)


async def test_a_basic_auth_login_page_asks_for_no_token_and_logout_works(
    bus: CommandBus,
) -> None:
    async with client(bus, auth=Auth(user="ana", password="pw")) as c:
        page = await c.get("/")
        assert page.status_code == 401 and 'name="token"' not in page.text
        assert "www-authenticate" in page.headers
        assert (await c.get("/", auth=("ana", "wrong"))).status_code == 401
        assert (await c.get("/", auth=("anna", "pw"))).status_code == 401
    async with client(bus, auth=Auth(token="tok-123")) as c:
        assert 'name="token"' in (await c.get("/")).text
        await c.get("/", params={"token": "tok-123"})
        home = await c.get("/")
        assert home.status_code == 200 and 'data-testid="logout"' in home.text
        out = await c.get("/logout")
        assert out.status_code == 200 and 'data-testid="logged-out"' in out.text
        cleared = out.headers.get_list("set-cookie")
        assert any(h.startswith("cb_auth=") and "Max-Age=0" in h for h in cleared), cleared
        assert any("HttpOnly" in h and "SameSite=strict" in h for h in cleared), cleared
        assert (await c.get("/")).status_code == 401
    async with client(bus) as c:  # no login: nothing to log out of
        r = await c.get("/logout")
        assert r.status_code == 303 and r.headers["location"] == "/"


async def test_a_slow_database_gives_a_503_page_after_the_statement_timeout(
    bus: CommandBus, dsn: str
) -> None:
    [cid] = await tsq_commands(bus, dsn, fails=1)
    pages = [
        "/",
        "/commands",
        f"/commands/payments/{cid}",
        "/tsq",
        "/tsq/confirm?action=retry&all_matching=1",
        "/sagas",
        f"/search?q={cid}",
        f"/trace/{uuid4()}",
    ]
    async with await psycopg.AsyncConnection.connect(dsn) as locker:
        tables = "commandbus.command, commandbus.event, commandbus.saga"
        await locker.execute(f"LOCK TABLE {tables} IN ACCESS EXCLUSIVE MODE")
        async with client(bus, statement_timeout=timedelta(seconds=1)) as c:
            for url in pages:
                began = time.monotonic()
                r = await asyncio.wait_for(c.get(url), 15)
                took = time.monotonic() - began
                assert r.status_code == 503, (url, r.status_code)
                assert "did not answer in time" in message(r.text), url
                assert took < 5, (url, took)
            assert (await c.get("/healthz")).status_code == 503
        await locker.rollback()


@asynccontextmanager
async def _through_proxy(dsn: str, password: str) -> AsyncIterator[tuple[str, Proxy]]:
    """The test database behind a proxy that can be cut, with a password in the URL."""
    proxy = await Proxy(dsn).start()
    try:
        yield make_conninfo(proxy.url, password=password), proxy
    finally:
        await proxy.close()


async def test_a_database_gone_is_a_503_page_at_once_without_the_password(dsn: str) -> None:
    secret = "hunter2-sekret"  # a trust server ignores it; no page may show it
    async with (
        _through_proxy(dsn, secret) as (url, proxy),
        CommandBus(url) as bus,
        client(bus, statement_timeout=timedelta(seconds=1)) as c,
    ):
        home = await c.get("/")
        assert home.status_code == 200 and secret not in home.text
        confirm = await c.get(f"/tsq/confirm?action=retry&ids=payments:{uuid4()}")
        token = CSRF.search(confirm.text)
        assert token is not None
        await proxy.cut()
        for url_ in ("/", "/overview/live", "/commands", "/sagas", "/tsq", "/healthz"):
            began = time.monotonic()
            r = await asyncio.wait_for(c.get(url_), 25)
            took = time.monotonic() - began
            assert r.status_code == 503, (url_, r.status_code)
            assert took < 5, (url_, took)  # not the pool's 30 s
            assert secret not in r.text
            if url_ != "/healthz":
                assert "unavailable" in message(r.text), url_
        began = time.monotonic()
        r = await asyncio.wait_for(
            c.post(
                "/tsq/retry",
                data={"csrf_token": token.group(1), "ids": f"payments:{uuid4()}"},
            ),
            25,
        )
        assert r.status_code == 503 and time.monotonic() - began < 5
        assert secret not in r.text


async def test_a_double_submit_acts_once_and_says_so(bus: CommandBus, dsn: str) -> None:
    [cid] = await tsq_commands(bus, dsn, fails=1)
    async with client(bus) as c:
        token = await csrf(c, f"/tsq/confirm?action=cancel&ids=payments:{cid}")
        form = {"csrf_token": token, "ids": f"payments:{cid}", "reason": "dup"}
        first = await c.post("/tsq/cancel", data=form)
        second = await c.post("/tsq/cancel", data=form)
        assert first.status_code == second.status_code == 303
        flash = FLASH.search((await c.get(second.headers["location"])).text)
        assert flash is not None and "cancelled 0" in flash.group(1)
        assert "1 refused" in flash.group(1)
    history = await bus.command_history("payments", cid)
    assert [e.event_type for e in history].count("CommandCancelledByOperator") == 1


async def test_cancelling_an_ended_saga_is_refused_with_a_message(dsn: str) -> None:
    async with running(dsn, PLAIN) as h:
        started = await h.sagas.start_saga(PLAIN, {"order_id": "e1", "behaviour": {}})
        rec = await final(h, started.saga_id)
        assert rec.status is SagaStatus.COMPLETED
        async with client(h.bus, sagas=SagaRegistry([PLAIN])) as c:
            page = await c.get(f"/sagas/{rec.saga_id}")
            assert 'data-testid="cancel-saga"' not in page.text
            token = await csrf(c, f"/tsq/confirm?action=retry&ids=payments:{uuid4()}")
            for action in ("cancel", "pause", "resume"):
                r = await c.post(
                    f"/sagas/{rec.saga_id}/{action}", data={"csrf_token": token, "reason": "x"}
                )
                assert r.status_code == 303, (action, r.status_code)
                flash = FLASH.search((await c.get(r.headers["location"])).text)
                assert flash is not None and "refused" in flash.group(1), action
        assert (await h.sagas.get_saga(rec.saga_id)).status is SagaStatus.COMPLETED  # type: ignore[union-attr]


EVIL = "\"'><script>alert(1)</script><img src=x onerror=alert(2)> javascript:alert(3)"


async def test_hostile_text_is_escaped_everywhere(dsn: str) -> None:
    reg = HandlerRegistry()

    @reg.handler("payments", "Charge")
    async def charge(cmd: Command, ctx: HandlerContext) -> Any:
        raise PermanentCommandError(EVIL, code="NET")

    async with CommandBus(dsn, config=FAST) as bus:
        sent = (await bus.send("payments", "Charge", {"x": EVIL, EVIL: 1})).unwrap()
        cid = sent.command_id
        async with Worker(dsn, reg, domain="payments", config=FAST):

            async def moved() -> bool:
                return len((await bus.troubleshooting.list()).items) == 1

            await wait_for(moved, timeout=20)
        user = EVIL.replace(":", "")  # the operator's name comes from the login
        async with client(bus, auth=Auth(user=user, password="pw")) as c:
            c.auth = (user, "pw")
            token = await csrf(c, f"/tsq/confirm?action=retry&ids=payments:{cid}")
            form = {"csrf_token": token, "ids": f"payments:{cid}", "reason": EVIL}
            done = await c.post("/tsq/cancel", data=form)
            again = await c.post("/tsq/cancel", data=form)  # a flash naming the command
            pages = [
                done.headers["location"],
                again.headers["location"],
                "/",
                "/commands",
                "/tsq",
                f"/commands/payments/{cid}",
                f"/trace/{sent.correlation_id}",
                f"/tsq/confirm?action=retry&ids=payments:{cid}",
                "/commands?error=" + EVIL,
                "/search?q=" + EVIL,
                "/sagas?name=" + EVIL,
            ]
            for url in pages:
                r = await c.get(url)
                assert r.status_code in (200, 400), (url, r.status_code)
                for raw in ("<script>alert", "<img src=x", "'><"):
                    assert raw not in r.text, (url, raw)
    history = await bus_history(dsn, cid)
    assert history["operator"] == user and history["reason"] == EVIL


async def bus_history(dsn: str, cid: Any) -> dict[str, Any]:
    async with CommandBus(dsn) as bus:
        last = [
            e
            for e in await bus.command_history("payments", cid)
            if e.event_type == "CommandCancelledByOperator"
        ]
    assert len(last) == 1
    data: dict[str, Any] = last[0].data
    return data


async def test_same_site_and_cookieless_posts_are_refused_on_every_action(
    bus: CommandBus, dsn: str
) -> None:
    [cid] = await tsq_commands(bus, dsn, fails=1)
    sid = uuid4()
    async with client(bus) as c:
        token = await csrf(c, f"/tsq/confirm?action=retry&ids=payments:{cid}")
        form = {"csrf_token": token, "ids": f"payments:{cid}"}
        actions = ["/tsq/retry", "/tsq/cancel", "/tsq/complete"]
        actions += [f"/sagas/{sid}/{a}" for a in ("cancel", "pause", "resume")]
        for url in actions:
            for site in ("same-site", "cross-site"):
                r = await c.post(url, data=form, headers={"Sec-Fetch-Site": site})
                assert r.status_code == 403, (url, site)
                assert "another site" in message(r.text)
            # a form posted from elsewhere carries no cookie: the same app, no cookie jar
            async with httpx.AsyncClient(transport=c._transport, base_url=c.base_url) as bare:
                r = await bare.post(url, data=form)
            assert r.status_code == 403 and "CSRF" in message(r.text), url
    record = await bus.get_command("payments", cid)
    assert record is not None and record.status is CommandStatus.IN_TROUBLESHOOTING_QUEUE


async def test_cookies_are_secure_when_the_dashboard_is_served_over_https(bus: CommandBus) -> None:
    app = create_app(bus, local_user="tester", auth=Auth(token="tok-123"))
    for base, secure in (("https://dash.example", True), ("http://testserver", False)):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=base) as c:
            login = await c.get("/?token=tok-123")
            assert login.status_code == 303
            page = await c.get("/tsq")
            assert page.status_code == 200
        cookies = [*login.headers.get_list("set-cookie"), *page.headers.get_list("set-cookie")]
        names = {h.split("=", 1)[0]: h.lower() for h in cookies}
        assert set(names) >= {"cb_auth", "cb_session"}, cookies
        for name in ("cb_auth", "cb_session"):
            assert ("; secure" in names[name]) is secure, (base, names[name])
            assert "httponly" in names[name] and "samesite=strict" in names[name]
