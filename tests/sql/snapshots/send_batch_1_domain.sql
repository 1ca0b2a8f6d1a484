WITH input AS (
    SELECT *
      FROM unnest(%(stream_ids)b::text[], %(domains)b::text[], %(command_ids)b::uuid[],
                  %(types)b::text[], %(messages)b::jsonb[],
                  %(headers)b::jsonb[], %(corr)b::uuid[], %(caus)b::uuid[],
                  %(max_attempts)b::int[], %(reply_to)b::text[], %(saga_ids)b::uuid[],
                  %(delays)b::float8[], %(metadata)b::jsonb[])
           AS i(stream_id, domain, command_id, command_type, message, headers,
                correlation_id, causation_id, max_attempts, reply_to, saga_id, delay,
                metadata)
), proj AS (
    INSERT INTO commandbus.command
           (domain, command_id, command_type, status, attempts, max_attempts, msg_id,
            correlation_id, reply_to, saga_id, batch_id, created_at, updated_at, version)
    SELECT domain, command_id, command_type, 'PENDING', 0, max_attempts, nextval((SELECT pg_get_serial_sequence('pgmq.q_payments', 'msg_id')::regclass)),
           correlation_id, reply_to, saga_id, %(batch_id)s, now(), now(), 1
      FROM input
    ON CONFLICT (domain, command_id) DO NOTHING
    RETURNING domain, command_id, msg_id
), go AS (
    SELECT input.*, proj.msg_id
      FROM input JOIN proj USING (domain, command_id)
     WHERE (SELECT count(*) FROM proj) = %(expected_commands)s
), "msg_0" AS (
    INSERT INTO pgmq."q_payments" (msg_id, vt, read_ct, last_read_at, message, headers)
    OVERRIDING SYSTEM VALUE
    SELECT go.msg_id, clock_timestamp() + go.delay * interval '1 second', 0,
           NULL, go.message, go.headers
      FROM go WHERE go.domain = 'payments'
), evt AS (
    INSERT INTO commandbus.event
           (stream_id, stream_version, event_type, data, correlation_id, causation_id, metadata)
    SELECT stream_id, 1, %(command_sent)s::text,
           message || jsonb_build_object('domain', domain, 'delay_seconds', delay,
                                         'msg_id', msg_id),
           correlation_id, causation_id, metadata
      FROM go
)
SELECT input.domain, input.command_id, go.msg_id,
       (input.domain, input.command_id) IN (SELECT domain, command_id FROM proj) AS is_new
  FROM input LEFT JOIN go USING (domain, command_id)
