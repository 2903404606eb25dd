-- An org's configuration streams, listed, so that loading its configuration reads exactly their events by their
-- own key. The query it replaces filtered the log by stream name (NOT LIKE 'wd-%' AND NOT LIKE 'patient-%'),
-- and the planner took those two filters, each about half of a busy log, as independent: it expected a quarter
-- of the log and walked all of it in log order (0.5-0.7 s per process start in the full bench, growing with
-- the log) instead of the partial index made for it, which goes.
CREATE TABLE config_streams (
    org_id    uuid NOT NULL,
    stream_id text NOT NULL,
    PRIMARY KEY (org_id, stream_id)
);
INSERT INTO config_streams (org_id, stream_id)
SELECT DISTINCT org_id, stream_id FROM events
WHERE org_id IS NOT NULL AND stream_id NOT LIKE 'wd-%' AND stream_id NOT LIKE 'patient-%';
DROP INDEX events_org_config;
