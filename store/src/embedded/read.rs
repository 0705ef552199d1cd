//! The reads of the embedded history: each one read transaction over the tables its answer
//! needs, run on the blocking pool by [`super::EmbeddedHistory`]'s port methods.

use super::*;

pub(super) fn read_position(
    database: &Database,
    partition: PartitionId,
) -> Result<Offset, EmbeddedError> {
    let transaction = database.begin_read()?;
    let positions = transaction.open_table(POSITIONS)?;
    Ok(positions
        .get(partition)?
        .map(|stored| stored.value())
        .unwrap_or(0))
}

pub(super) fn read_events(
    database: &Database,
    conversation: &str,
    after_seq: u64,
    limit: usize,
) -> Result<Vec<TimelineEvent>, EmbeddedError> {
    let Some(first_seq) = after_seq.checked_add(1) else {
        return Ok(Vec::new());
    };
    let transaction = database.begin_read()?;
    let events = transaction.open_table(EVENTS)?;
    let mut found = Vec::new();
    for entry in events
        .range((conversation, first_seq)..=(conversation, u64::MAX))?
        .take(limit)
    {
        let (_, bytes) = entry?;
        found.push(serde_json::from_slice(bytes.value())?);
    }
    Ok(found)
}

pub(super) fn read_messages(
    database: &Database,
    conversation: &str,
    page: MessagePage,
    limit: usize,
) -> Result<Vec<MessageView>, EmbeddedError> {
    let transaction = database.begin_read()?;
    let messages = transaction.open_table(MESSAGES)?;
    let mut views = Vec::new();
    match page {
        MessagePage::After(after_seq) => {
            let Some(first_seq) = after_seq.checked_add(1) else {
                return Ok(views);
            };
            let range = messages.range((conversation, first_seq)..=(conversation, u64::MAX))?;
            for entry in range.take(limit) {
                let (key, bytes) = entry?;
                let stored: StoredMessage = serde_json::from_slice(bytes.value())?;
                views.push(stored.into_view(key.value().1, &messages, conversation)?);
            }
        }
        MessagePage::Before(before_seq) => {
            let range = messages.range((conversation, 0)..(conversation, before_seq))?;
            for entry in range.rev().take(limit) {
                let (key, bytes) = entry?;
                let stored: StoredMessage = serde_json::from_slice(bytes.value())?;
                views.push(stored.into_view(key.value().1, &messages, conversation)?);
            }
            views.reverse();
        }
    }
    Ok(views)
}

/// At most `limit` of `user`'s conversations with an id greater than `after` (all from the
/// first when `None`), sorted by id: a range scan that starts at the cursor.
pub(super) fn read_conversations(
    database: &Database,
    user: &str,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<ConversationSummary>, EmbeddedError> {
    let transaction = database.begin_read()?;
    let user_conversations = transaction.open_table(USER_CONVERSATIONS)?;
    let conversations = transaction.open_table(CONVERSATIONS)?;
    let read_cursors = transaction.open_table(READ_CURSORS)?;
    let messages = transaction.open_table(MESSAGES)?;
    let muted = transaction.open_table(MUTED)?;
    let blocked = transaction.open_table(BLOCKED)?;
    let mut summaries = Vec::new();
    for entry in user_conversations.range((user, after.unwrap_or(""))..)? {
        if summaries.len() >= limit {
            break;
        }
        let (key, _) = entry?;
        let (member, conversation) = key.value();
        if member != user {
            break;
        }
        if after.is_some_and(|cursor| conversation <= cursor) {
            continue;
        }
        let stored = match conversations.get(conversation)? {
            Some(bytes) => serde_json::from_slice::<StoredConversation>(bytes.value())?,
            None => StoredConversation::default(),
        };
        let read_seq = read_cursors
            .get((conversation, user))?
            .map(|stored| stored.value())
            .unwrap_or(0);
        let (mut unread, mut mentions) = (0, 0);
        if read_seq < stored.last_seq {
            for entry in messages.range((conversation, read_seq + 1)..=(conversation, u64::MAX))? {
                let (_, bytes) = entry?;
                let message: StoredMessage = serde_json::from_slice(bytes.value())?;
                if message.sender != user && !message.recalled {
                    unread += 1;
                    if message.mentions.iter().any(|mentioned| mentioned == user) {
                        mentions += 1;
                    }
                    if unread == UNREAD_CAP {
                        break;
                    }
                }
            }
        }
        summaries.push(ConversationSummary {
            id: conversation.to_owned(),
            last_seq: stored.last_seq,
            read_seq,
            unread,
            mentions,
            message_ttl_s: stored.message_ttl_s,
            muted: muted.get((conversation, user))?.is_some(),
            blocked: blocked.get((conversation, user))?.is_some(),
            title: stored.title,
        });
    }
    Ok(summaries)
}

/// The user's conversations with their time-to-live: the membership index and each
/// conversation's own record, no message read.
pub(super) fn read_searchable_conversations(
    database: &Database,
    user: &str,
) -> Result<Vec<(String, Option<u64>)>, EmbeddedError> {
    let transaction = database.begin_read()?;
    let user_conversations = transaction.open_table(USER_CONVERSATIONS)?;
    let conversations = transaction.open_table(CONVERSATIONS)?;
    let mut found = Vec::new();
    for entry in user_conversations.range((user, "")..)? {
        let (key, _) = entry?;
        let (member, conversation) = key.value();
        if member != user {
            break;
        }
        let ttl = match conversations.get(conversation)? {
            Some(bytes) => {
                serde_json::from_slice::<StoredConversation>(bytes.value())?.message_ttl_s
            }
            None => None,
        };
        found.push((conversation.to_owned(), ttl));
    }
    Ok(found)
}

pub(super) fn read_pins(
    database: &Database,
    conversation: &str,
) -> Result<Vec<PinView>, EmbeddedError> {
    let transaction = database.begin_read()?;
    let pins = transaction.open_table(PINS)?;
    let messages = transaction.open_table(MESSAGES)?;
    let mut found = Vec::new();
    for entry in pins.range((conversation, 0)..=(conversation, u64::MAX))? {
        let (key, value) = entry?;
        let (_, seq) = key.value();
        let (pinned_seq, pinned_by) = value.value();
        let Some(stored) = messages.get((conversation, seq))? else {
            continue;
        };
        let message: StoredMessage = serde_json::from_slice(stored.value())?;
        found.push(PinView {
            message: message.into_view(seq, &messages, conversation)?,
            pinned_by: pinned_by.to_owned(),
            pinned_seq,
        });
    }
    found.sort_by_key(|pin| std::cmp::Reverse(pin.pinned_seq));
    found.truncate(MAX_PINS);
    Ok(found)
}

pub(super) fn read_reactions(
    database: &Database,
    conversation: &str,
    seqs: &[u64],
    viewer: &str,
) -> Result<BTreeMap<u64, Vec<ReactionCount>>, EmbeddedError> {
    let transaction = database.begin_read()?;
    let reactions = transaction.open_table(REACTIONS)?;
    let mut found = BTreeMap::new();
    for &seq in seqs {
        let mut counts: Vec<ReactionCount> = Vec::new();
        let next = seq.saturating_add(1);
        for entry in reactions.range((conversation, seq, "", "")..(conversation, next, "", ""))? {
            let (key, _) = entry?;
            let (_, _, emoji, user) = key.value();
            match counts.iter_mut().find(|count| count.emoji == emoji) {
                Some(count) => {
                    count.count += 1;
                    count.me |= user == viewer;
                }
                None => counts.push(ReactionCount {
                    emoji: emoji.to_owned(),
                    count: 1,
                    me: user == viewer,
                }),
            }
        }
        if !counts.is_empty() {
            found.insert(seq, rank_reactions(counts));
        }
    }
    Ok(found)
}

pub(super) fn read_is_member(
    database: &Database,
    conversation: &str,
    user: &str,
) -> Result<bool, EmbeddedError> {
    let transaction = database.begin_read()?;
    let members = transaction.open_table(MEMBERS)?;
    Ok(members.get((conversation, user))?.is_some())
}

pub(super) fn read_retention(
    database: &Database,
    conversation: &str,
) -> Result<Option<u64>, EmbeddedError> {
    let transaction = database.begin_read()?;
    let conversations = transaction.open_table(CONVERSATIONS)?;
    Ok(match conversations.get(conversation)? {
        Some(bytes) => serde_json::from_slice::<StoredConversation>(bytes.value())?.message_ttl_s,
        None => None,
    })
}

pub(super) fn read_removed_at(
    database: &Database,
    conversation: &str,
    user: &str,
) -> Result<Option<u64>, EmbeddedError> {
    let transaction = database.begin_read()?;
    let former = transaction.open_table(FORMER_MEMBERS)?;
    Ok(former.get((conversation, user))?.map(|seq| seq.value()))
}

pub(super) fn read_roster(
    database: &Database,
    conversation: &str,
) -> Result<Vec<MemberView>, EmbeddedError> {
    let roles = {
        let transaction = database.begin_read()?;
        let conversations = transaction.open_table(CONVERSATIONS)?;
        match conversations.get(conversation)? {
            Some(bytes) => serde_json::from_slice::<StoredConversation>(bytes.value())?.roles,
            None => Roles::default(),
        }
    };
    Ok(roster_of(read_members(database, conversation)?, &roles))
}

pub(super) fn read_members(
    database: &Database,
    conversation: &str,
) -> Result<Vec<String>, EmbeddedError> {
    let transaction = database.begin_read()?;
    let members = transaction.open_table(MEMBERS)?;
    let mut found = Vec::new();
    for entry in members.range((conversation, "")..)? {
        let (key, _) = entry?;
        let (member_of, user) = key.value();
        if member_of != conversation {
            break;
        }
        found.push(user.to_owned());
    }
    Ok(found)
}
