//! Applying a batch of timeline records at a projection's stored position: the one rule every
//! projection adapter (the redb history, the Tantivy index, the ClickHouse history) follows.
//!
//! A projection stores, per timeline partition, its position: the next offset to apply. A batch
//! read from the log may start below it (the projector resumed from an older offset, or a batch
//! is applied again after a crash or a retry); the records below the position are already in the
//! projection, so they are skipped, and the position only ever moves forward. So replaying a
//! stretch of the log, the same batch or an older one, changes nothing: the projection is
//! idempotent in the log's offsets. Each adapter calls [`records_to_apply`] inside its atomic
//! step, with the position it read there (the redb write transaction, the Tantivy writer's lock,
//! the ClickHouse apply), so the comparison and the write see the same position.

use chorus_log::Offset;
use chorus_schemas::TimelineEvent;

/// What a batch changes, at the stored position: the records to apply and the new position.
#[derive(Debug, PartialEq)]
pub struct PendingBatch<'batch> {
    /// The batch's records at or above the stored position, in batch order.
    pub records: Vec<&'batch (Offset, TimelineEvent)>,
    /// The position to store with them: `next_offset`, or the stored position if that is
    /// higher (a position never moves backwards).
    pub new_position: Offset,
}

/// The part of a batch (`records`, to be followed by `next_offset`) a projection at
/// `stored_position` still has to apply, or `None` when the batch changes nothing (every record
/// is below the position and `next_offset` does not raise it).
pub fn records_to_apply(
    stored_position: Offset,
    records: &[(Offset, TimelineEvent)],
    next_offset: Offset,
) -> Option<PendingBatch<'_>> {
    let pending: Vec<&(Offset, TimelineEvent)> = records
        .iter()
        .filter(|(offset, _)| *offset >= stored_position)
        .collect();
    if pending.is_empty() && next_offset <= stored_position {
        return None;
    }
    Some(PendingBatch {
        records: pending,
        new_position: next_offset.max(stored_position),
    })
}

#[cfg(test)]
mod tests {
    use chorus_schemas::EventBody;

    use super::*;

    fn record(offset: Offset) -> (Offset, TimelineEvent) {
        let event = TimelineEvent {
            conversation: "dm:a:b".into(),
            seq: Some(offset + 1),
            event_id: format!("e{offset}"),
            sender: "a".into(),
            ts_ms: 1,
            origin_cluster: "local".into(),
            client_msg_id: None,
            ingress_offset: offset,
            body: EventBody::message("hi"),
        };
        (offset, event)
    }

    #[test]
    fn records_below_the_position_are_skipped_and_the_position_only_rises() {
        let batch: Vec<_> = (3..7).map(record).collect();
        let pending = records_to_apply(5, &batch, 7).expect("records at or above 5");
        let offsets: Vec<Offset> = pending.records.iter().map(|(offset, _)| *offset).collect();
        assert_eq!(offsets, [5, 6]);
        assert_eq!(pending.new_position, 7);
        assert_eq!(
            records_to_apply(9, &batch, 7),
            None,
            "an older batch changes nothing"
        );
        let raised = records_to_apply(9, &[], 12).expect("an empty batch may raise the position");
        assert!(raised.records.is_empty());
        assert_eq!(raised.new_position, 12);
        let kept = records_to_apply(2, &batch, 1).expect("records above the position");
        assert_eq!(kept.new_position, 2, "the position never moves backwards");
    }
}
