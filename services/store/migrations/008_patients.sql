-- Patients (DESIGN §10): one per org, phone (E.164) and name; projected inline from bookings.
ALTER TABLE rm_appointments ADD COLUMN patient_id text;
CREATE INDEX rm_appointments_by_patient ON rm_appointments (org_id, patient_id, date);
CREATE TABLE rm_patients (
    patient_id   text PRIMARY KEY,
    org_id       uuid NOT NULL,
    phone        text NOT NULL,  -- E.164 where it parses
    patient_name text NOT NULL,  -- as first booked
    parent_phone text NOT NULL   -- as first sent
);
CREATE INDEX rm_patients_by_phone ON rm_patients (org_id, phone);
