"""The dashboard in a real headless Chromium: ``commandbus web`` runs as a
subprocess on a fresh database seeded through the library (commands completed
and in the troubleshooting queue, sagas completed, compensated and running, by
in-process workers and a coordinator), and Playwright drives Debian's
``chromium`` (``executable_path``; no browser is downloaded). Every assertion
compares the page with what the library reads from the database.

``COMMANDBUS_SCREENSHOTS=1`` writes the saga page's screenshot to
docs/images/saga-page.png (the README shows it); otherwise it goes to a
temporary directory. ``COMMANDBUS_CHROMIUM`` names another browser binary.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import attrs
import httpx
import pytest
from playwright.async_api import Browser, Page, async_playwright

from commandbus import CommandFilter, CommandStatus, SagaStatus
from commandbus.cli._common import os_user
from saga_apps import LINE, Harness, final, running, status_is
from support import wait_for

pytestmark = pytest.mark.browser

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
SCREENSHOT = ROOT / "docs" / "images" / "saga-page.png"
STARTUP = re.compile(r"commandbus web: serving on (http://127\.0\.0\.1:\d+)/")
#: the credentials and links of an operator's environment stay out of the server
_SERVER_ENV_DROPPED = (
    "COMMANDBUS_WEB_TOKEN",
    "COMMANDBUS_WEB_USER",
    "COMMANDBUS_WEB_PASSWORD",
    "COMMANDBUS_JAEGER_URL",
)
#: the hooks of every action, none of which a read-only page may have
ACTION_HOOKS = ("tsq-retry", "tsq-cancel", "bulk-", "cancel-saga")


def chromium_path() -> str | None:
    return os.environ.get("COMMANDBUS_CHROMIUM") or shutil.which("chromium")


# -- the browser ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
async def browser() -> AsyncIterator[Browser]:
    """Debian's Chromium, headless, driven by Playwright (never a downloaded build)."""
    path = chromium_path()
    if path is None:
        why = "no chromium on PATH (apt-get install chromium; .ci/run installs it)"
        if os.environ.get("CI"):
            pytest.fail(f"the browser tests must run in CI: {why}")
        pytest.skip(why)
    async with async_playwright() as pw:
        b = await pw.chromium.launch(executable_path=path, headless=True)
        try:
            yield b
        finally:
            await b.close()


@pytest.fixture
async def page(browser: Browser) -> AsyncIterator[Page]:
    """A page in a fresh browser context (its own cookies), closed after the test."""
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        p = await context.new_page()
        p.set_default_timeout(15_000)
        yield p
    finally:
        await context.close()


async def test_the_browser_renders_a_page(page: Page) -> None:
    """The smoke test of the setup: Chromium starts, renders and runs scripts."""
    await page.set_content(
        "<p data-testid=t>static</p><script>document.querySelector('p').textContent='ran'</script>"
    )
    assert await page.get_by_test_id("t").inner_text() == "ran"
    version = page.context.browser.version if page.context.browser else ""
    assert re.match(r"\d+\.", version), version


# -- the server ----------------------------------------------------------------------------------


@asynccontextmanager
async def dashboard(dsn: str, *args: str) -> AsyncIterator[str]:
    """``commandbus web --port 0 ARGS`` on ``dsn`` in a subprocess; yields its base URL
    once it has printed its startup line and /healthz answers; stopped after."""
    env = {k: v for k, v in os.environ.items() if k not in _SERVER_ENV_DROPPED}
    env["DATABASE_URL"] = dsn
    # --app saga_apps:LINE imports the tests' saga definitions
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")])
    with tempfile.TemporaryFile() as stderr:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "commandbus.cli",
            "web",
            "--port",
            "0",
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=stderr,
            env=env,
        )

        def errors() -> str:
            stderr.seek(0)
            return stderr.read().decode(errors="replace")

        try:
            assert proc.stdout is not None
            try:
                line = await asyncio.wait_for(proc.stdout.readline(), 60)
            except TimeoutError:
                raise AssertionError(f"no startup line within 60s: {errors()}") from None
            found = STARTUP.fullmatch(line.decode().strip())
            assert found, f"startup line {line!r}; stderr: {errors()}"
            url = found.group(1)
            async with httpx.AsyncClient(timeout=5) as client:

                async def healthy() -> bool:
                    try:
                        r = await client.get(f"{url}/healthz")
                    except httpx.TransportError:
                        return False
                    return r.status_code == 200 and r.text == "ok"

                await wait_for(healthy, timeout=20, interval=0.1)
            yield url
        finally:
            if proc.returncode is None:
                proc.terminate()
                try:
                    await asyncio.wait_for(proc.wait(), 10)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()
        # (after a failure in the block, its own error is the one reported)
        assert "Traceback" not in errors(), errors()


# -- what the database holds ---------------------------------------------------------------------


@attrs.define
class Seeded:
    """What :func:`seed` made (ids as the library returned them)."""

    completed: list[tuple[str, UUID]]
    #: (domain, command type, command id) of the commands in the troubleshooting queue
    tsq: list[tuple[str, str, UUID]]
    compensated_saga: UUID
    completed_saga: UUID


@attrs.define
class Env:
    h: Harness
    dsn: str
    url: str
    seeded: Seeded


async def seed(h: Harness) -> Seeded:
    """Commands that complete and that fail to the troubleshooting queue (in two
    domains and two types), a saga that completes and one whose last step is
    refused, so it compensates; returns once the workers have settled them all."""
    bus = h.bus
    completed = []
    for domain, ctype, n in (("payments", "Charge", 3), ("inventory", "Reserve", 2)):
        for i in range(n):
            sent = await bus.send(domain, ctype, {"order_id": f"ok-{ctype}-{i}"})
            completed.append((domain, sent.unwrap().command_id))
    tsq = []
    for domain, ctype, n in (
        ("payments", "Charge", 3),
        ("payments", "Refund", 1),
        ("shipping", "Ship", 2),
    ):
        for i in range(n):
            # fails once for good (to the TSQ); a retry then completes
            data = {"order_id": f"tsq-{ctype}-{i}", "behaviour": {ctype: "tsq_once"}}
            sent = await bus.send(domain, ctype, data)
            tsq.append((domain, ctype, sent.unwrap().command_id))
    done = await h.sagas.start_saga(LINE, {"order_id": "saga-ok"})
    refused = await h.sagas.start_saga(
        LINE,
        {"order_id": "saga-refused", "behaviour": {"Ship": "business"}},
        correlation_id=uuid4(),  # a flow of its own (by default it is the saga's id)
    )
    assert (await final(h, done.saga_id)).status is SagaStatus.COMPLETED
    assert (await final(h, refused.saga_id)).status is SagaStatus.COMPENSATED

    async def settled() -> bool:
        for domain, cid in completed:
            rec = await bus.get_command(domain, cid)
            if rec is None or rec.status is not CommandStatus.COMPLETED:
                return False
        in_tsq = await bus.troubleshooting.list(limit=1000)
        return {c.command_id for c in in_tsq.items} == {cid for _d, _t, cid in tsq}

    await wait_for(settled, timeout=30)
    return Seeded(
        completed=completed,
        tsq=tsq,
        compensated_saga=refused.saga_id,
        completed_saga=done.saga_id,
    )


@pytest.fixture
async def env(dsn: str) -> AsyncIterator[Env]:
    """A fresh database (dropped after), seeded, with its workers and coordinator
    still running in this process, and the dashboard serving it (``--app`` gives
    it the saga definitions, for the exact cancel preview)."""
    async with running(dsn, LINE) as h:
        seeded = await seed(h)
        async with dashboard(dsn, "--app", "saga_apps:LINE") as url:
            yield Env(h=h, dsn=dsn, url=url, seeded=seeded)


async def count_commands(h: Harness, status: CommandStatus) -> int:
    """How many commands are in ``status``, paging through the library's list."""
    n, cursor = 0, None
    while True:
        page = await h.bus.list_commands(CommandFilter(status=status), limit=500, cursor=cursor)
        n += len(page.items)
        cursor = page.next_cursor
        if cursor is None:
            return n


async def tsq_ids(h: Harness, **where: Any) -> set[UUID]:
    page = await h.bus.troubleshooting.list(CommandFilter(**where), limit=1000)
    assert page.next_cursor is None
    return {c.command_id for c in page.items}


async def operator_events(h: Harness, domain: str, cid: UUID) -> list[Any]:
    return [e for e in await h.bus.command_history(domain, cid) if "ByOperator" in e.event_type]


async def hooks_of(page: Page, testid: str, attribute: str = "data-step") -> list[str]:
    """The ``attribute`` of every element with this data-testid, top to bottom."""
    values = await page.locator(f'[data-testid="{testid}"]').evaluate_all(
        f"els => els.map(e => e.getAttribute({attribute!r}))"
    )
    return [str(v) for v in values]


# -- the overview --------------------------------------------------------------------------------


async def test_the_overview_shows_the_counts_the_database_holds(env: Env, page: Page) -> None:
    h = env.h
    await page.goto(env.url + "/")
    for status in CommandStatus:
        held = await count_commands(h, status)
        shown = page.get_by_test_id(f"count-{status.value}")
        if held or await shown.count():
            assert int(await shown.inner_text()) == held, status
    tsq = await tsq_ids(h)
    assert len(tsq) == len(env.seeded.tsq)
    assert await page.get_by_test_id("tsq-banner").is_visible()
    assert int(await page.get_by_test_id("tsq-count").inner_text()) == len(tsq)
    sagas = await h.sagas.status_counts()
    assert sagas.get("COMPLETED") == 1 and sagas.get("COMPENSATED") == 1
    for status in SagaStatus:
        shown = page.get_by_test_id(f"saga-count-{status.value}")
        if sagas.get(status.value) or await shown.count():
            assert int(await shown.inner_text()) == sagas.get(status.value, 0), status
    # live refresh can be paused
    toggle = page.get_by_test_id("refresh-toggle")
    before = await toggle.inner_text()
    await toggle.click()
    assert await toggle.inner_text() != before


_HIDE = """Object.defineProperty(document, "visibilityState",
  {configurable: true, get: function () { return "%s"; }});
document.dispatchEvent(new Event("visibilitychange"));"""


async def test_live_refresh_stops_while_paused_and_while_the_tab_is_hidden(
    env: Env, page: Page
) -> None:
    async with dashboard(env.dsn, "--refresh", "1s") as url:
        live: list[str] = []
        page.on("request", lambda r: live.append(r.url) if "/overview/live" in r.url else None)
        await page.goto(url + "/")

        async def more_than(n: int) -> bool:
            return len(live) > n

        await wait_for(lambda: more_than(1), timeout=10)  # it refreshes by itself
        toggle = page.get_by_test_id("refresh-toggle")
        await toggle.click()  # pause
        paused = len(live)
        await asyncio.sleep(2.5)
        assert len(live) == paused, "refreshed while paused"
        await toggle.click()  # resume
        await wait_for(lambda: more_than(paused), timeout=10)
        await page.evaluate(_HIDE % "hidden")
        hidden = len(live)
        await asyncio.sleep(2.5)
        assert len(live) == hidden, "refreshed while the tab was hidden"
        await page.evaluate(_HIDE % "visible")
        await wait_for(lambda: more_than(hidden), timeout=10)


# -- the troubleshooting queue -------------------------------------------------------------------


async def test_a_tsq_row_retried_with_its_button_is_audited_and_leaves_the_tsq(
    env: Env, page: Page
) -> None:
    h = env.h
    domain, _ctype, cid = env.seeded.tsq[0]
    assert await operator_events(h, domain, cid) == []
    await page.goto(env.url + "/tsq")
    row = page.locator(f'[data-testid="tsq-row"][data-id="{cid}"]')
    await row.get_by_test_id("tsq-retry").click()
    assert int(await page.get_by_test_id("confirm-count").inner_text()) == 1
    await page.locator("input[name=reason]").fill("card network is back")
    await page.get_by_test_id("confirm").click()
    await page.wait_for_url(re.compile(r"/tsq(\?.*)?$"))
    assert await page.locator(f'[data-testid="tsq-row"][data-id="{cid}"]').count() == 0

    assert cid not in await tsq_ids(h)
    (event,) = await operator_events(h, domain, cid)
    assert event.event_type == "CommandRetriedByOperator"
    assert (event.data["operator"], event.data["source"], event.data["reason"]) == (
        os_user(),
        "web",
        "card network is back",
    )
    # the other entries are untouched
    assert await tsq_ids(h) == {c for _d, _t, c in env.seeded.tsq[1:]}

    # the retried command completes (the workers run) and its page shows the event inline
    async def completed() -> bool:
        rec = await h.bus.get_command(domain, cid)
        return rec is not None and rec.status is CommandStatus.COMPLETED

    await wait_for(completed, timeout=20)
    await page.goto(f"{env.url}/commands/{domain}/{cid}")
    assert await page.get_by_test_id("command-status").inner_text() == "COMPLETED"
    shown = await hooks_of(page, "history-event", "data-event-type")
    assert shown == [e.event_type for e in await h.bus.command_history(domain, cid)]
    assert await page.get_by_test_id("operator").inner_text() == os_user()
    assert await page.get_by_test_id("source").inner_text() == "web"


async def test_a_bulk_retry_of_all_matching_acts_on_exactly_that_set(env: Env, page: Page) -> None:
    h = env.h
    target = await tsq_ids(h, domain="payments", command_type="Charge")
    others = await tsq_ids(h) - target
    # the filter leaves out a type of the same domain and another domain
    assert len(target) == 3 and len(others) == 3
    assert {d for d, _t, c in env.seeded.tsq if c in others} == {"payments", "shipping"}

    await page.goto(env.url + "/tsq?domain=payments&type=Charge")
    assert set(await hooks_of(page, "tsq-row", "data-id")) == {str(c) for c in target}
    await page.get_by_test_id("bulk-retry-all").click()
    assert int(await page.get_by_test_id("confirm-count").inner_text()) == len(target)
    await page.locator("input[name=reason]").fill("replay after the outage")
    await page.get_by_test_id("confirm").click()
    await page.wait_for_url(re.compile(r"/tsq(\?.*)?$"))
    flash = page.get_by_test_id("flash")
    assert str(len(target)) in await flash.inner_text()

    assert await tsq_ids(h) == others
    for domain, _ctype, cid in env.seeded.tsq:
        events = await operator_events(h, domain, cid)
        if cid in target:
            assert [(e.event_type, e.data["reason"], e.data["source"]) for e in events] == [
                ("CommandRetriedByOperator", "replay after the outage", "web")
            ]
        else:
            assert events == []
            rec = await h.bus.get_command(domain, cid)
            assert rec is not None and rec.status is CommandStatus.IN_TROUBLESHOOTING_QUEUE


# -- sagas ---------------------------------------------------------------------------------------


async def compensations_run(h: Harness, saga_id: UUID) -> list[str]:
    """The steps whose compensation the coordinator started, in the order it did."""
    return [
        e.data["step"]
        for e in await h.sagas.saga_history(saga_id)
        if e.event_type == "SagaStepCompensating"
    ]


async def test_a_compensated_saga_shows_its_compensations_in_reverse_order(
    env: Env, page: Page, tmp_path: Path
) -> None:
    h = env.h
    sid = env.seeded.compensated_saga
    history = await h.sagas.saga_history(sid)
    forward = [e.data["step"] for e in history if e.event_type == "SagaStepCompleted"]
    ran = await compensations_run(h, sid)
    assert forward == ["reserve", "charge"] and ran == ["charge", "reserve"]

    await page.goto(f"{env.url}/sagas/{sid}")
    assert await page.get_by_test_id("saga-status").inner_text() == "COMPENSATED"
    assert await hooks_of(page, "step") == [s.name for s in LINE.steps()]
    shown = await hooks_of(page, "compensation")
    assert shown == ran == list(reversed(forward))
    assert await page.get_by_test_id("cancel-saga").count() == 0  # it has ended

    path = SCREENSHOT if os.environ.get("COMMANDBUS_SCREENSHOTS") == "1" else tmp_path / "saga.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(path), full_page=True)
    assert path.read_bytes().startswith(b"\x89PNG")


async def test_the_cancel_preview_matches_the_compensations_that_then_run(
    env: Env, page: Page
) -> None:
    h = env.h
    # the last step (no compensation) is held in its handler: the saga is running
    started = await h.sagas.start_saga(LINE, {"order_id": "held", "behaviour": {"Ship": "gate"}})
    sid = started.saga_id
    await wait_for(lambda: "Ship" in h.journal.of("held"), timeout=20)
    assert (await h.sagas.get_saga(sid)).status is SagaStatus.RUNNING

    await page.goto(f"{env.url}/sagas/{sid}")
    assert await page.get_by_test_id("saga-status").inner_text() == "RUNNING"
    dialog = page.get_by_test_id("cancel-preview")
    assert not await dialog.is_visible()
    await page.get_by_test_id("cancel-saga").click()
    await dialog.wait_for(state="visible")
    preview = await hooks_of(page, "preview-compensation")
    library = await h.sagas.cancel_preview(sid, LINE)
    assert preview == [c.step for c in library.order] == ["charge", "reserve"]
    await dialog.locator("input[name=reason]").fill("customer withdrew")
    await dialog.get_by_test_id("confirm").click()
    await page.wait_for_url(f"{env.url}/sagas/{sid}")

    h.journal.gate("held").set()  # the step out completes; then the compensations run
    rec = await final(h, sid)
    assert rec.status is SagaStatus.COMPENSATED
    assert await compensations_run(h, sid) == preview
    assert [t for t in h.journal.of("held") if t in ("Refund", "Release")] == ["Refund", "Release"]
    cancel = next(
        e for e in await h.sagas.saga_history(sid) if e.event_type == "SagaCancelRequested"
    )
    assert (cancel.data["operator"], cancel.data["source"], cancel.data["reason"]) == (
        os_user(),
        "web",
        "customer withdrew",
    )
    await page.reload()
    assert await page.get_by_test_id("saga-status").inner_text() == "COMPENSATED"
    assert await hooks_of(page, "compensation") == preview


# -- safety --------------------------------------------------------------------------------------


async def test_read_only_hides_the_actions_and_the_server_refuses_them(
    env: Env, page: Page
) -> None:
    h = env.h
    domain, _ctype, cid = env.seeded.tsq[0]
    held = await h.sagas.start_saga(LINE, {"order_id": "ro", "behaviour": {"Ship": "gate"}})
    await status_is(h, held.saga_id, SagaStatus.RUNNING)
    # a valid-looking form: the CSRF token the writable server gives this browser
    await page.goto(f"{env.url}/tsq/confirm?action=retry&ids={domain}:{cid}")
    token = await page.locator("input[name=csrf_token]").first.input_value()
    assert re.fullmatch(r"[0-9a-f]{64}", token)

    async with dashboard(env.dsn, "--read-only", "--app", "saga_apps:LINE") as ro:
        for path in ("/", "/tsq", f"/commands/{domain}/{cid}", f"/sagas/{held.saga_id}"):
            await page.goto(ro + path)
            assert await page.get_by_test_id("read-only-badge").is_visible(), path
            hooks = await page.locator("[data-testid]").evaluate_all(
                "els => els.map(e => e.dataset.testid)"
            )
            assert hooks, path
            assert [t for t in hooks if t.startswith(ACTION_HOOKS)] == [], path
            assert await page.locator("form[method=post]").count() == 0, path
        posts = [
            ("/tsq/retry", {"csrf_token": token, "ids": f"{domain}:{cid}", "reason": "x"}),
            ("/tsq/cancel", {"csrf_token": token, "ids": f"{domain}:{cid}"}),
            ("/tsq/retry", {"csrf_token": token, "all_matching": "1", "expected_count": "6"}),
            (f"/sagas/{held.saga_id}/cancel", {"csrf_token": token, "reason": "x"}),
        ]
        for path, form in posts:
            r = await page.request.post(
                ro + path, form=form, headers={"Sec-Fetch-Site": "same-origin"}, max_redirects=0
            )
            assert r.status == 403, (path, r.status)
    assert await tsq_ids(h) == {c for _d, _t, c in env.seeded.tsq}
    assert await operator_events(h, domain, cid) == []
    events = [e.event_type for e in await h.sagas.saga_history(held.saga_id)]
    assert "SagaCancelRequested" not in events
    assert (await h.sagas.get_saga(held.saga_id)).status is SagaStatus.RUNNING
    h.journal.gate("ro").set()


@asynccontextmanager
async def other_origin(html: str) -> AsyncIterator[str]:
    """A page served at http://localhost:PORT/ (another site than 127.0.0.1)."""
    body = html.encode()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)
        )
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://localhost:{port}/"
    finally:
        server.close()
        await server.wait_closed()


async def test_a_cross_site_post_is_refused(env: Env, page: Page) -> None:
    h = env.h
    domain, _ctype, cid = env.seeded.tsq[0]
    await page.goto(f"{env.url}/tsq/confirm?action=retry&ids={domain}:{cid}")
    token = await page.locator("input[name=csrf_token]").first.input_value()
    form = {"csrf_token": token, "ids": f"{domain}:{cid}", "reason": "forged"}

    # with this browser's own session and a valid token, but from another site
    for site in ("cross-site", "same-site"):
        r = await page.request.post(
            env.url + "/tsq/retry", form=form, headers={"Sec-Fetch-Site": site}, max_redirects=0
        )
        assert r.status == 403, (site, r.status)

    # a page of another origin submits a form to the dashboard: Chromium says so
    attack = (
        f'<form method="post" action="{env.url}/tsq/retry">'
        f'<input name="csrf_token" value="{token}"><input name="ids" value="{domain}:{cid}">'
        '<input name="reason" value="forged"><button id="go">go</button></form>'
    )
    async with other_origin(attack) as evil:
        await page.goto(evil)
        async with page.expect_response(lambda r: r.url == env.url + "/tsq/retry") as answer:
            await page.click("#go")
        response = await answer.value
        assert response.status == 403
        sent = await response.request.all_headers()
        assert sent.get("sec-fetch-site") == "cross-site"
    assert cid in await tsq_ids(h)
    assert await operator_events(h, domain, cid) == []

    # the same form from the dashboard's own origin is accepted: the token was valid
    r = await page.request.post(
        env.url + "/tsq/retry",
        form=form,
        headers={"Sec-Fetch-Site": "same-origin"},
        max_redirects=0,
    )
    assert r.status == 303
    assert cid not in await tsq_ids(h)
    (event,) = await operator_events(h, domain, cid)
    assert event.data["reason"] == "forged" and event.data["source"] == "web"


# -- search --------------------------------------------------------------------------------------


async def search(page: Page, url: str, q: str) -> None:
    await page.goto(url + "/")
    box = page.get_by_test_id("search").locator("input[name=q]")
    await box.fill(q)
    async with page.expect_navigation():
        await box.press("Enter")


async def test_the_search_box_goes_to_the_command_the_saga_or_the_trace(
    env: Env, page: Page
) -> None:
    h = env.h
    domain, _ctype, cid = env.seeded.tsq[0]
    await search(page, env.url, str(cid))
    assert page.url == f"{env.url}/commands/{domain}/{cid}"
    rec = await h.bus.get_command(domain, cid)
    assert await page.get_by_test_id("command-status").inner_text() == rec.status.value

    sid = env.seeded.compensated_saga
    await search(page, env.url, str(sid).upper())
    assert page.url == f"{env.url}/sagas/{sid}"
    saga = await h.sagas.get_saga(sid)
    assert await page.get_by_test_id("saga-status").inner_text() == saga.status.value

    await search(page, env.url, str(saga.correlation_id))
    assert page.url == f"{env.url}/trace/{saga.correlation_id}"
    flow = await h.bus.list_commands(CommandFilter(correlation_id=saga.correlation_id))
    assert len(flow.items) == 5  # Reserve, Charge, Ship, Refund, Release
    # one command row per command of the flow, labelled domain.Type and its short id
    labels = await page.locator('.wf-row[data-kind="command"] .wf-label').all_inner_texts()
    assert len(labels) == len(flow.items)
    for c in flow.items:
        label = f"{c.domain}.{c.command_type} {str(c.command_id)[:8]}"
        assert any(text.startswith(label) for text in labels), (label, labels)
    saga_rows = await page.locator('.wf-row[data-kind="saga"] .wf-label').all_inner_texts()
    assert len(saga_rows) == 1 and str(sid)[:8] in saga_rows[0]
