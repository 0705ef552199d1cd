//! Limits that hold per group and per user, end to end through the business API and
//! `POST /v1/conversations` on `chorus serve` (issue 11):
//! - `limits.max_group_members` caps a group's size in total: several `add_members` events, each
//!   under the per-event cap, cannot grow a group past it (`too_large`, naming the key);
//! - `limits.max_groups_created_per_user_per_hour` caps the groups a user creates, each log
//!   partition allowing its share (429 `rate_limited`, naming the key); other partitions, other
//!   users and business systems are not affected, a
//!   retried creation still gets its original answer, and a restarted node (state recovered from
//!   the timeline) decides the same.

use chorus_log::partition_for_key;
use chorus_tests::{TestServer, generous_limits, token};
use serde_json::{Value, json};

const MAX_GROUP_MEMBERS: usize = 5;
const MAX_GROUPS_PER_HOUR: usize = 16;
const PARTITIONS: u32 = 8;

fn limits(config: &mut chorus_core::config::ChorusConfig) {
    generous_limits(config);
    config.log.partitions = Some(PARTITIONS);
    config.limits.max_group_members = MAX_GROUP_MEMBERS;
    config.limits.max_groups_created_per_user_per_hour = MAX_GROUPS_PER_HOUR;
}

fn error_code(result: &Value) -> &str {
    result["error"]["code"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn a_group_cannot_grow_past_max_group_members_through_several_events() -> anyhow::Result<()> {
    let server = TestServer::start_with(limits).await?;
    let api = server.api();
    let created = api
        .business(
            json!([{"type": "create_group", "id": "c1", "conversation": "g:team",
            "members": ["alice", "bob", "carol"], "title": "Team"}]),
        )
        .await?;
    assert_eq!(created[0]["seq"], 1, "{created:?}");
    // two events under the per-event cap fill the group to exactly the limit
    for (id, member) in [("a1", "dave"), ("a2", "erin")] {
        let added = api
            .business(json!([{"type": "add_members", "id": id, "conversation": "g:team", "members": [member]}]))
            .await?;
        assert!(added[0]["seq"].is_u64(), "{added:?}");
    }
    // the next one would make six: refused, whatever its own size
    let refused = api
        .business(json!([{"type": "add_members", "id": "a3", "conversation": "g:team", "members": ["frank"]}]))
        .await?;
    assert_eq!(error_code(&refused[0]), "too_large", "{refused:?}");
    let message = refused[0]["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("limits.max_group_members"), "{message}");
    // a user creating a group is held to the same limit
    let (status, body) = api
        .post(
            &token("alice", None),
            "/v1/conversations",
            &json!({"id": "g:big", "members": ["b", "c", "d", "e", "f"]}),
        )
        .await?;
    assert_eq!(status, 413, "the creator makes six members: {body}");
    assert!(
        body.to_string().contains("limits.max_group_members"),
        "{body}"
    );
    // a member already in the group adds nobody, so it is accepted
    let again = api
        .business(json!([{"type": "add_members", "id": "a4", "conversation": "g:team", "members": ["bob"]}]))
        .await?;
    assert!(again[0]["seq"].is_u64(), "{again:?}");
    let (status, _) = api
        .get("frank", "/v1/conversations/g:team/messages")
        .await?;
    assert_eq!(status, 403, "frank never became a member");
    server.served.shutdown().await?;
    Ok(())
}

/// Group ids of one partition (`count` of them), and one of another.
fn ids_by_partition(partitions: u32, count: usize) -> (Vec<String>, String) {
    let partition_of = |id: &str| partition_for_key(id.as_bytes(), partitions);
    let home = partition_of("g:a0");
    let same: Vec<String> = (0..)
        .map(|index| format!("g:a{index}"))
        .filter(|id| partition_of(id) == home)
        .take(count)
        .collect();
    let other = (0..)
        .map(|index| format!("g:o{index}"))
        .find(|id| partition_of(id) != home)
        .expect("another partition");
    (same, other)
}

#[tokio::test]
async fn a_user_creates_at_most_the_configured_groups_per_hour() -> anyhow::Result<()> {
    let server = TestServer::start_with(limits).await?;
    let partitions = server.served.log().partition_count("ingress").await?;
    assert_eq!(partitions, PARTITIONS);
    let (same_partition, other_partition) = ids_by_partition(partitions, 4);
    let api = server.api();
    let create = |api: &chorus_tests::Api, user: &str, id: &str| {
        let api = api.clone();
        let bearer = token(user, None);
        let body = json!({"id": id, "members": ["zoe"]});
        async move { api.post(&bearer, "/v1/conversations", &body).await }
    };
    // each partition allows its share: 16 per hour over 8 partitions is 2 per partition
    for id in &same_partition[..2] {
        let (status, body) = create(&api, "alice", id).await?;
        assert_eq!(status, 201, "{body}");
    }
    let (status, body) = create(&api, "alice", &same_partition[2]).await?;
    assert_eq!(
        status, 429,
        "a third group of alice's in one partition: {body}"
    );
    assert_eq!(body["error"]["code"], "rate_limited", "{body}");
    assert!(
        body.to_string()
            .contains("limits.max_groups_created_per_user_per_hour"),
        "{body}"
    );
    // a retry of an earlier creation still gets its original answer
    let (status, body) = create(&api, "alice", &same_partition[0]).await?;
    assert_eq!(status, 201, "a retried creation is not a new one: {body}");
    // other partitions have their own share; other users and business systems are not limited
    let (status, body) = create(&api, "alice", &other_partition).await?;
    assert_eq!(status, 201, "{body}");
    let (status, body) = create(&api, "bob", &same_partition[2]).await?;
    assert_eq!(status, 201, "{body}");
    let business = api
        .business(
            json!([{"type": "create_group", "id": "s1", "conversation": same_partition[3],
            "members": ["alice"]}]),
        )
        .await?;
    assert_eq!(business[0]["seq"], 1, "{business:?}");

    // a restarted node recovers the count from the timeline and decides the same
    let data_dir = server.data_dir;
    server.served.shutdown().await?;
    let restarted = TestServer::serve_in(data_dir.path(), limits).await?;
    let api = chorus_tests::Api::new(&restarted.url());
    let (same_again, _) = ids_by_partition(partitions, 6);
    let (status, body) = create(&api, "alice", &same_again[5]).await?;
    assert_eq!(status, 429, "still within the hour after a restart: {body}");
    restarted.shutdown().await?;
    Ok(())
}
