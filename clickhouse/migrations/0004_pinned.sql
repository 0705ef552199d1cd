-- A `pin` row (kind = 'pin') says whether its sender pinned (1) or unpinned (0) the message
-- `target_seq`; the latest one (highest seq) per target decides. Rows of other kinds hold 0.
ALTER TABLE events ADD COLUMN IF NOT EXISTS pinned UInt8 DEFAULT 0;
