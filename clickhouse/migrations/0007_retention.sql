-- A `retention` row (kind = 'retention') holds the conversation's message time-to-live in
-- seconds (0: the node's default); the latest one (highest seq) decides. Rows of other kinds
-- hold 0.
ALTER TABLE events ADD COLUMN IF NOT EXISTS ttl_seconds UInt64 DEFAULT 0;
