"""``commandbus demo``: an order saga across three domains, against a real database.

Four orders run through the saga of :mod:`commandbus.cli.demo_app`, with workers
for inventory, payments and shipping and a saga coordinator in this process:

* A-1001 completes; the warehouse is busy at first and its reservation is retried.
* A-1002's card is declined: the saga compensates in reverse (the delivery slot
  is cancelled, then the stock released).
* A-1003's card network never answers: the charge step times out and the saga
  compensates the same way (the network's late refusal is ignored).
* A-1004's postcode has no courier: the shipment goes to the troubleshooting
  queue and the saga waits on an operator, who adds a courier and retries the
  command; the order completes.

Then it prints each saga's timeline (as ``commandbus saga show`` does), the
sagas and commands by status, the stock, and the projection check.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any
from uuid import UUID, uuid4

import click

from commandbus.cli._common import CLIError, database_url, load_config, otel_option, setup_otel
from commandbus.cli.demo_app import (
    CHARGE_TIMEOUT,
    DECLINED_CARD,
    ORDER,
    SILENT_CARD,
    Shop,
    build_handlers,
)
from commandbus.cli.serving import Servable
from commandbus.cli.timeline import duration, error_text, load_view, render, status_text
from commandbus.config import Config
from commandbus.engine.commands.bus import CommandBus
from commandbus.engine.commands.read import CommandFilter
from commandbus.engine.db.connect import describe_server
from commandbus.engine.db.databases import check_database_name, ensure_database, with_database
from commandbus.engine.worker.worker import Worker
from commandbus.migrations import migrate
from commandbus.models import CommandRecord, CommandStatus
from commandbus.sagas.client import SagaClient, SagaStart
from commandbus.sagas.coordinator import Coordinator
from commandbus.sagas.definition import SagaRegistry
from commandbus.sagas.read import SagaFilter, SagaRecord
from commandbus.sagas.state import SagaStatus, StepStatus

DEMO_CONFIG = Config(
    backoff_base=timedelta(milliseconds=300),
    backoff_multiplier=2.0,
    backoff_max=timedelta(seconds=2),
    poll_interval=timedelta(milliseconds=200),
)
DOMAINS = ("inventory", "payments", "shipping")
#: The database the demo makes beside DATABASE_URL's, on the same server.
DEMO_DATABASE = "commandbus_demo"
OPEN = (CommandStatus.PENDING, CommandStatus.RETRY_SCHEDULED)
#: How long the demo waits for its orders before it gives up.
DEADLINE_SECONDS = 60.0

#: (order id, item, card, postcode, what happens)
ORDERS: tuple[tuple[str, str, str, str, str], ...] = (
    ("A-1001", "desk", "4242", "10115", "the warehouse is busy at first: a retry, then done"),
    ("A-1002", "lamp", DECLINED_CARD, "10115", "the card is declined: compensated"),
    ("A-1003", "lamp", SILENT_CARD, "75001", "the card network never answers: timed out"),
    ("A-1004", "lamp", "4242", "99999", "no courier for the postcode: an operator steps in"),
)
#: The order whose charge hangs; it starts once the others are past their charge,
#: so that no other charge waits behind it in the payments worker.
SILENT_ORDER = "A-1003"


def _start(order: tuple[str, str, str, str, str], run: UUID) -> SagaStart:
    order_id, sku, card, postcode, _story = order
    data = {
        "order_id": order_id,
        "sku": sku,
        "qty": 1,
        "card": card,
        "amount": 40,
        "postcode": postcode,
    }
    return SagaStart(input=data, correlation_id=run)


async def _orders(sagas: SagaClient, run: UUID) -> dict[str, SagaRecord]:
    page = await sagas.list_sagas(SagaFilter(correlation_id=run), limit=100)
    return {str(r.state.input["order_id"]): r for r in page.items}


async def _commands(bus: CommandBus, run: UUID) -> list[CommandRecord]:
    page = await bus.list_commands(CommandFilter(correlation_id=run), limit=1000)
    return list(page.items)


def _paid(record: SagaRecord) -> bool:
    """The order's charge has an outcome (or will never be sent)."""
    charge = record.state.steps.get("charge")
    return record.status.is_final or (
        charge is not None and charge.status is not StepStatus.RUNNING
    )


async def _play(
    bus: CommandBus, sagas: SagaClient, shop: Shop, run: UUID, check: Callable[[], None]
) -> dict[str, UUID]:
    """Start the orders and see them through, stepping in as the operator and as
    the card network; returns the saga id of each order."""
    deadline = time.monotonic() + DEADLINE_SECONDS
    first = [o for o in ORDERS if o[0] != SILENT_ORDER]
    started = await sagas.start_sagas(ORDER, [_start(o, run) for o in first])
    ids = {o[0]: s.saga_id for o, s in zip(first, started, strict=True)}
    click.echo(f"started {', '.join(ids)} in one transaction (correlation {run})")
    operator_done = network_done = False
    while time.monotonic() < deadline:
        check()
        orders = await _orders(sagas, run)
        if SILENT_ORDER not in ids and all(_paid(orders[o]) for o in ids):
            silent = _start(next(o for o in ORDERS if o[0] == SILENT_ORDER), run)
            again = await sagas.start_saga(ORDER, silent.input, correlation_id=run)
            ids[SILENT_ORDER] = again.saga_id
            click.echo(f"started {SILENT_ORDER}")
        late = orders.get(SILENT_ORDER)
        if not network_done and late is not None and late.status.is_final:
            # the order is compensated; the card network finally answers (a refusal)
            shop.network_answers.set()
            network_done = True
        stuck = orders.get("A-1004")
        if (
            not operator_done
            and stuck is not None
            and stuck.status is SagaStatus.WAITING_ON_OPERATOR
        ):
            await _operator(bus, stuck, shop)
            operator_done = True
        commands = await _commands(bus, run)
        if (
            len(orders) == len(ORDERS)
            and all(r.status.is_final for r in orders.values())
            and not any(c.status in OPEN for c in commands)
        ):
            return ids
        await asyncio.sleep(0.05)
    raise CLIError(f"the demo's orders did not finish within {DEADLINE_SECONDS:g}s")


async def _operator(bus: CommandBus, stuck: SagaRecord, shop: Shop) -> None:
    tsq = await bus.troubleshooting.list(CommandFilter(correlation_id=stuck.correlation_id))
    for c in tsq.items:
        click.echo(
            f"troubleshooting queue: {c.domain}/{c.command_type} {c.command_id} -> "
            f"{error_text(c.last_error)}"
        )
        click.echo(
            f"  saga {stuck.saga_id} ({stuck.state.input['order_id']}) is "
            f"{status_text(stuck.status.value)}"
        )
        postcode = str(stuck.state.input["postcode"])
        shop.postcodes.add(postcode)  # the operator fixes the cause ...
        await bus.troubleshooting.retry(c.domain, c.command_id, operator="demo")
        click.echo(f"operator: a courier now serves {postcode}; command re-queued")


def _counts(statuses: Sequence[str]) -> str:
    return ", ".join(f"{status_text(k)} {v}" for k, v in sorted(Counter(statuses).items()))


@asynccontextmanager
async def _running(runners: Sequence[Servable[Any]]) -> AsyncIterator[Callable[[], None]]:
    """Run workers and a coordinator in this process until the block ends.

    Yields a check that raises what stopped one of them early (the tour would
    otherwise wait for orders that never move).
    """
    tasks = [asyncio.create_task(r.run(), name=f"demo-{i}") for i, r in enumerate(runners)]

    def check() -> None:
        for t in tasks:
            if t.done():
                t.result()  # raises why it stopped
                raise CLIError("a worker or the coordinator of the demo stopped early")

    try:
        while not all(r.ready.is_set() for r in runners):
            check()
            await asyncio.sleep(0.01)
        yield check
    finally:
        for r in runners:
            r.request_stop(2)
        results = await asyncio.gather(*tasks, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result


async def _demo(url: str) -> int:
    # the failures below are on purpose: keep the worker's warnings out of the tour
    # (only for the tour: the level is put back, whoever calls it in-process)
    worker_log = logging.getLogger("commandbus.worker")
    level = worker_log.level
    worker_log.setLevel(logging.ERROR)
    try:
        return await _tour(url)
    finally:
        worker_log.setLevel(level)


async def _tour(url: str) -> int:
    started = time.monotonic()
    applied = await migrate(url)
    click.echo(f"schema: {'applied ' + ', '.join(applied) if applied else 'up to date'}")
    shop = Shop()
    stock_before = dict(shop.stock)
    handlers = build_handlers(shop)
    run = uuid4()  # this run's correlation id: every saga and command of it carries it
    registry = SagaRegistry([ORDER])
    runners: list[Servable[Any]] = [
        # given the sagas, a worker moves an order on in its step's own transaction
        *(
            Worker(url, handlers, domain=d, concurrency=4, config=DEMO_CONFIG, sagas=registry)
            for d in DOMAINS
        ),
        Coordinator(url, registry, config=DEMO_CONFIG),
    ]
    async with CommandBus(url, config=DEMO_CONFIG) as bus:
        sagas = SagaClient(bus)
        async with _running(runners) as check:
            click.echo(
                f"workers for {', '.join(DOMAINS)} and a saga coordinator are running "
                "in this process"
            )
            click.echo(
                f"saga {ORDER.name!r}: reserve stock -> schedule delivery -> charge card "
                f"(timeout {duration(CHARGE_TIMEOUT.total_seconds())}) -> ship; "
                "a failure undoes the completed steps in reverse"
            )
            click.echo("orders:")
            for order, sku, card, postcode, story in ORDERS:
                click.echo(f"  {order} a {sku}, card {card}, postcode {postcode}: {story}")
            try:
                ids = await _play(bus, sagas, shop, run, check)
            finally:
                shop.network_answers.set()  # nothing waits on the card network past the end

        for order, *_data, story in ORDERS:
            view = await load_view(bus, ids[order])
            if view is None:  # pragma: no cover - started above
                continue
            click.echo("")
            click.echo(click.style(f"order {order}: {story}", bold=True))
            for line in render(view):
                click.echo(line)

        orders = await _orders(sagas, run)
        commands = await _commands(bus, run)
        click.echo("")
        click.echo(f"sagas by status:    {_counts([r.status.value for r in orders.values()])}")
        click.echo(f"commands by status: {_counts([c.status.value for c in commands])}")
        shipped = sum(1 for r in orders.values() if r.status is SagaStatus.COMPLETED)
        released = sum(1 for c in commands if c.command_type == "ReleaseStock")
        stock = ", ".join(f"{k} {stock_before[k]} -> {v}" for k, v in sorted(shop.stock.items()))
        click.echo(f"stock: {stock} ({shipped} orders shipped, {released} reservations released)")
        report = await bus.verify_projection()
        saga_report = await sagas.verify_projection()
        ok = report.ok and saga_report.ok
        click.echo(
            f"projection check: {report.checked} commands and {saga_report.checked} sagas, "
            f"{'equal to a replay of the events' if ok else 'DIFFERENCES FOUND'}"
        )
    click.echo(f"done in {time.monotonic() - started:.1f}s")
    return 0 if ok else 1


def run_demo(url: str) -> int:
    """Run the demo against ``url``; return the process exit status."""
    return asyncio.run(_demo(url))


async def _own_database(url: str, name: str) -> str:
    """The URL of database ``name`` beside ``url``'s, created if missing; says which."""
    created = await ensure_database(url, name)
    target = with_database(url, name)
    how = (
        "created for the demo"
        if created
        else "reused: earlier runs stay in it; drop it to start afresh"
    )
    click.echo(f"database: {describe_server(target)} ({how})")
    return target


@click.command()
@click.option(
    "--database",
    metavar="NAME",
    help=f"Database to run in, created if missing, on the server of DATABASE_URL (default "
    f"{DEMO_DATABASE}: the database DATABASE_URL names is left alone) or of the embedded "
    "server (default: its own).",
)
@otel_option
@click.pass_context
def demo(ctx: click.Context, database: str | None, otel: bool) -> None:
    """Run an order saga across inventory, payments and shipping, and show what happened.

    One order completes (after a retried reservation), one is declined and
    compensated, one times out and is compensated, and one waits on an operator
    who fixes it. Prints each saga's timeline and the status counts. With
    DATABASE_URL it runs in a database of its own on that server (commandbus_demo,
    or --database; created if missing, reused by later runs) and leaves the
    database DATABASE_URL names untouched; without it, in the embedded PostgreSQL.
    With --otel (or COMMANDBUS_OTEL=1) its sagas are exported as traces
    ('commandbus trace ID' draws one from the audit stream either way).
    """
    if database is not None:
        check_database_name(database)
    name = database or (DEMO_DATABASE if load_config(ctx).database_url else None)
    setup_otel(otel, "commandbus-demo")
    with database_url(ctx) as url:
        if name is not None:
            url = asyncio.run(_own_database(url, name))
        code = run_demo(url)
    ctx.exit(code)
