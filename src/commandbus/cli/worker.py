"""``commandbus worker``: serve one domain with the handlers of an application."""

from __future__ import annotations

import asyncio
import importlib
import signal
import sys
from datetime import timedelta

import click

from commandbus.cli._common import CLIError, database_url, load_config
from commandbus.engine.log import configure_logging
from commandbus.engine.registry import HandlerRegistry
from commandbus.engine.worker import Worker, WorkerStats


def load_registry(spec: str) -> HandlerRegistry:
    """Import ``module:attribute`` and return the HandlerRegistry it names."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise CLIError(f"--app must look like 'package.module:registry', got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise CLIError(f"cannot import {module_name!r} for --app: {exc}") from exc
    registry = getattr(module, attr, None)
    if not isinstance(registry, HandlerRegistry):
        raise CLIError(f"{spec!r} is not a HandlerRegistry (got {type(registry).__name__})")
    return registry


async def serve(worker: Worker, *, grace: float) -> WorkerStats:
    """Run ``worker`` until SIGINT or SIGTERM, then stop it gracefully."""
    loop = asyncio.get_running_loop()
    signals = 0

    def on_signal() -> None:
        nonlocal signals
        signals += 1
        if signals == 1:
            click.echo(f"stopping: in-flight handlers get {grace:g}s (again to force)", err=True)
            worker.request_stop(grace)
        else:
            click.echo("forcing: cancelling in-flight handlers", err=True)
            worker.request_stop(0)

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    try:
        return await worker.run()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


@click.command()
@click.option(
    "--app",
    "app",
    required=True,
    metavar="MODULE:REGISTRY",
    help="Where the HandlerRegistry is, e.g. 'myapp.handlers:registry'.",
)
@click.option("--domain", required=True, help="The domain (queue) to serve.")
@click.option(
    "--concurrency",
    type=click.IntRange(min=1),
    default=10,
    show_default=True,
    help="Handlers running at once.",
)
@click.option(
    "--vt",
    "vt",
    type=click.FloatRange(min=1),
    default=None,
    help="Visibility timeout in seconds (default: VT_SECONDS, 30).",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=100,
    show_default=True,
    help="Messages read per query.",
)
@click.option(
    "--grace",
    type=click.FloatRange(min=0),
    default=30.0,
    show_default=True,
    help="Seconds in-flight handlers get to finish on SIGINT/SIGTERM.",
)
@click.pass_context
def worker(
    ctx: click.Context,
    app: str,
    domain: str,
    concurrency: int,
    vt: float | None,
    batch_size: int,
    grace: float,
) -> None:
    """Process DOMAIN's commands until SIGINT/SIGTERM, then stop gracefully."""
    sys.path.insert(0, ".")
    registry = load_registry(app)
    config = load_config(ctx)
    configure_logging()
    with database_url(ctx) as url:
        w = Worker(
            url,
            registry,
            domain=domain,
            concurrency=concurrency,
            visibility_timeout=None if vt is None else timedelta(seconds=vt),
            batch_size=batch_size,
            config=config,
        )
        click.echo(
            f"serving domain {domain!r}: {', '.join(registry.command_types(domain))} "
            f"(concurrency {concurrency})",
            err=True,
        )
        stats = asyncio.run(serve(w, grace=grace))
    click.echo(stats.summary(), err=True)
