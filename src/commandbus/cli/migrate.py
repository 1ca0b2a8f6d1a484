"""``commandbus migrate``: apply pending schema migrations."""

from __future__ import annotations

import asyncio

import click

from commandbus.cli._common import database_url
from commandbus.migrations import migrate as apply_migrations


@click.command()
@click.pass_context
def migrate(ctx: click.Context) -> None:
    """Install PGMQ if needed and apply pending migrations (safe to run concurrently)."""
    with database_url(ctx) as url:
        applied = asyncio.run(apply_migrations(url))
    if not applied:
        click.echo("schema is up to date")
    for name in applied:
        click.echo(f"applied {name}")
