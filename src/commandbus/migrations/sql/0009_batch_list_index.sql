-- commandbus 0009: list batches newest first (the dashboard's /batches).
--
-- monitoring.list_batches pages over (created_at, batch_id), newest first: this
-- index serves each page as one range scan that stops at the page's end.

CREATE INDEX batch_created_idx ON commandbus.batch (created_at, batch_id);
