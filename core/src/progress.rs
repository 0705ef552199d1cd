//! Projection progress, for read-your-writes.
//!
//! The projector publishes, per projection and partition, the next timeline offset it will apply.
//! A read that must see everything already in the log (history after an ack, gap filling) takes
//! the log's end offsets first and then waits, bounded, until the projection has passed them.
//! It also tells which partitions the projection holds now: all of them where a node projects
//! every partition, its share where nodes split them (search shards).

use std::collections::BTreeSet;
use std::time::Duration;

use parking_lot::Mutex;

use tokio::sync::watch;

use chorus_log::{Offset, PartitionId};

/// Positions of one projection, one watch per partition.
pub struct ProjectionProgress {
    /// Sender side per partition; the projector updates, readers subscribe.
    partitions: Vec<watch::Sender<Offset>>,
    /// The partitions the projection's consumer holds now.
    held: Mutex<BTreeSet<PartitionId>>,
}

impl ProjectionProgress {
    pub fn new(partitions: u32) -> Self {
        ProjectionProgress {
            partitions: (0..partitions).map(|_| watch::channel(0).0).collect(),
            held: Mutex::new(BTreeSet::new()),
        }
    }

    /// Called by the projector once `partitions` are assigned to it and it found their position.
    pub fn hold(&self, partitions: &[PartitionId]) {
        self.held.lock().extend(partitions);
    }

    /// Called by the projector once `partitions` were taken from it (their work finished).
    pub fn release(&self, partitions: &[PartitionId]) {
        let mut held = self.held.lock();
        for partition in partitions {
            held.remove(partition);
        }
    }

    /// The partitions the projection holds now.
    pub fn held(&self) -> BTreeSet<PartitionId> {
        self.held.lock().clone()
    }

    /// Called by the projector after it has stored `next_offset` for `partition`.
    pub fn advance(&self, partition: PartitionId, next_offset: Offset) {
        if let Some(sender) = self.partitions.get(partition as usize) {
            sender.send_if_modified(|current| {
                let moved = next_offset > *current;
                if moved {
                    *current = next_offset;
                }
                moved
            });
        }
    }

    pub fn position(&self, partition: PartitionId) -> Offset {
        self.partitions
            .get(partition as usize)
            .map_or(0, |sender| *sender.borrow())
    }

    /// Waits until `partition` has reached `target`, at most `limit`. Returns whether it did.
    pub async fn wait_for(&self, partition: PartitionId, target: Offset, limit: Duration) -> bool {
        let Some(sender) = self.partitions.get(partition as usize) else {
            return false;
        };
        let mut receiver = sender.subscribe();
        tokio::time::timeout(limit, receiver.wait_for(|position| *position >= target))
            .await
            .is_ok_and(|result| result.is_ok())
    }
}
