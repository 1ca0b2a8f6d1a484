"""The site's settings and the templates: the Jinja2 environment, its filters, render()."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import attrs
from jinja2 import Environment, PackageLoader, select_autoescape
from markupsafe import Markup
from starlette.requests import Request
from starlette.responses import HTMLResponse

from commandbus import CommandBus, SagaRegistry, __version__
from commandbus.web.security import Auth, Guard

STATIC_DIR = Path(__file__).parent / "static"
#: The cookie of the message shown once after an action.
FLASH_COOKIE = "cb_flash"


@attrs.frozen(kw_only=True)
class Site:
    """What every page and action needs: the bus and how the server was started."""

    bus: CommandBus
    auth: Auth
    guard: Guard
    read_only: bool
    jaeger_url: str | None
    sagas: SagaRegistry | None
    statement_timeout: timedelta
    database: str
    refresh_seconds: int


def ts(value: datetime | None) -> Markup:
    """A time as UTC text, with its ISO form for the UTC/local switch (static/app.js)."""
    if value is None:
        return Markup("-")
    utc = value.astimezone(UTC)
    text = utc.strftime("%Y-%m-%d %H:%M:%S.") + f"{utc.microsecond // 1000:03d} UTC"
    return Markup('<time datetime="{}">{}</time>').format(utc.isoformat(), text)


def dur(value: timedelta | float | None) -> str:
    """A duration for people: 850ms, 12.3s, 4m05s, 3h12m, 2d4h."""
    if value is None:
        return "-"
    s = value.total_seconds() if isinstance(value, timedelta) else float(value)
    if s < 1:
        return f"{s * 1000:.0f}ms"
    if s < 60:
        return f"{s:.1f}s"
    m, sec = divmod(int(s), 60)
    if m < 60:
        return f"{m}m{sec:02d}s"
    h, m = divmod(m, 60)
    if h < 48:
        return f"{h}h{m:02d}m"
    d, h = divmod(h, 24)
    return f"{d}d{h}h"


def pretty(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, default=str, ensure_ascii=False)


_env = Environment(
    loader=PackageLoader("commandbus.web", "templates"),
    autoescape=select_autoescape(["html"]),
    trim_blocks=True,
    lstrip_blocks=True,
)
_env.filters["ts"] = ts
_env.filters["dur"] = dur
_env.filters["pretty"] = pretty
_env.globals["version"] = __version__


def set_flash(response: Any, kind: str, text: str) -> None:
    """The message the next page shows once (``kind``: ok or error)."""
    raw = json.dumps({"kind": kind, "text": text[:1500]})
    response.set_cookie(
        FLASH_COOKIE,
        base64.urlsafe_b64encode(raw.encode()).decode(),
        httponly=True,
        samesite="strict",
        path="/",
    )


def _flash(value: str | None) -> dict[str, str] | None:
    if not value:
        return None
    try:
        doc = json.loads(base64.urlsafe_b64decode(value.encode()))
        return {"kind": str(doc["kind"]), "text": str(doc["text"])}
    except (ValueError, KeyError, TypeError):
        return None


def render(
    request: Request, template: str, context: dict[str, Any], status: int = 200
) -> HTMLResponse:
    """A page (or an htmx fragment) with what every page shows."""
    site: Site | None = getattr(request.app.state, "site", None)
    session = getattr(request.state, "session", None)
    flash = request.cookies.get(FLASH_COOKIE)
    page = {
        "request": request,
        "site": site,
        "read_only": site.read_only if site else True,
        "identity": getattr(request.state, "identity", None),
        "csrf_token": site.guard.csrf_token(session) if site and session else "",
        "flash": _flash(flash),
        **context,
    }
    response = HTMLResponse(_env.get_template(template).render(page), status_code=status)
    if flash is not None:
        response.delete_cookie(FLASH_COOKIE, path="/")
    return response
