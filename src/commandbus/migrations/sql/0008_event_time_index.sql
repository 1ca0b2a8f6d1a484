-- commandbus 0008: read the last minutes of the event log without scanning it.
--
-- The dashboard's per-minute charts (monitoring.throughput) count the outcome
-- events of the last N minutes. Events are appended in time order, so a BRIN
-- index on recorded_at (a few pages, next to no cost per append) narrows each
-- minute to the block ranges that hold it.

CREATE INDEX event_recorded_at_brin ON commandbus.event USING brin (recorded_at);
