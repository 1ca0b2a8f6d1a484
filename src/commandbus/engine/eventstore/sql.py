"""SQL of the event store: appends with expected versions, stream and log reads."""

from __future__ import annotations

from typing import Final, LiteralString

APPEND: Final[LiteralString] = """
WITH st AS (
    SELECT *
      FROM unnest(%(s_ids)b::text[], %(s_types)b::text[], %(s_expected)b::bigint[],
                  %(s_new)b::bigint[])
           AS s(stream_id, stream_type, expected, new_version)
), created AS (
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
), ok AS (
    SELECT stream_id FROM created UNION ALL SELECT stream_id FROM bumped
), ins AS (
    INSERT INTO commandbus.event
           (stream_id, stream_version, event_type, data, correlation_id, causation_id, metadata)
    SELECT e.stream_id, e.stream_version, e.event_type, e.data, e.correlation_id,
           e.causation_id, e.metadata
      FROM unnest(%(e_ids)b::text[], %(e_versions)b::bigint[], %(e_types)b::text[],
                  %(e_data)b::jsonb[], %(e_corr)b::uuid[], %(e_caus)b::uuid[],
                  %(e_meta)b::jsonb[]) WITH ORDINALITY
           AS e(stream_id, stream_version, event_type, data, correlation_id, causation_id,
                metadata, ord)
      JOIN ok USING (stream_id)
     -- all or nothing: no stream's events (and no position) unless every stream passed
     WHERE (SELECT count(*) FROM ok) = cardinality(%(s_ids)b::text[])
     ORDER BY e.ord
    RETURNING position
)
SELECT st.stream_id, ok.stream_id IS NOT NULL AS appended,
       (SELECT max(position) FROM ins) AS last_position
  FROM st LEFT JOIN ok USING (stream_id)
"""

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

STREAM_VERSION: Final[LiteralString] = (
    "SELECT version FROM commandbus.stream WHERE stream_id = %(stream_id)s"
)
