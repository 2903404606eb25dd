-- A window-day's state as of a version, so a fresh process reads one row and the events after it instead of
-- folding the whole stream (DESIGN §7). A cache of the log, never a source of truth: any row may be deleted,
-- and one of another `format` (an older fold) is ignored. `state` is json, not jsonb: it is only ever read
-- whole, and json keeps the text as written (no parse into jsonb's tree on the way in, none back out).
CREATE TABLE window_day_snapshots (
    stream_id  text PRIMARY KEY,
    version    integer NOT NULL,
    format     text NOT NULL,
    state      json NOT NULL,
    taken_at   timestamptz NOT NULL DEFAULT now()
);
