"""The operator actions (POST): TSQ retry / cancel / complete and saga cancel, pause,
resume, and marking a failed compensation as done by hand. The middleware has
refused read-only servers and cross-site requests; each action checks its CSRF
token, records who (the login), why and ``source="web"``, and answers 303 back to
its page with a message."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlencode

from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from commandbus import CommandNotFoundError, InvalidStateError, SagaClient, ValidationError
from commandbus.monitoring import bounded
from commandbus.web.pages import count_value, digest, parse_targets, path_id, ping
from commandbus.web.render import Site, render, set_flash

_VERBS = {"retry": "retried", "cancel": "cancelled", "complete": "completed"}


async def _checked_form(request: Request) -> tuple[Site, FormData, str]:
    """The form of an action whose CSRF token is right, and who acts (else 403)."""
    site: Site = request.app.state.site
    form = await request.form()
    if not site.guard.csrf_ok(request.cookies.get("cb_session"), form.get("csrf_token")):
        raise HTTPException(403, "the form's CSRF token is missing or wrong: reload the page")
    who = str(request.state.identity)
    # a database that went away: a 503 at once, not after the pool's 30 s wait
    await ping(site)
    return site, form, who


def _reason(form: FormData) -> str | None:
    value = form.get("reason")
    text = value.strip() if isinstance(value, str) else ""
    return text or None


def _back(url: str, kind: str, text: str) -> Response:
    response = RedirectResponse(url, 303)
    set_flash(response, kind, text)
    return response


def _tsq_url(filters: dict[str, str]) -> str:
    return "/tsq" + (("?" + urlencode(filters)) if filters else "")


async def _tsq_action(request: Request, action: str) -> Response:
    site, form, who = await _checked_form(request)
    reason = _reason(form)
    filters = {k: v for k in ("domain", "type", "error") if isinstance(v := form.get(k), str) and v}
    result: Any = None
    if action == "complete":
        raw = form.get("result")
        text = raw.strip() if isinstance(raw, str) and raw.strip() else "null"
        try:
            result = json.loads(text)
        except (ValueError, RecursionError):
            raise ValidationError('result must be JSON (e.g. {"done": true} or null)') from None
    tsq = site.bus.troubleshooting
    if form.get("all_matching") == "1":
        expected = count_value(
            form.get("expected_count"), "expected_count (the count you confirmed)", low=0
        )
        where = _command_filter_from(filters)
        async with bounded(site.bus, statement_timeout=site.statement_timeout) as conn:
            targets = await tsq.matching(where, conn=conn)
        fingerprint = form.get("expected_digest")
        changed = len(targets) != expected or (
            isinstance(fingerprint, str) and fingerprint and fingerprint != digest(targets)
        )
        if changed:
            return _back(
                _tsq_url(filters),
                "error",
                f"refused: {len(targets)} commands match now, not the {expected} you confirmed "
                "(the set changed): nothing was done; look again and confirm anew",
            )
    else:
        ids = [v for v in form.getlist("ids") if isinstance(v, str)]
        targets = parse_targets(ids)
        if not targets:
            raise ValidationError("select at least one command")
    outcome = await tsq.act_on(
        action,  # type: ignore[arg-type]
        targets,
        reason=reason,
        operator=who,
        source="web",
        result=result,
    )
    text = f"{_VERBS[action]} {len(outcome.done)} command(s)"
    if outcome.refused:
        text += f"; {len(outcome.refused)} refused: " + "; ".join(
            f"{d}:{c}: {why}" for d, c, why in outcome.refused[:5]
        )
    return _back(_tsq_url(filters), "error" if outcome.refused else "ok", text)


def _command_filter_from(filters: dict[str, str]) -> Any:
    from commandbus import CommandFilter

    return CommandFilter(
        domain=filters.get("domain"),
        command_type=filters.get("type"),
        error_contains=filters.get("error"),
    )


async def tsq_retry(request: Request) -> Response:
    return await _tsq_action(request, "retry")


async def tsq_cancel(request: Request) -> Response:
    return await _tsq_action(request, "cancel")


async def tsq_complete(request: Request) -> Response:
    return await _tsq_action(request, "complete")


async def _saga_action(request: Request, action: str) -> Response:
    site, form, who = await _checked_form(request)
    sid = path_id(request.path_params["saga_id"], "saga")
    reason = _reason(form)
    client = SagaClient(site.bus)
    try:
        if action == "cancel":
            await client.cancel_saga(sid, reason=reason, operator=who, source="web")
        elif action == "pause":
            await client.pause_saga(sid, reason=reason, operator=who, source="web")
        elif action == "resume":
            await client.resume_saga(sid, operator=who, source="web")
        else:
            step = form.get("step")
            await client.mark_compensated(
                sid,
                step if isinstance(step, str) else "",
                reason=reason,
                operator=who,
                source="web",
            )
    except (InvalidStateError, CommandNotFoundError, ValidationError) as exc:
        return _back(f"/sagas/{sid}", "error", f"refused: {exc.message}")
    done = {
        "cancel": "cancel",
        "pause": "pause",
        "resume": "resume",
        "mark_compensated": "marking the compensation as done by hand",
    }[action]
    return _back(f"/sagas/{sid}", "ok", f"{done} requested: a running coordinator carries it out")


async def saga_cancel(request: Request) -> Response:
    return await _saga_action(request, "cancel")


async def saga_pause(request: Request) -> Response:
    return await _saga_action(request, "pause")


async def saga_resume(request: Request) -> Response:
    return await _saga_action(request, "resume")


async def saga_mark_compensated(request: Request) -> Response:
    return await _saga_action(request, "mark_compensated")


async def not_allowed(request: Request) -> Response:
    return render(request, "error.html", {"code": 405, "message": "use the page's buttons"}, 405)


ROUTES = [
    Route("/tsq/retry", tsq_retry, methods=["POST"]),
    Route("/tsq/cancel", tsq_cancel, methods=["POST"]),
    Route("/tsq/complete", tsq_complete, methods=["POST"]),
    Route("/sagas/{saga_id}/cancel", saga_cancel, methods=["POST"]),
    Route("/sagas/{saga_id}/pause", saga_pause, methods=["POST"]),
    Route("/sagas/{saga_id}/resume", saga_resume, methods=["POST"]),
    Route("/sagas/{saga_id}/mark-compensated", saga_mark_compensated, methods=["POST"]),
]
