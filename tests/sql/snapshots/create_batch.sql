WITH created AS (
    INSERT INTO commandbus.stream (stream_id, stream_type, version)
    VALUES (%(batch_stream_id)s, %(batch_stream)s::text, 1)
    ON CONFLICT (stream_id) DO NOTHING
    RETURNING stream_id
), evt AS (
    INSERT INTO commandbus.event
           (stream_id, stream_version, event_type, data, correlation_id, causation_id, metadata)
    SELECT stream_id, 1, %(batch_created)s::text, %(batch_data)s::jsonb, %(batch_corr)s, NULL,
           jsonb_build_object()
      FROM created
    RETURNING stream_version, data, correlation_id, recorded_at
), batch AS (
    INSERT INTO commandbus.batch (batch_id, name, total, correlation_id, created_at, version)
    SELECT 
       (e.data->>'batch_id')::uuid AS batch_id, e.data->>'name' AS name,
       (e.data->>'total')::int AS total, e.correlation_id AS correlation_id,
       e.recorded_at AS created_at, e.stream_version
      FROM evt e
)
SELECT EXISTS (SELECT 1 FROM created)
