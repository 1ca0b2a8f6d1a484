-- commandbus 0006: find a flow's events by correlation id, in order.
--
-- `commandbus trace ID` (the waterfall's load_flow) reads every event of one
-- correlation id ordered by position: without this index that is a scan of the
-- whole event table.

CREATE INDEX event_correlation_idx ON commandbus.event (correlation_id, position);
