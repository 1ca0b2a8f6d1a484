"""The Starlette application: :func:`create_app`, its middleware and error pages."""

from __future__ import annotations

import getpass
import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from commandbus import (
    CommandBus,
    CommandNotFoundError,
    DatabaseError,
    DatabaseUnavailableError,
    SagaNotFoundError,
    SagaRegistry,
    ValidationError,
)
from commandbus.arguments import MAX_OPERATOR, bool_arg, int_arg, opt_text_arg, show, text_arg
from commandbus.web import actions, batches, pages
from commandbus.web.render import STATIC_DIR, Site, render
from commandbus.web.security import (
    AUTH_COOKIE,
    SESSION_COOKIE,
    Auth,
    Guard,
    fetch_site_ok,
    local_path,
    without,
)

_PUBLIC = ("/healthz", "/static/")
_log = logging.getLogger("commandbus.web")
#: Sent with every response (pages, errors, the login page, static files).
SECURITY_HEADERS = {
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
        "script-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
    ),
}


def _where(url: str) -> str:
    """host/database of a connection string: never its password (nor its user)."""
    try:
        parts = conninfo_to_dict(url)
    except Exception:
        return "?"
    host = str(parts.get("host") or "localhost")
    if host.startswith("/"):
        host = "local socket"
    port = parts.get("port")
    return f"{host}{':' + str(port) if port else ''}/{parts.get('dbname') or '?'}"


class _Gate(BaseHTTPMiddleware):
    """Login, the browser session (and its CSRF token), and the checks of every action."""

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        response = await self._dispatch(request, call_next)
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        return response

    async def _dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        site: Site = request.app.state.site
        guard = site.guard
        path = request.url.path
        if path.startswith(_PUBLIC):
            return await call_next(request)
        if path == "/logout":
            return _logout(request)
        given = request.query_params.get("token")
        if given is not None and request.method == "GET" and guard.token_ok(given):
            # back to this page of this server: never "//elsewhere" (an open redirect)
            back = RedirectResponse(local_path(path) + without(request.query_params, "token"), 303)
            back.set_cookie(
                AUTH_COOKIE,
                guard.token_cookie(),
                httponly=True,
                samesite="strict",
                path="/",
                secure=_https(request),
            )
            return back
        who = guard.identity(request.headers.get("authorization"), request.cookies.get(AUTH_COOKIE))
        response: Response
        if who is None:
            context = {
                "basic": site.auth.user is not None,
                "token": site.auth.token is not None,
                "login_action": local_path(path),
                "failed": given is not None,
            }
            response = render(request, "login.html", context, 401)
            if site.auth.user is not None:
                response.headers["WWW-Authenticate"] = 'Basic realm="commandbus", charset="UTF-8"'
            return response
        request.state.identity = who
        session = request.cookies.get(SESSION_COOKIE)
        fresh = not session
        if not session:
            session = guard.new_session()
        request.state.session = session
        if request.method not in ("GET", "HEAD"):
            refusal = None
            if site.read_only:
                refusal = "this dashboard is read-only: actions are refused"
            elif not fetch_site_ok(request.headers.get("sec-fetch-site")):
                refusal = "a request from another site is refused (Sec-Fetch-Site)"
            if refusal is not None:
                return render(request, "error.html", {"code": 403, "message": refusal}, 403)
        try:
            response = await call_next(request)
        except Exception as exc:
            # a bug: logged with its traceback, never shown
            _log.error("%s %s failed", request.method, path, exc_info=exc)
            message = f"the dashboard failed ({type(exc).__name__}); its log has the details"
            response = render(request, "error.html", {"code": 500, "message": message}, 500)
        if fresh:
            response.set_cookie(
                SESSION_COOKIE,
                session,
                httponly=True,
                samesite="strict",
                path="/",
                secure=_https(request),
            )
        return response


def _https(request: Request) -> bool:
    """Served over TLS (directly, or behind a proxy uvicorn trusts): cookies are Secure."""
    return request.url.scheme == "https"


def _logout(request: Request) -> Response:
    """Forget the token login and the browser session (basic auth: the browser
    keeps sending what it was given until it is closed)."""
    site: Site = request.app.state.site
    if not site.auth.required:
        return RedirectResponse("/", 303)  # nobody logged in
    response = render(
        request,
        "login.html",
        {
            "basic": site.auth.user is not None,
            "token": site.auth.token is not None,
            "login_action": "/",
            "logged_out": True,
        },
        200,
    )
    response.delete_cookie(AUTH_COOKIE, path="/", httponly=True, samesite="strict")
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
    return response


def _error(code: int) -> Callable[[Request, Exception], Awaitable[Response]]:
    async def handle(request: Request, exc: Exception) -> Response:
        site: Site = request.app.state.site
        status, message = code, str(exc)
        if isinstance(exc, HTTPException):
            status, message = exc.status_code, str(exc.detail)
        elif isinstance(exc, DatabaseUnavailableError) or (
            isinstance(exc, psycopg.OperationalError)
            and not isinstance(exc, psycopg.errors.QueryCanceled)
        ):
            status = 503
            message = f"the database ({site.database}) is unavailable: {_first_line(exc)}"
        elif isinstance(exc, psycopg.errors.QueryCanceled) or (
            isinstance(exc, DatabaseError)
            and isinstance(exc.__cause__, psycopg.errors.QueryCanceled)
        ):
            status = 503
            message = (
                "the database did not answer in time: a query took longer than "
                f"{site.statement_timeout.total_seconds():g}s (the dashboard's --timeout)"
            )
        elif isinstance(exc, psycopg.Error) or (
            isinstance(exc, DatabaseError) and not isinstance(exc, ValidationError)
        ):
            status, message = 503, f"the database refused: {_first_line(exc)}"
        return render(request, "error.html", {"code": status, "message": message}, status)

    return handle


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


async def healthz(request: Request) -> Response:
    """200 ``ok`` once the database answers (503 otherwise)."""
    site: Site = request.app.state.site
    try:
        await pages.ping(site)
    except Exception as exc:
        return PlainTextResponse(f"database unavailable: {type(exc).__name__}", 503)
    return PlainTextResponse("ok")


def _check_arguments(
    bus: object,
    *,
    read_only: object,
    auth: object,
    jaeger_url: object,
    sagas: object,
    statement_timeout: object,
    local_user: object,
    refresh_seconds: object,
) -> None:
    """:func:`create_app`'s arguments, each refused with a ValidationError naming it."""
    if not isinstance(bus, CommandBus):
        raise ValidationError(f"bus must be a CommandBus, got {show(bus)}")
    bool_arg(read_only, "read_only")
    if auth is not None and not isinstance(auth, Auth):
        raise ValidationError(f"auth must be an Auth (or None), got {show(auth)}")
    if jaeger_url is not None:
        url = text_arg(jaeger_url, "jaeger_url", most=2000)
        if not url.startswith(("http://", "https://")):
            raise ValidationError(f"jaeger_url must be an http(s) URL, got {show(url)}")
    if sagas is not None and not isinstance(sagas, SagaRegistry):
        raise ValidationError(
            f"sagas must be a SagaRegistry (SagaRegistry([saga, ...])), got {show(sagas)}"
        )
    if not isinstance(statement_timeout, timedelta) or not (
        timedelta(0) < statement_timeout <= timedelta(minutes=10)
    ):
        raise ValidationError(
            "statement_timeout must be a timedelta over 0 and at most 10 minutes, "
            f"got {show(statement_timeout)}"
        )
    opt_text_arg(local_user, "local_user", empty=True, most=MAX_OPERATOR)
    int_arg(refresh_seconds, "refresh_seconds", low=1, high=3600)


def create_app(
    bus: CommandBus,
    *,
    read_only: bool = False,
    auth: Auth | None = None,
    jaeger_url: str | None = None,
    sagas: SagaRegistry | None = None,
    statement_timeout: timedelta = timedelta(seconds=5),
    local_user: str | None = None,
    refresh_seconds: int = 5,
) -> Starlette:
    """The dashboard over an open ``bus``.

    ``read_only``: no actions (hidden, and a POST is refused with 403). ``auth``:
    the credentials every page asks for (None: no login; the operator recorded
    for an action is then ``local_user``, by default the server's OS user).
    ``jaeger_url``: links each saga to its trace there. ``sagas``: the saga
    definitions, for the cancel preview and the pivot. Every query gives up after
    ``statement_timeout``. The overview refreshes itself every ``refresh_seconds``.
    """
    _check_arguments(
        bus,
        read_only=read_only,
        auth=auth,
        jaeger_url=jaeger_url,
        sagas=sagas,
        statement_timeout=statement_timeout,
        local_user=local_user,
        refresh_seconds=refresh_seconds,
    )
    auth = auth or Auth()
    site = Site(
        bus=bus,
        auth=auth,
        guard=Guard(auth, local_user or _os_user()),
        read_only=read_only,
        jaeger_url=jaeger_url.rstrip("/") if jaeger_url else None,
        sagas=sagas,
        statement_timeout=statement_timeout,
        database=_where(bus.url),
        refresh_seconds=refresh_seconds,
    )
    routes: list[Any] = [
        Route("/healthz", healthz),
        Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
        *pages.ROUTES,
        *batches.ROUTES,
        *actions.ROUTES,
    ]
    handlers: dict[Any, Any] = {
        HTTPException: _error(500),
        ValidationError: _error(400),
        CommandNotFoundError: _error(404),
        SagaNotFoundError: _error(404),
        DatabaseError: _error(503),
        psycopg.Error: _error(503),
    }
    app = Starlette(routes=routes, middleware=[Middleware(_Gate)], exception_handlers=handlers)
    app.state.site = site
    return app


def _os_user() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return "local"
