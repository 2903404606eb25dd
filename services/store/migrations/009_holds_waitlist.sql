-- Holds and the waitlist (DESIGN §8), projected inline from the window-days' events.
CREATE TABLE rm_holds (
    hold_id        text PRIMARY KEY,
    org_id         uuid NOT NULL,
    stream_id      text NOT NULL,  -- the window-day holding the place
    window_id      text NOT NULL,
    date           date NOT NULL,
    service_id     text NOT NULL,
    status         text NOT NULL,  -- held, confirmed, released, expired (a held row past expires_at no longer counts)
    expires_at     timestamptz NOT NULL,
    waitlist_id    text,
    appointment_id text,
    record         jsonb NOT NULL
);
CREATE INDEX rm_holds_due ON rm_holds (expires_at) WHERE status = 'held';
CREATE INDEX rm_holds_day ON rm_holds (org_id, date, window_id) WHERE status = 'held';

CREATE TABLE rm_waitlist (
    waitlist_id           text PRIMARY KEY,
    org_id                uuid NOT NULL,
    seq                   bigserial,  -- join order
    date                  date NOT NULL,
    branch_id             text NOT NULL,
    service_id            text NOT NULL,
    streams               text[] NOT NULL,  -- the window-days whose queues it joined
    status                text NOT NULL,  -- waiting, offered, booked, declined, expired, left
    hold_id               text,
    offer_expires_at      timestamptz,
    appointment_id        text,
    external_reference_id text,
    record                jsonb NOT NULL
);
CREATE INDEX rm_waitlist_by_date ON rm_waitlist (org_id, date, seq);
-- One waiting (or offered) entry per external reference: a racing second join is a conflict, retried and
-- answered with the first.
CREATE UNIQUE INDEX rm_waitlist_by_ref ON rm_waitlist (org_id, external_reference_id)
    WHERE external_reference_id IS NOT NULL AND status IN ('waiting', 'offered');

-- A live hold keeps its doctor like a booking; its row stops counting at hold_expires_at (and anyone may
-- delete it from then on).
ALTER TABLE doctor_bookings ADD COLUMN hold_expires_at timestamptz;
