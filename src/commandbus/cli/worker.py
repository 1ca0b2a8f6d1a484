"""``commandbus worker``: serve one domain with the handlers of an application."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import click

from commandbus.cli._common import (
    CLIError,
    Number,
    database_url,
    load_config,
    log_format_option,
    otel_option,
    setup_otel,
)
from commandbus.cli.serving import import_app, serve
from commandbus.config import MAX_VISIBILITY_TIMEOUT
from commandbus.engine.observability.logging import configure_logging
from commandbus.engine.worker.registry import HandlerRegistry
from commandbus.engine.worker.worker import Worker

#: The most handlers (--concurrency) and messages per read (--batch-size) a worker takes.
MAX_COUNT = 10_000
MAX_GRACE_SECONDS = 7 * 24 * 3600


def load_registry(spec: str) -> HandlerRegistry:
    """Import ``module:attribute`` and return the HandlerRegistry it names."""
    registry = import_app(spec, "registry")
    if not isinstance(registry, HandlerRegistry):
        raise CLIError(f"{spec!r} is not a HandlerRegistry (got {type(registry).__name__})")
    return registry


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
    type=Number(1, MAX_COUNT, integer=True),
    default=10,
    show_default=True,
    help=f"Handlers running at once (1-{MAX_COUNT}).",
)
@click.option(
    "--vt",
    "vt",
    type=Number(1, MAX_VISIBILITY_TIMEOUT.total_seconds(), unit="seconds"),
    default=None,
    help="Visibility timeout in seconds, up to 7 days (default: VT_SECONDS, 30).",
)
@click.option(
    "--batch-size",
    type=Number(1, MAX_COUNT, integer=True),
    default=100,
    show_default=True,
    help=f"Messages read per query (1-{MAX_COUNT}).",
)
@click.option(
    "--grace",
    type=Number(0, MAX_GRACE_SECONDS, unit="seconds"),
    default=30.0,
    show_default=True,
    help="Seconds in-flight handlers get to finish on SIGINT/SIGTERM (up to 7 days).",
)
@otel_option
@log_format_option
@click.pass_context
def worker(
    ctx: click.Context,
    app: str,
    domain: str,
    concurrency: int,
    vt: float | None,
    batch_size: int,
    grace: float,
    otel: bool,
    log_format: str,
) -> None:
    """Process DOMAIN's commands until SIGINT/SIGTERM, then stop gracefully."""
    registry = load_registry(app)
    config = load_config(ctx)
    configure_logging(json=log_format == "json")
    setup_otel(otel, f"commandbus-worker-{domain}")
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
        banner = (
            f"serving domain {domain!r}: {', '.join(registry.command_types(domain))} "
            f"(concurrency {concurrency})"
        )
        stopping = f"stopping: in-flight handlers get {grace:g}s (again to force)"
        stats = asyncio.run(serve(w, grace=grace, banner=banner, stopping=stopping))
    click.echo(stats.summary(), err=True)
