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
