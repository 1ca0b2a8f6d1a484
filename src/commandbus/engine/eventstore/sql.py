"""SQL of the event store: THE append with an expected version (a fragment every
appending statement composes), stream and log reads."""

from __future__ import annotations

from typing import Final, LiteralString

# -- append with an expected version: THE definition -------------------------------------
#
# Every statement that appends composes this fragment (the event store's append, the
# saga store's; command transitions compose its event insert, INSERT_PASSED_EVENTS,
# after checking their versions on the commands' status rows). It is a list of CTEs
# over two the caller defines before it:
#   st          one row per stream, each stream once:
#               (stream_id, stream_type, expected, new_version); expected 0 means the
#               stream must not exist yet (it is created at new_version)
#   new_events  one row per event: (stream_id, stream_version, event_type, data,
#               correlation_id, causation_id, metadata, ord), inserted in
#               (ord, stream_version) order, so positions follow the caller's order
# and it defines, for the rest of the statement:
#   passed      (stream_id) of every stream that was at its expected version and is
#               now at new_version
#   inserted    (position, stream_id) of every event appended
# Only the events of passed streams are inserted, so an event of a stream that failed
# never draws a position; all or nothing (the event store's append) inserts no event
# at all unless every stream passed, and the caller rolls back the version bumps of
# the others (its savepoint). "= ANY (ARRAY(...))" keeps the bump to primary-key
# probes whatever the table statistics say (a hash join would scan the stream table).
_APPEND_STREAMS: Final[LiteralString] = """ created AS (
    INSERT INTO commandbus.stream (stream_id, stream_type, version)
    SELECT stream_id, stream_type, new_version FROM st WHERE expected = 0
    ON CONFLICT (stream_id) DO NOTHING
    RETURNING stream_id
), bumped AS (
    UPDATE commandbus.stream s
       SET version = st.new_version, updated_at = now()
      FROM st
     WHERE s.stream_id = ANY (ARRAY(SELECT stream_id FROM st WHERE expected > 0))
       AND s.stream_id = st.stream_id AND st.expected > 0 AND s.version = st.expected
    RETURNING s.stream_id
), passed AS (
    SELECT stream_id FROM created UNION ALL SELECT stream_id FROM bumped
),"""

# The events of the streams that passed: the CTE ``inserted`` over ``new_events``
# and ``passed`` (as above). A statement that checks its streams' versions another
# way (command transitions check the command's status row) defines ``passed``
# itself and composes this.
_INSERT_EVENTS: Final[LiteralString] = """ inserted AS (
    INSERT INTO commandbus.event
           (stream_id, stream_version, event_type, data, correlation_id, causation_id, metadata)
    SELECT e.stream_id, e.stream_version, e.event_type, e.data, e.correlation_id,
           e.causation_id, e.metadata
      FROM new_events e
     WHERE e.stream_id IN (SELECT stream_id FROM passed)"""

_ALL_PASSED: Final[LiteralString] = """
       AND (SELECT count(*) FROM passed) = (SELECT count(*) FROM st)"""

_APPEND_EVENTS: Final[LiteralString] = """
     ORDER BY e.ord, e.stream_version
    RETURNING position, stream_id
)"""

INSERT_PASSED_EVENTS: Final[LiteralString] = _INSERT_EVENTS + _APPEND_EVENTS


def append_with_expected_version(*, all_or_nothing: bool) -> LiteralString:
    """The append fragment (see above): CTEs ``created, bumped, passed, inserted``.

    ``all_or_nothing``: insert no event at all unless every stream passed (else
    each passed stream's events are inserted).
    """
    if all_or_nothing:
        return _APPEND_STREAMS + _INSERT_EVENTS + _ALL_PASSED + _APPEND_EVENTS
    return _APPEND_STREAMS + INSERT_PASSED_EVENTS


# Append to many streams, all or nothing: the input CTEs (st, new_events), the
# fragment, and one row per input stream: (stream_id, appended, last position).
_APPEND_INPUT: Final[LiteralString] = """
WITH st AS (
    SELECT *
      FROM unnest(%(s_ids)b::text[], %(s_types)b::text[], %(s_expected)b::bigint[],
                  %(s_new)b::bigint[])
           AS s(stream_id, stream_type, expected, new_version)
), new_events AS (
    SELECT *
      FROM unnest(%(e_ids)b::text[], %(e_versions)b::bigint[], %(e_types)b::text[],
                  %(e_data)b::jsonb[], %(e_corr)b::uuid[], %(e_caus)b::uuid[],
                  %(e_meta)b::jsonb[]) WITH ORDINALITY
           AS e(stream_id, stream_version, event_type, data, correlation_id, causation_id,
                metadata, ord)
),"""

_APPEND_RESULT: Final[LiteralString] = """
SELECT st.stream_id, passed.stream_id IS NOT NULL AS appended,
       (SELECT max(position) FROM inserted) AS last_position
  FROM st LEFT JOIN passed USING (stream_id)
"""

APPEND: Final[LiteralString] = (
    _APPEND_INPUT + append_with_expected_version(all_or_nothing=True) + _APPEND_RESULT
)

EVENT_COLUMNS: Final[LiteralString] = """
    position, transaction_id::text::bigint AS transaction_id, stream_id, stream_version,
    event_type, data, correlation_id, causation_id, metadata, recorded_at
"""

READ_STREAM: Final[LiteralString] = (
    "SELECT"
    + EVENT_COLUMNS
    + """
  FROM commandbus.event
 WHERE stream_id = %(stream_id)s AND stream_version > %(after_version)s
 ORDER BY stream_version
"""
)

READ_ALL: Final[LiteralString] = (
    "SELECT"
    + EVENT_COLUMNS
    + """
  FROM commandbus.event
 WHERE position > %(after)s
 ORDER BY position
 LIMIT %(limit)s
"""
)

# A stream's version is its last event's: a command stream has no commandbus.stream
# row (its status row carries the version), and one sent by an earlier release has
# a row that stopped being bumped.
STREAM_VERSION: Final[LiteralString] = """
SELECT coalesce(max(stream_version), 0) FROM commandbus.event WHERE stream_id = %(stream_id)s
"""
