//! Fuzz target of `chorus-log`: the embedded log's segment reader.
//!
//! - `fuzz_segment_reader`: a partition folder whose segment bytes are a valid run of records
//!   then damaged (bits flipped, bytes replaced, inserted, removed, cut), or raw bytes. Guarantee:
//!   opening the log never panics; a damaged last segment is cut at a frame boundary (what is
//!   kept is a prefix of the file, re-encodes to exactly the kept bytes, and keeps every record
//!   that lay wholly before the first damaged byte); a reopen finds nothing more to cut; appends
//!   continue at the kept end. A damaged sealed (non-last) segment is `LogError::Corrupt`.
//!
//! Under `cargo test` the target runs a bounded number of random inputs (seconds); the long
//! run is described in docs/FUZZING.md.

use std::fs;
use std::path::Path;
use std::time::Duration;

use bolero::{TypeGenerator, check};
use chorus_log::embedded::{EmbeddedLog, EmbeddedLogConfig};
use chorus_log::{EventLog, LogError, NewRecord};

/// Inputs of the segment target's short run (each opens a log folder, so fewer).
const SEGMENT_SHORT_RUN_ITERATIONS: usize = 300;

const TOPIC: &str = "fuzzed";
/// Segment file of the partition's first segment (documented layout: 20-digit base offset).
const FIRST_SEGMENT: &str = "00000000000000000000.log";
/// Bytes before a frame's body: length u32 and crc32 u32.
const FRAME_HEADER_BYTES: usize = 8;

/// One record to write, chosen by the fuzzer.
#[derive(Debug, Clone, TypeGenerator)]
struct RecordSeed {
    timestamp_ms: i64,
    key: Vec<u8>,
    value: Vec<u8>,
    headers: Vec<(String, Vec<u8>)>,
}

/// One change to the segment's bytes.
#[derive(Debug, Clone, TypeGenerator)]
enum Damage {
    FlipBit { at: u16, bit: u8 },
    SetByte { at: u16, byte: u8 },
    Zero { at: u16, count: u8 },
    Truncate { at: u16 },
    Insert { at: u16, bytes: Vec<u8> },
    Remove { at: u16, count: u8 },
}

impl Damage {
    /// Applies the change; returns the first byte position it may have changed.
    fn apply(&self, bytes: &mut Vec<u8>) -> usize {
        if bytes.is_empty() {
            if let Damage::Insert {
                bytes: inserted, ..
            } = self
            {
                bytes.extend_from_slice(inserted);
            }
            return 0;
        }
        let position = |at: u16| usize::from(at) % bytes.len();
        match self {
            Damage::FlipBit { at, bit } => {
                let index = position(*at);
                bytes[index] ^= 1 << (bit % 8);
                index
            }
            Damage::SetByte { at, byte } => {
                let index = position(*at);
                bytes[index] = *byte;
                index
            }
            Damage::Zero { at, count } => {
                let start = position(*at);
                let end = (start + usize::from(*count)).min(bytes.len());
                bytes[start..end].fill(0);
                start
            }
            Damage::Truncate { at } => {
                let index = position(*at);
                bytes.truncate(index);
                index
            }
            Damage::Insert {
                at,
                bytes: inserted,
            } => {
                let index = position(*at);
                bytes.splice(index..index, inserted.iter().copied());
                index
            }
            Damage::Remove { at, count } => {
                let start = position(*at);
                let end = (start + usize::from(*count)).min(bytes.len());
                bytes.drain(start..end);
                start
            }
        }
    }
}

#[derive(Debug, Clone, TypeGenerator)]
enum SegmentInput {
    /// Valid records, then damage, as the only (last) segment.
    DamagedTail {
        records: Vec<RecordSeed>,
        damage: Vec<Damage>,
    },
    /// Arbitrary bytes as the only segment.
    Raw(Vec<u8>),
    /// Valid records, then damage, in a sealed segment followed by a valid one.
    DamagedSealed {
        records: Vec<RecordSeed>,
        damage: Vec<Damage>,
    },
}

/// Encodes a record as the documented frame (docs in `log/src/embedded/mod.rs`):
/// `length | crc32 | offset | timestamp_ms | key_len | key | value_len | value | header_count |
/// (name_len | name | value_len | value)*`, little endian, CRC over the body. Written
/// independently of the log's encoder, so the two check each other.
fn encode_frame(
    offset: u64,
    timestamp_ms: i64,
    key: &[u8],
    value: &[u8],
    headers: &[(String, Vec<u8>)],
) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&offset.to_le_bytes());
    body.extend_from_slice(&timestamp_ms.to_le_bytes());
    let put = |bytes: &[u8], body: &mut Vec<u8>| {
        body.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        body.extend_from_slice(bytes);
    };
    put(key, &mut body);
    put(value, &mut body);
    body.extend_from_slice(&(headers.len() as u32).to_le_bytes());
    for (name, header_value) in headers {
        put(name.as_bytes(), &mut body);
        put(header_value, &mut body);
    }
    let mut frame = Vec::with_capacity(FRAME_HEADER_BYTES + body.len());
    frame.extend_from_slice(&(body.len() as u32).to_le_bytes());
    frame.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    frame.extend_from_slice(&body);
    frame
}

/// Valid frames of `records` from `base_offset`; returns the bytes and each frame's end.
fn encode_run(records: &[RecordSeed], base_offset: u64) -> (Vec<u8>, Vec<usize>) {
    let mut bytes = Vec::new();
    let mut ends = Vec::new();
    for (record, offset) in records.iter().zip(base_offset..) {
        bytes.extend(encode_frame(
            offset,
            record.timestamp_ms,
            &record.key,
            &record.value,
            &record.headers,
        ));
        ends.push(bytes.len());
    }
    (bytes, ends)
}

fn write_partition(dir: &Path, segments: &[(u64, &[u8])]) {
    let topic_dir = dir.join(TOPIC);
    let partition_dir = topic_dir.join("partition-0");
    fs::create_dir_all(&partition_dir).unwrap();
    fs::write(topic_dir.join("topic.json"), br#"{"partitions":1}"#).unwrap();
    for (base_offset, bytes) in segments {
        fs::write(partition_dir.join(format!("{base_offset:020}.log")), bytes).unwrap();
    }
}

fn log_config(dir: &Path) -> EmbeddedLogConfig {
    EmbeddedLogConfig {
        partitions: 1,
        ..EmbeddedLogConfig::new(dir)
    }
}

/// Opens the folder and reads the whole partition back.
async fn open_and_read(
    dir: &Path,
) -> Result<(std::sync::Arc<EmbeddedLog>, Vec<chorus_log::Record>), LogError> {
    let log = EmbeddedLog::open(log_config(dir))?;
    let end = log.end_offset(TOPIC, 0).await?;
    let mut records = Vec::new();
    while (records.len() as u64) < end {
        let batch = log
            .read(TOPIC, 0, records.len() as u64, 10_000, Duration::ZERO)
            .await?;
        assert!(
            !batch.is_empty(),
            "records below the end offset are readable"
        );
        records.extend(batch);
    }
    Ok((log, records))
}

/// The frames of what was read, re-encoded.
fn reencode(records: &[chorus_log::Record]) -> Vec<u8> {
    records
        .iter()
        .flat_map(|record| {
            encode_frame(
                record.offset,
                record.timestamp_ms,
                &record.key,
                &record.value,
                &record.headers,
            )
        })
        .collect()
}

async fn check_damaged_tail(input_bytes: Vec<u8>, intact_records: usize) {
    let dir = tempfile::tempdir().unwrap();
    write_partition(dir.path(), &[(0, &input_bytes)]);
    let (log, records) = open_and_read(dir.path())
        .await
        .expect("a damaged last segment is cut, never an error");
    let segment_path = dir
        .path()
        .join(TOPIC)
        .join("partition-0")
        .join(FIRST_SEGMENT);
    let kept = fs::read(&segment_path).unwrap();
    assert!(input_bytes.starts_with(&kept), "only a tail is cut");
    assert_eq!(reencode(&records), kept, "cut at a frame boundary");
    assert!(
        records.len() >= intact_records,
        "{} records kept, {intact_records} lay before the damage",
        records.len()
    );
    for (record, offset) in records.iter().zip(0..) {
        assert_eq!(record.offset, offset);
    }
    // appends continue at the kept end
    let appended = log
        .append_to(
            TOPIC,
            0,
            vec![NewRecord::new(b"k".to_vec(), b"after".to_vec())],
        )
        .await
        .expect("append after the cut");
    assert_eq!(appended, vec![records.len() as u64]);
    log.close().await;
    drop(log);
    // a reopen finds a clean segment: nothing more is cut
    let (reopened, again) = open_and_read(dir.path()).await.expect("reopens");
    assert_eq!(again.len(), records.len() + 1);
    assert_eq!(
        again.last().map(|record| record.value.as_slice()),
        Some(&b"after"[..])
    );
    reopened.close().await;
}

async fn run_segment_input(input: &SegmentInput) {
    match input {
        SegmentInput::Raw(bytes) => check_damaged_tail(bytes.clone(), 0).await,
        SegmentInput::DamagedTail { records, damage } => {
            let (mut bytes, ends) = encode_run(records, 0);
            let first_damaged = damage
                .iter()
                .map(|change| change.apply(&mut bytes))
                .min()
                .unwrap_or(usize::MAX);
            let intact = ends.iter().take_while(|end| **end <= first_damaged).count();
            check_damaged_tail(bytes, intact).await;
        }
        SegmentInput::DamagedSealed { records, damage } => {
            if records.is_empty() {
                return; // a sealed segment holds at least one record (it is rolled after appends)
            }
            let (mut sealed, _) = encode_run(records, 0);
            let original = sealed.clone();
            for change in damage {
                change.apply(&mut sealed);
            }
            let next_base = records.len() as u64;
            let last = encode_frame(next_base, 1, b"k", b"last", &[]);
            let dir = tempfile::tempdir().unwrap();
            write_partition(dir.path(), &[(0, &sealed), (next_base, &last)]);
            match open_and_read(dir.path()).await {
                Ok((log, read)) => {
                    // only a change that left valid frames of the same count can open
                    assert_eq!(read.len() as u64, next_base + 1);
                    assert_eq!(reencode(&read[..read.len() - 1]), sealed);
                    log.close().await;
                }
                Err(LogError::Corrupt(_)) => {
                    assert_ne!(sealed, original, "an undamaged sealed segment opens");
                }
                Err(other) => panic!("damage in a sealed segment must be Corrupt, got {other}"),
            }
        }
    }
}

#[test]
fn fuzz_segment_reader() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    check!()
        .with_type::<SegmentInput>()
        .with_iterations(SEGMENT_SHORT_RUN_ITERATIONS)
        .for_each(|input| runtime.block_on(run_segment_input(input)));
}
