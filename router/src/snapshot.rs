//! Sequencer snapshots: the folded state of one partition ([`crate::state::FoldedImage`]: last
//! seq and senders per conversation, membership, the dedup window, group creations, the ingress
//! position) stored in the `timeline-snapshots` topic with the `timeline` offset it covers, so a
//! new owner restores the newest snapshot and folds only the timeline after it.
//!
//! Invariants:
//! - a snapshot that covers `x` holds exactly the fold of `timeline[0..x)` of its partition;
//! - recovery uses a snapshot only once it verified: format version, partition, length and
//!   CRC-32 of its payload, `covers` not beyond the timeline's end, and the timeline record it
//!   was taken after still there with the same bytes (CRC-32 of that record's value: a timeline
//!   deleted and refilled under the same name is not taken for the one the snapshot folded).
//!   Anything else is logged, counted (`chorus_router_snapshot_fallbacks_total{reason}`), and
//!   recovery starts earlier: at an older snapshot, else at the partition's start, which is
//!   always right;
//! - a snapshot is written off the sequencing loop, at most one in flight per partition; taking
//!   it (serializing the state) is the only part on the loop, between two batches.
//!
//! Format: the payload `zstd(postcard(image))` is split into chunks of at most [`CHUNK_BYTES`]
//! (so a record fits any broker's default `max.message.bytes`), each one record of the snapshot
//! topic's partition with the timeline partition's number, keyed `<slot>/<chunk>`, and each
//! carrying the whole header ([`Meta`]), so chunks are reassembled by header, whatever else was
//! written in between. The topic is compacted (Kafka keeps the newest record per key); a writer
//! alternates between two slots, so compaction keeps two snapshots per partition, the newest
//! and one at least `router.snapshot_every_events` older (recovery needs one older than the
//! tail it delivers again: `worker::recover`). The embedded log does not compact: it keeps every
//! snapshot (see `docs/ARCHITECTURE.md` for the disk this costs).

use std::collections::{BTreeMap, HashMap, HashSet};

use chorus_core::metrics::Metrics;
use chorus_log::{EventLog, LogError, NewRecord, Offset, PartitionId, Record};

use crate::state::{FoldedImage, SequencerState, decode_folded};

/// The snapshot format this binary writes and reads; any other is skipped (and counted).
pub const FORMAT_VERSION: u8 = 6;
/// First bytes of every snapshot record.
const MAGIC: [u8; 4] = *b"CHSS";
/// Header bytes of a chunk: magic, version, partition, covers, last offset, last record CRC,
/// writer epoch, chunk index, chunk count, image length, payload length, payload CRC.
const HEADER_BYTES: usize = 4 + 1 + 4 + 8 + 8 + 4 + 8 + 4 + 4 + 8 + 8 + 4;
/// Most payload bytes in one snapshot record.
pub const CHUNK_BYTES: usize = 512 * 1024;
/// Largest decoded image recovery accepts (a header claiming more is corrupt).
const MAX_IMAGE_BYTES: u64 = 1 << 30;
/// zstd level: fast; the image is mostly small integers and repeated names.
const ZSTD_LEVEL: i32 = 1;
/// Snapshot records read per step when looking back for the newest snapshot.
const SCAN_STEP: Offset = 64;
/// Most snapshot records recovery reads back (bounds its time and memory: at most
/// `SCAN_RECORDS * CHUNK_BYTES` held at once) before giving up and folding from the start.
const SCAN_RECORDS: Offset = 256;

/// The timeline record a snapshot was taken right after: its offset and the CRC-32 of its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Anchor {
    pub offset: Offset,
    pub value_crc: u32,
}

impl Anchor {
    /// The anchor of the record appended at `offset` with `value`.
    pub fn of(offset: Offset, value: &[u8]) -> Self {
        Anchor {
            offset,
            value_crc: crc32fast::hash(value),
        }
    }
}

/// The header every chunk of a snapshot carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Meta {
    partition: PartitionId,
    /// The timeline offset (next to read) the state folds up to: `anchor.offset + 1`.
    covers: Offset,
    anchor: Anchor,
    /// The writer's ownership epoch; with `covers` it tells two snapshots apart.
    writer_epoch: Offset,
    chunk_count: u32,
    /// Length of the postcard image.
    image_len: u64,
    /// Length and CRC-32 of the compressed payload the chunks make up.
    payload_len: u64,
    payload_crc: u32,
}

/// A snapshot taken on the sequencing loop, to be compressed and written off it.
pub struct Taken {
    partition: PartitionId,
    anchor: Anchor,
    writer_epoch: Offset,
    image: Vec<u8>,
}

impl Taken {
    /// The timeline offset the snapshot covers.
    pub fn covers(&self) -> Offset {
        self.anchor.offset + 1
    }
}

/// Takes a snapshot of `state`, which must be the fold of the partition's timeline up to and
/// including the record at `anchor` (the owner calls it right after an append returned).
/// Proportional to the state; the rest of the work is in [`encode_records`] and [`write`].
pub fn take(
    state: &SequencerState,
    partition: PartitionId,
    anchor: Anchor,
    writer_epoch: Offset,
) -> Result<Taken, postcard::Error> {
    Ok(Taken {
        partition,
        anchor,
        writer_epoch,
        image: state.encode_folded()?,
    })
}

/// Compresses a taken snapshot and splits it into records for `slot` (0 or 1). CPU-bound: run
/// it on a blocking thread.
pub fn encode_records(taken: Taken, slot: u8) -> std::io::Result<Vec<NewRecord>> {
    let payload = zstd::bulk::compress(&taken.image, ZSTD_LEVEL)?;
    let chunks: Vec<&[u8]> = payload.chunks(CHUNK_BYTES).collect();
    let meta = Meta {
        partition: taken.partition,
        covers: taken.covers(),
        anchor: taken.anchor,
        writer_epoch: taken.writer_epoch,
        chunk_count: u32::try_from(chunks.len()).map_err(std::io::Error::other)?,
        image_len: taken.image.len() as u64,
        payload_len: payload.len() as u64,
        payload_crc: crc32fast::hash(&payload),
    };
    Ok(chunks
        .iter()
        .enumerate()
        .map(|(index, chunk)| {
            let mut value = Vec::with_capacity(HEADER_BYTES + chunk.len());
            write_header(&mut value, &meta, index as u32);
            value.extend_from_slice(chunk);
            NewRecord::new(format!("{slot}/{index}"), value)
        })
        .collect())
}

/// Writes a snapshot's records to the partition of the snapshot topic. The one place a snapshot
/// is written, so moving it into the router's transaction (KIP-447) changes this function only.
pub async fn write(
    log: &dyn EventLog,
    topic: &str,
    partition: PartitionId,
    records: Vec<NewRecord>,
) -> Result<(), LogError> {
    log.append_to(topic, partition, records).await?;
    Ok(())
}

/// A verified snapshot, ready to restore.
pub(crate) struct Loaded {
    pub(crate) image: FoldedImage,
    /// The timeline offset to fold on from.
    pub(crate) covers: Offset,
}

/// Why a snapshot found was not used (the label of `chorus_router_snapshot_fallbacks_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unusable {
    /// A record that is not a chunk of this format, or a payload that fails its checks.
    Corrupt,
    /// It covers more than the timeline holds.
    BeyondEnd,
    /// The timeline record it was taken after is not there (another timeline).
    Mismatch,
    /// The snapshot topic or the timeline could not be read.
    Unreadable,
}

impl Unusable {
    fn label(self) -> &'static str {
        match self {
            Unusable::Corrupt => "corrupt",
            Unusable::BeyondEnd => "beyond_end",
            Unusable::Mismatch => "mismatch",
            Unusable::Unreadable => "unreadable",
        }
    }
}

fn fallback(metrics: &Metrics, partition: PartitionId, reason: Unusable, detail: &str) {
    tracing::warn!(
        partition,
        reason = reason.label(),
        detail,
        "snapshot not used; recovery folds from further back"
    );
    metrics
        .router_snapshot_fallbacks
        .with_label_values(&[reason.label()])
        .inc();
}

/// The newest verified snapshot of `partition` that covers at most `usable_up_to` (itself at
/// most `timeline_end`), looking back through the last [`SCAN_RECORDS`] snapshot records; `None`
/// when there is none. Every snapshot found and not used is logged and counted, except those
/// too recent for `usable_up_to`, which are fine, only not what this recovery needs.
pub(crate) async fn load(
    log: &dyn EventLog,
    metrics: &Metrics,
    snapshot_topic: &str,
    timeline_topic: &str,
    partition: PartitionId,
    timeline_end: Offset,
    usable_up_to: Offset,
) -> Option<Loaded> {
    let snapshot_end = match log.end_offset(snapshot_topic, partition).await {
        Ok(end) => end,
        // never created: snapshots were never on
        Err(LogError::UnknownTopic(_)) => return None,
        Err(error) => {
            fallback(metrics, partition, Unusable::Unreadable, &error.to_string());
            return None;
        }
    };
    let floor = snapshot_end.saturating_sub(SCAN_RECORDS);
    let mut upper = snapshot_end;
    let mut chunks: HashMap<Meta, BTreeMap<u32, Vec<u8>>> = HashMap::new();
    let mut settled: HashSet<Meta> = HashSet::new();
    while upper > floor {
        let lower = upper.saturating_sub(SCAN_STEP).max(floor);
        let records = match read_all(log, snapshot_topic, partition, lower, upper).await {
            Ok(records) => records,
            Err(error) => {
                fallback(metrics, partition, Unusable::Unreadable, &error.to_string());
                return None;
            }
        };
        upper = lower;
        // newest first, and the first copy of a chunk seen is kept: a snapshot written twice
        // (the same header) is read from its newest copy
        for record in records.iter().rev() {
            match parse_chunk(&record.value) {
                Some((meta, index, bytes))
                    if meta.partition == partition && index < meta.chunk_count =>
                {
                    if !settled.contains(&meta) {
                        chunks
                            .entry(meta)
                            .or_default()
                            .entry(index)
                            .or_insert_with(|| bytes.to_vec());
                    }
                }
                _ => fallback(
                    metrics,
                    partition,
                    Unusable::Corrupt,
                    &format!(
                        "record {} is no snapshot chunk of this format",
                        record.offset
                    ),
                ),
            }
        }
        let mut complete: Vec<Meta> = chunks
            .iter()
            .filter(|(meta, parts)| parts.len() == meta.chunk_count as usize)
            .map(|(meta, _)| *meta)
            .collect();
        complete.sort_by_key(|meta| std::cmp::Reverse(meta.covers));
        for meta in complete {
            settled.insert(meta);
            let Some(parts) = chunks.remove(&meta) else {
                continue;
            };
            if meta.covers > timeline_end {
                let detail = format!(
                    "covers {} of a timeline ending at {timeline_end}",
                    meta.covers
                );
                fallback(metrics, partition, Unusable::BeyondEnd, &detail);
                continue;
            }
            if meta.covers > usable_up_to {
                continue; // newer than the redelivery tail's start; an older one will do
            }
            match verify(log, timeline_topic, partition, meta, parts).await {
                Ok(image) => {
                    return Some(Loaded {
                        image,
                        covers: meta.covers,
                    });
                }
                Err((reason, detail)) => fallback(metrics, partition, reason, &detail),
            }
        }
    }
    None
}

/// Every record of `[from, end)` of a partition.
async fn read_all(
    log: &dyn EventLog,
    topic: &str,
    partition: PartitionId,
    from: Offset,
    end: Offset,
) -> Result<Vec<Record>, LogError> {
    let mut records = Vec::new();
    let mut position = from;
    while position < end {
        let read = log
            .read_range(topic, partition, position, end, SCAN_STEP as usize)
            .await?;
        let Some(last) = read.last() else {
            break;
        };
        position = last.offset + 1;
        records.extend(read);
    }
    Ok(records)
}

/// Reassembles, checks and decodes a snapshot, then checks its anchor in the timeline.
async fn verify(
    log: &dyn EventLog,
    timeline_topic: &str,
    partition: PartitionId,
    meta: Meta,
    parts: BTreeMap<u32, Vec<u8>>,
) -> Result<FoldedImage, (Unusable, String)> {
    let image = tokio::task::spawn_blocking(move || decode_payload(&meta, parts))
        .await
        .map_err(|error| (Unusable::Corrupt, error.to_string()))?
        .map_err(|detail| (Unusable::Corrupt, detail))?;
    let anchor = meta.anchor;
    let read = log
        .read_range(
            timeline_topic,
            partition,
            anchor.offset,
            anchor.offset + 1,
            1,
        )
        .await
        .map_err(|error| (Unusable::Unreadable, error.to_string()))?;
    match read.first() {
        Some(record)
            if record.offset == anchor.offset
                && crc32fast::hash(&record.value) == anchor.value_crc =>
        {
            Ok(image)
        }
        _ => Err((
            Unusable::Mismatch,
            format!(
                "timeline record {} is not the one the snapshot was taken after",
                anchor.offset
            ),
        )),
    }
}

/// The image of a complete set of chunks, or why it is corrupt.
fn decode_payload(meta: &Meta, parts: BTreeMap<u32, Vec<u8>>) -> Result<FoldedImage, String> {
    let mut payload = Vec::with_capacity(usize::try_from(meta.payload_len).unwrap_or(0));
    for part in parts.into_values() {
        payload.extend_from_slice(&part);
    }
    if payload.len() as u64 != meta.payload_len {
        return Err(format!(
            "payload of {} bytes, header says {}",
            payload.len(),
            meta.payload_len
        ));
    }
    if crc32fast::hash(&payload) != meta.payload_crc {
        return Err("payload checksum mismatch".to_owned());
    }
    if meta.image_len > MAX_IMAGE_BYTES {
        return Err(format!("image of {} bytes claimed", meta.image_len));
    }
    let image = zstd::bulk::decompress(&payload, meta.image_len as usize)
        .map_err(|error| format!("decompressing: {error}"))?;
    if image.len() as u64 != meta.image_len {
        return Err("image length mismatch".to_owned());
    }
    decode_folded(&image).map_err(|error| format!("decoding: {error}"))
}

fn write_header(output: &mut Vec<u8>, meta: &Meta, index: u32) {
    output.extend_from_slice(&MAGIC);
    output.push(FORMAT_VERSION);
    output.extend_from_slice(&meta.partition.to_le_bytes());
    output.extend_from_slice(&meta.covers.to_le_bytes());
    output.extend_from_slice(&meta.anchor.offset.to_le_bytes());
    output.extend_from_slice(&meta.anchor.value_crc.to_le_bytes());
    output.extend_from_slice(&meta.writer_epoch.to_le_bytes());
    output.extend_from_slice(&index.to_le_bytes());
    output.extend_from_slice(&meta.chunk_count.to_le_bytes());
    output.extend_from_slice(&meta.image_len.to_le_bytes());
    output.extend_from_slice(&meta.payload_len.to_le_bytes());
    output.extend_from_slice(&meta.payload_crc.to_le_bytes());
}

/// A chunk's header, index and bytes; `None` unless it is a chunk of [`FORMAT_VERSION`].
fn parse_chunk(value: &[u8]) -> Option<(Meta, u32, &[u8])> {
    let (header, bytes) = value.split_at_checked(HEADER_BYTES)?;
    let mut fields = Fields(header);
    if fields.take::<4>()? != MAGIC || fields.take::<1>()?[0] != FORMAT_VERSION {
        return None;
    }
    let partition = u32::from_le_bytes(fields.take()?);
    let covers = u64::from_le_bytes(fields.take()?);
    let anchor = Anchor {
        offset: u64::from_le_bytes(fields.take()?),
        value_crc: u32::from_le_bytes(fields.take()?),
    };
    let writer_epoch = u64::from_le_bytes(fields.take()?);
    let index = u32::from_le_bytes(fields.take()?);
    let chunk_count = u32::from_le_bytes(fields.take()?);
    let image_len = u64::from_le_bytes(fields.take()?);
    let payload_len = u64::from_le_bytes(fields.take()?);
    let payload_crc = u32::from_le_bytes(fields.take()?);
    if anchor.offset.checked_add(1) != Some(covers) {
        return None;
    }
    let meta = Meta {
        partition,
        covers,
        anchor,
        writer_epoch,
        chunk_count,
        image_len,
        payload_len,
        payload_crc,
    };
    Some((meta, index, bytes))
}

/// Reads fixed-size fields off the front of a header.
struct Fields<'a>(&'a [u8]);

impl Fields<'_> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (field, rest) = self.0.split_first_chunk::<N>()?;
        self.0 = rest;
        Some(*field)
    }
}

#[cfg(test)]
mod tests {
    use chorus_schemas::{EventBody, IngressEvent};

    use super::*;

    /// A state whose dedup window of random ids does not compress into one chunk.
    fn large_state() -> SequencerState {
        let mut state = SequencerState::new(40_000);
        let mut random = 0x9e37_79b9_7f4a_7c15_u64;
        for offset in 0..40_000u64 {
            random ^= random << 13;
            random ^= random >> 7;
            random ^= random << 17;
            let event = IngressEvent {
                event_id: format!("{random:016x}{:016x}", random.rotate_left(29)),
                conversation: "dm:alice:bob".into(),
                sender: "alice".into(),
                client_msg_id: Some(format!("{:016x}", random.rotate_left(11))),
                ts_ms: 1,
                origin_cluster: "local".into(),
                origin_node: None,
                origin_session: None,
                trusted: false,
                body: EventBody::message("hi"),
            };
            state.decide(event, offset);
        }
        state
    }

    fn chunks_of(records: &[NewRecord]) -> (Meta, BTreeMap<u32, Vec<u8>>) {
        let mut meta = None;
        let mut parts = BTreeMap::new();
        for record in records {
            let (chunk_meta, index, bytes) = parse_chunk(&record.value).expect("a chunk");
            assert_eq!(*meta.get_or_insert(chunk_meta), chunk_meta, "one header");
            parts.insert(index, bytes.to_vec());
        }
        (meta.expect("chunks"), parts)
    }

    #[test]
    fn a_snapshot_split_into_chunks_restores_the_state() {
        let state = large_state();
        let anchor = Anchor::of(99, b"the last record");
        let taken = take(&state, 3, anchor, 7).expect("take");
        assert_eq!(taken.covers(), 100);
        let records = encode_records(taken, 1).expect("encode");
        assert!(records.len() >= 2, "{} chunks", records.len());
        for (index, record) in records.iter().enumerate() {
            assert_eq!(record.key, format!("1/{index}").into_bytes());
            assert!(record.value.len() <= HEADER_BYTES + CHUNK_BYTES);
        }
        let (meta, parts) = chunks_of(&records);
        assert_eq!(
            (meta.partition, meta.covers, meta.anchor, meta.writer_epoch),
            (3, 100, anchor, 7)
        );
        assert_eq!(meta.chunk_count as usize, records.len());
        let image = decode_payload(&meta, parts).expect("decodes");
        let mut restored = SequencerState::new(40_000);
        restored.restore(image);
        assert!(restored == state);
    }

    #[test]
    fn a_damaged_chunk_or_another_format_is_refused() {
        let state = large_state();
        let records = encode_records(take(&state, 0, Anchor::of(5, b"x"), 1).expect("take"), 0)
            .expect("encode");
        let (meta, mut parts) = chunks_of(&records);
        let damaged = parts.get_mut(&1).expect("a second chunk");
        damaged[10] ^= 0x40;
        let error = decode_payload(&meta, parts).err().expect("refused");
        assert!(error.contains("checksum"), "{error}");

        let (meta, mut parts) = chunks_of(&records);
        parts.remove(&0);
        assert!(decode_payload(&meta, parts).is_err(), "a chunk missing");

        let mut other_version = records[0].value.clone();
        other_version[4] = FORMAT_VERSION + 1;
        assert!(parse_chunk(&other_version).is_none());
        assert!(parse_chunk(b"CHSS").is_none(), "too short");
        let mut inconsistent = records[0].value.clone();
        inconsistent[9] ^= 1; // covers no longer one past the anchor
        assert!(parse_chunk(&inconsistent).is_none());
    }
}
