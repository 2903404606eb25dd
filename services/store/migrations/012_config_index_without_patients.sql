-- An org's configuration is read from its own streams only: not its window-days, and not its patients' streams
-- (one per phone and name ever booked, so loading a busy clinic's configuration would read every patient's
-- registration). Those events also no longer enter this index.
DROP INDEX events_org_config;
CREATE INDEX events_org_config ON events (org_id, global_position)
    WHERE stream_id NOT LIKE 'wd-%' AND stream_id NOT LIKE 'patient-%';
