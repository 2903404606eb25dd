-- A stored result's log position in a column of its own, set by the append that stores it, and put into the
-- result when it is read back (services/command_results.py). Writing it into the result's JSON in the append
-- rebuilt the ~1 KB result twice per command (jsonb_set at '{position}' and '{data,position}'): ~5 µs of
-- PostgreSQL's ~115 per Kafka create, for a read that only a redelivered command ever makes.
-- Results stored before keep their position in the JSON, and NULL here.
ALTER TABLE command_results ADD COLUMN position bigint;
