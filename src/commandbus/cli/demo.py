"""``commandbus demo``: a tour of the library against a real database, in seconds.

It sends a mix of commands to two domains, processes them with in-process
workers (successes, a transient failure that succeeds on retry, a permanent
failure that lands in the troubleshooting queue, a business-rule failure), has
an operator retry the troubleshooting-queue command after "fixing" its cause,
then prints every command's event history and the status counts.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import timedelta
from typing import Any
from uuid import UUID, uuid4

import click

from commandbus import event_types as ev
from commandbus.config import Config
from commandbus.engine.commands.bus import CommandBus
from commandbus.engine.commands.read import CommandFilter
from commandbus.engine.worker.context import HandlerContext
from commandbus.engine.worker.registry import HandlerRegistry
from commandbus.engine.worker.worker import Worker
from commandbus.errors import BusinessRuleError, PermanentCommandError, TransientCommandError
from commandbus.migrations import migrate
from commandbus.models import Command, CommandRequest, CommandStatus

DEMO_CONFIG = Config(
    backoff_base=timedelta(milliseconds=300),
    backoff_multiplier=2.0,
    backoff_max=timedelta(seconds=2),
    poll_interval=timedelta(milliseconds=200),
)
OPEN = (CommandStatus.PENDING, CommandStatus.RETRY_SCHEDULED)


def build_registry(cards_on_file: set[str]) -> HandlerRegistry:
    registry = HandlerRegistry()

    @registry.handler("payments", "ChargeCard")
    async def charge(cmd: Command, ctx: HandlerContext) -> dict[str, Any]:
        card = cmd.data["card"]
        if cmd.data.get("flaky") and ctx.attempt == 1:
            raise TransientCommandError("payment gateway timed out")
        if cmd.data["amount"] > 1000:
            raise BusinessRuleError("amount over the customer's limit", code="OVER_LIMIT")
        if card not in cards_on_file:
            raise PermanentCommandError(f"card {card} is expired", code="CARD_EXPIRED")
        return {"charged": cmd.data["amount"], "attempt": ctx.attempt}

    @registry.handler("shipping", "ShipOrder")
    async def ship(cmd: Command, ctx: HandlerContext) -> dict[str, Any]:
        return {"tracking": f"TRK-{str(cmd.command_id)[:8].upper()}"}

    return registry


async def _settled(bus: CommandBus, run: UUID, timeout: float = 20.0) -> None:  # noqa: ASYNC109
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        page = await bus.list_commands(CommandFilter(correlation_id=run), limit=1000)
        if not any(c.status in OPEN for c in page.items):
            return
        await asyncio.sleep(0.05)
    raise click.ClickException("the demo's commands did not settle in time")


async def _demo(url: str) -> int:
    started = time.monotonic()
    # the failures below are on purpose: keep the worker's warnings out of the tour
    logging.getLogger("commandbus.worker").setLevel(logging.ERROR)
    applied = await migrate(url)
    click.echo(f"schema: {'applied ' + ', '.join(applied) if applied else 'up to date'}")
    cards_on_file = {"4242", "5555"}
    registry = build_registry(cards_on_file)
    run = uuid4()  # this run's correlation id
    async with CommandBus(url, config=DEMO_CONFIG) as bus:
        sends = [
            ("payments", "ChargeCard", {"card": "4242", "amount": 40}),
            ("payments", "ChargeCard", {"card": "5555", "amount": 75, "flaky": True}),
            ("payments", "ChargeCard", {"card": "0000", "amount": 20}),
            ("payments", "ChargeCard", {"card": "4242", "amount": 5000}),
        ]
        for domain, ctype, data in sends:
            result = await bus.send(domain, ctype, data, correlation_id=run)
            result.unwrap()
        batch = await bus.send_batch(
            [
                CommandRequest(domain="shipping", command_type="ShipOrder", data={"order": n})
                for n in (1, 2)
            ],
            name="demo shipments",
            correlation_id=run,
        )
        batch_id = batch.unwrap().batch_id
        click.echo(f"sent {len(sends)} payments and a batch of 2 shipments (correlation {run})")

        workers = [
            Worker(url, registry, domain=d, concurrency=4, config=DEMO_CONFIG)
            for d in ("payments", "shipping")
        ]
        tasks = [asyncio.create_task(w.run(), name=f"demo-{w.domain}") for w in workers]
        try:
            await _settled(bus, run)
            tsq = await bus.troubleshooting.list(CommandFilter(correlation_id=run))
            for c in tsq.items:
                err = c.last_error or {}
                click.echo(
                    f"troubleshooting queue: {c.command_type} {c.command_id} -> "
                    f"{err.get('code')}: {err.get('message')}"
                )
                cards_on_file.add("0000")  # the operator fixes the card on file ...
                await bus.troubleshooting.retry(c.domain, c.command_id, operator="demo")
                click.echo("operator: card updated, command re-queued")
            await _settled(bus, run)
        finally:
            for w in workers:
                await w.stop(timeout=5)
            await asyncio.gather(*tasks)

        click.echo("")
        page = await bus.list_commands(CommandFilter(correlation_id=run), limit=1000)
        for c in page.items:
            click.echo(f"{c.domain}/{c.command_type} {c.command_id}: {c.status.value}")
            for e in await bus.command_history(c.domain, c.command_id):
                detail = _detail(e.event_type, e.data)
                click.echo(f"  v{e.stream_version} {e.event_type}{detail}")
        counts: dict[str, int] = {}
        for c in page.items:
            counts[c.status.value] = counts.get(c.status.value, 0) + 1
        click.echo("")
        click.echo("status counts: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
        progress = await bus.get_batch(batch_id)
        if progress is not None:
            click.echo(f"batch '{progress.name}': {progress.finished}/{progress.total} finished")
        report = await bus.verify_projection()
        click.echo(
            f"projection check: {report.checked} commands, "
            f"{'equal to a replay of the events' if report.ok else 'DIFFERENCES FOUND'}"
        )
    click.echo(f"done in {time.monotonic() - started:.1f}s")
    return 0 if report.ok else 1


def _detail(event_type: str, data: dict[str, Any]) -> str:
    if event_type == ev.COMMAND_SENT:
        return f" data={data.get('data')}"
    if "error" in data:
        err = data["error"]
        extra = f", retry in {data['delay_seconds']:.1f}s" if "delay_seconds" in data else ""
        return f" attempt {data.get('attempt')}: {err['code']} {err['message']}{extra}"
    if "result" in data:
        return f" attempt {data.get('attempt', '-')}: result={data['result']}"
    if event_type == ev.COMMAND_RETRIED_BY_OPERATOR:
        return f" by {data.get('operator')}"
    return ""


def run_demo(url: str) -> int:
    """Run the demo against ``url``; return the process exit status."""
    return asyncio.run(_demo(url))


@click.command()
@click.pass_context
def demo(ctx: click.Context) -> None:
    """Send, process, retry and troubleshoot a few commands, and show their events."""
    from commandbus.cli._common import database_url

    with database_url(ctx) as url:
        code = run_demo(url)
    ctx.exit(code)
