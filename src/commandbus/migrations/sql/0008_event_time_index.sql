-- commandbus 0008: count the outcomes of the last minutes without scanning the log.
--
-- The dashboard's per-minute charts (monitoring.throughput) count the outcome
-- events (completed, failed, to the troubleshooting queue) of the last N minutes.
-- A partial index on (recorded_at, event_type) of those events alone answers that
-- from the index: one entry per command outcome, nothing for any other event. The
-- event type names are the constants of commandbus.event_types.

CREATE INDEX event_outcome_time_idx ON commandbus.event (recorded_at, event_type)
 WHERE event_type IN ('CommandCompleted', 'CommandCompletedByOperator',
                      'CommandFailed', 'CommandMovedToTroubleshootingQueue');
