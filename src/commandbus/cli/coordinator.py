"""``commandbus coordinator``: run the sagas of an application as a process."""

from __future__ import annotations

import asyncio
from typing import Any

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
from commandbus.cli.serving import import_app, serve, setup_logging, starting
from commandbus.sagas.coordinator import Coordinator
from commandbus.sagas.definition import Saga, SagaRegistry

MAX_BATCH = 10_000
MAX_GRACE_SECONDS = 7 * 24 * 3600


def load_sagas(spec: str, option: str = "--app") -> SagaRegistry:
    """Import ``module:attribute``: a SagaRegistry, a Saga, or a list of Saga."""
    found: Any = import_app(spec, "sagas", option)
    if isinstance(found, SagaRegistry):
        registry = found
    elif isinstance(found, Saga):
        registry = SagaRegistry([found])
    elif isinstance(found, list | tuple | set | frozenset) and all(
        isinstance(s, Saga) for s in found
    ):
        registry = SagaRegistry(found)  # refuses two definitions of one name and version
    else:
        raise CLIError(
            f"{spec!r} is not a SagaRegistry, a Saga or a list of Saga (got {type(found).__name__})"
        )
    if not len(registry):
        raise CLIError(f"{spec!r} holds no saga definitions")
    return registry


@click.command()
@click.option(
    "--app",
    "app",
    required=True,
    metavar="MODULE:SAGAS",
    help="Where the sagas are: a SagaRegistry, a Saga or a list of Saga, "
    "e.g. 'myapp.sagas:registry'.",
)
@click.option(
    "--batch-size",
    type=Number(1, MAX_BATCH, integer=True),
    default=100,
    show_default=True,
    help=f"Saga-queue messages (replies, timers, operators' requests) read and decided "
    f"together (1-{MAX_BATCH}).",
)
@click.option(
    "--grace",
    type=Number(0, MAX_GRACE_SECONDS, unit="seconds"),
    default=10.0,
    show_default=True,
    help="Seconds to finish recording what was decided on SIGINT/SIGTERM (up to 7 days).",
)
@otel_option
@log_level_option
@log_format_option
@click.pass_context
def coordinator(
    ctx: click.Context,
    app: str,
    batch_size: int,
    grace: float,
    otel: bool,
    log_level: str,
    log_format: str,
) -> None:
    """Run the sagas of an application until SIGINT/SIGTERM, then stop gracefully.

    The coordinator reads the replies of saga commands, step timers and
    operators' requests from the saga queue and moves each saga on. Several
    coordinators may run at once. Workers for the sagas' domains run apart
    ('commandbus worker').
    """
    with starting():  # from here on, a stop before it serves is a one-line error
        setup_logging(log_level, log_format)  # first: what follows logs (and fails) in it
        registry = load_sagas(app)
        config = load_config(ctx)
        setup_otel(otel, "commandbus-coordinator")
        with database_url(ctx, logged=True) as url:
            c = Coordinator(url, registry, batch_size=batch_size, config=config)
            sagas = ", ".join(f"{s.name} v{s.version}" for s in registry)
            domains = ", ".join(sorted(registry.domains))
            banner = f"coordinating sagas {sagas} over domains {domains} (batch size {batch_size})"
            stopping = f"stopping: recording what was decided, up to {grace:g}s (again to force)"
            # the coordinator logs its summary when it ends
            asyncio.run(serve(c, grace=grace, banner=banner, stopping=stopping))
