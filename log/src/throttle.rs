//! [`CommitThrottle`]: the group offsets of consumers whose real checkpoint lives in their own
//! output are informational, so they are committed at most once per interval (and all at once on
//! revocation and shutdown), never on the hot path. Between two commits it keeps the highest
//! offset noted per partition.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::{Offset, PartitionId};

/// Offsets of informational commits, sent at most once per interval.
///
/// The router's and the projectors' real checkpoints live in their own output, so their group
/// offsets only inform operators (lag tools) and give a new member a starting hint. Committing
/// them after every batch would cost an fsync (embedded) or a coordinator round trip (Kafka) on
/// the hot path; this keeps the latest offset per partition and hands them out once `interval`
/// has passed since the last commit, or all at once on revocation and shutdown.
#[derive(Debug)]
pub struct CommitThrottle {
    interval: Duration,
    last: Instant,
    pending: BTreeMap<PartitionId, Offset>,
}

impl CommitThrottle {
    pub fn new(interval: Duration) -> Self {
        CommitThrottle {
            interval,
            last: Instant::now(),
            pending: BTreeMap::new(),
        }
    }

    /// Records that everything below `next` of `partition` is consumed.
    pub fn note(&mut self, partition: PartitionId, next: Offset) {
        let entry = self.pending.entry(partition).or_insert(next);
        *entry = (*entry).max(next);
    }

    /// The offsets to commit now: everything noted, if the interval has passed since the last
    /// commit; otherwise nothing.
    pub fn due(&mut self) -> Vec<(PartitionId, Offset)> {
        if self.pending.is_empty() || self.last.elapsed() < self.interval {
            return Vec::new();
        }
        self.last = Instant::now();
        std::mem::take(&mut self.pending).into_iter().collect()
    }

    /// The offsets noted for `partitions`, whatever the interval (on revocation).
    pub fn take(&mut self, partitions: &[PartitionId]) -> Vec<(PartitionId, Offset)> {
        partitions
            .iter()
            .filter_map(|partition| Some((*partition, self.pending.remove(partition)?)))
            .collect()
    }

    /// Every offset noted, whatever the interval (on shutdown).
    pub fn take_all(&mut self) -> Vec<(PartitionId, Offset)> {
        std::mem::take(&mut self.pending).into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_throttle_keeps_the_highest_offset_and_waits_for_its_interval() {
        let mut throttle = CommitThrottle::new(Duration::from_secs(3600));
        throttle.note(1, 10);
        throttle.note(1, 7);
        throttle.note(2, 5);
        assert!(throttle.due().is_empty(), "the interval has not passed");
        assert_eq!(throttle.take(&[1, 3]), vec![(1, 10)]);
        assert_eq!(throttle.take_all(), vec![(2, 5)]);
        assert!(throttle.take_all().is_empty());

        let mut eager = CommitThrottle::new(Duration::ZERO);
        assert!(eager.due().is_empty(), "nothing noted");
        eager.note(0, 3);
        assert_eq!(eager.due(), vec![(0, 3)]);
        assert!(eager.due().is_empty());
    }
}
