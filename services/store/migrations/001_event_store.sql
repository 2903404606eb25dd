-- The event log: one table, (stream_id, stream_version) unique as the concurrency check.
CREATE TABLE events (
    global_position bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- Consumers read in (transaction_id, global_position) order, and only below the oldest running
    -- transaction, so an event committed late by an early transaction is never skipped.
    transaction_id  xid8 NOT NULL DEFAULT pg_current_xact_id(),
    event_id        uuid NOT NULL UNIQUE,
    stream_id       text NOT NULL,
    stream_version  integer NOT NULL,
    event_type      text NOT NULL,
    schema_version  smallint NOT NULL DEFAULT 1,
    data            jsonb NOT NULL,
    metadata        jsonb NOT NULL DEFAULT '{}',
    org_id          uuid,
    recorded_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    UNIQUE (stream_id, stream_version)
);
CREATE INDEX events_log_order ON events (transaction_id, global_position);

-- One row per stream: its current version. Appends bump it with a compare-and-set,
-- which both checks the expected version and serialises writers of one stream.
CREATE TABLE streams (
    stream_id text PRIMARY KEY,
    version   integer NOT NULL,
    org_id    uuid
);

-- Where each consumer (projector, relay) has read up to; written in the consumer's own transaction.
CREATE TABLE checkpoints (
    name            text PRIMARY KEY,
    transaction_id  xid8 NOT NULL,
    global_position bigint NOT NULL,
    updated_at      timestamptz NOT NULL DEFAULT now()
);

CREATE FUNCTION notify_events() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify(TG_TABLE_SCHEMA || '_events', '');
    RETURN NULL;
END $$;
CREATE TRIGGER events_notify AFTER INSERT ON events FOR EACH STATEMENT EXECUTE FUNCTION notify_events();
