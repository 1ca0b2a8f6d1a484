"""The batch list page (``/batches``): batches newest first, keyset-paged."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from commandbus.monitoring import bounded, list_batches
from commandbus.web.pages import PAGE, _arg, _next_url, _site
from commandbus.web.render import render


async def batches(request: Request) -> Response:
    site = _site(request)
    async with bounded(site.bus, statement_timeout=site.statement_timeout) as conn:
        page = await list_batches(site.bus, limit=PAGE, cursor=_arg(request, "cursor"), conn=conn)
    return render(
        request, "batches.html", {"page": page, "next_url": _next_url(request, page.next_cursor)}
    )


ROUTES = [Route("/batches", batches)]
