-- Most appointments have no external reference, and none is ever looked up by a missing one (the list filter is
-- `external_reference_id = $n`, which the partial index answers): each booking wrote an index entry for NULL.
DROP INDEX rm_appointments_by_ref;
CREATE INDEX rm_appointments_by_ref ON rm_appointments (org_id, external_reference_id)
    WHERE external_reference_id IS NOT NULL;
