-- A waitlist entry joins the queue of each window-day it matches, one event per day, so its read-model row is
-- inserted by the first of those events and found there by the others. Another entry under the same id (two
-- joins drew the same random id) must not be taken for one of them: the insert then fails as a duplicate key,
-- and the join is decided again under a fresh id.
CREATE FUNCTION slotledger_same_entry(existing jsonb, proposed jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN
    IF existing IS DISTINCT FROM proposed THEN
        RAISE EXCEPTION USING ERRCODE = 'unique_violation', CONSTRAINT = 'rm_waitlist_pkey',
            MESSAGE = 'slotledger: another waitlist entry holds this id';
    END IF;
    RETURN existing;
END $$;
