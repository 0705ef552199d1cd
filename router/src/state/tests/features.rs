//! Tests of the conversation features the sequencer checks: blocks, pins, reactions, leaving,
//! replies and mentions.

use super::*;

#[test]
fn a_blocked_user_cannot_message_the_one_who_blocked_them_until_unblocked() {
    let mut state = SequencerState::new(100);
    let dm = "dm:alice:bob";
    assert_eq!(
        seq_of(&state.decide(ingress(dm, "bob", "b1", text("hi")), 0)),
        Some(1)
    );
    let block = |blocked: bool| EventBody::UserBlocked { blocked };
    let decided = state.decide(ingress(dm, "alice", "k1", block(true)), 1);
    let Decision::Sequence(event) = decided else {
        panic!("a block is logged: {decided:?}");
    };
    assert_eq!(event.seq, None, "a block takes no seq");
    assert_eq!(
        code_of(&state.decide(ingress(dm, "bob", "b2", text("hello?")), 2)),
        Some(ErrorCode::Blocked)
    );
    assert_eq!(
        code_of(&state.decide(
            ingress(
                dm,
                "bob",
                "b3",
                EventBody::MessageEdited {
                    target_seq: 1,
                    text: "x".into()
                }
            ),
            3
        )),
        Some(ErrorCode::Blocked),
        "an edit is new words too"
    );
    assert!(
        matches!(
            state.decide(
                ingress(
                    dm,
                    "bob",
                    "b4",
                    EventBody::MessageRecalled { target_seq: 1 }
                ),
                4
            ),
            Decision::Sequence(_)
        ),
        "the blocked may still take their own message back"
    );
    assert_eq!(
        seq_of(&state.decide(ingress(dm, "alice", "a1", text("I can still write")), 5)),
        Some(3),
        "the one who blocked is not blocked"
    );
    let mut business = ingress(dm, "bob", "biz", text("from the shop"));
    business.trusted = true;
    assert_eq!(
        seq_of(&state.decide(business, 6)),
        Some(4),
        "business systems are never blocked"
    );
    assert!(matches!(
        state.decide(ingress(dm, "alice", "k2", block(false)), 7),
        Decision::Sequence(_)
    ));
    assert_eq!(
        seq_of(&state.decide(ingress(dm, "bob", "b5", text("hello again")), 8)),
        Some(5),
        "unblocking restores it"
    );
    // the block is part of the fold: recovery (and a snapshot) decide the same
    let mut replayed = SequencerState::new(100);
    replayed.apply(&event);
    assert_eq!(
        code_of(&replayed.decide(ingress(dm, "bob", "b6", text("again")), 9)),
        Some(ErrorCode::Blocked)
    );
}

#[test]
fn any_member_pins_a_message_that_exists_and_is_not_recalled() {
    let mut state = SequencerState::new(100);
    let dm = "dm:alice:bob";
    let pin = |target_seq: u64, pinned: bool| EventBody::MessagePinned { target_seq, pinned };
    assert_eq!(
        seq_of(&state.decide(ingress(dm, "alice", "a1", text("hi")), 0)),
        Some(1)
    );
    assert_eq!(
        seq_of(&state.decide(ingress(dm, "bob", "p1", pin(1, true)), 1)),
        Some(2),
        "a pin takes a seq; any member may pin"
    );
    assert_eq!(
        code_of(&state.decide(ingress(dm, "carol", "p2", pin(1, true)), 2)),
        Some(ErrorCode::Forbidden)
    );
    assert_eq!(
        code_of(&state.decide(ingress(dm, "bob", "p3", pin(9, true)), 3)),
        Some(ErrorCode::NotFound)
    );
    assert_eq!(
        code_of(&state.decide(ingress(dm, "bob", "p4", pin(2, true)), 4)),
        Some(ErrorCode::BadRequest),
        "a pin is not a message"
    );
    assert!(matches!(
        state.decide(
            ingress(
                dm,
                "alice",
                "r1",
                EventBody::MessageRecalled { target_seq: 1 }
            ),
            5
        ),
        Decision::Sequence(_)
    ));
    assert_eq!(
        code_of(&state.decide(ingress(dm, "bob", "p5", pin(1, true)), 6)),
        Some(ErrorCode::NotFound),
        "a recalled message cannot be pinned"
    );
    assert_eq!(
        seq_of(&state.decide(ingress(dm, "bob", "p6", pin(1, false)), 7)),
        Some(4),
        "but it can be unpinned"
    );
}

#[test]
fn a_member_leaves_a_group_on_their_own_but_its_owner_cannot() {
    let mut state = SequencerState::new(100);
    let group = "g:club";
    let created = EventBody::ConversationCreated {
        title: None,
        members: vec!["alice".into(), "bob".into(), "carol".into()],
    };
    assert_eq!(
        seq_of(&state.decide(ingress(group, "alice", "c", created), 0)),
        Some(1)
    );
    let leave = |who: &str| EventBody::MembersRemoved {
        members: vec![who.to_owned()],
    };
    assert_eq!(
        seq_of(&state.decide(ingress(group, "bob", "l1", leave("bob")), 1)),
        Some(2),
        "bob leaves"
    );
    assert_eq!(
        code_of(&state.decide(ingress(group, "bob", "m1", text("still here?")), 2)),
        Some(ErrorCode::Forbidden),
        "and is no longer a member"
    );
    assert_eq!(
        code_of(&state.decide(ingress(group, "bob", "l2", leave("bob")), 3)),
        Some(ErrorCode::Forbidden),
        "leaving twice: not a member"
    );
    assert_eq!(
        code_of(&state.decide(ingress(group, "alice", "l3", leave("alice")), 4)),
        Some(ErrorCode::Forbidden),
        "the owner cannot leave"
    );
    assert_eq!(
        code_of(&state.decide(ingress(group, "carol", "r1", leave("alice")), 5)),
        Some(ErrorCode::Forbidden),
        "removing someone else is still the owner's"
    );
}

fn group_of(state: &mut SequencerState, group: &str, members: &[&str]) {
    let created = EventBody::ConversationCreated {
        title: None,
        members: members.iter().map(|member| (*member).to_owned()).collect(),
    };
    let offset = state.next_ingress_offset();
    assert!(matches!(
        state.decide(ingress(group, members[0], "create", created), offset),
        Decision::Sequence(_)
    ));
}

fn reply(text: &str, reply_to: u64) -> EventBody {
    EventBody::MessageSent(chorus_schemas::Message {
        text: text.to_owned(),
        reply_to: Some(reply_to),
        ..chorus_schemas::Message::default()
    })
}

fn mentions_of(decision: &Decision) -> Vec<String> {
    match decision {
        Decision::Sequence(TimelineEvent {
            body: EventBody::MessageSent(message),
            ..
        }) => message.mentions.clone(),
        other => panic!("not a sequenced message: {other:?}"),
    }
}

#[test]
fn a_reply_answers_a_message_of_its_conversation_that_is_not_recalled() {
    let mut state = SequencerState::new(100);
    let dm = "dm:alice:bob";
    assert_eq!(
        seq_of(&state.decide(ingress(dm, "alice", "a1", text("question")), 0)),
        Some(1)
    );
    let answered = state.decide(ingress(dm, "bob", "b1", reply("answer", 1)), 1);
    assert_eq!(seq_of(&answered), Some(2));
    let Decision::Sequence(event) = answered else {
        unreachable!()
    };
    assert!(matches!(&event.body, EventBody::MessageSent(message) if message.reply_to == Some(1)));
    assert_eq!(
        code_of(&state.decide(ingress(dm, "bob", "b2", reply("to nothing", 7)), 2)),
        Some(ErrorCode::NotFound),
        "no such message"
    );
    let recall = EventBody::MessageRecalled { target_seq: 1 };
    assert_eq!(
        seq_of(&state.decide(ingress(dm, "alice", "a2", recall), 3)),
        Some(3)
    );
    assert_eq!(
        code_of(&state.decide(ingress(dm, "bob", "b3", reply("too late", 1)), 4)),
        Some(ErrorCode::NotFound),
        "a recalled message is not answered"
    );
    assert_eq!(
        code_of(&state.decide(ingress(dm, "bob", "b4", reply("to a recall", 3)), 5)),
        Some(ErrorCode::BadRequest),
        "a recall is not a message"
    );
    assert_eq!(
        code_of(&state.decide(ingress(dm, "carol", "c1", reply("outsider", 2)), 6)),
        Some(ErrorCode::Forbidden),
        "only members reply"
    );
}

#[test]
fn a_group_message_mentions_the_members_its_text_names() {
    let mut state = SequencerState::new(100);
    group_of(
        &mut state,
        "g:team",
        &["alice", "bob", "carol", "d.e@example.com"],
    );
    let send = |state: &mut SequencerState, id: &str, words: &str| {
        let offset = state.next_ingress_offset();
        mentions_of(&state.decide(ingress("g:team", "alice", id, text(words)), offset))
    };
    assert_eq!(
        send(&mut state, "m1", "@bob and @carol, see @bob's note"),
        vec!["bob".to_owned(), "carol".to_owned()],
        "in order of first mention, once each"
    );
    assert_eq!(
        send(
            &mut state,
            "m2",
            "@mallory is not here; mail@bob is not a mention"
        ),
        Vec::<String>::new(),
        "non-members and words that only contain @ are plain text"
    );
    assert_eq!(
        send(&mut state, "m3", "thanks @d.e@example.com. and @carol."),
        vec!["d.e@example.com".to_owned(), "carol".to_owned()],
        "a sentence's full stop is not part of the name"
    );
    assert_eq!(
        send(&mut state, "m4", "note to self @alice"),
        Vec::<String>::new(),
        "the sender is not mentioned"
    );
    let offset = state.next_ingress_offset();
    assert_eq!(
        mentions_of(&state.decide(
            ingress("dm:alice:bob", "alice", "d1", text("@bob hi")),
            offset
        )),
        Vec::<String>::new(),
        "direct conversations carry no mentions"
    );
    // what a client claims is replaced by what the text says
    let claimed = EventBody::MessageSent(chorus_schemas::Message {
        text: "hello".to_owned(),
        mentions: vec!["carol".to_owned()],
        ..chorus_schemas::Message::default()
    });
    let offset = state.next_ingress_offset();
    assert_eq!(
        mentions_of(&state.decide(ingress("g:team", "bob", "b1", claimed), offset)),
        Vec::<String>::new()
    );
    // at most MAX_MENTIONS
    let many: Vec<String> = (0..MAX_MENTIONS + 5).map(|n| format!("user{n}")).collect();
    let mut big = SequencerState::new(100);
    let mut members = vec!["alice"];
    members.extend(many.iter().map(String::as_str));
    group_of(&mut big, "g:big", &members);
    let words: Vec<String> = many.iter().map(|user| format!("@{user}")).collect();
    let offset = big.next_ingress_offset();
    let mentioned = mentions_of(&big.decide(
        ingress("g:big", "alice", "all", text(&words.join(" "))),
        offset,
    ));
    assert_eq!(mentioned.len(), MAX_MENTIONS);
    assert_eq!(mentioned[..], many[..MAX_MENTIONS]);
}

#[test]
fn any_member_reacts_to_a_message_that_exists_and_is_not_recalled() {
    let mut state = SequencerState::new(100);
    let dm = "dm:alice:bob";
    let react = |target_seq: u64, added: bool| EventBody::ReactionChanged {
        target_seq,
        emoji: "👍".into(),
        added,
    };
    assert_eq!(
        seq_of(&state.decide(ingress(dm, "alice", "a1", text("hi")), 0)),
        Some(1)
    );
    assert_eq!(
        seq_of(&state.decide(ingress(dm, "bob", "r1", react(1, true)), 1)),
        Some(2),
        "a reaction takes a seq: every member sees it"
    );
    assert_eq!(
        code_of(&state.decide(ingress(dm, "carol", "r2", react(1, true)), 2)),
        Some(ErrorCode::Forbidden)
    );
    assert_eq!(
        code_of(&state.decide(ingress(dm, "bob", "r3", react(7, true)), 3)),
        Some(ErrorCode::NotFound)
    );
    assert_eq!(
        code_of(&state.decide(ingress(dm, "bob", "r4", react(2, true)), 4)),
        Some(ErrorCode::BadRequest),
        "a reaction is not a message"
    );
    let recall = EventBody::MessageRecalled { target_seq: 1 };
    assert_eq!(
        seq_of(&state.decide(ingress(dm, "alice", "a2", recall), 5)),
        Some(3)
    );
    assert_eq!(
        code_of(&state.decide(ingress(dm, "bob", "r5", react(1, true)), 6)),
        Some(ErrorCode::NotFound),
        "no new reaction to a recalled message"
    );
    assert_eq!(
        seq_of(&state.decide(ingress(dm, "bob", "r6", react(1, false)), 7)),
        Some(4),
        "but one can be taken back"
    );
}

#[test]
fn owners_and_admins_manage_a_group_and_only_the_owner_hands_it_over_or_disbands_it() {
    let mut state = SequencerState::new(100);
    let group = "g:crew";
    group_of(&mut state, group, &["alice", "bob", "carol", "dave"]);
    let mut decide = |sender: &str, id: &str, body: EventBody| {
        let offset = state.next_ingress_offset();
        let decision = state.decide(ingress(group, sender, id, body), offset);
        (seq_of(&decision), code_of(&decision))
    };
    let role = |member: &str, role: Role| EventBody::RoleChanged {
        member: member.into(),
        role,
    };
    let rename = |title: &str| EventBody::ConversationRenamed {
        title: title.into(),
    };
    let add = |who: &str| EventBody::MembersAdded {
        members: vec![who.into()],
    };
    let remove = |who: &str| EventBody::MembersRemoved {
        members: vec![who.into()],
    };
    let forbidden = (None, Some(ErrorCode::Forbidden));
    // a member manages nothing
    assert_eq!(decide("bob", "b1", add("erin")), forbidden);
    assert_eq!(decide("bob", "b2", rename("mine")), forbidden);
    assert_eq!(decide("bob", "b3", role("carol", Role::Admin)), forbidden);
    // the owner promotes bob; bob, an admin, manages members, roles and the title
    assert_eq!(decide("alice", "a1", role("bob", Role::Admin)).0, Some(2));
    assert_eq!(decide("bob", "b4", add("erin")).0, Some(3));
    assert_eq!(decide("bob", "b5", rename("Crew")).0, Some(4));
    assert_eq!(decide("bob", "b6", role("carol", Role::Admin)).0, Some(5));
    assert_eq!(decide("carol", "c1", remove("erin")).0, Some(6));
    assert_eq!(decide("carol", "c2", role("bob", Role::Member)).0, Some(7));
    assert_eq!(decide("bob", "b7", add("frank")), forbidden, "demoted");
    // nobody but the owner touches the owner; roles are for members
    assert_eq!(decide("carol", "c3", remove("alice")), forbidden);
    assert_eq!(
        decide("carol", "c4", role("alice", Role::Member)),
        forbidden
    );
    assert_eq!(decide("carol", "c5", role("carol", Role::Owner)), forbidden);
    assert_eq!(
        decide("carol", "c6", role("mallory", Role::Admin)),
        (None, Some(ErrorCode::BadRequest))
    );
    assert_eq!(
        decide(
            "carol",
            "c7",
            EventBody::ConversationDisbanded { members: vec![] }
        ),
        forbidden
    );
    // the owner hands over to dave and becomes an admin; dave can disband, alice can leave
    assert_eq!(decide("alice", "a2", role("dave", Role::Owner)).0, Some(8));
    assert_eq!(
        decide("alice", "a3", role("bob", Role::Owner)),
        forbidden,
        "no longer the owner"
    );
    assert_eq!(
        decide("alice", "a4", add("frank")).0,
        Some(9),
        "an admin now"
    );
    assert_eq!(
        decide("dave", "d1", remove("dave")),
        forbidden,
        "the new owner cannot leave"
    );
    assert_eq!(
        decide("alice", "a5", remove("alice")).0,
        Some(10),
        "the old one can"
    );
    let offset = state.next_ingress_offset();
    let disbanded = state.decide(
        ingress(
            group,
            "dave",
            "d2",
            EventBody::ConversationDisbanded {
                members: vec!["x".into()],
            },
        ),
        offset,
    );
    let Decision::Sequence(event) = disbanded else {
        panic!("disbanded: {disbanded:?}");
    };
    assert_eq!(
        event.body,
        EventBody::ConversationDisbanded {
            members: vec!["bob".into(), "carol".into(), "dave".into(), "frank".into()]
        },
        "the sequencer lists the members removed"
    );
    assert_eq!(state.members(group), Vec::<String>::new());
    let offset = state.next_ingress_offset();
    assert_eq!(
        code_of(&state.decide(ingress(group, "dave", "d3", text("anyone?")), offset)),
        Some(ErrorCode::NotFound),
        "a disbanded group takes no more events"
    );
    let created = EventBody::ConversationCreated {
        title: None,
        members: vec!["dave".into()],
    };
    let offset = state.next_ingress_offset();
    assert_eq!(
        code_of(&state.decide(ingress(group, "dave", "d4", created), offset)),
        Some(ErrorCode::BadRequest),
        "nor is it created again"
    );
}

#[test]
fn a_groups_owner_or_either_member_of_a_direct_conversation_sets_its_retention() {
    let mut state = SequencerState::new(100);
    group_of(&mut state, "g:keep", &["alice", "bob"]);
    let mut decide = |conversation: &str, sender: &str, id: &str| {
        let offset = state.next_ingress_offset();
        let body = EventBody::RetentionSet {
            ttl_seconds: 86_400,
        };
        let decision = state.decide(ingress(conversation, sender, id, body), offset);
        (seq_of(&decision), code_of(&decision))
    };
    assert_eq!(
        decide("g:keep", "alice", "a1"),
        (Some(2), None),
        "the owner"
    );
    assert_eq!(
        decide("g:keep", "bob", "b1"),
        (None, Some(ErrorCode::Forbidden)),
        "not a member of the group's owner"
    );
    assert_eq!(
        decide("dm:alice:bob", "bob", "b2"),
        (Some(1), None),
        "either member"
    );
    assert_eq!(
        decide("dm:alice:bob", "carol", "c1"),
        (None, Some(ErrorCode::Forbidden))
    );
}
