//! Record framing on disk, the recovery scanner and the positional reader.
//!
//! A frame is `length: u32 LE | crc32: u32 LE | body`, where `length` is the byte length of the
//! body and `crc32` (IEEE, crc32fast) covers the whole body. The body is
//!
//! ```text
//! offset: u64 LE | timestamp_ms: i64 LE
//! | key_len: u32 LE | key | value_len: u32 LE | value
//! | header_count: u32 LE | (name_len: u32 LE | name (UTF-8) | value_len: u32 LE | value)*
//! ```

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;

use crate::{Offset, PartitionId, Record};

/// Bytes before the body: the body length and its CRC.
pub(super) const FRAME_HEADER_BYTES: usize = 8;
/// The smallest body: offset, timestamp, key length, value length and header count.
const MIN_BODY_BYTES: usize = 8 + 8 + 4 + 4 + 4;
/// The largest body accepted on append; on recovery a larger length field is damage.
pub(super) const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;
/// How much a disk read fetches per `pread` (more when one frame is larger).
const READ_CHUNK_BYTES: usize = 256 * 1024;

/// Why bytes at some position are not a valid frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum FrameError {
    #[error("frame header cut short ({available} of {FRAME_HEADER_BYTES} bytes)")]
    ShortHeader { available: usize },
    #[error("frame length {length} outside {MIN_BODY_BYTES}..={MAX_BODY_BYTES}")]
    BadLength { length: u32 },
    #[error("frame body cut short ({available} of {length} bytes)")]
    ShortBody { length: usize, available: usize },
    #[error("crc mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    CrcMismatch { stored: u32, computed: u32 },
    #[error("malformed frame body: {0}")]
    Malformed(&'static str),
    #[error("offset {found} where {expected} was expected")]
    UnexpectedOffset { expected: Offset, found: Offset },
}

/// The body length of a record, as written by [`encode_frame`].
pub(super) fn body_len(key: &[u8], value: &[u8], headers: &[(String, Vec<u8>)]) -> usize {
    let header_bytes: usize = headers
        .iter()
        .map(|(name, value)| 8 + name.len() + value.len())
        .sum();
    MIN_BODY_BYTES + key.len() + value.len() + header_bytes
}

/// The whole frame length of a record (header plus body).
pub(super) fn frame_len(key: &[u8], value: &[u8], headers: &[(String, Vec<u8>)]) -> usize {
    FRAME_HEADER_BYTES + body_len(key, value, headers)
}

/// Appends one frame to `output`. The caller has checked `body_len <= MAX_BODY_BYTES`.
pub(super) fn encode_frame(
    output: &mut Vec<u8>,
    offset: Offset,
    timestamp_ms: i64,
    key: &[u8],
    value: &[u8],
    headers: &[(String, Vec<u8>)],
) {
    let body_length = body_len(key, value, headers);
    output.reserve(FRAME_HEADER_BYTES + body_length);
    output.extend_from_slice(&(body_length as u32).to_le_bytes());
    let crc_position = output.len();
    output.extend_from_slice(&[0; 4]);
    let body_start = output.len();
    output.extend_from_slice(&offset.to_le_bytes());
    output.extend_from_slice(&timestamp_ms.to_le_bytes());
    put_length_prefixed(output, key);
    put_length_prefixed(output, value);
    output.extend_from_slice(&(headers.len() as u32).to_le_bytes());
    for (name, header_value) in headers {
        put_length_prefixed(output, name.as_bytes());
        put_length_prefixed(output, header_value);
    }
    let crc = crc32fast::hash(&output[body_start..]);
    output[crc_position..crc_position + 4].copy_from_slice(&crc.to_le_bytes());
}

fn put_length_prefixed(output: &mut Vec<u8>, bytes: &[u8]) {
    output.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    output.extend_from_slice(bytes);
}

/// Parses a frame header into `(body_length, stored_crc)`, rejecting impossible lengths.
pub(super) fn parse_header(header: &[u8]) -> Result<(usize, u32), FrameError> {
    if header.len() < FRAME_HEADER_BYTES {
        return Err(FrameError::ShortHeader {
            available: header.len(),
        });
    }
    let length = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let stored_crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    let body_length = length as usize;
    if !(MIN_BODY_BYTES..=MAX_BODY_BYTES).contains(&body_length) {
        return Err(FrameError::BadLength { length });
    }
    Ok((body_length, stored_crc))
}

/// The offset stored in a body, read without checking the CRC (to skip frames cheaply).
fn peek_offset(body: &[u8]) -> Option<Offset> {
    let bytes: [u8; 8] = body.get(..8)?.try_into().ok()?;
    Some(u64::from_le_bytes(bytes))
}

/// Checks a body against its stored CRC and decodes it.
pub(super) fn decode_body(
    body: &[u8],
    stored_crc: u32,
    partition: PartitionId,
) -> Result<Record, FrameError> {
    let computed = crc32fast::hash(body);
    if computed != stored_crc {
        return Err(FrameError::CrcMismatch {
            stored: stored_crc,
            computed,
        });
    }
    let mut cursor = BodyCursor { remaining: body };
    let offset = cursor.u64()?;
    let timestamp_ms = cursor.u64()? as i64;
    let key = cursor.length_prefixed()?.to_vec();
    let value = cursor.length_prefixed()?.to_vec();
    let header_count = cursor.u32()? as usize;
    // Each header takes at least 8 bytes, which bounds the allocation for a lying count.
    let mut headers = Vec::with_capacity(header_count.min(cursor.remaining.len() / 8));
    for _ in 0..header_count {
        let name = std::str::from_utf8(cursor.length_prefixed()?)
            .map_err(|_| FrameError::Malformed("header name is not UTF-8"))?
            .to_owned();
        let header_value = cursor.length_prefixed()?.to_vec();
        headers.push((name, header_value));
    }
    if !cursor.remaining.is_empty() {
        return Err(FrameError::Malformed("trailing bytes after the headers"));
    }
    Ok(Record {
        partition,
        offset,
        timestamp_ms,
        key,
        value,
        headers,
    })
}

/// Reads fields off the front of a body.
struct BodyCursor<'body> {
    /// The bytes not read yet.
    remaining: &'body [u8],
}

impl<'body> BodyCursor<'body> {
    fn take(&mut self, count: usize) -> Result<&'body [u8], FrameError> {
        if self.remaining.len() < count {
            return Err(FrameError::Malformed("field runs past the end of the body"));
        }
        let (taken, rest) = self.remaining.split_at(count);
        self.remaining = rest;
        Ok(taken)
    }

    fn u32(&mut self) -> Result<u32, FrameError> {
        let bytes = self.take(4)?;
        Ok(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }

    fn u64(&mut self) -> Result<u64, FrameError> {
        let bytes = self.take(8)?;
        let mut array = [0; 8];
        array.copy_from_slice(bytes);
        Ok(u64::from_le_bytes(array))
    }

    fn length_prefixed(&mut self) -> Result<&'body [u8], FrameError> {
        let length = self.u32()? as usize;
        self.take(length)
    }
}

/// What scanning one segment found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ScanOutcome {
    /// Bytes from the start of the segment that hold valid, consecutive frames.
    pub(super) valid_len: u64,
    /// The offset after the last valid frame.
    pub(super) next_offset: Offset,
    /// Why the scan stopped before the end of the file, if it did.
    pub(super) damage: Option<FrameError>,
}

/// Walks the frames of a segment from its start, checking lengths, CRCs and that offsets count
/// up from `base_offset`; calls `on_record(record, position, frame_len)` for each valid frame.
/// Stops at the end of the input or at the first damaged frame (reported in the outcome).
pub(super) fn scan_frames(
    reader: &mut impl Read,
    base_offset: Offset,
    partition: PartitionId,
    mut on_record: impl FnMut(Record, u64, usize),
) -> io::Result<ScanOutcome> {
    let mut valid_len = 0u64;
    let mut next_offset = base_offset;
    let mut header = [0u8; FRAME_HEADER_BYTES];
    let mut body = Vec::new();
    loop {
        let damaged = |damage| {
            Ok(ScanOutcome {
                valid_len,
                next_offset,
                damage: Some(damage),
            })
        };
        let header_bytes = read_up_to(reader, &mut header)?;
        if header_bytes == 0 {
            return Ok(ScanOutcome {
                valid_len,
                next_offset,
                damage: None,
            });
        }
        let (body_length, stored_crc) = match parse_header(&header[..header_bytes]) {
            Ok(parsed) => parsed,
            Err(damage) => return damaged(damage),
        };
        body.resize(body_length, 0);
        let body_bytes = read_up_to(reader, &mut body)?;
        if body_bytes < body_length {
            return damaged(FrameError::ShortBody {
                length: body_length,
                available: body_bytes,
            });
        }
        let record = match decode_body(&body, stored_crc, partition) {
            Ok(record) => record,
            Err(damage) => return damaged(damage),
        };
        if record.offset != next_offset {
            return damaged(FrameError::UnexpectedOffset {
                expected: next_offset,
                found: record.offset,
            });
        }
        let frame_length = FRAME_HEADER_BYTES + body_length;
        on_record(record, valid_len, frame_length);
        valid_len += frame_length as u64;
        next_offset += 1;
    }
}

/// Fills `buffer` as far as the input allows; returns how many bytes were read.
pub(super) fn read_up_to(reader: &mut impl Read, buffer: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        match reader.read(&mut buffer[filled..]) {
            Ok(0) => break,
            Ok(count) => filled += count,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(error),
        }
    }
    Ok(filled)
}

/// Why reading durable frames failed.
#[derive(Debug, thiserror::Error)]
pub(super) enum DiskReadError {
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error("at byte {position}: {damage}")]
    Damaged { position: u64, damage: FrameError },
}

/// What one disk read should return.
#[derive(Debug, Clone, Copy)]
pub(super) struct ReadLimits {
    /// Return records with offsets at or above this.
    pub(super) from: Offset,
    /// Return at most this many records.
    pub(super) max_records: usize,
    /// Stop before exceeding this many frame bytes (but always return at least one record).
    pub(super) max_bytes: usize,
}

/// Reads the durable frames of a segment in `start..end` (file positions; `start` is a frame
/// boundary at or before `limits.from`), skipping records below `limits.from`.
pub(super) fn read_frames_at(
    file: &File,
    start: u64,
    end: u64,
    limits: ReadLimits,
    partition: PartitionId,
) -> Result<Vec<Record>, DiskReadError> {
    let mut records = Vec::new();
    let mut returned_bytes = 0usize;
    let mut window = ReadWindow {
        file,
        end,
        buffer: Vec::new(),
        buffer_start: start,
    };
    let mut position = start;
    while position < end && records.len() < limits.max_records {
        let damaged = |damage| DiskReadError::Damaged { position, damage };
        let header = window
            .bytes(position, FRAME_HEADER_BYTES)
            .map_err(|error| match error {
                WindowError::Io(error) => DiskReadError::Io(error),
                WindowError::PastEnd { available } => {
                    damaged(FrameError::ShortHeader { available })
                }
            })?;
        let (body_length, stored_crc) = parse_header(header).map_err(damaged)?;
        let frame_length = FRAME_HEADER_BYTES + body_length;
        let frame = window
            .bytes(position, frame_length)
            .map_err(|error| match error {
                WindowError::Io(error) => DiskReadError::Io(error),
                WindowError::PastEnd { available } => damaged(FrameError::ShortBody {
                    length: body_length,
                    available: available.saturating_sub(FRAME_HEADER_BYTES),
                }),
            })?;
        let body = &frame[FRAME_HEADER_BYTES..];
        let skip = peek_offset(body).is_some_and(|offset| offset < limits.from);
        if !skip {
            if !records.is_empty() && returned_bytes + frame_length > limits.max_bytes {
                break;
            }
            let record = decode_body(body, stored_crc, partition).map_err(damaged)?;
            returned_bytes += frame_length;
            records.push(record);
        }
        position += frame_length as u64;
    }
    Ok(records)
}

/// A buffered view of a file range, refilled with one `pread` when a frame is not in memory.
struct ReadWindow<'file> {
    /// The segment being read.
    file: &'file File,
    /// File position past which nothing may be read (the durable length).
    end: u64,
    /// Bytes read so far, starting at `buffer_start`.
    buffer: Vec<u8>,
    /// File position of `buffer[0]`.
    buffer_start: u64,
}

/// Why a [`ReadWindow`] could not provide bytes.
enum WindowError {
    Io(io::Error),
    /// The range runs past the durable end; `available` bytes were there.
    PastEnd {
        available: usize,
    },
}

impl ReadWindow<'_> {
    /// The `count` bytes at file position `position` (at or after the current buffer start).
    fn bytes(&mut self, position: u64, count: usize) -> Result<&[u8], WindowError> {
        let buffered_end = self.buffer_start + self.buffer.len() as u64;
        let covered = position >= self.buffer_start && position + count as u64 <= buffered_end;
        if !covered {
            let available = self.end.saturating_sub(position);
            if (count as u64) > available {
                return Err(WindowError::PastEnd {
                    available: available as usize,
                });
            }
            let read_length = count.max(READ_CHUNK_BYTES).min(available as usize);
            self.buffer.resize(read_length, 0);
            self.file
                .read_exact_at(&mut self.buffer, position)
                .map_err(WindowError::Io)?;
            self.buffer_start = position;
        }
        let relative = (position - self.buffer_start) as usize;
        Ok(&self.buffer[relative..relative + count])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers() -> Vec<(String, Vec<u8>)> {
        vec![
            ("trace".to_owned(), b"abc".to_vec()),
            ("empty".to_owned(), Vec::new()),
        ]
    }

    fn encode(offset: Offset, key: &[u8], value: &[u8]) -> Vec<u8> {
        let mut output = Vec::new();
        encode_frame(
            &mut output,
            offset,
            1_700_000_000_000,
            key,
            value,
            &headers(),
        );
        output
    }

    fn encode_run(base_offset: Offset, count: u64) -> Vec<u8> {
        let mut output = Vec::new();
        for offset in base_offset..base_offset + count {
            let value = format!("value-{offset}");
            encode_frame(&mut output, offset, 7, b"key", value.as_bytes(), &headers());
        }
        output
    }

    fn scan(bytes: &[u8], base_offset: Offset) -> (ScanOutcome, Vec<Record>) {
        let mut records = Vec::new();
        let outcome = scan_frames(&mut &bytes[..], base_offset, 3, |record, _, _| {
            records.push(record);
        })
        .unwrap();
        (outcome, records)
    }

    #[test]
    fn frame_round_trips_with_headers_and_empty_fields() {
        for (key, value) in [
            (&b"k"[..], &b"v"[..]),
            (b"", b""),
            (b"key", &[0u8, 255, 7][..]),
        ] {
            let frame = encode(42, key, value);
            assert_eq!(frame.len(), frame_len(key, value, &headers()));
            let (body_length, crc) = parse_header(&frame).unwrap();
            assert_eq!(body_length, frame.len() - FRAME_HEADER_BYTES);
            let record = decode_body(&frame[FRAME_HEADER_BYTES..], crc, 3).unwrap();
            assert_eq!(record.partition, 3);
            assert_eq!(record.offset, 42);
            assert_eq!(record.timestamp_ms, 1_700_000_000_000);
            assert_eq!(record.key, key);
            assert_eq!(record.value, value);
            assert_eq!(record.headers, headers());
        }
    }

    #[test]
    fn negative_timestamps_round_trip() {
        let mut frame = Vec::new();
        encode_frame(&mut frame, 0, -5, b"k", b"v", &[]);
        let (_, crc) = parse_header(&frame).unwrap();
        assert_eq!(
            decode_body(&frame[FRAME_HEADER_BYTES..], crc, 0)
                .unwrap()
                .timestamp_ms,
            -5
        );
    }

    #[test]
    fn scan_accepts_a_clean_segment() {
        let bytes = encode_run(10, 5);
        let (outcome, records) = scan(&bytes, 10);
        assert_eq!(outcome.damage, None);
        assert_eq!(outcome.valid_len, bytes.len() as u64);
        assert_eq!(outcome.next_offset, 15);
        let offsets: Vec<Offset> = records.iter().map(|record| record.offset).collect();
        assert_eq!(offsets, vec![10, 11, 12, 13, 14]);
    }

    #[test]
    fn scan_of_an_empty_segment_is_clean() {
        let (outcome, records) = scan(&[], 7);
        assert_eq!(
            outcome,
            ScanOutcome {
                valid_len: 0,
                next_offset: 7,
                damage: None
            }
        );
        assert!(records.is_empty());
    }

    #[test]
    fn scan_stops_at_a_cut_short_header() {
        let good = encode_run(0, 3);
        let mut bytes = good.clone();
        bytes.extend_from_slice(&encode(3, b"k", b"v")[..5]);
        let (outcome, records) = scan(&bytes, 0);
        assert_eq!(outcome.valid_len, good.len() as u64);
        assert_eq!(outcome.next_offset, 3);
        assert_eq!(
            outcome.damage,
            Some(FrameError::ShortHeader { available: 5 })
        );
        assert_eq!(records.len(), 3);
    }

    #[test]
    fn scan_stops_at_a_cut_short_body() {
        let good = encode_run(0, 3);
        let mut bytes = good.clone();
        let next = encode(3, b"k", b"value");
        bytes.extend_from_slice(&next[..next.len() - 2]);
        let (outcome, _) = scan(&bytes, 0);
        assert_eq!(outcome.valid_len, good.len() as u64);
        assert!(matches!(outcome.damage, Some(FrameError::ShortBody { .. })));
    }

    #[test]
    fn scan_stops_at_a_bad_length() {
        let good = encode_run(0, 2);
        for length in [0u32, 3, (MAX_BODY_BYTES + 1) as u32, u32::MAX] {
            let mut bytes = good.clone();
            bytes.extend_from_slice(&length.to_le_bytes());
            bytes.extend_from_slice(&[0; 40]);
            let (outcome, _) = scan(&bytes, 0);
            assert_eq!(outcome.valid_len, good.len() as u64);
            assert_eq!(outcome.damage, Some(FrameError::BadLength { length }));
        }
    }

    #[test]
    fn scan_treats_zero_fill_as_damage() {
        let good = encode_run(0, 2);
        let mut bytes = good.clone();
        bytes.extend_from_slice(&[0; 4096]);
        let (outcome, _) = scan(&bytes, 0);
        assert_eq!(outcome.valid_len, good.len() as u64);
        assert_eq!(outcome.damage, Some(FrameError::BadLength { length: 0 }));
    }

    #[test]
    fn scan_stops_at_a_crc_mismatch_in_the_middle() {
        let mut bytes = encode_run(0, 5);
        let second_frame_start = frame_len(b"key", b"value-0", &headers());
        let corrupt_at = second_frame_start + FRAME_HEADER_BYTES + 20;
        bytes[corrupt_at] ^= 0x40;
        let (outcome, records) = scan(&bytes, 0);
        assert_eq!(outcome.valid_len, second_frame_start as u64);
        assert_eq!(outcome.next_offset, 1);
        assert!(matches!(
            outcome.damage,
            Some(FrameError::CrcMismatch { .. })
        ));
        assert_eq!(records.len(), 1);
    }

    #[test]
    fn scan_stops_at_an_offset_out_of_sequence() {
        let mut bytes = encode_run(0, 2);
        bytes.extend_from_slice(&encode(5, b"k", b"v"));
        let (outcome, _) = scan(&bytes, 0);
        assert_eq!(outcome.next_offset, 2);
        assert_eq!(
            outcome.damage,
            Some(FrameError::UnexpectedOffset {
                expected: 2,
                found: 5
            })
        );
    }

    #[test]
    fn decode_rejects_structurally_broken_bodies_even_with_a_good_crc() {
        let mut body = Vec::new();
        body.extend_from_slice(&1u64.to_le_bytes());
        body.extend_from_slice(&2u64.to_le_bytes());
        body.extend_from_slice(&100u32.to_le_bytes()); // key length past the end
        body.extend_from_slice(&[0; 8]);
        let crc = crc32fast::hash(&body);
        assert!(matches!(
            decode_body(&body, crc, 0),
            Err(FrameError::Malformed(_))
        ));
    }

    #[test]
    fn positional_reads_skip_respect_limits_and_detect_damage() {
        let bytes = encode_run(0, 50);
        let mut file = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut file, &bytes).unwrap();
        let end = bytes.len() as u64;
        let limits = ReadLimits {
            from: 20,
            max_records: 5,
            max_bytes: usize::MAX,
        };
        let records = read_frames_at(&file, 0, end, limits, 1).unwrap();
        let offsets: Vec<Offset> = records.iter().map(|record| record.offset).collect();
        assert_eq!(offsets, vec![20, 21, 22, 23, 24]);
        assert_eq!(records[0].value, b"value-20");
        assert_eq!(records[0].partition, 1);

        let one_frame = frame_len(b"key", b"value-20", &headers());
        let limits = ReadLimits {
            from: 20,
            max_records: 100,
            max_bytes: one_frame * 2,
        };
        assert_eq!(read_frames_at(&file, 0, end, limits, 1).unwrap().len(), 2);
        let limits = ReadLimits {
            from: 20,
            max_records: 100,
            max_bytes: 1,
        };
        assert_eq!(read_frames_at(&file, 0, end, limits, 1).unwrap().len(), 1);

        let limits = ReadLimits {
            from: 0,
            max_records: 100,
            max_bytes: usize::MAX,
        };
        let damaged = read_frames_at(&file, 0, end - 3, limits, 1);
        assert!(matches!(damaged, Err(DiskReadError::Damaged { .. })));
    }
}
