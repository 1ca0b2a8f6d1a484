"""``commandbus demo``: a tour of the library against a real database."""

from __future__ import annotations

import asyncio

import click

from commandbus.cli._common import database_url
from commandbus.database import connect
from commandbus.migrations import migrate


def run_demo(url: str) -> int:
    """Run the demo against ``url``; return the process exit status."""
    return asyncio.run(_demo(url))


async def _demo(url: str) -> int:
    applied = await migrate(url)
    click.echo(f"migrations applied: {', '.join(applied) if applied else 'none (up to date)'}")
    conn = await connect(url)
    try:
        cur = await conn.execute(
            "SELECT table_name FROM information_schema.tables"
            " WHERE table_schema = 'commandbus' ORDER BY table_name"
        )
        tables = [str(row[0]) for row in await cur.fetchall()]
    finally:
        await conn.close()
    click.echo("tables in schema commandbus:")
    for table in tables:
        click.echo(f"  commandbus.{table}")
    return 0


@click.command()
@click.pass_context
def demo(ctx: click.Context) -> None:
    """Migrate the database and show what the library keeps in it."""
    with database_url(ctx) as url:
        code = run_demo(url)
    ctx.exit(code)
