"""``commandbus web``: the dashboard (needs the ``commandbus[web]`` extra)."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import signal
import sys
from datetime import timedelta
from types import FrameType
from typing import Any

import click

from commandbus.cli._common import CLIError, Duration, Number, database_url, load_config, os_user
from commandbus.cli.serving import STOP_SIGNALS, starting, stopped_error, take_over_signals

_LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}


def is_loopback(host: str) -> bool:
    """Whether binding to ``host`` keeps the server on this machine."""
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _modules() -> Any:
    try:
        import uvicorn  # noqa: F401

        from commandbus import web
    except ImportError as exc:
        raise CLIError(
            f"the dashboard needs the web extra ({exc.name or exc} is missing): "
            "pip install 'commandbus[web]'"
        ) from None
    return web


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port",
    type=Number(0, 65535, integer=True),
    default=8080,
    show_default=True,
    help="Port to listen on (0: any free port).",
)
@click.option("--read-only", is_flag=True, help="No actions: hidden, and refused by the server.")
@click.option(
    "--app",
    "app",
    metavar="MODULE:SAGAS",
    help="The saga definitions (as for 'commandbus coordinator'): the exact cancel preview "
    "and the pivots.",
)
@click.option(
    "--timeout",
    "statement_timeout",
    type=Duration(),
    default="5s",
    show_default=True,
    help="The longest any query of a page may take.",
)
@click.option(
    "--refresh",
    type=Duration(),
    default="5s",
    show_default=True,
    help="How often the overview refreshes itself (whole seconds, 1s to 1h).",
)
@click.pass_context
def web(
    ctx: click.Context,
    host: str,
    port: int,
    read_only: bool,
    app: str | None,
    statement_timeout: timedelta,
    refresh: timedelta,
) -> None:
    """Serve the dashboard: overview, commands, sagas, troubleshooting queue, traces.

    Binding to anything but localhost needs credentials: COMMANDBUS_WEB_TOKEN
    (a bearer token; ?token=... once logs a browser in) or COMMANDBUS_WEB_USER
    and COMMANDBUS_WEB_PASSWORD (HTTP basic auth). COMMANDBUS_JAEGER_URL links
    sagas to their traces. Stops on SIGINT/SIGTERM.
    """
    with starting():  # from here on, a stop before it serves is a one-line error
        web_mod = _modules()
        try:
            auth = web_mod.Auth.from_env(os.environ)
        except ValueError as exc:
            raise CLIError(str(exc)) from None
        if not is_loopback(host) and not auth.required:
            raise CLIError(
                f"refusing to serve on {host}, beyond this machine, without credentials: set "
                "COMMANDBUS_WEB_TOKEN, or COMMANDBUS_WEB_USER and COMMANDBUS_WEB_PASSWORD "
                "(or use --host 127.0.0.1)"
            )
        if not timedelta(0) < statement_timeout <= timedelta(minutes=10):
            raise CLIError("--timeout must be over 0 and at most 10m")
        jaeger_url = os.environ.get("COMMANDBUS_JAEGER_URL") or None
        if jaeger_url is not None and not jaeger_url.startswith(("http://", "https://")):
            raise CLIError(f"COMMANDBUS_JAEGER_URL must be an http(s) URL, got {jaeger_url!r}")
        seconds = refresh.total_seconds()
        if not (1 <= seconds <= 3600 and seconds == int(seconds)):
            raise CLIError("--refresh must be whole seconds from 1s to 1h")
        sagas = None
        if app is not None:
            from commandbus.cli.coordinator import load_sagas

            sagas = load_sagas(app)
        config = load_config(ctx)
        with database_url(ctx) as url:
            code = asyncio.run(
                _serve(
                    web_mod,
                    url,
                    config,
                    host=host,
                    port=port,
                    read_only=read_only,
                    auth=auth,
                    sagas=sagas,
                    statement_timeout=statement_timeout,
                    refresh_seconds=int(seconds),
                    jaeger_url=jaeger_url,
                )
            )
    ctx.exit(code)


async def _serve(web_mod: Any, url: str, config: Any, *, host: str, port: int, **kw: Any) -> int:
    import uvicorn

    from commandbus import CommandBus

    stops = _Stops(asyncio.current_task())
    for sig in STOP_SIGNALS:
        signal.signal(sig, stops)
    early = take_over_signals()
    if early is not None:
        raise stopped_error(early)
    try:
        async with CommandBus(url, config=config, min_connections=1, max_connections=6) as bus:
            app = web_mod.create_app(
                bus,
                local_user=os_user(),
                **kw,
            )
            server = uvicorn.Server(
                uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off")
            )
            # uvicorn catches SIGINT/SIGTERM while it serves (a graceful stop), then
            # raises them again for the handlers it found: ours, which ignore them then,
            # so the command ends normally (exit status 0)
            stops.server = server
            task = asyncio.create_task(server.serve())
            while not server.started:
                if task.done():
                    break
                await asyncio.sleep(0.05)
            if stops.signum is not None:  # before uvicorn took the signals over
                server.should_exit = True
                await asyncio.gather(task, return_exceptions=True)
                raise stopped_error(stops.signum)
            if not server.started:
                await task
                raise CLIError(f"cannot serve on {host}:{port} (is the port in use?)")
            bound = port
            for s in server.servers:
                for sock in s.sockets:
                    bound = sock.getsockname()[1]
                    break
            shown = f"[{host}]" if ":" in host else host
            print(f"commandbus web: serving on http://{shown}:{bound}/", flush=True)
            await task
    except asyncio.CancelledError:
        if stops.signum is None:
            raise
        stops.task.uncancel()
        raise stopped_error(stops.signum) from None
    sys.stdout.flush()
    return 0


class _Stops:
    """SIGINT/SIGTERM of ``commandbus web`` once its event loop runs: before the
    server is made, a stop cancels the command's task; then, until uvicorn has
    taken the signals over (while it serves), it asks the server to exit. Either
    way the command ends with :func:`stopped_error`. Those uvicorn raises again
    after it served do nothing."""

    def __init__(self, task: asyncio.Task[Any] | None) -> None:
        assert task is not None  # called from the command's coroutine
        self.task = task
        self.loop = task.get_loop()
        self.signum: int | None = None
        self.server: Any = None

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None or (self.server is not None and self.server.started):
            return
        self.signum = signum
        self.loop.call_soon_threadsafe(self._stop)

    def _stop(self) -> None:
        if self.server is None:
            self.task.cancel()
        else:
            self.server.should_exit = True
