-- A `block` row (kind = 'block', in a direct conversation) says whether its sender blocked the
-- other member (1) or unblocked them (0); the last one in log order decides. Others hold 0.
ALTER TABLE events ADD COLUMN IF NOT EXISTS blocked UInt8 DEFAULT 0;
