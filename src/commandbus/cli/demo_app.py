"""The demo's application: an order saga across inventory, payments and shipping.

``commandbus demo`` runs it in one process. Its parts also run as processes::

    commandbus coordinator --app commandbus.cli.demo_app:sagas
    commandbus worker --app commandbus.cli.demo_app:handlers --domain inventory
    commandbus worker --app commandbus.cli.demo_app:handlers --domain payments
    commandbus worker --app commandbus.cli.demo_app:handlers --domain shipping

An order reserves stock, books a delivery slot, charges the card and ships. A
failure undoes what was done, in reverse: the card is refunded, the delivery slot
cancelled, then the stock released. The handlers act on a small in-memory
:class:`Shop`, steered by the order's data: the desk warehouse's system is busy
once per order (a retry), card ``0002`` is declined, card ``0119`` gets no answer
(the charge step times out), and a postcode no courier serves sends the shipment
to the troubleshooting queue, where an operator can fix and retry it.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import timedelta
from typing import Any

import attrs

from commandbus.engine.worker.context import HandlerContext
from commandbus.engine.worker.registry import HandlerRegistry
from commandbus.errors import BusinessRuleError, PermanentCommandError, TransientCommandError
from commandbus.models import Command
from commandbus.sagas.definition import Compensation, Saga, SagaContext, SagaRegistry, Step

#: How long the charge step waits for the card network before it fails the order.
CHARGE_TIMEOUT = timedelta(seconds=1)

#: Cards with a behaviour (any other card is charged at once).
DECLINED_CARD = "0002"
SILENT_CARD = "0119"


@attrs.define
class Shop:
    """What the handlers act on: stock, the postcodes couriers serve, the card network.

    Reserving an item of ``busy_skus`` fails transiently once per order.
    ``network_answers`` releases charges waiting for the card network (they give
    up on their own after ``silence`` seconds).
    """

    stock: dict[str, int] = attrs.field(factory=lambda: {"desk": 5, "lamp": 10})
    busy_skus: set[str] = attrs.field(factory=lambda: {"desk"})
    postcodes: set[str] = attrs.field(factory=lambda: {"10115", "75001"})
    silence: float = 10.0
    busy_once: set[str] = attrs.field(factory=set)
    network_answers: asyncio.Event = attrs.field(factory=asyncio.Event)


def build_handlers(shop: Shop) -> HandlerRegistry:
    """The handlers of the three domains, acting on ``shop``."""
    reg = HandlerRegistry()

    @reg.handler("inventory", "ReserveStock")
    async def reserve(cmd: Command, ctx: HandlerContext) -> dict[str, Any]:
        order, sku, qty = str(cmd.data["order_id"]), cmd.data["sku"], int(cmd.data["qty"])
        if sku in shop.busy_skus and order not in shop.busy_once:
            shop.busy_once.add(order)
            raise TransientCommandError(f"the {sku} warehouse is busy", code="WAREHOUSE_BUSY")
        if shop.stock.get(sku, 0) < qty:
            raise BusinessRuleError(f"only {shop.stock.get(sku, 0)} {sku} left", code="NO_STOCK")
        shop.stock[sku] -= qty
        return {"reservation": f"R-{order}", "left": shop.stock[sku]}

    @reg.handler("inventory", "ReleaseStock")
    async def release(cmd: Command, ctx: HandlerContext) -> dict[str, Any]:
        sku, qty = cmd.data["sku"], int(cmd.data["qty"])
        shop.stock[sku] = shop.stock.get(sku, 0) + qty
        return {"released": qty, "left": shop.stock[sku]}

    @reg.handler("shipping", "ScheduleDelivery")
    async def schedule(cmd: Command, ctx: HandlerContext) -> dict[str, Any]:
        return {"slot": f"tomorrow 09-12, {cmd.data['postcode']}"}

    @reg.handler("shipping", "CancelDelivery")
    async def cancel_delivery(cmd: Command, ctx: HandlerContext) -> dict[str, Any]:
        return {"cancelled": cmd.data["slot"]}

    @reg.handler("payments", "ChargeCard")
    async def charge(cmd: Command, ctx: HandlerContext) -> dict[str, Any]:
        order, card = str(cmd.data["order_id"]), str(cmd.data["card"])
        if card == DECLINED_CARD:
            raise BusinessRuleError(f"card {card} declined", code="CARD_DECLINED")
        if card == SILENT_CARD:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(shop.network_answers.wait(), shop.silence)
            raise BusinessRuleError("the card network gave no answer", code="NO_ANSWER")
        return {"charge": f"CH-{order}", "amount": cmd.data["amount"]}

    @reg.handler("payments", "RefundCard")
    async def refund(cmd: Command, ctx: HandlerContext) -> dict[str, Any]:
        return {"refunded": cmd.data["charge"]}

    @reg.handler("shipping", "Ship")
    async def ship(cmd: Command, ctx: HandlerContext) -> dict[str, Any]:
        postcode = str(cmd.data["postcode"])
        if postcode not in shop.postcodes:
            raise PermanentCommandError(f"no courier serves postcode {postcode}", code="NO_COURIER")
        return {"tracking": f"TRK-{cmd.data['order_id']}"}

    return reg


def _items(ctx: SagaContext) -> dict[str, Any]:
    return {"order_id": ctx.input["order_id"], "sku": ctx.input["sku"], "qty": ctx.input["qty"]}


def _delivery(ctx: SagaContext) -> dict[str, Any]:
    return {"order_id": ctx.input["order_id"], "postcode": ctx.input["postcode"]}


def _payment(ctx: SagaContext) -> dict[str, Any]:
    return {
        "order_id": ctx.input["order_id"],
        "card": ctx.input["card"],
        "amount": ctx.input["amount"],
    }


ORDER = Saga(
    "order",
    version=1,
    steps=[
        Step(
            "reserve",
            domain="inventory",
            command="ReserveStock",
            data=_items,
            compensation=Compensation("ReleaseStock", data=_items),
        ),
        Step(
            "schedule",
            domain="shipping",
            command="ScheduleDelivery",
            data=_delivery,
            compensation=Compensation(
                "CancelDelivery",
                data=lambda ctx: {**_delivery(ctx), "slot": ctx.results["schedule"]["slot"]},
            ),
        ),
        Step(
            "charge",
            domain="payments",
            command="ChargeCard",
            data=_payment,
            timeout=CHARGE_TIMEOUT,
            compensation=Compensation(
                "RefundCard",
                data=lambda ctx: {**_payment(ctx), "charge": ctx.results["charge"]["charge"]},
            ),
        ),
        Step("ship", domain="shipping", command="Ship", data=_delivery),
    ],
)

#: For ``commandbus coordinator --app commandbus.cli.demo_app:sagas``.
sagas = SagaRegistry([ORDER])
#: For ``commandbus worker --app commandbus.cli.demo_app:handlers --domain ...``.
shop = Shop()
handlers = build_handlers(shop)
