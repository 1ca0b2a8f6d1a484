"""The pages (GET): overview, search, lists, command, saga, batch, TSQ, trace."""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode
from uuid import UUID

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from commandbus import (
    CommandFilter,
    CommandStatus,
    SagaClient,
    SagaFilter,
    SagaStatus,
    ValidationError,
)
from commandbus.arguments import opt_domain_arg
from commandbus.codec import unstructure
from commandbus.engine.observability.waterfall import build_waterfall, load_flow
from commandbus.monitoring import bounded, find_id, system_status, throughput
from commandbus.sagas.read import fetch_command_statuses
from commandbus.web import views
from commandbus.web.render import Site, render

PAGE = 50
STUCK_AFTER = timedelta(minutes=5)
HISTORY_PAGE = 50


def _site(request: Request) -> Site:
    site: Site = request.app.state.site
    return site


def _now() -> datetime:
    return datetime.now(UTC)


def _arg(request: Request, name: str) -> str | None:
    value = request.query_params.get(name, "").strip()
    return value or None


def path_id(value: str, what: str) -> UUID:
    """An id from the URL's path: a malformed one names nothing (404)."""
    try:
        return UUID(value)
    except ValueError:
        raise HTTPException(404, f"no {what} {value!r}: not an id") from None


_COUNT = re.compile(r"[0-9]{1,9}")


def count_value(raw: object, name: str, *, low: int = 1, high: int = 1_000_000) -> int:
    """A whole number typed in a URL or a form: ASCII digits only (``str.isdigit``
    takes "²" and ``int`` refuses it), within ``low``..``high`` (else a 400)."""
    text = raw.strip() if isinstance(raw, str) else ""
    if not _COUNT.fullmatch(text) or not low <= int(text) <= high:
        shown = raw[:40] if isinstance(raw, str) else raw
        raise ValidationError(f"{name} must be a whole number from {low} to {high}, got {shown!r}")
    return int(text)


def _int_arg(request: Request, name: str, default: int) -> int:
    raw = _arg(request, name)
    return default if raw is None else count_value(raw, name)


async def ping(site: Site) -> None:
    async with bounded(site.bus, statement_timeout=site.statement_timeout) as conn:
        await site.bus.list_commands(limit=1, conn=conn)


# -- overview ---------------------------------------------------------------------------


async def _overview_context(site: Site) -> dict[str, Any]:
    sagas = SagaClient(site.bus)
    # the bounded reads first: a database that went away fails them at once (the
    # snapshot would wait the pool's 30 s for a connection)
    async with bounded(site.bus, statement_timeout=site.statement_timeout) as conn:
        tp = await throughput(site.bus, minutes=30, conn=conn)
        stuck = await sagas.list_sagas(SagaFilter(stuck_for=STUCK_AFTER), limit=10, conn=conn)
        comp_failed = await sagas.list_sagas(
            SagaFilter(status=SagaStatus.COMPENSATION_FAILED), limit=10, conn=conn
        )
    status = await system_status(site.bus, statement_timeout=site.statement_timeout)
    totals: dict[str, int] = {s.value: 0 for s in CommandStatus}
    over: set[str] = set()
    for d in status.domains:
        for name, n in d.commands.counts.items():
            totals[name] = totals.get(name, 0) + n
        over.update(d.commands.over_limit)
    tsq = totals.get(CommandStatus.IN_TROUBLESHOOTING_QUEUE.value, 0)
    return {
        "status": status,
        "totals": totals,
        "over": over,
        "tsq": tsq,
        "charts": views.charts(tp),
        "stuck": stuck.items,
        "comp_failed": comp_failed.items,
        "saga_statuses": [s.value for s in SagaStatus],
        "now": status.taken_at,
        "stuck_after": STUCK_AFTER,
    }


async def overview(request: Request) -> Response:
    return render(request, "overview.html", await _overview_context(_site(request)))


async def overview_live(request: Request) -> Response:
    return render(request, "overview_live.html", await _overview_context(_site(request)))


# -- search -----------------------------------------------------------------------------


async def search(request: Request) -> Response:
    q = (_arg(request, "q") or "").strip()
    if not q:
        raise ValidationError("search for an id: a command, saga, correlation or batch id")
    try:
        uid = UUID(q)
    except ValueError:
        raise ValidationError(
            f"not an id: {q[:80]!r} (search takes a command, saga, correlation or batch id)"
        ) from None
    site = _site(request)
    async with bounded(site.bus, statement_timeout=site.statement_timeout) as conn:
        found = await find_id(site.bus, uid, conn=conn)
    if not found:
        raise HTTPException(404, f"nothing is known by the id {uid}")
    first = found[0]
    target = {
        "saga": f"/sagas/{uid}",
        "command": f"/commands/{first.domain}/{uid}",
        "batch": f"/batches/{uid}",
        "correlation": f"/trace/{uid}",
    }[first.kind]
    return RedirectResponse(target, 303)


# -- commands ---------------------------------------------------------------------------


def _command_filter(request: Request, *, tsq: bool = False) -> CommandFilter:
    return CommandFilter(
        domain=_arg(request, "domain"),
        status=None if tsq else _arg(request, "status"),
        command_type=_arg(request, "type"),
        correlation_id=None if tsq else _arg(request, "correlation"),
        batch_id=None if tsq else _arg(request, "batch"),
        error_contains=_arg(request, "error"),
    )


def _next_url(request: Request, cursor: str | None) -> str | None:
    if cursor is None:
        return None
    query = {k: v for k, v in request.query_params.items() if k != "cursor" and v}
    query["cursor"] = cursor
    return f"{request.url.path}?{urlencode(query)}"


async def commands(request: Request) -> Response:
    site = _site(request)
    where = _command_filter(request)
    order = _arg(request, "order") or "newest"
    if order not in ("newest", "oldest"):
        raise ValidationError(f"order must be newest or oldest, got {order!r}")
    async with bounded(site.bus, statement_timeout=site.statement_timeout) as conn:
        page = await site.bus.list_commands(
            where,
            limit=PAGE,
            cursor=_arg(request, "cursor"),
            newest_first=order == "newest",
            conn=conn,
        )
    return render(
        request,
        "commands.html",
        {
            "page": page,
            "args": dict(request.query_params),
            "statuses": [s.value for s in CommandStatus],
            "next_url": _next_url(request, page.next_cursor),
        },
    )


async def command(request: Request) -> Response:
    site = _site(request)
    domain = request.path_params["domain"]
    cid = path_id(request.path_params["command_id"], "command")
    hpage = _int_arg(request, "hpage", 1)
    try:
        async with bounded(site.bus, statement_timeout=site.statement_timeout) as conn:
            record = await site.bus.get_command(domain, cid, conn=conn)
            history = (
                [] if record is None else await site.bus.command_history(domain, cid, conn=conn)
            )
    except ValidationError:
        raise HTTPException(404, f"no command {cid} in domain {domain!r}") from None
    if record is None:
        raise HTTPException(404, f"no command {cid} in domain {domain!r}")
    wf = build_waterfall(history)
    attempts = [r for r in wf.rows if r.kind == "attempt"]
    pages = max(1, -(-len(history) // HISTORY_PAGE))
    hpage = min(hpage, pages)
    shown = history[(hpage - 1) * HISTORY_PAGE : hpage * HISTORY_PAGE]
    return render(
        request,
        "command.html",
        {
            "c": record,
            "events": shown,
            "hpage": hpage,
            "hpages": pages,
            "attempts": attempts,
            "first_position": shown[0].stream_version if shown else 0,
        },
    )


async def command_history_json(request: Request) -> Response:
    """The command's events as JSON (the audit trail, exportable)."""
    site = _site(request)
    domain = request.path_params["domain"]
    cid = path_id(request.path_params["command_id"], "command")
    try:
        async with bounded(site.bus, statement_timeout=site.statement_timeout) as conn:
            history = await site.bus.command_history(domain, cid, conn=conn)
    except ValidationError:
        raise HTTPException(404, f"no command {cid} in domain {domain!r}") from None
    if not history:
        raise HTTPException(404, f"no command {cid} in domain {domain!r}")
    return JSONResponse(unstructure(history))


# -- batches ----------------------------------------------------------------------------


async def batch(request: Request) -> Response:
    site = _site(request)
    bid = path_id(request.path_params["batch_id"], "batch")
    async with bounded(site.bus, statement_timeout=site.statement_timeout) as conn:
        record = await site.bus.get_batch(bid, conn=conn)
        if record is None:
            raise HTTPException(404, f"no batch {bid}")
        page = await site.bus.list_commands(
            CommandFilter(batch_id=bid), limit=PAGE, cursor=_arg(request, "cursor"), conn=conn
        )
    return render(
        request,
        "batch.html",
        {
            "b": record,
            "fields": unstructure(record),
            "page": page,
            "next_url": _next_url(request, page.next_cursor),
        },
    )


# -- sagas ------------------------------------------------------------------------------


async def sagas_list(request: Request) -> Response:
    site = _site(request)
    stuck = _arg(request, "stuck")
    where = SagaFilter(
        status=_arg(request, "status"),
        name=_arg(request, "name"),
        correlation_id=_arg(request, "correlation"),
        stuck_for=None if stuck is None else timedelta(minutes=_int_arg(request, "stuck", 5)),
    )
    async with bounded(site.bus, statement_timeout=site.statement_timeout) as conn:
        page = await SagaClient(site.bus).list_sagas(
            where, limit=PAGE, cursor=_arg(request, "cursor"), conn=conn
        )
    return render(
        request,
        "sagas.html",
        {
            "page": page,
            "args": dict(request.query_params),
            "statuses": [s.value for s in SagaStatus],
            "next_url": _next_url(request, page.next_cursor),
            "now": _now(),
        },
    )


async def saga(request: Request) -> Response:
    site = _site(request)
    sid = path_id(request.path_params["saga_id"], "saga")
    client = SagaClient(site.bus)
    async with bounded(site.bus, statement_timeout=site.statement_timeout) as conn:
        record = await client.get_saga(sid, conn=conn)
        if record is None:
            raise HTTPException(404, f"no saga {sid}")
        history = await client.saga_history(sid, conn=conn)
        commands = await fetch_command_statuses(conn, sid)
        flow = await load_flow(conn, sid)
        definition = (
            None if site.sagas is None else site.sagas.get(record.name, record.definition_version)
        )
        preview = None
        if definition is not None and site.sagas is not None and not record.status.is_final:
            preview = await client.cancel_preview(sid, site.sagas, conn=conn)
    pivots: set[str] = set()
    if definition is not None:
        pivots = {s.name for s in definition.steps() if s.pivot}
    now = _now()
    steps, ran = views.saga_steps(record, history, pivots, now, commands)
    wf = build_waterfall(flow)
    trace_id = wf.trace_ids[0] if wf.trace_ids else None
    return render(
        request,
        "saga.html",
        {
            "s": record,
            "steps": steps,
            "ran": ran,
            "history": history,
            "preview": preview,
            "definition": definition,
            "bars": views.bars(wf, now),
            "trace_id": trace_id,
            "jaeger": f"{site.jaeger_url}/trace/{trace_id}"
            if site.jaeger_url and trace_id
            else None,
            "now": now,
            "age": views.age,
            "can_cancel": not record.status.is_final and not record.state.pivoted,
        },
    )


# -- troubleshooting queue --------------------------------------------------------------


def digest(targets: list[tuple[str, UUID]]) -> str:
    """A short fingerprint of a set of commands (the confirmed set of a bulk action)."""
    text = "\n".join(sorted(f"{d}:{c}" for d, c in targets))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


async def tsq(request: Request) -> Response:
    site = _site(request)
    where = _command_filter(request, tsq=True)
    async with bounded(site.bus, statement_timeout=site.statement_timeout) as conn:
        page = await site.bus.troubleshooting.list(
            where, limit=PAGE, cursor=_arg(request, "cursor"), conn=conn
        )
    filters = {k: v for k in ("domain", "type", "error") if (v := _arg(request, k))}
    return render(
        request,
        "tsq.html",
        {
            "page": page,
            "args": dict(request.query_params),
            "filters": filters,
            "filter_query": urlencode(filters),
            "next_url": _next_url(request, page.next_cursor),
        },
    )


def parse_targets(values: list[str]) -> list[tuple[str, UUID]]:
    out = []
    for v in values:
        domain, sep, cid = v.partition(":")
        if not sep:
            raise ValidationError(f"ids must look like domain:command_id, got {v[:80]!r}")
        try:
            command_id = UUID(cid)
        except ValueError:
            raise ValidationError(f"not a command id: {cid[:80]!r}") from None
        # a malformed domain is refused on the confirmation page, not after it
        out.append((opt_domain_arg(domain) or "", command_id))
    return out


async def tsq_confirm(request: Request) -> Response:
    """The confirmation of an action: the count, the reason, then POST."""
    site = _site(request)
    action = _arg(request, "action")
    if action not in ("retry", "cancel", "complete"):
        raise ValidationError(f"action must be retry, cancel or complete, got {action!r}")
    all_matching = _arg(request, "all_matching") == "1"
    filters = {k: v for k in ("domain", "type", "error") if (v := _arg(request, k))}
    if all_matching:
        where = _command_filter(request, tsq=True)
        async with bounded(site.bus, statement_timeout=site.statement_timeout) as conn:
            targets = await site.bus.troubleshooting.matching(where, conn=conn)
    else:
        targets = parse_targets(request.query_params.getlist("ids"))
        if not targets:
            raise ValidationError("select at least one command")
    return render(
        request,
        "tsq_confirm.html",
        {
            "action": action,
            "all_matching": all_matching,
            "filters": filters,
            "targets": targets,
            "count": len(targets),
            "digest": digest(targets),
            "back": "/tsq" + (("?" + urlencode(filters)) if filters else ""),
        },
    )


# -- trace ------------------------------------------------------------------------------


async def trace(request: Request) -> Response:
    site = _site(request)
    cid = path_id(request.path_params["correlation_id"], "flow")
    async with bounded(site.bus, statement_timeout=site.statement_timeout) as conn:
        events = await load_flow(conn, cid)
    if not events:
        raise HTTPException(
            404, f"nothing recorded for {cid}: neither a correlation id nor a saga id"
        )
    wf = build_waterfall(events)
    now = _now()
    rows = views.bars(wf, now)
    queues = {}
    if any(r.queue for r in rows):
        status = await system_status(site.bus, statement_timeout=site.statement_timeout)
        queues = {d.domain: d for d in status.domains}
    return render(
        request,
        "trace.html",
        {"wf": wf, "rows": rows, "queues": queues, "cid": cid, "now": now, "age": views.age},
    )


ROUTES = [
    Route("/", overview),
    Route("/overview/live", overview_live),
    Route("/search", search),
    Route("/commands", commands),
    Route("/commands/{domain}/{command_id}", command),
    Route("/commands/{domain}/{command_id}/history.json", command_history_json),
    Route("/batches/{batch_id}", batch),
    Route("/sagas", sagas_list),
    Route("/sagas/{saga_id}", saga),
    Route("/tsq", tsq),
    Route("/tsq/confirm", tsq_confirm),
    Route("/trace/{correlation_id}", trace),
]
