"""How batch events build the batch status table (``commandbus.batch``).

This is the ONE definition of a batch row, in SQL: the row a ``BatchCreated``
event creates is a select list over that event (``e``). ``send_batch`` inserts it
from the event it appends, in the same statement, and the replay
(:mod:`commandbus.engine.commands.replay`) selects it from the stored events. Any later
event of a batch's stream only moves the row's version. A batch's progress is not
stored: it is counted from its commands' status rows when asked for, so the
commands' events never change a batch row.

A batch row must only ever be written by a transaction that wrote
``commandbus.command`` before it (``send_batch`` creates the batch after its
commands): a rebuild that replaces the live tables locks only that table to keep
every writer of both out (see ``LOCK_LIVE``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final, LiteralString

from psycopg import sql

from commandbus import event_types as ev

BATCH_COLUMNS: Final[LiteralString] = "batch_id, name, total, correlation_id, created_at"
"""The columns :data:`ROW_FROM_CREATED` fills, in order (``version`` follows them)."""

ROW_FROM_CREATED: Final[LiteralString] = """
       (e.data->>'batch_id')::uuid AS batch_id, e.data->>'name' AS name,
       (e.data->>'total')::int AS total, e.correlation_id AS correlation_id,
       e.recorded_at AS created_at"""
"""The batch row of a ``BatchCreated`` event ``e`` (without ``version``)."""

# Every batch, replayed: the row of each batch stream's last BatchCreated, at the
# version of the stream's last event. {row} is ROW_FROM_CREATED; the parameters
# are REPLAY_PARAMS.
_REPLAY_BATCHES: Final[LiteralString] = """
SELECT DISTINCT ON (e.stream_id) {row},
       (SELECT max(x.stream_version) FROM commandbus.event x
         WHERE x.stream_id = e.stream_id) AS version
  FROM commandbus.event e
 WHERE e.event_type = %(batch_created)s AND e.stream_id LIKE %(batch_streams)s
 ORDER BY e.stream_id, e.stream_version DESC
"""


#: The parameters of :func:`replay_statement`.
REPLAY_PARAMS: Final[Mapping[str, str]] = {
    "batch_created": ev.BATCH_CREATED,
    "batch_streams": ev.BATCH_STREAM + ":%",
}


def columns() -> sql.SQL:
    """:data:`BATCH_COLUMNS`, to compose into a statement."""
    return sql.SQL(BATCH_COLUMNS)


def row_from_created() -> sql.SQL:
    """:data:`ROW_FROM_CREATED`, to compose into a statement."""
    return sql.SQL(ROW_FROM_CREATED)


def replay_statement() -> sql.Composed:
    """A query of every batch row replayed from the events (columns, then version).

    Run it with :data:`REPLAY_PARAMS`.
    """
    return sql.SQL(_REPLAY_BATCHES).format(row=row_from_created())
