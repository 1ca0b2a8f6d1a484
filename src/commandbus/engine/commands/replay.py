"""Rebuild the status tables (commands and batches) from the event stream, and verify them.

``replay`` folds the command events with the same patches the engine writes live
(:mod:`commandbus.engine.commands.status`); batches replay from the SQL
definition the engine inserts them with
(:mod:`commandbus.engine.commands.batch_status`). ``rebuild`` writes the result
into fresh tables (or replaces the live ones), and ``verify`` compares the live
tables with a replay inside ONE repeatable-read snapshot and reports every
difference.

``rebuild`` and ``verify`` run their OWN transaction and commit it: the connection
must not be inside a transaction (autocommit, or no statement run since the last
commit or rollback), else :class:`~commandbus.errors.ValidationError`. They could
not keep their promises inside the caller's transaction: its snapshot may predate
the rebuild's lock, and its isolation level is no longer settable.
"""

from __future__ import annotations

import re
from typing import Any
from uuid import UUID

import attrs
from psycopg import sql
from psycopg.pq import TransactionStatus
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from commandbus import event_types as ev
from commandbus.engine.commands import batch_status as batch_projection
from commandbus.engine.commands import sql as q
from commandbus.engine.commands.status import apply, patch_for, row_from_sent
from commandbus.engine.db.connect import Conn
from commandbus.errors import ValidationError

Key = tuple[str, UUID]

COLUMNS = tuple(c.strip() for c in q.COMMAND_COLUMNS.split(","))
BATCH_COLUMNS = (
    *(c.strip() for c in batch_projection.BATCH_COLUMNS.split(",")),
    "version",
)

#: The comment that marks a table as a rebuild target (the only kind rebuild drops).
REBUILD_MARKER = "commandbus rebuild target: dropped and recreated by every rebuild into it"

# A rebuild target is named <something>_rebuild, and fits in an identifier (63 bytes).
_TARGET_RE = re.compile(r"[a-z][a-z0-9_]{0,54}_rebuild")


def _uuid(v: Any) -> UUID | None:
    return None if v is None else (v if isinstance(v, UUID) else UUID(str(v)))


def _own_transaction(conn: Conn, what: str) -> None:
    if conn.info.transaction_status != TransactionStatus.IDLE:
        raise ValidationError(
            f"{what} runs its own transaction: pass a connection that is not inside one "
            "(autocommit, or with no statement run since the last commit or rollback)"
        )


def rebuild_target(name: object) -> str:
    """``name`` if it may name a rebuild target table, else :class:`ValidationError`.

    Only ``commandbus.<name>`` with a name ending in ``_rebuild`` can be a target,
    so no table of the library (``event``, ``stream``, ``command``, ``batch``, ...)
    can ever be dropped by a rebuild.
    """
    if not isinstance(name, str) or _TARGET_RE.fullmatch(name) is None:
        raise ValidationError(
            f"cannot rebuild into table {name!r}: only a dedicated rebuild target is "
            "ever replaced; name one like 'command_rebuild' (lower-case letters, digits "
            "and '_', ending in '_rebuild', at most 63 characters)"
        )
    return name


async def replay(conn: Conn) -> dict[Key, dict[str, Any]]:
    """The command projection computed from the events alone.

    Inside a transaction it reads in the caller's; otherwise (autocommit, or idle)
    it runs its own read-only repeatable-read transaction and commits it.
    """
    if conn.info.transaction_status == TransactionStatus.IDLE:
        async with conn.transaction():
            await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            return await replay(conn)
    rows: dict[Key, dict[str, Any]] = {}
    current: dict[str, Any] | None = None
    current_stream = None
    cur = conn.cursor(row_factory=dict_row, name="commandbus_replay")
    async with cur:
        await cur.execute(q.COMMAND_EVENTS, {"command_streams": ev.COMMAND_STREAM + ":%"})
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


async def _create_target(conn: Conn, name: str, like: str) -> sql.Identifier:
    """Drop and recreate ``commandbus.<name>`` shaped like ``commandbus.<like>``."""
    cur = await conn.execute(q.REBUILD_TARGET_STATE, {"marker": REBUILD_MARKER, "name": name})
    row = await cur.fetchone()
    if row is not None and not row[0]:
        raise ValidationError(
            f"cannot rebuild into table {name!r}: commandbus.{name} exists and was not "
            "created by a rebuild; drop or rename it yourself, or choose another name"
        )
    target = sql.Identifier("commandbus", name)
    await conn.execute(
        sql.SQL(q.CREATE_REBUILD_TABLE).format(
            table=target,
            like=sql.Identifier("commandbus", like),
            marker=sql.Literal(REBUILD_MARKER),
        )
    )
    return target


async def rebuild(
    conn: Conn,
    *,
    table: str = "command_rebuild",
    batch_table: str = "batch_rebuild",
    replace_live: bool = False,
) -> int:
    """Recompute the status tables from the events; returns the number of commands.

    Commands go into ``commandbus.<table>`` and batches into
    ``commandbus.<batch_table>``; both names must end in ``_rebuild`` and, if the
    table exists, it must be one a rebuild created (anything else raises
    :class:`ValidationError` and nothing is dropped). With ``replace_live=True``
    the live ``commandbus.command`` and ``commandbus.batch`` are replaced instead:
    writers are locked out first (the rebuild waits for open transactions that
    wrote to them, and writers wait for the rebuild; readers go on), then the
    events are read in a snapshot taken after the lock, so every command and batch
    committed before the rebuild commits is in the result: nothing is lost.

    Runs its own transaction (see the module docstring).
    """
    rebuild_target(table)
    rebuild_target(batch_table)
    if table == batch_table:
        raise ValidationError(f"commands and batches cannot both rebuild into {table!r}")
    _own_transaction(conn, "rebuild")
    async with conn.transaction():
        # one snapshot for commands and batches, taken by the first read below
        await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        if replace_live:
            await conn.execute(q.LOCK_LIVE)  # before any snapshot
            commands = sql.Identifier("commandbus", "command")
            batches = sql.Identifier("commandbus", "batch")
        else:
            commands = await _create_target(conn, table, "command")
            batches = await _create_target(conn, batch_table, "batch")
        rows = await replay(conn)
        if replace_live:
            await conn.execute(q.DELETE_LIVE)
            await conn.execute(q.DELETE_LIVE_BATCHES)
        async with conn.cursor().copy(sql.SQL(q.COPY_INTO).format(table=commands)) as copy:
            for row in rows.values():
                values = [row[c] for c in COLUMNS]
                for i, c in enumerate(COLUMNS):
                    if c in ("last_error", "result") and values[i] is not None:
                        values[i] = Jsonb(values[i])
                await copy.write_row(values)
        await conn.execute(
            sql.SQL(q.INSERT_BATCHES).format(
                table=batches,
                columns=batch_projection.columns(),
                replay=batch_projection.replay_statement(),
            ),
            batch_projection.REPLAY_PARAMS,
        )
    return len(rows)


@attrs.frozen(kw_only=True)
class Difference:
    """One way a live status table differs from a replay of the events.

    ``table`` is ``"command"`` (the row is ``domain`` / ``command_id``) or
    ``"batch"`` (the row is ``batch_id``; ``domain`` and ``command_id`` are None).
    ``field`` is a column, or ``"<row>"`` when the row is missing on one side
    (``live`` / ``replayed`` then say ``"present"`` or ``"missing"``).
    """

    field: str
    live: Any
    replayed: Any
    table: str = "command"
    domain: str | None = None
    command_id: UUID | None = None
    batch_id: UUID | None = None

    def __str__(self) -> str:
        where = (
            f"batch {self.batch_id}"
            if self.table == "batch"
            else f"{self.domain}/{self.command_id}"
        )
        return f"{where} {self.field}: live={self.live!r} replayed={self.replayed!r}"


@attrs.frozen(kw_only=True)
class VerifyReport:
    """The result of :func:`verify`: how many commands and batches were compared, and
    every difference (of either)."""

    checked: int
    differences: tuple[Difference, ...]
    checked_batches: int = 0

    @property
    def ok(self) -> bool:
        return not self.differences


def _norm(value: Any) -> Any:
    return str(value) if isinstance(value, UUID) else value


def _compare(
    live: dict[Any, dict[str, Any]],
    replayed: dict[Any, dict[str, Any]],
    columns: tuple[str, ...],
    where: Any,
) -> list[Difference]:
    diffs: list[Difference] = []
    for key in sorted(live.keys() | replayed.keys(), key=str):
        a, b = live.get(key), replayed.get(key)
        if a is None or b is None:
            diffs.append(
                Difference(
                    field="<row>",
                    live="present" if a else "missing",
                    replayed="present" if b else "missing",
                    **where(key),
                )
            )
            continue
        for c in columns:
            if _norm(a[c]) != _norm(b[c]):
                diffs.append(Difference(field=c, live=a[c], replayed=b[c], **where(key)))
    return diffs


async def verify(conn: Conn) -> VerifyReport:
    """Compare the live status tables with a full replay, in one consistent snapshot.

    Runs its own (read-only) transaction (see the module docstring).
    """
    _own_transaction(conn, "verify")
    async with conn.transaction():
        await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        replayed = await replay(conn)
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(q.ALL_COMMANDS)
        live = {(r["domain"], r["command_id"]): r for r in await cur.fetchall()}
        await cur.execute(batch_projection.replay_statement(), batch_projection.REPLAY_PARAMS)
        replayed_batches = {r["batch_id"]: r for r in await cur.fetchall()}
        await cur.execute(q.ALL_BATCHES)
        live_batches = {r["batch_id"]: r for r in await cur.fetchall()}
    diffs = _compare(
        live,
        replayed,
        COLUMNS,
        lambda k: {"table": "command", "domain": k[0], "command_id": k[1]},
    )
    diffs += _compare(
        live_batches,
        replayed_batches,
        BATCH_COLUMNS,
        lambda k: {"table": "batch", "batch_id": k},
    )
    return VerifyReport(
        checked=len(live.keys() | replayed.keys()),
        checked_batches=len(live_batches.keys() | replayed_batches.keys()),
        differences=tuple(diffs),
    )
