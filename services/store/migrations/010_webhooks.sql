-- Webhooks (DESIGN §9): subscriptions per org, and every delivery with its attempts. Operational state, not
-- projections: the dispatcher fills webhook_deliveries from the log (its checkpoint in the same transaction).
CREATE TABLE webhooks (
    webhook_id            text PRIMARY KEY,
    org_id                uuid NOT NULL,
    url                   text NOT NULL,
    event_types           text[] NOT NULL,  -- event types (appointment.booked), families (appointment.*) or *
    description           text,
    secret                bytea NOT NULL,   -- encrypted (Fernet); HMAC signing needs the secret itself
    previous_secret       bytea,            -- after a rotation, also signed with until previous_valid_until
    previous_valid_until  timestamptz,
    status                text NOT NULL DEFAULT 'enabled',  -- enabled, disabled
    disabled_reason       text,
    failing_since         timestamptz,      -- first failure since the last success
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhooks_by_org ON webhooks (org_id);

CREATE TABLE webhook_deliveries (
    delivery_id       bigserial PRIMARY KEY,
    webhook_id        text NOT NULL REFERENCES webhooks ON DELETE CASCADE,
    event_id          uuid NOT NULL,     -- the webhook-id header: the same on every attempt
    event_type        text NOT NULL,
    ordering_key      text NOT NULL,     -- the appointment (else the stream): delivered in log order per key
    payload           jsonb NOT NULL,    -- the CloudEvent, as on Kafka
    status            text NOT NULL,     -- pending, delivered, failed
    attempts          integer NOT NULL DEFAULT 0,
    next_attempt_at   timestamptz,
    last_status_code  integer,
    last_error        text,
    created_at        timestamptz NOT NULL DEFAULT now(),
    delivered_at      timestamptz,
    UNIQUE (webhook_id, event_id)
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX webhook_deliveries_chain ON webhook_deliveries (webhook_id, ordering_key, delivery_id)
    WHERE status = 'pending';
CREATE INDEX webhook_deliveries_by_webhook ON webhook_deliveries (webhook_id, delivery_id);

CREATE TABLE webhook_attempts (
    delivery_id  bigint NOT NULL REFERENCES webhook_deliveries ON DELETE CASCADE,
    attempt      integer NOT NULL,
    at           timestamptz NOT NULL,
    status_code  integer,
    duration_ms  integer NOT NULL,
    error        text,
    PRIMARY KEY (delivery_id, attempt)
);

-- The key that encrypts webhook secrets when SLOTLEDGER_WEBHOOK_SECRETS_KEY is not set (it then protects only
-- against a leaked webhooks table; set the variable in production).
CREATE TABLE service_keys (
    name  text PRIMARY KEY,
    key   text NOT NULL
);
