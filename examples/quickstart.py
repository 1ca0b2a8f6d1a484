"""The README's quick start: one command sent, handled by a worker, and its history.

Run it (with no DATABASE_URL it uses the embedded PostgreSQL, see the README):

    python examples/quickstart.py

The code below is the README's quick start word for word (tests/test_quickstart.py
checks that, and runs the README's copy as printed). It creates a table ``ledger``.
"""

import asyncio
from commandbus import (
    CommandBus, HandlerRegistry, Worker, Command, HandlerContext,
    BusinessRuleError, CommandStatus, migrate,
)

registry = HandlerRegistry()

@registry.handler("payments", "ChargeCard")
async def charge(cmd: Command, ctx: HandlerContext) -> dict:
    if cmd.data["amount"] > 1000:
        raise BusinessRuleError("over the limit")       # FAILED at once, no retry
    db = await ctx.connection()                          # commits WITH the completion
    await db.execute("INSERT INTO ledger (command_id, amount) VALUES (%s, %s)",
                     (cmd.command_id, cmd.data["amount"]))
    return {"charged": cmd.data["amount"]}               # the command's result

async def main() -> None:
    await migrate()                                      # explicit and idempotent
    async with CommandBus() as bus:
        async with bus.pool.connection() as conn:
            await conn.execute("CREATE TABLE IF NOT EXISTS ledger (command_id uuid, amount int)")
        sent = await bus.send("payments", "ChargeCard", {"amount": 40})
        if not sent.ok:                                  # e.g. a duplicate command id
            raise SystemExit(sent.message)
        cid = sent.value.command_id
        async with Worker(bus.url, registry, domain="payments", concurrency=10):
            while (await bus.get_command("payments", cid)).status is CommandStatus.PENDING:
                await asyncio.sleep(0.05)
        # leaving the block stopped the worker gracefully (Worker.run()/stop() also exist)
        print(await bus.get_command("payments", cid))
        for event in await bus.command_history("payments", cid):
            print(event.stream_version, event.event_type, event.data)

asyncio.run(main())
