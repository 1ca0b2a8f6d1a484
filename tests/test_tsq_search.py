"""The troubleshooting queue's ``error_contains``: a literal, case-insensitive substring.

It searches the last error's message only (not the JSON keys, code or type), and
``_``, ``%`` and backslashes are plain characters.
"""

from __future__ import annotations

from commandbus import (
    Command,
    CommandBus,
    CommandFilter,
    HandlerContext,
    HandlerRegistry,
    PermanentCommandError,
    Worker,
)
from support import FAST, wait_for

MESSAGES = [
    "a_c failed",
    "abc failed",
    "rate 0% off",
    "rate 10 off",
    r"cannot open C:\temp\x.txt",
    "plain trouble",
    "100% sure",
]


async def test_error_contains_is_literal_over_the_message(dsn: str, bus: CommandBus) -> None:
    reg = HandlerRegistry()

    @reg.handler("payments", "Charge")
    async def charge(cmd: Command, ctx: HandlerContext) -> None:
        raise PermanentCommandError(cmd.data["message"], code="SOME_CODE")

    for message in MESSAGES:
        assert (await bus.send("payments", "Charge", {"message": message})).ok
    async with Worker(dsn, reg, domain="payments", config=FAST):

        async def all_in_tsq() -> bool:
            return len((await bus.troubleshooting.list()).items) == len(MESSAGES)

        await wait_for(all_in_tsq)

    async def found(text: str) -> list[str]:
        page = await bus.troubleshooting.list(CommandFilter(error_contains=text))
        return sorted(str((c.last_error or {})["message"]) for c in page.items)

    assert await found("a_c") == ["a_c failed"]
    assert await found("A_C") == ["a_c failed"]
    assert await found("0%") == ["100% sure", "rate 0% off"]
    assert await found("0% o") == ["rate 0% off"]
    assert await found("%") == ["100% sure", "rate 0% off"]
    assert await found("_") == ["a_c failed"]
    assert await found("C:\\temp") == [r"cannot open C:\temp\x.txt"]
    assert await found("c:\\TEMP\\x") == [r"cannot open C:\temp\x.txt"]
    assert await found("\\") == [r"cannot open C:\temp\x.txt"]
    # JSON keys and the other fields are not the message
    for other in ("code", "message", "type", '"', ":", "{", "SOME_CODE", "PermanentCommandError"):
        assert await found(other) == ([r"cannot open C:\temp\x.txt"] if other == ":" else [])
    assert await found("FAILED") == ["a_c failed", "abc failed"]
