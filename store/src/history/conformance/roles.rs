//! Checks of group roles, renames, disbanding, what former members may read, and how long a
//! conversation's messages live.

use chorus_schemas::{EventBody, Role};

use super::{TimelineWriter, added, created, removed, sent};
use crate::history::{HistoryError, HistoryStore, MemberView};

fn role(member: &str, role: Role) -> EventBody {
    EventBody::RoleChanged {
        member: member.to_owned(),
        role,
    }
}

fn roster_of(entries: &[(&str, Role)]) -> Vec<MemberView> {
    entries
        .iter()
        .map(|(user, role)| MemberView {
            user: (*user).to_owned(),
            role: *role,
        })
        .collect()
}

/// The creator owns a group; promotions, demotions and a hand-over change roles; a removal ends
/// one; the roster lists the owner, the admins and the others, each sorted.
pub async fn rosters_follow_role_changes(store: &dyn HistoryStore) -> Result<(), HistoryError> {
    let mut timeline = TimelineWriter::new();
    timeline.push(
        "g:r",
        "alice",
        created(None, &["alice", "bob", "carol", "dave"]),
    );
    timeline.apply_to(store, 0).await?;
    assert_eq!(
        store.roster("g:r").await?,
        roster_of(&[
            ("alice", Role::Owner),
            ("bob", Role::Member),
            ("carol", Role::Member),
            ("dave", Role::Member),
        ])
    );
    timeline.push("g:r", "alice", role("dave", Role::Admin));
    timeline.push("g:r", "dave", role("carol", Role::Admin));
    timeline.push("g:r", "alice", role("carol", Role::Member));
    timeline.apply_to(store, 0).await?;
    assert_eq!(
        store.roster("g:r").await?,
        roster_of(&[
            ("alice", Role::Owner),
            ("dave", Role::Admin),
            ("bob", Role::Member),
            ("carol", Role::Member),
        ])
    );
    timeline.push("g:r", "alice", role("bob", Role::Owner));
    timeline.push("g:r", "bob", removed(&["dave"]));
    timeline.push("g:r", "bob", added(&["dave"]));
    timeline.apply_to(store, 0).await?;
    assert_eq!(
        store.roster("g:r").await?,
        roster_of(&[
            ("bob", Role::Owner),
            ("alice", Role::Admin),
            ("carol", Role::Member),
            ("dave", Role::Member),
        ]),
        "the old owner is an admin; an admin removed and added again is a member"
    );
    assert_eq!(store.roster("g:none").await?, Vec::new());

    // a business-made group has no owner
    timeline.push("g:b", "system", created(None, &["alice", "bob"]));
    timeline.apply_to(store, 0).await?;
    assert_eq!(
        store.roster("g:b").await?,
        roster_of(&[("alice", Role::Member), ("bob", Role::Member)])
    );
    Ok(())
}

/// A rename changes the title the conversation list shows.
pub async fn renames_change_the_title(store: &dyn HistoryStore) -> Result<(), HistoryError> {
    let mut timeline = TimelineWriter::new();
    timeline.push("g:t", "alice", created(Some("Old"), &["alice", "bob"]));
    timeline.push(
        "g:t",
        "alice",
        EventBody::ConversationRenamed {
            title: "新名字".to_owned(),
        },
    );
    timeline.apply_to(store, 0).await?;
    let list = store.conversations("bob").await?;
    assert_eq!(list[0].title.as_deref(), Some("新名字"));
    Ok(())
}

/// A former member (removed, left, or the group disbanded) is no longer a member and not listed,
/// and their removal seq is kept until they are added again; disbanding removes everyone.
pub async fn former_members_keep_their_removal_seq(
    store: &dyn HistoryStore,
) -> Result<(), HistoryError> {
    let mut timeline = TimelineWriter::new();
    timeline.push("g:f", "alice", created(None, &["alice", "bob", "carol"])); // 1
    timeline.push("g:f", "alice", sent("before")); // 2
    timeline.push("g:f", "alice", removed(&["bob"])); // 3
    timeline.push("g:f", "alice", sent("after")); // 4
    timeline.apply_to(store, 0).await?;
    assert!(!store.is_member("g:f", "bob").await?);
    assert_eq!(store.removed_at("g:f", "bob").await?, Some(3));
    assert_eq!(store.removed_at("g:f", "carol").await?, None, "a member");
    assert_eq!(store.removed_at("g:f", "mallory").await?, None, "never one");
    timeline.push("g:f", "alice", added(&["bob"])); // 5
    timeline.apply_to(store, 0).await?;
    assert_eq!(
        store.removed_at("g:f", "bob").await?,
        None,
        "a member again"
    );

    timeline.push(
        "g:f",
        "alice",
        EventBody::ConversationDisbanded {
            members: vec!["alice".into(), "bob".into(), "carol".into()],
        },
    ); // 6
    timeline.apply_to(store, 0).await?;
    for user in ["alice", "bob", "carol"] {
        assert!(!store.is_member("g:f", user).await?, "{user}");
        assert_eq!(store.removed_at("g:f", user).await?, Some(6), "{user}");
        assert!(
            store
                .conversations(user)
                .await?
                .iter()
                .all(|summary| summary.id != "g:f"),
            "{user} no longer lists it"
        );
        assert!(
            store
                .searchable_conversations(user)
                .await?
                .iter()
                .all(|(id, _)| id != "g:f"),
            "{user} no longer searches it"
        );
    }
    assert_eq!(store.members("g:f").await?, Vec::<String>::new());
    assert_eq!(store.roster("g:f").await?, Vec::new());
    Ok(())
}

/// A conversation's time-to-live is its latest `retention` event's (0: none of its own), in
/// `retention` and in the conversation list.
pub async fn retention_is_the_latest_setting(store: &dyn HistoryStore) -> Result<(), HistoryError> {
    let ttl_of_list = async |user: &str| -> Result<Option<u64>, HistoryError> {
        let list = store.conversations(user).await?;
        let ttl = list
            .iter()
            .find(|summary| summary.id == "dm:alice:bob")
            .and_then(|summary| summary.message_ttl_s);
        // the search scope's list says the same
        let searchable = store.searchable_conversations(user).await?;
        let listed: Vec<(String, Option<u64>)> = list
            .into_iter()
            .map(|summary| (summary.id, summary.message_ttl_s))
            .collect();
        assert_eq!(searchable, listed, "searchable_conversations of {user}");
        Ok(ttl)
    };
    let mut timeline = TimelineWriter::new();
    timeline.push("dm:alice:bob", "alice", sent("hi"));
    timeline.apply_to(store, 0).await?;
    assert_eq!(store.retention("dm:alice:bob").await?, None);
    assert_eq!(ttl_of_list("bob").await?, None);
    let retention = |ttl_seconds: u64| EventBody::RetentionSet { ttl_seconds };
    timeline.push("dm:alice:bob", "alice", retention(86_400));
    timeline.apply_to(store, 0).await?;
    assert_eq!(store.retention("dm:alice:bob").await?, Some(86_400));
    assert_eq!(ttl_of_list("bob").await?, Some(86_400));
    timeline.push("dm:alice:bob", "bob", retention(3_600));
    timeline.apply_to(store, 0).await?;
    assert_eq!(store.retention("dm:alice:bob").await?, Some(3_600));
    timeline.push("dm:alice:bob", "bob", retention(0));
    timeline.apply_to(store, 0).await?;
    assert_eq!(
        store.retention("dm:alice:bob").await?,
        None,
        "back to the default"
    );
    assert_eq!(ttl_of_list("alice").await?, None);
    assert_eq!(store.retention("g:unknown").await?, None);
    Ok(())
}
