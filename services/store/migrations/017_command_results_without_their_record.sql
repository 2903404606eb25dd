-- A booking's or a reschedule's result holds the appointment's record, and so does the event it rides on: the
-- log keeps it, and the result is stored without it (data_in_event), its data read back from that event
-- (services/command_results.py). Storing it twice had PostgreSQL parse and write ~1 KB more per Kafka create
-- (~10 µs of its ~115), and made command_results, which grows with every command, five times larger (1,215
-- against 243 bytes per row). Results stored before keep their data.
ALTER TABLE command_results ADD COLUMN data_in_event boolean NOT NULL DEFAULT false;
