-- `message` rows: the file the message carries (empty id: none). Rows of other kinds hold the
-- defaults.
ALTER TABLE events ADD COLUMN IF NOT EXISTS attachment_id String DEFAULT '';
ALTER TABLE events ADD COLUMN IF NOT EXISTS attachment_name String DEFAULT '';
ALTER TABLE events ADD COLUMN IF NOT EXISTS attachment_size UInt64 DEFAULT 0;
ALTER TABLE events ADD COLUMN IF NOT EXISTS attachment_type String DEFAULT '';
