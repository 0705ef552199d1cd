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
//!   and its members come from `conversation_created`, `members_added`, `members_removed`;
//! - only members send, read or type; only the sender of a message edits or recalls it, and not
//!   once it is recalled; only the owner (the creator) or a trusted business system manages
//!   members; trusted business systems may send as any sender;
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
use chorus_schemas::{EventBody, IngressEvent, TimelineEvent};

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
}

/// One conversation's state.
#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
struct ConversationState {
    /// Highest seq assigned.
    last_seq: u64,
    /// Group members (empty for direct conversations, whose members are in their id).
    members: HashSet<String>,
    /// The group's creator; `None` for direct conversations and groups made by business systems.
    owner: Option<String>,
    /// Whether the group has been created (direct conversations exist implicitly).
    created: bool,
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
        }
    }

    /// A state with the configured dedup window and group limits (what the router uses).
    pub fn for_config(config: &RouterConfig) -> Self {
        SequencerState::new(config.router.dedup_window)
            .with_group_limits(GroupLimits::from_limits(&config.limits, config.partitions))
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
        let Some(seq) = event.seq else {
            return; // read cursors change nothing the sequencer checks
        };
        let sender_index = match &event.body {
            EventBody::MessageSent { .. } => self.intern(&event.sender),
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
                state.members.extend(members.iter().cloned());
                if !members.contains(&event.sender) {
                    state.owner = None;
                } else {
                    state.owner = Some(event.sender.clone());
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
            _ => {}
        }
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
        let seq = event
            .body
            .is_sequenced()
            .then(|| self.last_seq(&event.conversation) + 1);
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
        match &event.body {
            EventBody::MembersAdded { .. } | EventBody::MembersRemoved { .. } => {
                let is_owner = state
                    .and_then(|state| state.owner.as_ref())
                    .is_some_and(|owner| owner == &event.sender);
                if !event.trusted && !is_owner {
                    return forbidden("only the owner of a group manages its members");
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
            EventBody::MessageEdited { target_seq, .. }
            | EventBody::MessageRecalled { target_seq } => {
                if !is_member {
                    return forbidden("not a member of this conversation");
                }
                let slot = state
                    .and_then(|state| state.senders.get((*target_seq as usize).wrapping_sub(1)));
                let Some(&slot) = slot else {
                    return Err(ApiError::new(ErrorCode::NotFound, "no such message"));
                };
                if slot == NOT_A_MESSAGE {
                    return Err(ApiError::new(
                        ErrorCode::BadRequest,
                        "that seq is not a message",
                    ));
                }
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
            EventBody::MessageSent { .. } => {
                if !is_member && !event.trusted {
                    return forbidden("not a member of this conversation");
                }
                Ok(())
            }
            EventBody::ConversationCreated { .. } => Ok(()),
        }
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
mod tests {
    use super::*;
    use crate::group_limits::GROUP_CREATION_WINDOW_MS;

    fn ingress(conversation: &str, sender: &str, id: &str, body: EventBody) -> IngressEvent {
        IngressEvent {
            event_id: format!("ev-{id}"),
            conversation: conversation.into(),
            sender: sender.into(),
            client_msg_id: Some(id.into()),
            ts_ms: 1,
            origin_cluster: "local".into(),
            origin_node: None,
            origin_session: None,
            trusted: false,
            body,
        }
    }

    fn text(text: &str) -> EventBody {
        EventBody::MessageSent { text: text.into() }
    }

    fn seq_of(decision: &Decision) -> Option<u64> {
        match decision {
            Decision::Sequence(event) => event.seq,
            _ => None,
        }
    }

    fn code_of(decision: &Decision) -> Option<ErrorCode> {
        match decision {
            Decision::Reject(error) => Some(error.code),
            _ => None,
        }
    }

    #[test]
    fn direct_conversation_seqs_are_contiguous_and_members_only() {
        let mut state = SequencerState::new(100);
        for (offset, expected) in (0..5).zip(1..) {
            let decision = state.decide(
                ingress("dm:alice:bob", "alice", &format!("c{offset}"), text("hi")),
                offset,
            );
            assert_eq!(seq_of(&decision), Some(expected));
        }
        let outsider = state.decide(ingress("dm:alice:bob", "carol", "x", text("hi")), 5);
        assert_eq!(code_of(&outsider), Some(ErrorCode::Forbidden));
        assert_eq!(state.last_seq("dm:alice:bob"), 5);
        assert_eq!(state.next_ingress_offset(), 5);
    }

    #[test]
    fn retried_id_gets_the_original_outcome() {
        let mut state = SequencerState::new(100);
        let first = state.decide(ingress("dm:alice:bob", "alice", "c1", text("hi")), 0);
        let Decision::Sequence(event) = first else {
            panic!("sequenced")
        };
        let retry = state.decide(ingress("dm:alice:bob", "alice", "c1", text("hi")), 1);
        assert_eq!(
            retry,
            Decision::Duplicate {
                seq: 1,
                event_id: event.event_id
            }
        );
        // the same id from the other member is a different message
        assert_eq!(
            seq_of(&state.decide(ingress("dm:alice:bob", "bob", "c1", text("yo")), 2)),
            Some(2)
        );
    }

    #[test]
    fn dedup_window_is_bounded() {
        let mut state = SequencerState::new(2);
        for offset in 0..3 {
            state.decide(
                ingress("dm:alice:bob", "alice", &format!("c{offset}"), text("hi")),
                offset,
            );
        }
        let evicted = state.decide(ingress("dm:alice:bob", "alice", "c0", text("hi")), 3);
        assert_eq!(
            seq_of(&evicted),
            Some(4),
            "the oldest id fell out of the window"
        );
    }

    #[test]
    fn groups_membership_and_ownership() {
        let mut state = SequencerState::new(100);
        let unknown = state.decide(ingress("g:team", "alice", "m0", text("hi")), 0);
        assert_eq!(code_of(&unknown), Some(ErrorCode::NotFound));
        let create = EventBody::ConversationCreated {
            title: Some("Team".into()),
            members: vec!["alice".into(), "bob".into()],
        };
        assert_eq!(
            seq_of(&state.decide(ingress("g:team", "alice", "c", create.clone()), 1)),
            Some(1)
        );
        let again = state.decide(ingress("g:team", "bob", "c2", create), 2);
        assert_eq!(code_of(&again), Some(ErrorCode::BadRequest));
        let outsider = state.decide(ingress("g:team", "carol", "m1", text("hi")), 3);
        assert_eq!(code_of(&outsider), Some(ErrorCode::Forbidden));
        let by_member = state.decide(
            ingress(
                "g:team",
                "bob",
                "a1",
                EventBody::MembersAdded {
                    members: vec!["carol".into()],
                },
            ),
            4,
        );
        assert_eq!(
            code_of(&by_member),
            Some(ErrorCode::Forbidden),
            "bob is not the owner"
        );
        let by_owner = state.decide(
            ingress(
                "g:team",
                "alice",
                "a2",
                EventBody::MembersAdded {
                    members: vec!["carol".into()],
                },
            ),
            5,
        );
        assert_eq!(seq_of(&by_owner), Some(2));
        assert_eq!(
            seq_of(&state.decide(ingress("g:team", "carol", "m2", text("hi")), 6)),
            Some(3)
        );
        let mut trusted = ingress("g:team", "system", "s1", text("announcement"));
        trusted.trusted = true;
        assert_eq!(seq_of(&state.decide(trusted, 7)), Some(4));
    }

    #[test]
    fn edits_and_recalls_only_of_own_live_messages() {
        let mut state = SequencerState::new(100);
        state.decide(ingress("dm:alice:bob", "alice", "c1", text("hi")), 0);
        let by_bob = state.decide(
            ingress(
                "dm:alice:bob",
                "bob",
                "e1",
                EventBody::MessageEdited {
                    target_seq: 1,
                    text: "x".into(),
                },
            ),
            1,
        );
        assert_eq!(code_of(&by_bob), Some(ErrorCode::Forbidden));
        let edit = state.decide(
            ingress(
                "dm:alice:bob",
                "alice",
                "e2",
                EventBody::MessageEdited {
                    target_seq: 1,
                    text: "x".into(),
                },
            ),
            2,
        );
        assert_eq!(seq_of(&edit), Some(2));
        let edit_an_edit = state.decide(
            ingress(
                "dm:alice:bob",
                "alice",
                "e3",
                EventBody::MessageRecalled { target_seq: 2 },
            ),
            3,
        );
        assert_eq!(code_of(&edit_an_edit), Some(ErrorCode::BadRequest));
        let recall = state.decide(
            ingress(
                "dm:alice:bob",
                "alice",
                "r1",
                EventBody::MessageRecalled { target_seq: 1 },
            ),
            4,
        );
        assert_eq!(seq_of(&recall), Some(3));
        let edit_recalled = state.decide(
            ingress(
                "dm:alice:bob",
                "alice",
                "e4",
                EventBody::MessageEdited {
                    target_seq: 1,
                    text: "y".into(),
                },
            ),
            5,
        );
        assert_eq!(code_of(&edit_recalled), Some(ErrorCode::NotFound));
        let missing = state.decide(
            ingress(
                "dm:alice:bob",
                "alice",
                "e5",
                EventBody::MessageRecalled { target_seq: 99 },
            ),
            6,
        );
        assert_eq!(code_of(&missing), Some(ErrorCode::NotFound));
    }

    #[test]
    fn read_cursors_take_no_seq() {
        let mut state = SequencerState::new(100);
        state.decide(ingress("dm:alice:bob", "alice", "c1", text("hi")), 0);
        let mut read = ingress(
            "dm:alice:bob",
            "bob",
            "r",
            EventBody::ReadCursorMoved { seq: 1 },
        );
        read.client_msg_id = None;
        let decision = state.decide(read, 1);
        assert!(matches!(&decision, Decision::Sequence(event) if event.seq.is_none()));
        assert_eq!(state.last_seq("dm:alice:bob"), 1);
        assert_eq!(state.next_ingress_offset(), 2);
    }

    fn create_group(
        conversation: &str,
        creator: &str,
        members: &[&str],
        ts_ms: i64,
    ) -> IngressEvent {
        let mut event = ingress(
            conversation,
            creator,
            &format!("create-{conversation}"),
            EventBody::ConversationCreated {
                title: None,
                members: members.iter().map(|member| member.to_string()).collect(),
            },
        );
        event.ts_ms = ts_ms;
        event
    }

    fn add_members(conversation: &str, sender: &str, id: &str, members: &[&str]) -> IngressEvent {
        ingress(
            conversation,
            sender,
            id,
            EventBody::MembersAdded {
                members: members.iter().map(|member| member.to_string()).collect(),
            },
        )
    }

    fn limited(
        max_group_members: usize,
        max_groups_created_per_user_per_hour: usize,
    ) -> SequencerState {
        let limits = LimitsSection {
            max_group_members,
            max_groups_created_per_user_per_hour,
            ..LimitsSection::default()
        };
        SequencerState::new(100).with_group_limits(GroupLimits::from_limits(&limits, 1))
    }

    #[test]
    fn a_group_never_grows_past_its_member_limit_through_several_events() {
        let mut state = limited(5, 100);
        let created = state.decide(
            create_group("g:t", "alice", &["alice", "bob", "carol"], 1),
            0,
        );
        assert_eq!(seq_of(&created), Some(1));
        // each event is under the per-event cap; together they would pass the total
        let to_five = state.decide(add_members("g:t", "alice", "a1", &["dave", "erin"]), 1);
        assert_eq!(seq_of(&to_five), Some(2));
        let Decision::Reject(error) =
            state.decide(add_members("g:t", "alice", "a2", &["frank"]), 2)
        else {
            panic!("a sixth member must be refused");
        };
        assert_eq!(error.code, ErrorCode::TooLarge);
        assert!(
            error.message.contains("limits.max_group_members"),
            "{}",
            error.message
        );
        assert!(error.message.contains("6 members"), "{}", error.message);
        // members already in the group do not count twice; a business system is limited too
        let existing = state.decide(add_members("g:t", "alice", "a3", &["bob", "dave"]), 3);
        assert_eq!(seq_of(&existing), Some(3));
        let mut trusted = add_members("g:t", "system", "a4", &["frank"]);
        trusted.trusted = true;
        assert_eq!(
            code_of(&state.decide(trusted, 4)),
            Some(ErrorCode::TooLarge)
        );
        // after a removal there is room again
        let removed = state.decide(
            ingress(
                "g:t",
                "alice",
                "r1",
                EventBody::MembersRemoved {
                    members: vec!["erin".into()],
                },
            ),
            5,
        );
        assert_eq!(seq_of(&removed), Some(4));
        let frank = state.decide(add_members("g:t", "alice", "a5", &["frank"]), 6);
        assert_eq!(seq_of(&frank), Some(5));
        assert_eq!(state.members("g:t").len(), 5);
        // a creation larger than the limit (duplicates count once)
        let too_big = state.decide(
            create_group("g:big", "alice", &["alice", "b", "c", "d", "e", "f"], 2),
            7,
        );
        assert_eq!(code_of(&too_big), Some(ErrorCode::TooLarge));
        let duplicates = state.decide(
            create_group(
                "g:dup",
                "alice",
                &["alice", "b", "b", "b", "c", "d", "e"],
                2,
            ),
            8,
        );
        assert_eq!(seq_of(&duplicates), Some(1));
    }

    #[test]
    fn a_user_creates_a_limited_number_of_groups_per_hour_of_event_time() {
        const HOUR: i64 = 3_600_000;
        let start = 1_764_230_400_000;
        let mut state = limited(100, 2);
        let mut timeline = Vec::new();
        let mut decide = |state: &mut SequencerState, event: IngressEvent, offset: u64| {
            let decision = state.decide(event, offset);
            if let Decision::Sequence(event) = &decision {
                timeline.push(event.clone());
            }
            decision
        };
        assert!(
            seq_of(&decide(
                &mut state,
                create_group("g:a", "alice", &["alice"], start),
                0
            ))
            .is_some()
        );
        assert!(
            seq_of(&decide(
                &mut state,
                create_group("g:b", "alice", &["alice"], start + 1_000),
                1
            ))
            .is_some()
        );
        let Decision::Reject(error) = decide(
            &mut state,
            create_group("g:c", "alice", &["alice"], start + 2_000),
            2,
        ) else {
            panic!("a third group within the hour must be refused");
        };
        assert_eq!(error.code, ErrorCode::RateLimited);
        assert!(
            error
                .message
                .contains("limits.max_groups_created_per_user_per_hour"),
            "{}",
            error.message
        );
        // another user is not affected; a business system is not limited
        assert!(
            seq_of(&decide(
                &mut state,
                create_group("g:d", "bob", &["bob"], start + 3_000),
                3
            ))
            .is_some()
        );
        let mut trusted = create_group("g:e", "system", &["alice"], start + 4_000);
        trusted.trusted = true;
        assert!(seq_of(&decide(&mut state, trusted, 4)).is_some());
        // an ingest node whose clock lags does not reopen the window
        assert_eq!(
            code_of(&decide(
                &mut state,
                create_group("g:f", "alice", &["alice"], start - HOUR),
                5
            )),
            Some(ErrorCode::RateLimited)
        );
        // once the first creation is an hour old, there is room for one more
        let later = start + HOUR + 1;
        assert!(
            seq_of(&decide(
                &mut state,
                create_group("g:g", "alice", &["alice"], later),
                6
            ))
            .is_some()
        );
        assert_eq!(
            code_of(&decide(
                &mut state,
                create_group("g:h", "alice", &["alice"], later + 1),
                7
            )),
            Some(ErrorCode::RateLimited)
        );
        // recovery from the timeline decides the same way
        let mut recovered = limited(100, 2);
        for event in &timeline {
            recovered.apply(event);
        }
        assert_eq!(
            code_of(&recovered.decide(create_group("g:i", "alice", &["alice"], later + 2), 8)),
            Some(ErrorCode::RateLimited)
        );
        assert!(
            seq_of(&recovered.decide(create_group("g:j", "bob", &["bob"], later + 2), 9)).is_some()
        );
    }

    #[test]
    fn each_partition_allows_its_share_of_the_per_user_limit() {
        let limits = LimitsSection {
            max_groups_created_per_user_per_hour: 10,
            ..LimitsSection::default()
        };
        let share = GroupLimits::from_limits(&limits, 4);
        assert_eq!(share.max_groups_created_per_user_per_hour_in_partition, 3);
        assert_eq!(
            GroupLimits::from_limits(&limits, 1).max_groups_created_per_user_per_hour_in_partition,
            10
        );
        assert_eq!(
            GroupLimits::from_limits(&limits, 64).max_groups_created_per_user_per_hour_in_partition,
            1
        );
        let mut state = SequencerState::new(100).with_group_limits(share);
        for (offset, id) in ["g:1", "g:2", "g:3"].into_iter().enumerate() {
            let created = state.decide(create_group(id, "alice", &["alice"], 1), offset as u64);
            assert_eq!(seq_of(&created), Some(1));
        }
        let refused = state.decide(create_group("g:4", "alice", &["alice"], 1), 3);
        assert_eq!(code_of(&refused), Some(ErrorCode::RateLimited));
    }

    #[test]
    fn group_creation_memory_is_bounded() {
        let mut state = limited(100, 3);
        for index in 0..50u64 {
            state.decide(
                create_group(&format!("g:a{index}"), "alice", &["alice"], index as i64),
                index,
            );
        }
        assert_eq!(state.group_creations.by_creator["alice"].len(), 3);
        for index in 0..1_000u64 {
            let user = format!("user{index}");
            state.decide(
                create_group(&format!("g:u{index}"), &user, &[user.as_str()], 0),
                100 + index,
            );
        }
        assert!(state.group_creations.by_creator.len() > 500);
        // two hours later, every earlier creator falls out at the next sweeps
        let later = 2 * GROUP_CREATION_WINDOW_MS;
        for index in 0..300u64 {
            let user = format!("late{index}");
            state.decide(
                create_group(&format!("g:l{index}"), &user, &[user.as_str()], later),
                2_000 + index,
            );
        }
        assert!(
            state.group_creations.by_creator.len() <= 300 * 2,
            "{} creators remembered",
            state.group_creations.by_creator.len()
        );
        assert!(!state.group_creations.by_creator.contains_key("user1"));
    }

    #[test]
    fn recovery_from_the_timeline_rebuilds_the_same_state() {
        let mut live = SequencerState::new(100);
        let mut timeline = Vec::new();
        let create = EventBody::ConversationCreated {
            title: None,
            members: vec!["alice".into(), "bob".into()],
        };
        for (offset, event) in [
            ingress("g:t", "alice", "c", create),
            ingress("g:t", "alice", "m1", text("one")),
            ingress("g:t", "bob", "m2", text("two")),
        ]
        .into_iter()
        .enumerate()
        {
            if let Decision::Sequence(sequenced) = live.decide(event, offset as u64) {
                timeline.push(sequenced);
            }
        }
        let mut recovered = SequencerState::new(100);
        for event in &timeline {
            recovered.apply(event);
        }
        assert_eq!(recovered.last_seq("g:t"), 3);
        assert_eq!(recovered.next_ingress_offset(), 3);
        let retry = recovered.decide(ingress("g:t", "bob", "m2", text("two")), 3);
        assert!(matches!(retry, Decision::Duplicate { seq: 3, .. }));
        let next = recovered.decide(ingress("g:t", "alice", "m3", text("three")), 4);
        assert_eq!(seq_of(&next), Some(4));
    }

    /// A varied timeline decided by a live state: direct and group conversations, members
    /// added and removed, edits, recalls, read marks, retried ids, rejections (which leave no
    /// event), with a dedup window smaller than the number of ids.
    fn generated_timeline(count: u64) -> Vec<TimelineEvent> {
        let mut live = SequencerState::new(50);
        let mut timeline = Vec::new();
        let mut random = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move |bound: u64| {
            random ^= random << 13;
            random ^= random >> 7;
            random ^= random << 17;
            random % bound
        };
        let users = ["alice", "bob", "carol", "dave", "erin"];
        for offset in 0..count {
            let user = users[next(5) as usize];
            let direct = ["dm:alice:bob", "dm:bob:carol", "dm:carol:dave"][next(3) as usize];
            let group = ["g:one", "g:two"][next(2) as usize];
            let id = format!("c{}", next(count.max(1) * 2 / 3 + 1));
            let event = match next(10) {
                0 => create_group(group, user, &[user, "erin"], offset as i64),
                1 => add_members(group, user, &id, &[users[next(5) as usize]]),
                2 => ingress(
                    group,
                    user,
                    &id,
                    EventBody::MembersRemoved {
                        members: vec![users[next(5) as usize].to_owned()],
                    },
                ),
                3 => ingress(
                    direct,
                    user,
                    &id,
                    EventBody::MessageEdited {
                        target_seq: 1 + next(live.last_seq(direct) + 1),
                        text: "edited".into(),
                    },
                ),
                4 => ingress(
                    direct,
                    user,
                    &id,
                    EventBody::MessageRecalled {
                        target_seq: 1 + next(live.last_seq(direct) + 1),
                    },
                ),
                5 => {
                    let mut read = ingress(
                        direct,
                        user,
                        &id,
                        EventBody::ReadCursorMoved {
                            seq: live.last_seq(direct),
                        },
                    );
                    read.client_msg_id = None;
                    read
                }
                6 => ingress(group, user, &id, text("to the group")),
                _ => ingress(direct, user, &id, text("hello")),
            };
            if let Decision::Sequence(sequenced) = live.decide(event, offset) {
                timeline.push(sequenced);
            }
        }
        timeline
    }

    fn fold(state: &mut SequencerState, events: &[TimelineEvent]) {
        for event in events {
            state.apply(event);
        }
    }

    #[test]
    fn a_restored_image_plus_the_tail_is_the_full_fold() {
        let timeline = generated_timeline(3_000);
        assert!(timeline.len() > 500, "{} events", timeline.len());
        let mut full = SequencerState::new(50);
        fold(&mut full, &timeline);
        for cut in [0, 1, timeline.len() / 3, timeline.len() - 1, timeline.len()] {
            let mut before = SequencerState::new(50);
            fold(&mut before, &timeline[..cut]);
            let image = before.encode_folded().expect("encode");
            let mut restored = SequencerState::new(50);
            restored.restore(decode_folded(&image).expect("decode"));
            assert!(restored == before, "the image restores the state at {cut}");
            fold(&mut restored, &timeline[cut..]);
            assert!(restored == full, "restored at {cut} and folded on");
        }
        // and it decides the same: a retried id, a new message, a group change
        let mut restored = SequencerState::new(50);
        restored.restore(decode_folded(&full.encode_folded().expect("encode")).expect("decode"));
        let last = timeline.last().expect("events");
        let retry = IngressEvent {
            client_msg_id: last.client_msg_id.clone(),
            ..ingress(&last.conversation, &last.sender, "x", text("again"))
        };
        for (offset, event) in [
            retry,
            ingress("dm:alice:bob", "alice", "fresh", text("new")),
            add_members("g:one", "alice", "fresh-add", &["bob"]),
        ]
        .into_iter()
        .enumerate()
        {
            let offset = 10_000 + offset as u64;
            assert_eq!(
                full.decide(event.clone(), offset),
                restored.decide(event, offset)
            );
        }
    }

    #[test]
    fn the_image_holds_the_timeline_position_not_records_handled_since() {
        let mut state = SequencerState::new(10);
        state.decide(ingress("dm:alice:bob", "alice", "c1", text("hi")), 0);
        state.handled_through(7); // rejected records after the last event
        assert_eq!(state.next_ingress_offset(), 7);
        let mut restored = SequencerState::new(10);
        restored.restore(decode_folded(&state.encode_folded().expect("encode")).expect("decode"));
        assert_eq!(
            restored.next_ingress_offset(),
            1,
            "a fold of the timeline resumes after its last event"
        );
    }

    #[test]
    fn a_smaller_dedup_window_keeps_the_newest_ids_of_an_image() {
        let mut state = SequencerState::new(10);
        for offset in 0..10u64 {
            let id = format!("c{offset}");
            state.decide(ingress("dm:alice:bob", "alice", &id, text("hi")), offset);
        }
        let mut smaller = SequencerState::new(3);
        smaller.restore(decode_folded(&state.encode_folded().expect("encode")).expect("decode"));
        let mut folded = SequencerState::new(3);
        for offset in 0..10u64 {
            let id = format!("c{offset}");
            folded.decide(ingress("dm:alice:bob", "alice", &id, text("hi")), offset);
        }
        assert!(smaller == folded, "as a fold under the smaller window");
        assert!(matches!(
            smaller.decide(ingress("dm:alice:bob", "alice", "c9", text("hi")), 10),
            Decision::Duplicate { seq: 10, .. }
        ));
    }
}
