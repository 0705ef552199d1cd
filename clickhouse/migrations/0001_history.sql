-- The timeline as ClickHouse keeps it: one row per timeline record (read cursors included, with
-- seq 0), keyed by its log position, so a replayed record replaces itself instead of adding a
-- row. Queries read with FINAL (or aggregate), so no duplicate is ever visible.
CREATE TABLE IF NOT EXISTS events (
    partition UInt32,
    offset UInt64,
    conversation String,
    seq UInt64,
    event_id String,
    kind LowCardinality(String),
    sender String,
    ts_ms Int64,
    origin_cluster LowCardinality(String),
    client_msg_id Nullable(String),
    ingress_offset UInt64,
    text String,
    target_seq UInt64,
    title Nullable(String),
    members Array(String),
    read_seq UInt64
) ENGINE = ReplacingMergeTree
ORDER BY (conversation, partition, offset);

-- Membership changes by user: the latest (highest seq) row of a (user, conversation) says
-- whether the user is a member now. Written in the same apply as `events`.
CREATE TABLE IF NOT EXISTS members (
    user String,
    conversation String,
    seq UInt64,
    present UInt8
) ENGINE = ReplacingMergeTree(seq)
ORDER BY (user, conversation);

-- Each partition's projection position: the next timeline offset to apply. Written after the
-- rows of a batch; a crash in between replays the batch, which changes nothing.
CREATE TABLE IF NOT EXISTS positions (
    partition UInt32,
    next_offset UInt64
) ENGINE = ReplacingMergeTree(next_offset)
ORDER BY partition;
