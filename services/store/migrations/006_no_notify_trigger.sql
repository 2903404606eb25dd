-- Readers are woken by the writers' coalesced NOTIFY (LogWaker), not by a trigger: a NOTIFY in every writing
-- transaction takes a database-wide lock at commit and serialised all commits, fsync included.
DROP TRIGGER events_notify ON events;
DROP FUNCTION notify_events();
