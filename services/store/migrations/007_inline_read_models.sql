-- The API's read models are projected inline, in the transaction of their events: they keep no log position
-- and no checkpoint. (Rows written by the old asynchronous projector are rebuilt once after this migration.)
ALTER TABLE rm_appointments DROP COLUMN position;
DELETE FROM checkpoints WHERE name IN ('appointments', 'schedule_tracking');

-- Two active appointments never hold one doctor at overlapping times, whichever process writes them: a lost
-- race is an exclusion violation, and the command is decided again (and refused APPOINTMENT_CONFLICT).
CREATE EXTENSION IF NOT EXISTS btree_gist SCHEMA public;
ALTER TABLE doctor_bookings ADD CONSTRAINT doctor_bookings_no_overlap
    EXCLUDE USING gist (org_id WITH =, doctor WITH =, tstzrange(starts_at, ends_at) WITH &&);
