//! The sequencer's state for one partition, and the decision it takes for each ingress event.
//!
//! The state is a pure function of the partition's `timeline`: [`SequencerState::apply`] folds
//! one timeline event in, and recovery folds the whole partition. The sequencer decides an
//! ingress event against the state, applies the resulting timeline event at once (so the next
//! event of the same batch sees it), and appends the batch. If that append fails the process
//! stops and recovery re-derives the state from what is durably in the log, so the state never
//! holds an event the log lacks across a restart.
//!
//! Rules (`docs/protocol.md`):
//! - seq per conversation starts at 1 and has no holes; read cursors take no seq;
//! - a direct conversation `dm:a:b` has exactly a and b as members; a group exists once created
//!   and its members come from `conversation_created`, `members_added`, `members_removed` and
//!   `disband` (which removes everyone; a disbanded group takes no more events);
//! - only members send, read or type; a reply answers a message of the conversation that is
//!   not recalled; a group message mentions the members its text names as `@user`; only the
//!   sender of a message edits or recalls it, and not once it is recalled;
//! - a group's creator is its owner; the owner and admins (or a trusted business system) add
//!   and remove members (never the owner), promote and demote them and rename the group; only
//!   the owner hands ownership over (becoming an admin) and disbands it; any member but the
//!   owner leaves; trusted business systems may send as any sender;
//! - a retried client message id (same conversation and sender) gets the original outcome back
//!   instead of a second event, within a window of the most recent `dedup_window` ids;
//! - a group never grows past `limits.max_group_members` members, and a user creates at most
//!   `limits.max_groups_created_per_user_per_hour` groups an hour: [`crate::group_limits`].
//!
//! Snapshots ([`crate::snapshot`]) store the folded part of the state ([`FoldedImage`]: every
//! field `apply` changes) so recovery can start from one instead of the partition's start:
//! restoring an image of the fold of `timeline[0..x)` and folding on from `x` gives the same
//! state as folding from 0. Any change to what is serialized here changes the snapshot format.

use std::collections::{HashMap, HashSet, VecDeque};

use serde::ser::SerializeSeq;
use serde::{Deserialize, Serialize};

use chorus_core::config::{LimitsSection, RouterConfig};
use chorus_core::error::{ApiError, ErrorCode};
use chorus_core::ids::Conversation;
use chorus_core::validate::MAX_MENTIONS;
use chorus_schemas::{EventBody, IngressEvent, Role, Roles, TimelineEvent};

use crate::group_limits::{GroupCreations, GroupLimits};

/// Marks a seq that is not a message (member events, edits, recalls).
const NOT_A_MESSAGE: u32 = u32::MAX;
/// Set on a message's sender slot once the message is recalled.
const RECALLED_BIT: u32 = 1 << 31;

/// What the sequencer does with one ingress event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Append this timeline event.
    Sequence(TimelineEvent),
    /// A retry of an event already sequenced: ack it again.
    Duplicate { seq: u64, event_id: String },
    /// Refuse it.
    Reject(ApiError),
    /// The conversation is homed in region `home`, whose router sequences it: forward the event
    /// there (`forward-<home>`) and tell the sender it is accepted. Nothing is applied here.
    Forward { home: String },
}

/// What a router does with an event of another region's mirrored `timeline`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MirrorDecision {
    /// The next event of its conversation (or a read mark): append it to the local `timeline`
    /// as it is (with this region's ingress offset), already applied to the state.
    Apply(Box<TimelineEvent>),
    /// At or below the conversation's last seq: a re-copy by MirrorMaker. Dropped.
    Duplicate,
    /// Beyond the next seq: the events between have not arrived. Held until they do.
    Hole { expected: u64 },
    /// The conversation is not homed in the region the event came from (a misconfigured home
    /// rule, or this region's own event come back): refused.
    Foreign,
}

/// One conversation's state.
#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
struct ConversationState {
    /// Highest seq assigned.
    last_seq: u64,
    /// Group members (empty for direct conversations, whose members are in their id).
    members: HashSet<String>,
    /// The group's owner (its creator until they hand ownership over; none for direct
    /// conversations and groups made by business systems) and admins, who manage it with the
    /// owner.
    roles: Roles,
    /// Set once the owner disbanded the group: it takes no more events.
    disbanded: bool,
    /// Whether the group has been created (direct conversations exist implicitly).
    created: bool,
    /// The region where the group was created: its home (the `origin_cluster` of its
    /// `conversation_created`). Empty for direct conversations.
    home: String,
    /// Direct conversations: the members who have blocked the other one (sorted, at most two).
    blocked_by: Vec<String>,
    /// The members who muted the conversation (sorted): they get no push notification.
    muted_by: Vec<String>,
    /// Per seq (index seq-1): the interned sender of a message, `NOT_A_MESSAGE`, with
    /// `RECALLED_BIT` once recalled. Four bytes per event, so edits and recalls can be checked.
    senders: Vec<u32>,
}

/// Key of the idempotency window.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
struct DedupKey {
    conversation: String,
    sender: String,
    client_msg_id: String,
}

/// The sequencer state of one partition.
#[derive(PartialEq)]
pub struct SequencerState {
    /// Conversations of this partition.
    conversations: HashMap<String, ConversationState>,
    /// Sender name → index, so per-message state is four bytes.
    interned: HashMap<String, u32>,
    /// Outcomes of recent client message ids.
    dedup: HashMap<DedupKey, (u64, String)>,
    /// Insertion order of `dedup`, to evict the oldest.
    dedup_order: VecDeque<DedupKey>,
    /// How many ids `dedup` keeps.
    dedup_window: usize,
    /// Next ingress offset to sequence: one past the highest `ingress_offset` in the timeline,
    /// or further while running (records handled without a timeline event).
    next_ingress_offset: u64,
    /// One past the highest `ingress_offset` folded in: `next_ingress_offset` as the timeline
    /// alone says it, which is what a snapshot stores (a fold of the timeline, nothing else).
    folded_ingress_offset: u64,
    /// Limits on group size and on groups created per user.
    group_limits: GroupLimits,
    /// Recent group creations per creator, for `group_limits`.
    group_creations: GroupCreations,
    /// Where conversations are homed when this is one region of several; `None`: one region.
    regions: Option<HomeRule>,
}

/// The home rule of a region among several (`[regions]`, docs/MULTI_REGION.md): a direct
/// conversation is homed where its lexicographically smaller user is, a group where it was
/// created. Only the home region's router gives a conversation seqs.
#[derive(Debug, Clone, PartialEq)]
pub struct HomeRule {
    /// This region (`cluster`).
    pub local: String,
    pub regions: chorus_core::config::RegionsSection,
}

impl HomeRule {
    fn is_peer(&self, region: &str) -> bool {
        self.regions.peers.iter().any(|peer| peer == region)
    }
}

impl SequencerState {
    /// A state with `dedup_window` and the default group limits of [`LimitsSection`].
    pub fn new(dedup_window: usize) -> Self {
        SequencerState {
            conversations: HashMap::new(),
            interned: HashMap::new(),
            dedup: HashMap::new(),
            dedup_order: VecDeque::new(),
            dedup_window,
            next_ingress_offset: 0,
            folded_ingress_offset: 0,
            group_limits: GroupLimits::from_limits(&LimitsSection::default(), 1),
            group_creations: GroupCreations::default(),
            regions: None,
        }
    }

    /// This region's home rule; without one every conversation is homed here.
    pub fn with_home_rule(mut self, rule: HomeRule) -> Self {
        self.regions = Some(rule);
        self
    }

    /// The region a conversation is homed in when that is another region (a peer); `None`
    /// when it is homed here (or is a group this region has not seen created: a creation here
    /// makes it this region's).
    pub fn remote_home(&self, conversation: &str) -> Option<&str> {
        let rule = self.regions.as_ref()?;
        let home = match Conversation::parse(conversation).ok()? {
            Conversation::Direct { .. } => {
                let (first, _) = conversation.strip_prefix("dm:")?.split_once(':')?;
                rule.regions.home_of_user(first, &rule.local)
            }
            Conversation::Group { .. } => self.conversations.get(conversation)?.home.as_str(),
        };
        rule.is_peer(home).then_some(home)
    }

    /// A state with the configured dedup window and group limits (what the router uses).
    pub fn for_config(config: &RouterConfig) -> Self {
        let state = SequencerState::new(config.router.dedup_window)
            .with_group_limits(GroupLimits::from_limits(&config.limits, config.partitions));
        if config.regions.enabled() {
            state.with_home_rule(HomeRule {
                local: config.cluster.clone(),
                regions: config.regions.clone(),
            })
        } else {
            state
        }
    }

    /// Replaces the group limits.
    pub fn with_group_limits(mut self, group_limits: GroupLimits) -> Self {
        self.group_limits = group_limits;
        self
    }

    /// Where sequencing of this partition resumes in `ingress`.
    pub fn next_ingress_offset(&self) -> u64 {
        self.next_ingress_offset
    }

    /// Records that every ingress record below `offset` has been handled, including records that
    /// produced no timeline event (rejections, duplicates). Only meaningful while running: after a
    /// restart those are handled again, which repeats their error or ack and appends nothing.
    pub fn handled_through(&mut self, offset: u64) {
        self.next_ingress_offset = self.next_ingress_offset.max(offset);
    }

    pub fn last_seq(&self, conversation: &str) -> u64 {
        self.conversations
            .get(conversation)
            .map_or(0, |state| state.last_seq)
    }

    /// The members who muted a conversation (they get no push notification).
    pub fn muted_by(&self, conversation: &str) -> &[String] {
        self.conversations
            .get(conversation)
            .map_or(&[], |state| state.muted_by.as_slice())
    }

    /// The members of a conversation as of the state.
    pub fn members(&self, conversation: &str) -> Vec<String> {
        match Conversation::parse(conversation) {
            Ok(Conversation::Direct { first, second }) => vec![first, second],
            Ok(Conversation::Group { .. }) => self
                .conversations
                .get(conversation)
                .map(|state| state.members.iter().cloned().collect())
                .unwrap_or_default(),
            Err(_) => Vec::new(),
        }
    }

    fn intern(&mut self, sender: &str) -> u32 {
        if let Some(index) = self.interned.get(sender) {
            return *index;
        }
        let index = self.interned.len() as u32;
        self.interned.insert(sender.to_owned(), index);
        index
    }

    fn remember(&mut self, key: DedupKey, seq: u64, event_id: String) {
        if self.dedup.insert(key.clone(), (seq, event_id)).is_none() {
            self.dedup_order.push_back(key);
        }
        while self.dedup_order.len() > self.dedup_window {
            if let Some(oldest) = self.dedup_order.pop_front() {
                self.dedup.remove(&oldest);
            }
        }
    }

    /// Folds one timeline event into the state (recovery, and after each decision).
    pub fn apply(&mut self, event: &TimelineEvent) {
        self.next_ingress_offset = self.next_ingress_offset.max(event.ingress_offset + 1);
        self.folded_ingress_offset = self.folded_ingress_offset.max(event.ingress_offset + 1);
        let flag = match &event.body {
            EventBody::UserBlocked { blocked } => Some(*blocked),
            EventBody::ConversationMuted { muted } => Some(*muted),
            _ => None,
        };
        if let Some(set) = flag {
            let state = self
                .conversations
                .entry(event.conversation.clone())
                .or_default();
            let users = if matches!(event.body, EventBody::UserBlocked { .. }) {
                &mut state.blocked_by
            } else {
                &mut state.muted_by
            };
            users.retain(|user| user != &event.sender);
            if set {
                users.push(event.sender.clone());
                users.sort();
            }
            return;
        }
        let Some(seq) = event.seq else {
            return; // read cursors change nothing the sequencer checks
        };
        let sender_index = match &event.body {
            EventBody::MessageSent(_) => self.intern(&event.sender),
            _ => NOT_A_MESSAGE,
        };
        let state = self
            .conversations
            .entry(event.conversation.clone())
            .or_default();
        state.last_seq = state.last_seq.max(seq);
        let index = (seq - 1) as usize;
        if state.senders.len() <= index {
            state.senders.resize(index + 1, NOT_A_MESSAGE);
        }
        state.senders[index] = sender_index;
        match &event.body {
            EventBody::MessageRecalled { target_seq } => {
                if let Some(slot) = state
                    .senders
                    .get_mut((*target_seq as usize).wrapping_sub(1))
                {
                    *slot |= RECALLED_BIT;
                }
            }
            EventBody::ConversationCreated { members, .. } => {
                state.created = true;
                state.home = event.origin_cluster.clone();
                state.members.extend(members.iter().cloned());
                if members.contains(&event.sender) {
                    self.group_creations.record(
                        &event.sender,
                        event.ts_ms,
                        self.group_limits
                            .max_groups_created_per_user_per_hour_in_partition,
                    );
                }
            }
            EventBody::MembersAdded { members } => state.members.extend(members.iter().cloned()),
            EventBody::MembersRemoved { members } => {
                for member in members {
                    state.members.remove(member);
                }
            }
            EventBody::ConversationDisbanded { .. } => {
                state.disbanded = true;
                state.members.clear();
            }
            _ => {}
        }
        state.roles.apply(&event.sender, &event.body);
        if let Some(client_msg_id) = &event.client_msg_id {
            let key = DedupKey {
                conversation: event.conversation.clone(),
                sender: event.sender.clone(),
                client_msg_id: client_msg_id.clone(),
            };
            self.remember(key, seq, event.event_id.clone());
        }
    }

    /// Decides an ingress event (already validated for shape and size) and, when it is
    /// sequenced, applies it. `ingress_offset` is the record's offset in `ingress`.
    pub fn decide(&mut self, event: IngressEvent, ingress_offset: u64) -> Decision {
        if let Some(client_msg_id) = &event.client_msg_id {
            let key = DedupKey {
                conversation: event.conversation.clone(),
                sender: event.sender.clone(),
                client_msg_id: client_msg_id.clone(),
            };
            if let Some((seq, event_id)) = self.dedup.get(&key) {
                return Decision::Duplicate {
                    seq: *seq,
                    event_id: event_id.clone(),
                };
            }
        }
        if let Err(error) = self.check(&event) {
            return Decision::Reject(error);
        }
        // Checked against this region's view of it (what the mirror brought), so what is
        // refused here never travels; the home decides again against its own.
        if let Some(home) = self.remote_home(&event.conversation) {
            return Decision::Forward {
                home: home.to_owned(),
            };
        }
        let seq = event
            .body
            .is_sequenced()
            .then(|| self.last_seq(&event.conversation) + 1);
        let mut event = event;
        match &mut event.body {
            EventBody::MessageSent(message) => {
                message.mentions =
                    self.mentions_in(&event.conversation, &event.sender, &message.text);
            }
            EventBody::ConversationDisbanded { members } => {
                // the members removed, as of now (what the ingress event listed is replaced)
                let mut current = self.members(&event.conversation);
                current.sort();
                *members = current;
            }
            _ => {}
        }
        let timeline = TimelineEvent {
            conversation: event.conversation,
            seq,
            event_id: event.event_id,
            sender: event.sender,
            ts_ms: event.ts_ms,
            origin_cluster: event.origin_cluster,
            client_msg_id: event.client_msg_id,
            ingress_offset,
            body: event.body,
        };
        self.apply(&timeline);
        Decision::Sequence(timeline)
    }

    /// Decides an event of region `source`'s mirrored `timeline` (copied into this region's
    /// `ingress` at `ingress_offset`): applied only when it is its conversation's next seq, so
    /// the local `timeline` holds each event once and in order whatever MirrorMaker re-copies.
    pub fn decide_mirrored(
        &mut self,
        mut event: TimelineEvent,
        source: &str,
        ingress_offset: u64,
    ) -> MirrorDecision {
        let home = match (&event.body, self.remote_home(&event.conversation)) {
            (_, Some(home)) => home.to_owned(),
            // a group this region has not seen yet comes into being with its creation
            (EventBody::ConversationCreated { .. }, None)
                if !self.conversations.contains_key(&event.conversation) =>
            {
                event.origin_cluster.clone()
            }
            _ => return MirrorDecision::Foreign,
        };
        if home != source {
            return MirrorDecision::Foreign;
        }
        event.ingress_offset = ingress_offset;
        if let Some(seq) = event.seq {
            let last = self.last_seq(&event.conversation);
            if seq <= last {
                return MirrorDecision::Duplicate;
            }
            if seq > last + 1 {
                return MirrorDecision::Hole { expected: last + 1 };
            }
        }
        self.apply(&event);
        MirrorDecision::Apply(Box::new(event))
    }

    fn check(&self, event: &IngressEvent) -> Result<(), ApiError> {
        let forbidden = |message: &str| Err(ApiError::new(ErrorCode::Forbidden, message));
        let conversation = Conversation::parse(&event.conversation)
            .map_err(|error| ApiError::new(ErrorCode::BadRequest, error.to_string()))?;
        let state = self.conversations.get(&event.conversation);
        let is_member = match &conversation {
            Conversation::Direct { .. } => conversation.is_direct_member(&event.sender),
            Conversation::Group { .. } => {
                state.is_some_and(|state| state.members.contains(&event.sender))
            }
        };
        let group_exists = match &conversation {
            Conversation::Direct { .. } => true,
            Conversation::Group { .. } => state.is_some_and(|state| state.created),
        };
        if let EventBody::ConversationCreated { members, .. } = &event.body {
            if group_exists {
                return Err(ApiError::new(
                    ErrorCode::BadRequest,
                    format!("conversation {} already exists", event.conversation),
                ));
            }
            return self
                .group_limits
                .check_creation(&self.group_creations, event, members);
        }
        if !group_exists {
            return Err(ApiError::new(
                ErrorCode::NotFound,
                format!("no conversation {}", event.conversation),
            ));
        }
        if state.is_some_and(|state| state.disbanded) {
            return Err(ApiError::new(
                ErrorCode::NotFound,
                format!("{} was disbanded", event.conversation),
            ));
        }
        let owner = state.and_then(|state| state.roles.owner.as_deref());
        let is_owner = owner == Some(event.sender.as_str());
        // owners and admins manage a group (members, roles, title), as do business systems
        let manages = event.trusted
            || (is_member
                && (is_owner
                    || state.is_some_and(|state| state.roles.admins.contains(&event.sender))));
        match &event.body {
            EventBody::MembersAdded { .. } | EventBody::MembersRemoved { .. } => {
                let leaving = matches!(&event.body, EventBody::MembersRemoved { members }
                    if members.len() == 1 && members[0] == event.sender);
                if leaving && !event.trusted {
                    // a member leaves on their own; the owner hands ownership over first
                    if !is_member {
                        return forbidden("not a member of this conversation");
                    }
                    if is_owner {
                        return forbidden(
                            "the owner of a group cannot leave it (hand ownership over first)",
                        );
                    }
                    return Ok(());
                }
                if !manages {
                    return forbidden("only the owner and admins of a group manage its members");
                }
                if let EventBody::MembersRemoved { members } = &event.body
                    && !event.trusted
                    && owner.is_some_and(|owner| members.iter().any(|member| member == owner))
                {
                    return forbidden("the owner of a group cannot be removed");
                }
                if let (EventBody::MembersAdded { members }, Some(state)) = (&event.body, state) {
                    let newcomers: HashSet<&String> = members
                        .iter()
                        .filter(|member| !state.members.contains(*member))
                        .collect();
                    self.group_limits
                        .check_size(state.members.len() + newcomers.len())?;
                }
                Ok(())
            }
            EventBody::RoleChanged { member, role } => {
                if !manages {
                    return forbidden("only the owner and admins of a group change roles");
                }
                if !state.is_some_and(|state| state.members.contains(member)) {
                    return Err(ApiError::new(
                        ErrorCode::BadRequest,
                        format!("{member} is not a member of this group"),
                    ));
                }
                if owner == Some(member.as_str()) {
                    return forbidden("the owner's role changes only when they hand it over");
                }
                if *role == Role::Owner && !is_owner && !event.trusted {
                    return forbidden("only the owner hands ownership over");
                }
                Ok(())
            }
            EventBody::ConversationRenamed { .. } => {
                if !manages {
                    return forbidden("only the owner and admins of a group rename it");
                }
                Ok(())
            }
            EventBody::ConversationDisbanded { .. } => {
                if !is_owner && !event.trusted {
                    return forbidden("only the owner of a group disbands it");
                }
                Ok(())
            }
            // a group's owner sets how long its messages live; in a direct conversation, either
            // member (each owns it)
            EventBody::RetentionSet { .. } => match conversation {
                Conversation::Direct { .. } if is_member => Ok(()),
                Conversation::Direct { .. } => forbidden("not a member of this conversation"),
                Conversation::Group { .. } if is_owner || event.trusted => Ok(()),
                Conversation::Group { .. } => {
                    forbidden("only the owner of a group sets how long its messages live")
                }
            },
            EventBody::MessageEdited { target_seq, .. }
            | EventBody::MessageRecalled { target_seq } => {
                if !is_member {
                    return forbidden("not a member of this conversation");
                }
                let slot = message_slot(state, *target_seq)?;
                if slot & RECALLED_BIT != 0 {
                    return Err(ApiError::new(
                        ErrorCode::NotFound,
                        "that message was recalled",
                    ));
                }
                let own = self
                    .interned
                    .get(&event.sender)
                    .is_some_and(|index| *index == slot);
                if !own {
                    return forbidden("only the sender may change a message");
                }
                if matches!(event.body, EventBody::MessageEdited { .. }) {
                    // new words are a new message to the one who blocked; a recall is not
                    return self.check_not_blocked(event, state);
                }
                Ok(())
            }
            EventBody::MessagePinned {
                target_seq,
                pinned: set,
            }
            | EventBody::ReactionChanged {
                target_seq,
                added: set,
                ..
            } => {
                // pins and reactions: any member, on a message, not added to a recalled one
                if !is_member {
                    return forbidden("not a member of this conversation");
                }
                let slot = message_slot(state, *target_seq)?;
                if *set && slot & RECALLED_BIT != 0 {
                    return Err(ApiError::new(
                        ErrorCode::NotFound,
                        "that message was recalled",
                    ));
                }
                Ok(())
            }
            EventBody::ConversationMuted { .. } | EventBody::UserBlocked { .. } => {
                if !is_member {
                    return forbidden("not a member of this conversation");
                }
                Ok(())
            }
            EventBody::ReadCursorMoved { seq } => {
                if !is_member {
                    return forbidden("not a member of this conversation");
                }
                if *seq > self.last_seq(&event.conversation) {
                    return Err(ApiError::new(
                        ErrorCode::BadRequest,
                        "seq is beyond the last event",
                    ));
                }
                Ok(())
            }
            EventBody::MessageSent(message) => {
                if !is_member && !event.trusted {
                    return forbidden("not a member of this conversation");
                }
                if let Some(reply_to) = message.reply_to {
                    let slot = message_slot(state, reply_to)?;
                    if slot & RECALLED_BIT != 0 {
                        return Err(ApiError::new(
                            ErrorCode::NotFound,
                            "the message replied to was recalled",
                        ));
                    }
                }
                self.check_not_blocked(event, state)
            }
            EventBody::ConversationCreated { .. } => Ok(()),
        }
    }

    /// The members of group `conversation` other than `sender` that `text` names as `@user`, in
    /// order of first mention, at most [`MAX_MENTIONS`]: what a message carries as its mentions.
    /// Names that are not members are not mentions (they stay plain text). Direct
    /// conversations have none.
    fn mentions_in(&self, conversation: &str, sender: &str, text: &str) -> Vec<String> {
        let Some(state) = self
            .conversations
            .get(conversation)
            .filter(|state| state.created)
        else {
            return Vec::new();
        };
        let mut mentions: Vec<String> = Vec::new();
        for name in mentioned_names(text) {
            if mentions.len() == MAX_MENTIONS {
                break;
            }
            let member = [name, name.trim_end_matches(['.', '-'])]
                .into_iter()
                .find(|candidate| state.members.contains(*candidate));
            if let Some(member) = member
                && member != sender
                && !mentions.iter().any(|known| known == member)
            {
                mentions.push(member.to_owned());
            }
        }
        mentions
    }

    /// Refuses a user's message (or edit) in a direct conversation whose other member blocked
    /// them. Business systems are not users: they are never blocked.
    fn check_not_blocked(
        &self,
        event: &IngressEvent,
        state: Option<&ConversationState>,
    ) -> Result<(), ApiError> {
        let blocked = state.is_some_and(|state| {
            state
                .blocked_by
                .iter()
                .any(|blocker| blocker != &event.sender)
        });
        if blocked && !event.trusted {
            return Err(ApiError::new(
                ErrorCode::Blocked,
                "the other member of this conversation has blocked you",
            ));
        }
        Ok(())
    }

    /// The folded part of the state, serialized (postcard) for a snapshot: exactly what
    /// folding the timeline up to here gives, whatever was handled since without a timeline
    /// event. Proportional to the state: the caller runs it between batches.
    pub(crate) fn encode_folded(&self) -> Result<Vec<u8>, postcard::Error> {
        postcard::to_stdvec(&FoldedImageRef {
            conversations: &self.conversations,
            interned: &self.interned,
            dedup: DedupInOrder(self),
            folded_ingress_offset: self.folded_ingress_offset,
            group_creations: &self.group_creations,
        })
    }

    /// Replaces the folded part of this (fresh) state with a decoded image; the configured
    /// dedup window and group limits stay. A window smaller than the image's keeps its newest
    /// ids, as a fold under the smaller window would.
    pub(crate) fn restore(&mut self, image: FoldedImage) {
        self.conversations = image.conversations;
        self.interned = image.interned;
        self.dedup = HashMap::with_capacity(image.dedup.len().min(self.dedup_window));
        self.dedup_order = VecDeque::with_capacity(image.dedup.len().min(self.dedup_window));
        for (key, seq, event_id) in image.dedup {
            self.remember(key, seq, event_id);
        }
        self.next_ingress_offset = image.folded_ingress_offset;
        self.folded_ingress_offset = image.folded_ingress_offset;
        self.group_creations = image.group_creations;
    }
}

/// The words of `text` written as `@name` (an `@` at the start or after a space, then the
/// characters of a user id), without the `@`.
fn mentioned_names(text: &str) -> impl Iterator<Item = &str> {
    let is_id_byte = |byte: u8| byte.is_ascii_alphanumeric() || b"_-.@".contains(&byte);
    let bytes = text.as_bytes();
    (0..bytes.len()).filter_map(move |at| {
        let starts = bytes[at] == b'@' && (at == 0 || bytes[at - 1].is_ascii_whitespace());
        if !starts {
            return None;
        }
        let rest = &bytes[at + 1..];
        let len = rest
            .iter()
            .position(|byte| !is_id_byte(*byte))
            .unwrap_or(rest.len())
            .min(chorus_core::ids::MAX_ID_BYTES);
        (len > 0).then(|| &text[at + 1..at + 1 + len])
    })
}

/// The sender slot of message `target_seq` (an edit's, recall's or pin's target): `not_found`
/// when there is no such seq, `bad_request` when it is not a message.
fn message_slot(state: Option<&ConversationState>, target_seq: u64) -> Result<u32, ApiError> {
    let slot = state.and_then(|state| state.senders.get((target_seq as usize).wrapping_sub(1)));
    let Some(&slot) = slot else {
        return Err(ApiError::new(ErrorCode::NotFound, "no such message"));
    };
    if slot == NOT_A_MESSAGE {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            "that seq is not a message",
        ));
    }
    Ok(slot)
}

/// The folded state as a snapshot holds it; decoded by [`decode_folded`], put back by
/// [`SequencerState::restore`]. Field for field the shape [`SequencerState::encode_folded`]
/// writes.
#[derive(Deserialize)]
pub(crate) struct FoldedImage {
    conversations: HashMap<String, ConversationState>,
    interned: HashMap<String, u32>,
    /// The dedup window, oldest first.
    dedup: Vec<(DedupKey, u64, String)>,
    folded_ingress_offset: u64,
    group_creations: GroupCreations,
}

/// Decodes what [`SequencerState::encode_folded`] wrote.
pub(crate) fn decode_folded(bytes: &[u8]) -> Result<FoldedImage, postcard::Error> {
    postcard::from_bytes(bytes)
}

/// [`FoldedImage`] by reference, so encoding copies nothing.
#[derive(Serialize)]
struct FoldedImageRef<'a> {
    conversations: &'a HashMap<String, ConversationState>,
    interned: &'a HashMap<String, u32>,
    dedup: DedupInOrder<'a>,
    folded_ingress_offset: u64,
    group_creations: &'a GroupCreations,
}

/// The dedup window as `(key, seq, event_id)`, oldest first, the order its eviction follows.
struct DedupInOrder<'a>(&'a SequencerState);

impl Serialize for DedupInOrder<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let state = self.0;
        let mut sequence = serializer.serialize_seq(Some(state.dedup_order.len()))?;
        for key in &state.dedup_order {
            // `remember` keeps `dedup` and `dedup_order` to the same keys
            let Some((seq, event_id)) = state.dedup.get(key) else {
                return Err(serde::ser::Error::custom("dedup window out of step"));
            };
            sequence.serialize_element(&(key, seq, event_id))?;
        }
        sequence.end()
    }
}

#[cfg(test)]
mod tests;
