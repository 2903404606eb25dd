-- Write-side tables: set rules across aggregates, written in the same transaction as the events.
CREATE TABLE orgs (
    org_id         uuid PRIMARY KEY,
    name           text NOT NULL,
    config_version bigint NOT NULL DEFAULT 0,  -- bumped with every configuration event: invalidates caches
    created_at     timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE api_keys (
    key_id      text PRIMARY KEY,
    org_id      uuid NOT NULL REFERENCES orgs,
    secret_hash bytea NOT NULL,  -- sha256 of the secret part; the key itself is never stored
    scopes      text[] NOT NULL,
    name        text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);

-- Which window-day stream holds an appointment now (moves on reschedule; never deleted).
CREATE TABLE appointment_streams (
    appointment_id text PRIMARY KEY,
    org_id         uuid NOT NULL,
    stream_id      text NOT NULL
);

-- Idempotency: one active (non-cancelled) appointment per external reference.
CREATE TABLE booking_refs (
    org_id                uuid NOT NULL,
    external_reference_id text NOT NULL,
    appointment_id        text NOT NULL,
    PRIMARY KEY (org_id, external_reference_id)
);

-- The duplicate rule: one active booking per normalised phone, appointment type and local date.
CREATE TABLE booking_keys (
    org_id         uuid NOT NULL,
    phone          text NOT NULL,
    service_id     text NOT NULL,
    local_date     date NOT NULL,
    appointment_id text NOT NULL UNIQUE,
    PRIMARY KEY (org_id, phone, service_id, local_date)
);

-- Loading an org's configuration reads only its configuration streams.
CREATE INDEX events_org_config ON events (org_id, global_position) WHERE stream_id NOT LIKE 'wd-%';
-- An appointment's history across the window-days it lived in.
CREATE INDEX events_appointment ON events ((coalesce(data->>'appointment_id', data->'appointment'->>'appointment_id')))
    WHERE stream_id LIKE 'wd-%';
