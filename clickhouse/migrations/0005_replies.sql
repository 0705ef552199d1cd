-- `message` rows: the seq the message answers (0: none), the members it mentions, and where it
-- was forwarded from (empty conversation: not forwarded). Rows of other kinds hold the defaults.
ALTER TABLE events ADD COLUMN IF NOT EXISTS reply_to UInt64 DEFAULT 0;
ALTER TABLE events ADD COLUMN IF NOT EXISTS mentions Array(String);
ALTER TABLE events ADD COLUMN IF NOT EXISTS forwarded_conversation String DEFAULT '';
ALTER TABLE events ADD COLUMN IF NOT EXISTS forwarded_seq UInt64 DEFAULT 0;
ALTER TABLE events ADD COLUMN IF NOT EXISTS forwarded_sender String DEFAULT '';
