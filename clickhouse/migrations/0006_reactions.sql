-- A `reaction` row (kind = 'reaction') says whether its sender added (1) or removed (0) the
-- reaction `emoji` to the message `target_seq`; the latest one (highest seq) per (target, emoji,
-- sender) decides. Rows of other kinds hold the defaults.
ALTER TABLE events ADD COLUMN IF NOT EXISTS emoji String DEFAULT '';
ALTER TABLE events ADD COLUMN IF NOT EXISTS added UInt8 DEFAULT 0;
