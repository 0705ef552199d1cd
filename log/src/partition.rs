//! Partitioning: which partition a key's records go to, the same in every adapter and in Java
//! producers writing to the same Kafka topics ([`partition_for_key`], Kafka's murmur2 with the
//! Java client's default partitioner), and [`by_partition`], which splits a read batch by
//! partition without reordering records within one.

use std::collections::BTreeMap;

use crate::{PartitionId, Record};

/// Splits a batch of records by partition, keeping offset order within each.
pub fn by_partition(records: Vec<Record>) -> BTreeMap<PartitionId, Vec<Record>> {
    let mut grouped: BTreeMap<PartitionId, Vec<Record>> = Default::default();
    for record in records {
        grouped.entry(record.partition).or_default().push(record);
    }
    grouped
}

/// Kafka's default (Java client) partitioner: `murmur2(key) & 0x7fffffff % partitions`.
pub fn partition_for_key(key: &[u8], partitions: u32) -> PartitionId {
    (murmur2(key) & 0x7fff_ffff) % partitions
}

/// Kafka's murmur2 hash (seed `0x9747b28c`), as in `org.apache.kafka.common.utils.Utils`.
pub fn murmur2(data: &[u8]) -> u32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let length = data.len();
    let mut hash = SEED ^ (length as u32);
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        hash = hash.wrapping_mul(M);
        hash ^= k;
    }
    let tail = chunks.remainder();
    if tail.len() >= 3 {
        hash ^= (tail[2] as u32) << 16;
    }
    if tail.len() >= 2 {
        hash ^= (tail[1] as u32) << 8;
    }
    if !tail.is_empty() {
        hash ^= tail[0] as u32;
        hash = hash.wrapping_mul(M);
    }
    hash ^= hash >> 13;
    hash = hash.wrapping_mul(M);
    hash ^= hash >> 15;
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_kafka_reference_values() {
        // Values from Kafka's UtilsTest.testMurmur2 (signed ints there).
        let cases: [(&[u8], i32); 4] = [
            (b"21", -973932308),
            (b"foobar", -790332482),
            (b"a-little-bit-long-string", -985981536),
            (b"a-little-bit-longer-string", -1486304829),
        ];
        for (input, expected) in cases {
            assert_eq!(murmur2(input) as i32, expected, "murmur2({:?})", input);
        }
    }

    #[test]
    fn partition_is_stable_and_in_range() {
        for partitions in [1, 8, 12] {
            let first = partition_for_key(b"dm:alice:bob", partitions);
            assert!(first < partitions);
            assert_eq!(first, partition_for_key(b"dm:alice:bob", partitions));
        }
    }
}
