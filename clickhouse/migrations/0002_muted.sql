-- A `mute` row (kind = 'mute') says whether its sender muted the conversation (1) or unmuted it
-- (0); the last one in log order decides. Rows of other kinds hold 0.
ALTER TABLE events ADD COLUMN IF NOT EXISTS muted UInt8 DEFAULT 0;
