"""Rebuild the saga status rows from the event stream, and verify them.

The replay folds each saga stream with :func:`commandbus.sagas.state.apply`, the
function the coordinator folds its transitions with, a transaction at a time (a
transition's events share one transaction and one time), so the live row and the
replayed one are the same function of the same events. Both run their own
transaction, as the commands' rebuild and verify do.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

import attrs
from psycopg import AsyncCursor, sql
from psycopg.types.json import Jsonb

from commandbus import event_types as ev
from commandbus.engine.commands.replay import _create_target, _own_transaction, rebuild_target
from commandbus.engine.db.connect import Conn
from commandbus.errors import ValidationError
from commandbus.names import saga_stream_id
from commandbus.sagas import sql as q
from commandbus.sagas.state import SagaState, apply, columns, from_json, to_json

COLUMNS = tuple(c.strip() for c in q.SAGA_COLUMNS.split(","))


async def replay(conn: Conn) -> dict[UUID, dict[str, Any]]:
    """Every saga's status row, computed from its events alone."""
    cur = await conn.execute(q.ALL_SAGA_EVENTS, {"saga_streams": ev.SAGA_STREAM + ":%"})
    return await _fold_rows(cur)


async def replay_sagas(conn: Conn, saga_ids: Sequence[UUID]) -> dict[UUID, dict[str, Any]]:
    """These sagas' status rows, computed from their events alone (for a saga whose
    row is missing: the coordinator decides from it, and writes the row back)."""
    cur = await conn.execute(q.SAGA_EVENTS, {"stream_ids": [saga_stream_id(s) for s in saga_ids]})
    return await _fold_rows(cur)


async def _fold_rows(cur: AsyncCursor[Any]) -> dict[UUID, dict[str, Any]]:
    """Fold ``(stream_id, stream_version, event_type, data, recorded_at, txid)`` rows,
    stream by stream in version order, into status rows."""
    rows: dict[UUID, dict[str, Any]] = {}
    stream: str | None = None
    state: SagaState | None = None
    version = 0
    tx: str | None = None
    created: datetime | None = None
    updated: datetime | None = None
    ended: datetime | None = None

    def finish() -> None:
        if state is not None and created is not None and updated is not None:
            rows[state.saga_id] = {
                **columns(state),
                "created_at": created,
                "updated_at": updated,
                "ended_at": ended,
                "version": version,
            }

    def close_transaction() -> None:
        nonlocal ended
        # the live row decides "ended" once per transition, as here
        if state is not None and updated is not None:
            ended = (ended or updated) if state.status.is_final else None

    async for stream_id, stream_version, event_type, data, recorded_at, txid in cur:
        if stream_id != stream:
            close_transaction()
            finish()
            stream, state, created, ended, tx = stream_id, None, recorded_at, None, None
        elif txid != tx:
            close_transaction()
        tx = txid
        state = apply(state, event_type, data)
        version = int(stream_version)
        updated = recorded_at
    close_transaction()
    finish()
    return rows


@attrs.frozen(kw_only=True)
class SagaDifference:
    """One way a live saga row differs from a replay (``field`` ``"<row>"``: missing)."""

    saga_id: UUID
    field: str
    live: Any
    replayed: Any

    def __str__(self) -> str:
        return f"saga {self.saga_id} {self.field}: live={self.live!r} replayed={self.replayed!r}"


@attrs.frozen(kw_only=True)
class SagaVerifyReport:
    """What :func:`verify` found: how many sagas were compared, and every difference."""

    checked: int
    differences: tuple[SagaDifference, ...]

    @property
    def ok(self) -> bool:
        return not self.differences


def _norm(value: Any) -> Any:
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, tuple):
        return list(value)
    return value


async def verify(conn: Conn) -> SagaVerifyReport:
    """Compare every live saga row with a replay, in one repeatable-read snapshot."""
    _own_transaction(conn, "verify")
    async with conn.transaction():
        await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        replayed = await replay(conn)
        cur = await conn.execute(q.ALL_SAGAS)
        live = {r[0]: dict(zip(COLUMNS, r, strict=True)) for r in await cur.fetchall()}
    for row in live.values():
        # the state as this version stores it (a field added later reads as its default)
        with contextlib.suppress(KeyError, TypeError, ValueError):
            row["state"] = to_json(from_json(row["state"]))
    diffs: list[SagaDifference] = []
    for sid in sorted(live.keys() | replayed.keys(), key=str):
        a, b = live.get(sid), replayed.get(sid)
        if a is None or b is None:
            diffs.append(
                SagaDifference(
                    saga_id=sid,
                    field="<row>",
                    live="present" if a else "missing",
                    replayed="present" if b else "missing",
                )
            )
            continue
        for c in COLUMNS:
            if _norm(a[c]) != _norm(b[c]):
                diffs.append(SagaDifference(saga_id=sid, field=c, live=a[c], replayed=b[c]))
    return SagaVerifyReport(checked=len(live.keys() | replayed.keys()), differences=tuple(diffs))


async def rebuild(conn: Conn, *, table: str = "saga_rebuild", replace_live: bool = False) -> int:
    """Recompute the saga rows from the events into ``commandbus.<table>`` (a
    ``*_rebuild`` table) or, with ``replace_live=True``, into the live table
    (coordinators and starts wait; readers go on). Returns the number of sagas."""
    rebuild_target(table)
    if not isinstance(replace_live, bool):
        raise ValidationError(f"replace_live must be a bool, got {replace_live!r}")
    _own_transaction(conn, "rebuild")
    async with conn.transaction():
        await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        if replace_live:
            await conn.execute(q.LOCK_LIVE)  # before the snapshot
            target = sql.Identifier("commandbus", "saga")
        else:
            target = await _create_target(conn, table, "saga")
        rows = await replay(conn)
        if replace_live:
            await conn.execute(q.DELETE_LIVE)
        copy_sql = sql.SQL(q.COPY_INTO).format(table=target)
        async with conn.cursor().copy(copy_sql) as copy:
            for row in rows.values():
                values = [row[c] for c in COLUMNS]
                for i, c in enumerate(COLUMNS):
                    if c in ("last_error", "state") and values[i] is not None:
                        values[i] = Jsonb(values[i])
                await copy.write_row(values)
    return len(rows)
