-- commandbus 0001: the event store (append-only audit stream) and stream versions.
--
-- Every state change of a command, saga or batch is one row in commandbus.event.
-- commandbus.stream holds each stream's current version; appends check-and-bump it
-- in the same statement that inserts the events, so a conflicting append inserts
-- nothing and never draws a position it then abandons.

CREATE SCHEMA IF NOT EXISTS commandbus;

CREATE TABLE commandbus.stream (
    -- "C" collation: stream ids are compared byte-wise, which is much cheaper
    stream_id   text        COLLATE "C" PRIMARY KEY,
    stream_type text        NOT NULL,
    version     bigint      NOT NULL CHECK (version > 0),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
) WITH (fillfactor = 80);

CREATE TABLE commandbus.event (
    position        bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- the writing transaction, so that readers can follow commit order later
    transaction_id  xid8        NOT NULL DEFAULT pg_current_xact_id(),
    stream_id       text        COLLATE "C" NOT NULL,
    stream_version  bigint      NOT NULL CHECK (stream_version > 0),
    event_type      text        NOT NULL,
    data            jsonb       NOT NULL,
    correlation_id  uuid,
    causation_id    uuid,
    -- trace context (W3C traceparent / tracestate) and any other metadata
    metadata        jsonb       NOT NULL DEFAULT '{}'::jsonb,
    recorded_at     timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT event_stream_version_key UNIQUE (stream_id, stream_version)
);

-- The stream is append-only: updates, deletes and truncation are refused.
CREATE FUNCTION commandbus.refuse_event_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'commandbus.event is append-only (% refused)', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$;

CREATE TRIGGER event_append_only
    BEFORE UPDATE OR DELETE ON commandbus.event
    FOR EACH STATEMENT EXECUTE FUNCTION commandbus.refuse_event_change();

CREATE TRIGGER event_no_truncate
    BEFORE TRUNCATE ON commandbus.event
    FOR EACH STATEMENT EXECUTE FUNCTION commandbus.refuse_event_change();
