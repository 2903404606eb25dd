-- Doctor schedules: the time each active appointment holds its assigned doctor, [starts_at, ends_at) =
-- start + duration + the org's buffer. Written in the transaction of the events, under a per-doctor advisory
-- lock, so two bookings of one doctor never overlap, whatever windows or branches they are in.
CREATE TABLE doctor_bookings (
    appointment_id text PRIMARY KEY,
    org_id         uuid NOT NULL,
    doctor         text NOT NULL,  -- the normalised assigned_doctor
    starts_at      timestamptz NOT NULL,
    ends_at        timestamptz NOT NULL
);
CREATE INDEX doctor_bookings_by_doctor ON doctor_bookings (org_id, doctor, starts_at);
