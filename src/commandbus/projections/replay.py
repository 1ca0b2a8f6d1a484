"""Rebuild the command status projection from the event stream, and verify it.

``replay`` folds the events with the same patches the engine writes live
(:mod:`commandbus.projections.command_projection`), ``rebuild`` writes the result
into a fresh table (or replaces the live one), and ``verify`` compares the live
table with a replay inside ONE repeatable-read snapshot and reports every
difference.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

import attrs
from psycopg import sql
from psycopg.pq import TransactionStatus
from psycopg.rows import dict_row

from commandbus.engine import event_types as ev
from commandbus.engine.connections import Conn
from commandbus.projections import sql as q
from commandbus.projections.command_projection import apply, patch_for, row_from_sent

Key = tuple[str, UUID]

COLUMNS = tuple(c.strip() for c in q.COMMAND_COLUMNS.split(","))


def _uuid(v: Any) -> UUID | None:
    return None if v is None else (v if isinstance(v, UUID) else UUID(str(v)))


async def replay(conn: Conn) -> dict[Key, dict[str, Any]]:
    """The command projection computed from the events alone."""
    if conn.info.transaction_status == TransactionStatus.IDLE:
        async with conn.transaction():
            return await replay(conn)
    rows: dict[Key, dict[str, Any]] = {}
    current: dict[str, Any] | None = None
    current_stream = None
    cur = conn.cursor(row_factory=dict_row, name="commandbus_replay")
    async with cur:
        await cur.execute(q.COMMAND_EVENTS)
        async for e in cur:
            if e["stream_id"] != current_stream:
                current_stream, current = e["stream_id"], None
            data = e["data"]
            if e["event_type"] == ev.COMMAND_SENT:
                current = row_from_sent(
                    data, correlation_id=e["correlation_id"], recorded_at=e["recorded_at"]
                )
                for k in ("command_id", "saga_id", "batch_id", "correlation_id"):
                    current[k] = _uuid(current[k])
                current["version"] = e["stream_version"]
                rows[(current["domain"], current["command_id"])] = current
                continue
            if current is None:
                continue  # a stream whose CommandSent is missing: nothing to project
            patch = patch_for(e["event_type"], data)
            if patch is None:
                current["version"] = e["stream_version"]
                current["updated_at"] = e["recorded_at"]
            else:
                apply(current, patch, version=e["stream_version"], recorded_at=e["recorded_at"])
    return rows


async def rebuild(conn: Conn, *, table: str = "command_rebuild", replace_live: bool = False) -> int:
    """Recompute the projection from events into ``commandbus.<table>``.

    With ``replace_live=True`` the live table is replaced instead, in one
    transaction that locks it. Returns the number of rows written.
    """
    async with conn.transaction():
        rows = await replay(conn)
        if replace_live:
            target = sql.Identifier("commandbus", "command")
            await conn.execute(q.LOCK_LIVE)
            await conn.execute(q.DELETE_LIVE)
        else:
            target = sql.Identifier("commandbus", table)
            await conn.execute(sql.SQL(q.CREATE_REBUILD_TABLE).format(table=target))
        from psycopg.types.json import Jsonb

        async with conn.cursor().copy(sql.SQL(q.COPY_INTO).format(table=target)) as copy:
            for row in rows.values():
                values = [row[c] for c in COLUMNS]
                for i, c in enumerate(COLUMNS):
                    if c in ("last_error", "result") and values[i] is not None:
                        values[i] = Jsonb(values[i])
                await copy.write_row(values)
    return len(rows)


@attrs.frozen(kw_only=True)
class Difference:
    """One way the live projection differs from a replay of the events."""

    domain: str
    command_id: UUID
    field: str
    live: Any
    replayed: Any

    def __str__(self) -> str:
        return (
            f"{self.domain}/{self.command_id} {self.field}: live={self.live!r} "
            f"replayed={self.replayed!r}"
        )


@attrs.frozen(kw_only=True)
class VerifyReport:
    """The result of :func:`verify`: how many commands were compared, and every difference."""

    checked: int
    differences: tuple[Difference, ...]

    @property
    def ok(self) -> bool:
        return not self.differences


def _norm(value: Any) -> Any:
    return str(value) if isinstance(value, UUID) else value


async def verify(conn: Conn) -> VerifyReport:
    """Compare the live projection with a full replay, in one consistent snapshot."""
    diffs: list[Difference] = []
    async with conn.transaction():
        await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        replayed = await replay(conn)
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(q.ALL_COMMANDS)
        live = {(r["domain"], r["command_id"]): r for r in await cur.fetchall()}
    for key in sorted(live.keys() | replayed.keys(), key=lambda k: (k[0], str(k[1]))):
        a, b = live.get(key), replayed.get(key)
        if a is None or b is None:
            diffs.append(
                Difference(
                    domain=key[0],
                    command_id=key[1],
                    field="<row>",
                    live="present" if a else "missing",
                    replayed="present" if b else "missing",
                )
            )
            continue
        for c in COLUMNS:
            if _norm(a[c]) != _norm(b[c]):
                diffs.append(
                    Difference(domain=key[0], command_id=key[1], field=c, live=a[c], replayed=b[c])
                )
    return VerifyReport(checked=len(live.keys() | replayed.keys()), differences=tuple(diffs))
