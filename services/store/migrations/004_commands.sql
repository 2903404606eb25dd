-- Kafka commands: the result of every processed command_id. A command with an effect stores its result in
-- the transaction of its events, so a redelivered or republished command_id finds it and changes nothing.
CREATE TABLE command_results (
    command_id  uuid PRIMARY KEY,
    org_id      uuid,
    result      jsonb NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now()
);
