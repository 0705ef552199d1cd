//! Limits on groups that the sequencer enforces, because it alone knows a group's members and
//! sees every way in (WebSocket, HTTP, records produced to `ingress`):
//!
//! - a group never grows past `limits.max_group_members` members in total, whatever the number
//!   of events that add them (`too_large`);
//! - a user creates at most `limits.max_groups_created_per_user_per_hour` groups per hour
//!   (`rate_limited`). A sequencer sees only its partition, and a user's groups hash over all
//!   partitions, so each partition allows its share, `ceil(limit / partitions)`: cluster-wide a
//!   user never creates more than `limit + partitions - 1` groups in an hour (a heavy creator
//!   whose groups fall unevenly may be refused a little before `limit`). The hour is measured on
//!   the events' own `ts_ms` (stamped by the ingest node), so the decision is a function of the
//!   timeline and recovery re-derives it exactly. Groups created by trusted business systems
//!   are not limited (they count for the user who created them as a member, if any).

use std::collections::{HashMap, HashSet, VecDeque};

use chorus_core::config::LimitsSection;
use chorus_core::error::{ApiError, ErrorCode};
use chorus_schemas::IngressEvent;

/// The window of `limits.max_groups_created_per_user_per_hour`.
pub(crate) const GROUP_CREATION_WINDOW_MS: i64 = 60 * 60 * 1000;

/// The limits on groups the sequencer enforces, from `[limits]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupLimits {
    /// Most members of one group, in total (`limits.max_group_members`).
    pub max_group_members: usize,
    /// Most groups one user creates per hour of event time, cluster-wide
    /// (`limits.max_groups_created_per_user_per_hour`).
    pub max_groups_created_per_user_per_hour: usize,
    /// This partition's share of it: `ceil(max_groups_created_per_user_per_hour / partitions)`.
    pub max_groups_created_per_user_per_hour_in_partition: usize,
}

impl GroupLimits {
    /// The limits of `limits` for one of `partitions` partitions.
    pub fn from_limits(limits: &LimitsSection, partitions: u32) -> Self {
        let per_user = limits.max_groups_created_per_user_per_hour;
        let partitions = usize::try_from(partitions.max(1)).unwrap_or(usize::MAX);
        GroupLimits {
            max_group_members: limits.max_group_members,
            max_groups_created_per_user_per_hour: per_user,
            max_groups_created_per_user_per_hour_in_partition: per_user.div_ceil(partitions),
        }
    }

    /// A group of `member_count` members must fit `limits.max_group_members`.
    pub(crate) fn check_size(&self, member_count: usize) -> Result<(), ApiError> {
        let limit = self.max_group_members;
        if member_count > limit {
            return Err(ApiError::new(
                ErrorCode::TooLarge,
                format!(
                    "the group would have {member_count} members; limits.max_group_members is {limit}"
                ),
            ));
        }
        Ok(())
    }

    /// A new group must fit the size limit, and a user (not a trusted business system) must be
    /// under `limits.max_groups_created_per_user_per_hour`.
    pub(crate) fn check_creation(
        &self,
        creations: &GroupCreations,
        event: &IngressEvent,
        members: &[String],
    ) -> Result<(), ApiError> {
        let distinct: HashSet<&String> = members.iter().collect();
        self.check_size(distinct.len())?;
        if event.trusted {
            return Ok(());
        }
        let share = self.max_groups_created_per_user_per_hour_in_partition;
        if creations.within_hour(&event.sender, event.ts_ms) >= share {
            return Err(ApiError::new(
                ErrorCode::RateLimited,
                format!(
                    "{} created too many groups within the last hour \
                     (limits.max_groups_created_per_user_per_hour is {}, \
                     counted as {share} per log partition)",
                    event.sender, self.max_groups_created_per_user_per_hour
                ),
            ));
        }
        Ok(())
    }
}

/// The groups each user created within the last hour of event time, for
/// `max_groups_created_per_user_per_hour`. Bounded: per user at most the partition's share of
/// timestamps (the newest; only they decide whether the user is at the limit), and users whose
/// creations all fell out of the window are dropped by a sweep each time the map doubled.
#[derive(Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub(crate) struct GroupCreations {
    /// Creation `ts_ms` of each user's newest groups, oldest first.
    pub(crate) by_creator: HashMap<String, VecDeque<i64>>,
    /// The newest creation `ts_ms` seen: the window ends here (never moves back on clock skew).
    latest_ms: i64,
    /// `by_creator.len()` after the last sweep.
    size_after_sweep: usize,
}

impl GroupCreations {
    pub(crate) fn record(&mut self, creator: &str, ts_ms: i64, keep_per_creator: usize) {
        self.latest_ms = self.latest_ms.max(ts_ms);
        let times = self.by_creator.entry(creator.to_owned()).or_default();
        times.push_back(ts_ms);
        while times.len() > keep_per_creator {
            times.pop_front();
        }
        if self.by_creator.len() > self.size_after_sweep.max(64) * 2 {
            let window_start = self.latest_ms.saturating_sub(GROUP_CREATION_WINDOW_MS);
            self.by_creator
                .retain(|_, times| times.iter().any(|time| *time > window_start));
            self.size_after_sweep = self.by_creator.len();
        }
    }

    /// Groups `creator` created in the hour before `now_ms` (or before the newest creation seen,
    /// if later).
    fn within_hour(&self, creator: &str, now_ms: i64) -> usize {
        let window_start = now_ms
            .max(self.latest_ms)
            .saturating_sub(GROUP_CREATION_WINDOW_MS);
        self.by_creator.get(creator).map_or(0, |times| {
            times.iter().filter(|time| **time > window_start).count()
        })
    }
}
