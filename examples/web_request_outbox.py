"""Send a command inside a web request's own database transaction (a transactional outbox).

Run it (with no DATABASE_URL it uses the embedded PostgreSQL):

    DATABASE_URL=postgresql://... python examples/web_request_outbox.py

A small HTTP server (``asyncio.start_server``, standard library only) takes
``POST /orders``. In ONE transaction its handler inserts the order into the
shop's own table, sends the command ``shipping/ShipOrder`` on the same connection
(``conn=``) and takes the stock; the command and the order commit together or
not at all. The second request asks for more lamps than there are: taking the
stock fails after the send, the transaction rolls back, and the command it sent
is gone with it. A worker then ships what was really ordered.

The shop's tables live in the schema ``outbox_example``, recreated on each run.
"""

import asyncio
import json
import uuid

import psycopg

from commandbus import (
    Command,
    CommandBus,
    HandlerContext,
    HandlerRegistry,
    Worker,
    migrate,
)

SCHEMA = """
DROP SCHEMA IF EXISTS outbox_example CASCADE;
CREATE SCHEMA outbox_example;
CREATE TABLE outbox_example.stock (sku text PRIMARY KEY, in_stock int CHECK (in_stock >= 0));
CREATE TABLE outbox_example.orders (
    order_id text PRIMARY KEY, sku text NOT NULL, qty int NOT NULL, command_id uuid NOT NULL);
CREATE TABLE outbox_example.shipments (order_id text PRIMARY KEY, shipped_at timestamptz);
INSERT INTO outbox_example.stock VALUES ('lamp', 10);
"""

registry = HandlerRegistry()


@registry.handler("shipping", "ShipOrder")
async def ship(cmd: Command, ctx: HandlerContext) -> dict[str, str]:
    db = await ctx.connection()  # commits with the command's completion
    await db.execute(
        "INSERT INTO outbox_example.shipments VALUES (%s, now())", (cmd.data["order_id"],)
    )
    return {"shipped": cmd.data["order_id"]}


async def create_order(bus: CommandBus, order: dict[str, object]) -> tuple[int, dict[str, object]]:
    """The web request's work: the order, its command and the stock, in one transaction."""
    command_id = uuid.uuid4()  # chosen up front, so a rolled-back attempt can be looked up
    try:
        async with bus.pool.connection() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO outbox_example.orders VALUES (%s, %s, %s, %s)",
                (order["order_id"], order["sku"], order["qty"], command_id),
            )
            sent = await bus.send(
                "shipping",
                "ShipOrder",
                {"order_id": order["order_id"]},
                command_id=command_id,
                conn=conn,  # joins this transaction: nothing commits behind it
            )
            sent.unwrap()
            await conn.execute(
                "UPDATE outbox_example.stock SET in_stock = in_stock - %s WHERE sku = %s",
                (order["qty"], order["sku"]),
            )
    except psycopg.errors.CheckViolation:  # the whole transaction rolled back
        return 409, {"error": f"not enough {order['sku']} in stock", "command_id": str(command_id)}
    return 201, {"order_id": order["order_id"], "command_id": str(command_id)}


async def http_server(bus: CommandBus) -> asyncio.Server:
    """POST /orders, answered by create_order."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request_line = (await reader.readline()).decode()
        headers: dict[str, str] = {}
        while (line := (await reader.readline()).decode().strip()) != "":
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        if request_line.split()[:2] == ["POST", "/orders"]:
            status, reply = await create_order(bus, json.loads(body))
        else:
            status, reply = 404, {"error": "not found"}
        payload = json.dumps(reply).encode()
        writer.write(
            f"HTTP/1.1 {status} -\r\ncontent-type: application/json\r\n"
            f"content-length: {len(payload)}\r\nconnection: close\r\n\r\n".encode()
            + payload
        )
        await writer.drain()
        writer.close()

    return await asyncio.start_server(serve, "127.0.0.1", 0)


async def post(port: int, path: str, data: dict[str, object]) -> tuple[int, dict[str, object]]:
    """A client's request, to the server above."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    body = json.dumps(data).encode()
    writer.write(
        f"POST {path} HTTP/1.1\r\nhost: shop\r\ncontent-length: {len(body)}\r\n\r\n".encode() + body
    )
    await writer.drain()
    status = int((await reader.readline()).split()[1])
    raw = await reader.read()
    writer.close()
    return status, json.loads(raw.split(b"\r\n\r\n", 1)[1])


async def main() -> None:
    await migrate()
    async with CommandBus() as bus:
        async with bus.pool.connection() as conn:
            await conn.execute(SCHEMA)
        server = await http_server(bus)
        port = server.sockets[0].getsockname()[1]
        async with server:
            for order in (
                {"order_id": "A-1", "sku": "lamp", "qty": 2},
                {"order_id": "A-2", "sku": "lamp", "qty": 50},
            ):
                status, reply = await post(port, "/orders", order)
                print(f"POST /orders {order['order_id']} x{order['qty']} -> {status} {reply}")
                if status != 201:  # rolled back: the command it sent was never sent
                    found = await bus.get_command("shipping", str(reply["command_id"]))
                    print(f"  command {reply['command_id']}: {found or 'not found, nothing sent'}")

        async with Worker(bus.url, registry, domain="shipping"):
            async with bus.pool.connection() as conn:
                cur = await conn.execute("SELECT order_id, command_id FROM outbox_example.orders")
                orders = await cur.fetchall()
            for order_id, command_id in orders:
                while True:
                    record = await bus.get_command("shipping", command_id)
                    if record is not None and record.status.is_final:
                        break
                    await asyncio.sleep(0.05)
                print(f"order {order_id}: {record.command_type} {record.status} {record.result}")

        async with bus.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT (SELECT in_stock FROM outbox_example.stock WHERE sku = 'lamp'),"
                " (SELECT string_agg(order_id, ', ') FROM outbox_example.shipments)"
            )
            in_stock, shipped = await cur.fetchone() or (None, None)
        print(f"lamps in stock: {in_stock}; shipped: {shipped}")


if __name__ == "__main__":
    asyncio.run(main())
