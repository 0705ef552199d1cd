//! Tests of the sequencer state: decisions, the fold, and snapshot images against the full fold.

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
    EventBody::message(text)
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

fn create_group(conversation: &str, creator: &str, members: &[&str], ts_ms: i64) -> IngressEvent {
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
    let Decision::Reject(error) = state.decide(add_members("g:t", "alice", "a2", &["frank"]), 2)
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
/// added and removed, roles changed, groups disbanded, edits, recalls, read marks, retried ids,
/// rejections (which leave no event), with a dedup window smaller than the number of ids.
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
            7 if next(4) == 0 => {
                let role = [Role::Admin, Role::Member, Role::Owner][next(3) as usize];
                let member = users[next(5) as usize].to_owned();
                ingress(group, user, &id, EventBody::RoleChanged { member, role })
            }
            8 if next(40) == 0 => ingress(
                group,
                user,
                &id,
                EventBody::ConversationDisbanded {
                    members: Vec::new(),
                },
            ),
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

/// East's state among two regions: bob is homed in west, everyone else in east.
fn east() -> SequencerState {
    let mut regions = chorus_core::config::RegionsSection {
        peers: vec!["west".into()],
        default_home: "east".into(),
        ..Default::default()
    };
    regions.users.insert("bob".into(), "west".into());
    SequencerState::new(100).with_home_rule(HomeRule {
        local: "east".into(),
        regions,
    })
}

/// A sequenced event of west's timeline.
fn from_west(conversation: &str, seq: u64, body: EventBody) -> TimelineEvent {
    TimelineEvent {
        conversation: conversation.into(),
        seq: Some(seq),
        event_id: format!("west-{conversation}-{seq}"),
        sender: "bob".into(),
        ts_ms: 1,
        origin_cluster: "west".into(),
        client_msg_id: Some(format!("w{seq}")),
        ingress_offset: 900 + seq,
        body,
    }
}

#[test]
fn a_conversation_homed_in_another_region_is_forwarded_and_not_sequenced_here() {
    let mut state = east();
    // dm:alice:bob is homed with alice (the smaller id): east sequences it
    let mut alice = ingress("dm:alice:bob", "alice", "a1", text("hi"));
    alice.origin_cluster = "east".into();
    assert_eq!(seq_of(&state.decide(alice, 0)), Some(1));
    // dm:bob:carol is homed with bob, in west: forwarded, whoever sends it from here
    let mut carol = ingress("dm:bob:carol", "carol", "c1", text("hi"));
    carol.origin_cluster = "east".into();
    assert_eq!(
        state.decide(carol, 1),
        Decision::Forward {
            home: "west".into()
        }
    );
    assert_eq!(state.last_seq("dm:bob:carol"), 0, "nothing applied here");
    // refused here against the local view: never forwarded
    let outsider = ingress("dm:bob:carol", "dave", "d1", text("hi"));
    assert_eq!(
        code_of(&state.decide(outsider, 2)),
        Some(ErrorCode::Forbidden)
    );
    // a group created here is homed here; one created in west (seen through the mirror) there
    let created = ingress(
        "g:east-team",
        "alice",
        "g1",
        EventBody::ConversationCreated {
            title: None,
            members: vec!["alice".into(), "bob".into()],
        },
    );
    assert_eq!(seq_of(&state.decide(created, 3)), Some(1));
    assert_eq!(state.remote_home("g:east-team"), None);
    let west_group = from_west(
        "g:west-team",
        1,
        EventBody::ConversationCreated {
            title: None,
            members: vec!["alice".into(), "bob".into()],
        },
    );
    assert!(matches!(
        state.decide_mirrored(west_group, "west", 4),
        MirrorDecision::Apply(_)
    ));
    assert_eq!(state.remote_home("g:west-team"), Some("west"));
    let mut in_west_group = ingress("g:west-team", "alice", "a2", text("hello"));
    in_west_group.origin_cluster = "east".into();
    assert_eq!(
        state.decide(in_west_group, 5),
        Decision::Forward {
            home: "west".into()
        }
    );
    // creating it again here is refused (it exists, homed in west)
    let again = ingress(
        "g:west-team",
        "alice",
        "g2",
        EventBody::ConversationCreated {
            title: None,
            members: vec!["alice".into()],
        },
    );
    assert_eq!(
        code_of(&state.decide(again, 6)),
        Some(ErrorCode::BadRequest)
    );
}

#[test]
fn a_mirrored_event_is_applied_only_as_its_conversations_next_seq() {
    let mut state = east();
    let dm = "dm:bob:carol";
    let applied = |decision: MirrorDecision| match decision {
        MirrorDecision::Apply(event) => event.seq,
        other => panic!("not applied: {other:?}"),
    };
    let first = state.decide_mirrored(from_west(dm, 1, text("1")), "west", 10);
    let MirrorDecision::Apply(event) = &first else {
        panic!("applied: {first:?}");
    };
    assert_eq!(
        event.ingress_offset, 10,
        "kept at this region's ingress offset"
    );
    assert_eq!(state.next_ingress_offset(), 11);
    assert_eq!(
        applied(state.decide_mirrored(from_west(dm, 2, text("2")), "west", 11)),
        Some(2)
    );
    // a re-copy changes nothing
    assert_eq!(
        state.decide_mirrored(from_west(dm, 1, text("1")), "west", 12),
        MirrorDecision::Duplicate
    );
    // a hole waits
    assert_eq!(
        state.decide_mirrored(from_west(dm, 4, text("4")), "west", 13),
        MirrorDecision::Hole { expected: 3 }
    );
    assert_eq!(state.last_seq(dm), 2);
    // only the home's timeline is applied: east's own conversation, or west claiming it, is not
    assert_eq!(
        state.decide_mirrored(from_west("dm:alice:bob", 1, text("x")), "west", 14),
        MirrorDecision::Foreign
    );
    assert_eq!(
        state.decide_mirrored(from_west(dm, 3, text("3")), "north", 15),
        MirrorDecision::Foreign
    );
    // a retry from here of an event the mirror brought back is answered here
    let mut retry = ingress(dm, "bob", "w2", text("2"));
    retry.origin_cluster = "east".into();
    assert!(matches!(
        state.decide(retry, 16),
        Decision::Duplicate { seq: 2, .. }
    ));
}

mod features;
