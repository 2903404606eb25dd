-- An append to several streams claims each with a compare-and-set; if any was not at its expected version the
-- statement fails with this error, so the streams it did claim are undone with it: no transaction (and its
-- two extra round trips) is needed around a multi-stream append.
CREATE FUNCTION slotledger_all_claimed(claimed bigint, wanted int) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    IF claimed <> wanted THEN
        RAISE EXCEPTION USING ERRCODE = 'serialization_failure',
            MESSAGE = 'slotledger: a stream was not at its expected version';
    END IF;
    RETURN true;
END $$;
