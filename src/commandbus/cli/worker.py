"""``commandbus worker``: serve one or several domains with the handlers of an application."""

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
    log_level_option,
    otel_option,
    setup_otel,
)
from commandbus.cli.coordinator import load_sagas
from commandbus.cli.serving import import_app, serve, setup_logging, starting
from commandbus.config import MAX_VISIBILITY_TIMEOUT, MIN_VISIBILITY_TIMEOUT
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


def parse_domains(given: tuple[str, ...], registry: HandlerRegistry) -> list[str]:
    """The domains of ``--domain`` (repeated, or comma-separated), each once and served."""
    domains: list[str] = []
    for value in given:
        for name in value.split(","):
            name = name.strip()
            if not name:
                raise CLIError(f"--domain must name a domain, got {value!r}")
            if name in domains:
                raise CLIError(f"--domain {name!r} is given twice")
            domains.append(name)
    for name in domains:
        registry.validate_for(name)  # before any database is started or reached
    return domains


def banner(registry: HandlerRegistry, domains: list[str], concurrency: int) -> str:
    served = "; ".join(f"{d!r}: {', '.join(registry.command_types(d))}" for d in domains)
    if len(domains) == 1:
        return f"serving domain {served} (concurrency {concurrency})"
    return f"serving domains {served} (concurrency {concurrency} per domain)"


@click.command()
@click.option(
    "--app",
    "app",
    required=True,
    metavar="MODULE:REGISTRY",
    help="Where the HandlerRegistry is, e.g. 'myapp.handlers:registry'.",
)
@click.option(
    "--domain",
    "domain",
    required=True,
    multiple=True,
    metavar="NAME",
    help="A domain (queue) to serve. Repeat it (or separate names with commas) to serve "
    "several in one process: one reader per domain, one shared connection pool.",
)
@click.option(
    "--sagas",
    "sagas",
    default=None,
    metavar="MODULE:SAGAS",
    help="Where the sagas are (as for `commandbus coordinator --app`): a step's outcome "
    "then moves its saga in the same transaction, one hop instead of two through the "
    "coordinator (which must still run: timers, operators, and what the worker leaves "
    "to it).",
)
@click.option(
    "--concurrency",
    type=Number(1, MAX_COUNT, integer=True),
    default=10,
    show_default=True,
    help=f"Handlers running at once, per domain (1-{MAX_COUNT}).",
)
@click.option(
    "--vt",
    "vt",
    type=Number(
        MIN_VISIBILITY_TIMEOUT.total_seconds(),
        MAX_VISIBILITY_TIMEOUT.total_seconds(),
        unit="seconds",
    ),
    default=None,
    help="Visibility timeout in seconds, from 1 to 604800 (7 days), as VT_SECONDS "
    "(default: VT_SECONDS, else 30).",
)
@click.option(
    "--batch-size",
    type=Number(1, MAX_COUNT, integer=True),
    default=100,
    show_default=True,
    help=f"Messages read per query, per domain (1-{MAX_COUNT}).",
)
@click.option(
    "--grace",
    type=Number(0, MAX_GRACE_SECONDS, unit="seconds"),
    default=30.0,
    show_default=True,
    help="Seconds in-flight handlers get to finish on SIGINT/SIGTERM (up to 7 days).",
)
@otel_option
@log_level_option
@log_format_option
@click.pass_context
def worker(
    ctx: click.Context,
    app: str,
    domain: tuple[str, ...],
    sagas: str | None,
    concurrency: int,
    vt: float | None,
    batch_size: int,
    grace: float,
    otel: bool,
    log_level: str,
    log_format: str,
) -> None:
    """Process the commands of each --domain until SIGINT/SIGTERM, then stop gracefully.

    Log lines (the library's and your handlers' own loggers) go to stderr, with
    the correlation and command ids of the command being handled; the last one
    is a summary of what was processed.
    """
    with starting():  # from here on, a stop before it serves is a one-line error
        setup_logging(log_level, log_format)  # first: what follows logs (and fails) in it
        registry = load_registry(app)
        domains = parse_domains(domain, registry)
        saga_registry = None if sagas is None else load_sagas(sagas, "--sagas")
        config = load_config(ctx)
        setup_otel(otel, f"commandbus-worker-{'-'.join(domains)}")
        with database_url(ctx, logged=True) as url:
            w = Worker(
                url,
                registry,
                domains=domains,
                concurrency=concurrency,
                visibility_timeout=None if vt is None else timedelta(seconds=vt),
                batch_size=batch_size,
                config=config,
                sagas=saga_registry,
            )
            stopping = f"stopping: in-flight handlers get {grace:g}s (again to force)"
            # the worker logs its summary when it ends
            asyncio.run(
                serve(
                    w, grace=grace, banner=banner(registry, domains, concurrency), stopping=stopping
                )
            )
