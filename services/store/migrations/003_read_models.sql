-- Read models: rebuilt from the log by their projectors (`slotledger projections rebuild`).
CREATE TABLE rm_appointments (
    appointment_id        text PRIMARY KEY,
    org_id                uuid NOT NULL,
    date                  date NOT NULL,
    branch_id             text NOT NULL,
    window_id             text NOT NULL,
    status                text NOT NULL,
    phone                 text NOT NULL,  -- normalised, for search
    assigned_doctor       text,
    appointment_type      text NOT NULL,
    external_reference_id text,
    record                jsonb NOT NULL,
    position              bigint NOT NULL
);
CREATE INDEX rm_appointments_by_date ON rm_appointments (org_id, date, appointment_id);
CREATE INDEX rm_appointments_by_ref ON rm_appointments (org_id, external_reference_id);
CREATE INDEX rm_appointments_by_phone ON rm_appointments (org_id, phone);

-- Schedule tracking: one row per active booking, and each date's own status/capacity where it has one.
CREATE TABLE rm_schedule_bookings (
    appointment_id text PRIMARY KEY,
    org_id         uuid NOT NULL,
    window_id      text NOT NULL,
    date           date NOT NULL,
    service_id     text NOT NULL
);
CREATE INDEX rm_schedule_bookings_day ON rm_schedule_bookings (org_id, date, window_id);

CREATE TABLE rm_window_days (
    window_id text NOT NULL,
    date      date NOT NULL,
    org_id    uuid NOT NULL,
    status    text,
    max_slots integer,
    PRIMARY KEY (window_id, date)
);
