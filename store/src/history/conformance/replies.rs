//! Checks of what a message carries besides its text: the message it answers (quoted as that
//! message stands now), the members it mentions (and the mention counts they make), and where
//! it was forwarded from, and the file it carries.

use chorus_schemas::{Attachment, EventBody, ForwardOrigin, Message};

use super::{READ_ALL, TimelineWriter, created, edited, read_up_to, recalled, sent};
use crate::history::{HistoryError, HistoryStore, MessagePage, ReplyView, quote_of};

fn reply(text: &str, reply_to: u64) -> EventBody {
    EventBody::MessageSent(Message {
        text: text.to_owned(),
        reply_to: Some(reply_to),
        ..Message::default()
    })
}

fn mentioning(text: &str, mentions: &[&str]) -> EventBody {
    EventBody::MessageSent(Message {
        text: text.to_owned(),
        mentions: mentions.iter().map(|user| (*user).to_owned()).collect(),
        ..Message::default()
    })
}

/// A reply quotes the message it answers as it stands now (edited text; none once recalled),
/// on every page it appears on; the mentions and forward origin are the message's own.
pub async fn replies_quote_the_message_they_answer(
    store: &dyn HistoryStore,
) -> Result<(), HistoryError> {
    let long = "长".repeat(150);
    let origin = ForwardOrigin {
        conversation: "dm:alice:bob".to_owned(),
        seq: 4,
        sender: "bob".to_owned(),
    };
    let mut timeline = TimelineWriter::new();
    timeline.push("g:r", "alice", created(None, &["alice", "bob"])); // 1
    let first = timeline.push("g:r", "alice", sent("first")); // 2
    timeline.push("g:r", "bob", sent(&long)); // 3
    timeline.push("g:r", "bob", reply("answer to first", 2)); // 4
    timeline.push("g:r", "alice", reply("answer to the long one", 3)); // 5
    timeline.push("g:r", "alice", edited(2, "first, edited")); // 6
    let to_recall = timeline.push("g:r", "bob", sent("to recall")); // 7
    timeline.push("g:r", "alice", reply("answer to the recalled one", 7)); // 8
    timeline.push("g:r", "bob", recalled(7)); // 9
    timeline.push("g:r", "bob", reply("answer to nothing known", 99)); // 10
    timeline.push(
        "g:r",
        "alice",
        EventBody::MessageSent(Message {
            text: "forwarded @bob".to_owned(),
            mentions: vec!["bob".to_owned()],
            forwarded_from: Some(Box::new(origin.clone())),
            ..Message::default()
        }),
    ); // 11
    timeline.apply_to(store, 0).await?;

    let messages = store
        .messages("g:r", MessagePage::After(0), READ_ALL)
        .await?;
    let by_seq = |seq: u64| {
        messages
            .iter()
            .find(|message| message.seq == seq)
            .cloned()
            .expect("message present")
    };
    assert_eq!(by_seq(2).reply_to, None, "not a reply");
    assert_eq!(
        by_seq(4).reply_to,
        Some(ReplyView {
            seq: 2,
            sender: Some("alice".to_owned()),
            quote: Some("first, edited".to_owned()),
            ts: Some(first.ts_ms),
        }),
        "the quote is the answered message as it stands now"
    );
    let quote = by_seq(5).reply_to.and_then(|reply| reply.quote);
    assert_eq!(
        quote,
        Some(quote_of(&long)),
        "long messages are quoted in part"
    );
    assert_eq!(
        quote.map(|quote| quote.chars().count()),
        Some(super::super::QUOTE_CHARS + 1),
        "the quote's characters and an ellipsis"
    );
    assert_eq!(
        by_seq(8).reply_to,
        Some(ReplyView {
            seq: 7,
            sender: Some("bob".to_owned()),
            quote: None,
            ts: Some(to_recall.ts_ms),
        }),
        "a recalled message is not quoted"
    );
    assert_eq!(
        by_seq(10).reply_to,
        Some(ReplyView {
            seq: 99,
            sender: None,
            quote: None,
            ts: None,
        }),
        "an unknown message is named but not quoted"
    );
    let forwarded = by_seq(11);
    assert_eq!(forwarded.forwarded_from, Some(Box::new(origin)));
    assert_eq!(forwarded.mentions, vec!["bob".to_owned()]);

    // a page that holds the reply but not the message it answers still quotes it
    let page = store.messages("g:r", MessagePage::After(3), 1).await?;
    assert_eq!(page.len(), 1);
    assert_eq!(
        page[0]
            .reply_to
            .as_ref()
            .and_then(|reply| reply.quote.clone()),
        Some("first, edited".to_owned())
    );
    // and so do the events as logged: the seq answered, no quote
    let events = store.events("g:r", 3, 1).await?;
    let EventBody::MessageSent(message) = &events[0].body else {
        panic!("seq 4 is a message");
    };
    assert_eq!(message.reply_to, Some(2));
    Ok(())
}

/// A user's mention count is the number of their unread messages that mention them (not
/// recalled), next to the unread count, and follows their read cursor.
pub async fn mention_counts_follow_the_read_cursor(
    store: &dyn HistoryStore,
) -> Result<(), HistoryError> {
    let mentions_of = async |user: &str| -> Result<(u64, u64), HistoryError> {
        let summaries = store.conversations(user).await?;
        Ok(summaries
            .iter()
            .find(|summary| summary.id == "g:m")
            .map_or((0, 0), |summary| (summary.unread, summary.mentions)))
    };
    let mut timeline = TimelineWriter::new();
    timeline.push("g:m", "alice", created(None, &["alice", "bob", "carol"])); // 1
    timeline.push("g:m", "alice", mentioning("@bob hi", &["bob"])); // 2
    timeline.push("g:m", "carol", mentioning("@bob @alice", &["bob", "alice"])); // 3
    timeline.push("g:m", "alice", sent("no one")); // 4
    timeline.push("g:m", "carol", mentioning("@bob recalled", &["bob"])); // 5
    timeline.push("g:m", "carol", recalled(5)); // 6
    timeline.apply_to(store, 0).await?;
    assert_eq!(
        mentions_of("bob").await?,
        (3, 2),
        "three unread, two of them mention bob (the recalled one counts for neither)"
    );
    assert_eq!(
        mentions_of("alice").await?,
        (1, 1),
        "carol's one left, which names alice"
    );
    assert_eq!(mentions_of("carol").await?, (2, 0));
    timeline.push("g:m", "bob", read_up_to(2));
    timeline.apply_to(store, 0).await?;
    assert_eq!(
        mentions_of("bob").await?,
        (2, 1),
        "read past the first mention"
    );
    timeline.push("g:m", "bob", read_up_to(6));
    timeline.apply_to(store, 0).await?;
    assert_eq!(mentions_of("bob").await?, (0, 0));
    Ok(())
}

/// A message's file (id, name, size, type) is kept with it, in `/messages` and in the events as
/// logged; an edit keeps it; a recall drops it from the message as it stands.
pub async fn attachments_are_kept_until_recalled(
    store: &dyn HistoryStore,
) -> Result<(), HistoryError> {
    let file = |id: &str, name: &str| Attachment {
        id: id.to_owned(),
        name: name.to_owned(),
        size: 70_000,
        content_type: "image/png".to_owned(),
    };
    let carrying = |text: &str, attachment: Attachment| {
        EventBody::MessageSent(Message {
            text: text.to_owned(),
            attachment: Some(Box::new(attachment)),
            ..Message::default()
        })
    };
    let mut timeline = TimelineWriter::new();
    timeline.push(
        "dm:alice:bob",
        "alice",
        carrying("", file(&"a".repeat(32), "猫.png")),
    ); // 1
    timeline.push(
        "dm:alice:bob",
        "bob",
        carrying("look", file(&"b".repeat(32), "dog.png")),
    ); // 2
    timeline.push("dm:alice:bob", "bob", edited(2, "look!")); // 3
    timeline.push("dm:alice:bob", "alice", recalled(1)); // 4
    timeline.apply_to(store, 0).await?;

    let messages = store
        .messages("dm:alice:bob", MessagePage::After(0), READ_ALL)
        .await?;
    assert_eq!(messages.len(), 2);
    assert_eq!(
        messages[0].attachment, None,
        "a recalled message shows no file"
    );
    assert!(messages[0].recalled);
    assert_eq!(
        messages[1].attachment,
        Some(Box::new(file(&"b".repeat(32), "dog.png"))),
        "an edit keeps the file"
    );
    assert_eq!(messages[1].text.as_deref(), Some("look!"));
    let events = store.events("dm:alice:bob", 0, 1).await?;
    let EventBody::MessageSent(message) = &events[0].body else {
        panic!("seq 1 is a message");
    };
    assert_eq!(
        message.attachment,
        Some(Box::new(file(&"a".repeat(32), "猫.png"))),
        "the event as logged keeps its file"
    );
    Ok(())
}
