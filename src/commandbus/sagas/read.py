"""Questions asked of the saga status projection: where is saga X, which are stuck."""

from __future__ import annotations

import base64
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import attrs

from commandbus.arguments import int_arg, opt_text_arg, opt_uuid_arg, show
from commandbus.engine.db.connect import Conn
from commandbus.errors import ValidationError
from commandbus.sagas import sql as q
from commandbus.sagas.definition import NAME_RE
from commandbus.sagas.state import SagaState, SagaStatus, StepState, from_json

#: The most sagas one page holds.
MAX_PAGE = 1000


@attrs.frozen(kw_only=True)
class SagaRecord:
    """One saga as its status row shows it."""

    saga_id: UUID
    name: str
    definition_version: int
    status: SagaStatus
    current_steps: tuple[str, ...]
    correlation_id: UUID
    idempotency_key: str | None
    last_error: dict[str, Any] | None
    created_at: datetime
    updated_at: datetime
    ended_at: datetime | None
    #: the saga stream's version the row reflects
    version: int
    #: the folded state: each started step's status, result and error
    state: SagaState

    @property
    def steps(self) -> tuple[StepState, ...]:
        return tuple(self.state.steps.values())

    @property
    def results(self) -> dict[str, Any]:
        """What each completed step's handler returned, by step name."""
        return self.state.results


def _status(value: object) -> SagaStatus | None:
    if value is None or isinstance(value, SagaStatus):
        return value
    if isinstance(value, str):
        try:
            return SagaStatus(value.upper())
        except ValueError:
            pass
    names = ", ".join(s.value for s in SagaStatus)
    raise ValidationError(f"status must be one of {names}, got {show(value)}")


def _stuck(value: object) -> timedelta | None:
    if value is None:
        return None
    if not isinstance(value, timedelta) or value < timedelta(0):
        raise ValidationError(f"stuck_for must be a timedelta >= 0, got {show(value)}")
    return value


def _version(value: object) -> int | None:
    return None if value is None else int_arg(value, "version", low=1, high=2**31 - 1)


def _name(value: object) -> str | None:
    name = opt_text_arg(value, "name")
    if name is not None and NAME_RE.fullmatch(name) is None:
        # no saga can have it: say so rather than find nothing
        raise ValidationError(
            f"name must be a saga name (1-128 letters, digits, '_', '.', ':' or '-', "
            f"starting with a letter), got {show(value)}"
        )
    return name


def _correlation(value: object) -> UUID | None:
    return opt_uuid_arg(value, "correlation_id")


@attrs.frozen(kw_only=True)
class SagaFilter:
    """Which sagas a list is about; every criterion given must hold.

    ``stuck_for``: only sagas not finished whose last transition is older than that.
    """

    status: SagaStatus | None = attrs.field(default=None, converter=_status)
    name: str | None = attrs.field(default=None, converter=_name)
    version: int | None = attrs.field(default=None, converter=_version)
    correlation_id: UUID | None = attrs.field(default=None, converter=_correlation)
    stuck_for: timedelta | None = attrs.field(default=None, converter=_stuck)


@attrs.frozen(kw_only=True)
class SagaPage:
    """A page of :meth:`SagaClient.list_sagas`; pass ``next_cursor`` to get the next one."""

    items: tuple[SagaRecord, ...]
    next_cursor: str | None


def to_record(row: tuple[Any, ...]) -> SagaRecord:
    return SagaRecord(
        saga_id=row[0],
        name=row[1],
        definition_version=row[2],
        status=SagaStatus(row[3]),
        current_steps=tuple(row[4]),
        correlation_id=row[5],
        idempotency_key=row[6],
        last_error=row[7],
        state=from_json(row[8]),
        created_at=row[9],
        updated_at=row[10],
        ended_at=row[11],
        version=int(row[12]),
    )


async def fetch_saga(conn: Conn, saga_id: UUID) -> SagaRecord | None:
    cur = await conn.execute(q.GET_SAGA, {"saga_id": saga_id})
    row = await cur.fetchone()
    return None if row is None else to_record(row)


def _encode_cursor(r: SagaRecord) -> str:
    return base64.urlsafe_b64encode(f"{r.created_at.isoformat()}|{r.saga_id}".encode()).decode()


def _decode_cursor(cursor: str) -> tuple[datetime, UUID]:
    try:
        ts, sid = base64.urlsafe_b64decode(cursor.encode()).decode().split("|")
        return datetime.fromisoformat(ts), UUID(sid)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValidationError(f"invalid page cursor {cursor!r}") from exc


async def fetch_page(conn: Conn, where: SagaFilter, limit: object, cursor: object) -> SagaPage:
    n = int_arg(limit, "limit", low=1, high=MAX_PAGE)
    text = opt_text_arg(cursor, "cursor")
    after_ts, after_id = _decode_cursor(text) if text else (None, None)
    # never prepared: each filter combination wants its own plan, not a generic one
    cur = await conn.execute(
        q.LIST_SAGAS,
        {
            "status": None if where.status is None else where.status.value,
            "name": where.name,
            "version": where.version,
            "correlation_id": where.correlation_id,
            "stuck_seconds": None if where.stuck_for is None else where.stuck_for.total_seconds(),
            "after_ts": after_ts,
            "after_id": after_id,
            "limit": n + 1,
        },
        prepare=False,
    )
    rows = [to_record(r) for r in await cur.fetchall()]
    items = tuple(rows[:n])
    return SagaPage(items=items, next_cursor=_encode_cursor(items[-1]) if len(rows) > n else None)


async def fetch_command_statuses(conn: Conn, saga_id: UUID) -> dict[UUID, str]:
    """The status of each command the saga sent (steps and compensations), by id."""
    cur = await conn.execute(q.SAGA_COMMAND_STATUSES, {"saga_id": saga_id})
    return {r[0]: str(r[1]) for r in await cur.fetchall()}


async def fetch_counts(conn: Conn) -> dict[str, int]:
    cur = await conn.execute(q.COUNT_BY_STATUS)
    return {r[0]: int(r[1]) for r in await cur.fetchall()}
