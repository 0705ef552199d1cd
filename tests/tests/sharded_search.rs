//! Sharded search as processes on a real Kafka broker and redis-server (`scripts/test` starts
//! them; in CI missing services fail this test, elsewhere it is skipped): search nodes of one
//! replica set share a consumer group on `timeline` and each indexes only its partitions; a
//! query on any of them gathers every shard's hits and merges them by score exactly as one node
//! holding every partition (a second replica set of one node) orders them; a shard that does
//! not answer in time makes the answer `partial`, naming the partitions missing, and the next
//! query uses the other replica set's healthy node for them.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Context, ensure};
use chorus_tests::tls::certificate_files;
use chorus_tests::{API_KEY, Api, ChildServer, distributed_services, role_environment};
use serde_json::{Value, json};

const PARTITIONS: u32 = 4;
/// Conversations searched, spread over every partition.
const CONVERSATIONS: usize = 24;
/// How long the shards may take to split the partitions and index what was sent.
const SETTLE: Duration = Duration::from_secs(90);

fn signal(server: &ChildServer, name: &str) -> anyhow::Result<()> {
    let pid = server.child.id().context("the search node is running")?;
    let status = std::process::Command::new("kill")
        .args([format!("-{name}"), pid.to_string()])
        .status()?;
    ensure!(status.success(), "kill -{name} {pid} failed");
    Ok(())
}

/// `GET /v1/admin/search/shards` of a node.
async fn shard_view(node: &ChildServer) -> anyhow::Result<Value> {
    shard_view_with(&reqwest::Client::new(), node).await
}

/// [`shard_view`] through `client` (one that trusts the node's certificate).
async fn shard_view_with(client: &reqwest::Client, node: &ChildServer) -> anyhow::Result<Value> {
    let response = client
        .get(format!("{}/v1/admin/search/shards", node.url))
        .bearer_auth(API_KEY)
        .send()
        .await?;
    ensure!(
        response.status() == 200,
        "shard view: {}",
        response.status()
    );
    Ok(response.json().await?)
}

fn held(view: &Value) -> BTreeSet<u64> {
    view["held"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|partition| partition["partition"].as_u64())
        .collect()
}

/// Whether two nodes' shard views split every partition between them, each holding some.
fn split_between(one: &Value, two: &Value) -> bool {
    let (held_one, held_two) = (held(one), held(two));
    !held_one.is_empty()
        && !held_two.is_empty()
        && held_one.is_disjoint(&held_two)
        && held_one.len() + held_two.len() == PARTITIONS as usize
}

/// `(conversation, seq)` of each hit, in order.
fn hit_keys(answer: &Value) -> Vec<(String, u64)> {
    answer["hits"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|hit| {
            (
                hit["conversation"].as_str().unwrap_or_default().to_owned(),
                hit["seq"].as_u64().unwrap_or_default(),
            )
        })
        .collect()
}

/// Polls `check` until it returns `Some`, at most [`SETTLE`].
async fn settled<T>(
    what: &str,
    mut check: impl AsyncFnMut() -> anyhow::Result<Option<T>>,
) -> anyhow::Result<T> {
    let deadline = tokio::time::Instant::now() + SETTLE;
    loop {
        if let Some(done) = check().await? {
            return Ok(done);
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {SETTLE:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// One message from `<run>alice` in each of [`CONVERSATIONS`] direct conversations (covering
/// every partition), each holding the word searched for, sent through `ingest`'s business API:
/// (alice, the conversations).
async fn one_message_per_conversation(
    ingest: &ChildServer,
    run: &str,
) -> anyhow::Result<(String, Vec<String>)> {
    let alice = format!("{run}alice");
    let mut conversations = Vec::new();
    for index in 0..CONVERSATIONS {
        let other = format!("{run}u{index:02}");
        let conversation = if alice < other {
            format!("dm:{alice}:{other}")
        } else {
            format!("dm:{other}:{alice}")
        };
        let text = format!(
            "shardword {} message {index}",
            "needle ".repeat(1 + index % 5)
        );
        let results = Api::new(&ingest.url)
            .business(json!([{"type": "send", "id": format!("m{index}"),
                "conversation": conversation, "sender": alice, "text": text}]))
            .await?;
        ensure!(results[0]["seq"] == 1, "{results:?}");
        conversations.push(conversation);
    }
    let partitions: BTreeSet<u64> = conversations
        .iter()
        .map(|conversation| {
            u64::from(chorus_log::partition_for_key(
                conversation.as_bytes(),
                PARTITIONS,
            ))
        })
        .collect();
    ensure!(
        partitions.len() == PARTITIONS as usize,
        "the conversations cover every partition: {partitions:?}"
    );
    Ok((alice, conversations))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_shards_split_the_partitions_and_a_query_gathers_them() -> anyhow::Result<()> {
    let Some(services) = distributed_services() else {
        return Ok(());
    };
    let run = format!("ss{}", std::process::id());
    let data = tempfile::tempdir()?;
    let config = data.path().join("chorus.toml");
    // a stopped shard stays in the registry and in its group for the whole test
    std::fs::write(
        &config,
        format!(
            "[log]\npartitions = {PARTITIONS}\n[kafka]\nsession_timeout_ms = 45000\n\
             [search]\nshard_timeout_ms = 1500\nregistry_ttl_ms = 60000\ncopy_min_records = 1\n"
        ),
    )?;
    let arguments = |role: &str, node: &str| {
        let mut arguments = vec![
            "--config".to_owned(),
            config.display().to_string(),
            role.to_owned(),
            "--listen".to_owned(),
            "127.0.0.1:0".to_owned(),
        ];
        if role == "search" {
            let dir = data.path().join(node);
            arguments.extend(["--data-dir".to_owned(), dir.display().to_string()]);
        }
        arguments
    };
    let environment = |node: &str, replica_set: &str| {
        let mut environment = role_environment(&services, &run, node);
        environment.push(("CHORUS_SEARCH_REPLICA_SET", replica_set.to_owned()));
        environment
    };
    let _router =
        ChildServer::spawn(&arguments("router", "router"), &environment("router", "")).await?;
    let ingest =
        ChildServer::spawn(&arguments("ingest", "ingest"), &environment("ingest", "")).await?;
    let a1 = ChildServer::spawn(&arguments("search", "a1"), &environment("a1", "a")).await?;
    let a2 = ChildServer::spawn(&arguments("search", "a2"), &environment("a2", "a")).await?;

    // the set's two nodes split the partitions …
    let split =
        async |a1: &ChildServer, a2: &ChildServer| -> anyhow::Result<Option<(Value, Value)>> {
            let (one, two) = (shard_view(a1).await?, shard_view(a2).await?);
            Ok(split_between(&one, &two).then_some((one, two)))
        };
    settled("replica set a split the partitions", async || {
        split(&a1, &a2).await
    })
    .await?;

    // one message per conversation, every one holding the word searched for
    let (alice, conversations) = one_message_per_conversation(&ingest, &run).await?;
    let query = "/v1/search?q=shardword%20needle&limit=100";

    // … and each indexed only its own
    let (a1_view, a2_view) = settled("replica set a indexed what was sent", async || {
        let (_, answer) = Api::new(&a1.url).get(&alice, query).await?;
        if hit_keys(&answer).len() != CONVERSATIONS {
            return Ok(None);
        }
        split(&a1, &a2).await
    })
    .await?;
    for view in [&a1_view, &a2_view] {
        let held_documents: u64 = view["held"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|partition| partition["documents"].as_u64().unwrap_or_default())
            .sum();
        assert_eq!(
            view["documents"].as_u64(),
            Some(held_documents),
            "a shard's index holds documents of its own partitions only: {view}"
        );
        assert!(held_documents > 0, "{view}");
    }
    let (_, from_a1) = Api::new(&a1.url).get(&alice, query).await?;
    let (_, from_a2) = Api::new(&a2.url).get(&alice, query).await?;
    assert_eq!(from_a1["partial"], false, "{from_a1}");
    assert_eq!(hit_keys(&from_a1).len(), CONVERSATIONS, "{from_a1}");
    assert_eq!(
        hit_keys(&from_a1),
        hit_keys(&from_a2),
        "any node of the set answers the same"
    );

    // a second replica set of one node holds every partition: the same hits in the same order
    let b1 = ChildServer::spawn(&arguments("search", "b1"), &environment("b1", "b")).await?;
    let from_b1 = settled("replica set b indexed everything", async || {
        let view = shard_view(&b1).await?;
        let (_, answer) = Api::new(&b1.url).get(&alice, query).await?;
        Ok(
            (held(&view).len() == PARTITIONS as usize && hit_keys(&answer).len() == CONVERSATIONS)
                .then_some(answer),
        )
    })
    .await?;
    assert_eq!(
        hit_keys(&from_a1),
        hit_keys(&from_b1),
        "hits gathered from two shards merge by score as one index orders them"
    );
    assert_eq!(
        from_a1["hits"], from_b1["hits"],
        "the asking node makes the winners' snippets as one index makes them"
    );
    assert!(
        from_a1["hits"][0]["snippet"]
            .as_str()
            .is_some_and(|snippet| snippet.contains("<b>needle</b>")),
        "{from_a1}"
    );
    // a shard answers texts and snippet weights to a node that asks for them, snippets to one
    // of an earlier version (which does not)
    let (a1_partition, a1_conversations): (u64, Vec<&String>) = held(&a1_view)
        .into_iter()
        .map(|partition| {
            let theirs = conversations
                .iter()
                .filter(|conversation| {
                    u64::from(chorus_log::partition_for_key(
                        conversation.as_bytes(),
                        PARTITIONS,
                    )) == partition
                })
                .collect();
            (partition, theirs)
        })
        .next()
        .context("a1 holds a partition")?;
    let ask_a1 = async |request: &Value| -> anyhow::Result<Value> {
        Ok(reqwest::Client::new()
            .post(format!("{}/v1/shards/search", a1.url))
            .bearer_auth(API_KEY)
            .json(request)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?)
    };
    for texts in [None, Some(true)] {
        let mut request = json!({"q": "shardword needle", "limit": 100, "barrier_ms": 1000,
            "partitions": {a1_partition.to_string(): a1_conversations}});
        if let Some(texts) = texts {
            request["texts"] = json!(texts);
        }
        let answer = ask_a1(&request).await?;
        let hits = answer["hits"].as_array().cloned().unwrap_or_default();
        assert_eq!(hits.len(), a1_conversations.len(), "{answer}");
        for hit in &hits {
            let (snippet, text) = (&hit["hit"]["snippet"], &hit["text"]);
            match texts {
                None => {
                    assert!(snippet.as_str().is_some_and(|s| s.contains("<b>")), "{hit}");
                    assert!(text.is_null(), "{hit}");
                }
                Some(_) => {
                    assert_eq!(snippet, "", "{hit}");
                    assert!(text.as_str().is_some_and(|t| t.contains("needle")), "{hit}");
                }
            }
        }
        assert_eq!(
            answer["snippet_terms"]
                .as_object()
                .is_some_and(|terms| terms.contains_key(&a1_partition.to_string())),
            texts.is_some(),
            "{answer}"
        );
    }
    let mut by_id = hit_keys(&from_b1);
    by_id.sort();
    assert_ne!(
        by_id,
        hit_keys(&from_b1),
        "the ranking is by score (messages repeat the word 1-5 times), not by id"
    );

    // a1 asks a2 (its own set) first: a2 frozen, a1 answers partial, naming a2's partitions
    let a2_held = held(&a2_view);
    settled("a1 sees b1 in the registry", async || {
        let view = shard_view(&a1).await?;
        let registered = view["registry"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|entry| {
                entry["replica_set"] == "b"
                    && entry["partitions"]
                        .as_array()
                        .is_some_and(|held| held.len() == PARTITIONS as usize)
            });
        Ok(registered.then_some(()))
    })
    .await?;
    signal(&a2, "STOP")?;
    let (status, partial) = Api::new(&a1.url).get(&alice, query).await?;
    assert_eq!(status, 200, "{partial}");
    assert_eq!(partial["partial"], true, "never silently short: {partial}");
    let missing: BTreeSet<u64> = partial["missing_partitions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_u64)
        .collect();
    assert_eq!(missing, a2_held, "{partial}");
    let a1_documents = a1_view["documents"].as_u64().unwrap_or_default() as usize;
    assert_eq!(
        hit_keys(&partial).len(),
        a1_documents,
        "the partitions that answered are all there: {partial}"
    );
    // the next query skips the frozen node: b1 answers for its partitions
    let (_, recovered) = Api::new(&a1.url).get(&alice, query).await?;
    assert_eq!(recovered["partial"], false, "{recovered}");
    assert_eq!(hit_keys(&recovered), hit_keys(&from_b1));
    signal(&a2, "CONT")?;

    // a new node of set b: the group gives it some of b1's partitions, which it copies from a
    // peer (Tantivy segments and the position of their commit) instead of indexing them from
    // the log, and goes on indexing from that position
    let b2 = ChildServer::spawn(&arguments("search", "b2"), &environment("b2", "b")).await?;
    let (_, b2_view) = settled("set b split with its new node", async || {
        let (_, answer) = Api::new(&b2.url).get(&alice, query).await?;
        if hit_keys(&answer).len() != CONVERSATIONS {
            return Ok(None);
        }
        split(&b1, &b2).await
    })
    .await?;
    let copies = b2_view["copies"].as_array().cloned().unwrap_or_default();
    let copied: BTreeSet<u64> = copies
        .iter()
        .filter_map(|copy| copy["partition"].as_u64())
        .collect();
    assert_eq!(
        copied,
        held(&b2_view),
        "every partition it took over was copied: {b2_view}"
    );
    for copy in &copies {
        assert_eq!(copy["position_before"], 0, "{copy}");
        assert!(copy["position"].as_u64() > Some(0), "{copy}");
    }
    let (_, from_b2) = Api::new(&b2.url).get(&alice, query).await?;
    assert_eq!(from_b2["partial"], false, "{from_b2}");
    assert_eq!(hit_keys(&from_b2), hit_keys(&from_b1));
    // a message sent now, into a conversation b2 holds, is indexed by b2 from the copy's position
    let conversation = conversations
        .iter()
        .find(|conversation| {
            copied.contains(&u64::from(chorus_log::partition_for_key(
                conversation.as_bytes(),
                PARTITIONS,
            )))
        })
        .context("b2 holds some conversation")?;
    let results = Api::new(&ingest.url)
        .business(
            json!([{"type": "send", "id": "after-copy", "conversation": conversation,
            "sender": alice, "text": "aftercopy words"}]),
        )
        .await?;
    ensure!(results[0]["seq"] == 2, "{results:?}");
    let after = format!("/v1/search?q=aftercopy&conversation={conversation}");
    let (_, found) = Api::new(&b2.url).get(&alice, &after).await?;
    assert_eq!(
        hit_keys(&found),
        vec![(conversation.clone(), 2)],
        "indexed after the copy: {found}"
    );
    let b2_documents = shard_view(&b2).await?["held"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|partition| partition["documents"].as_u64().unwrap_or_default())
        .sum::<u64>();
    let held_conversations = conversations
        .iter()
        .filter(|conversation| {
            held(&b2_view).contains(&u64::from(chorus_log::partition_for_key(
                conversation.as_bytes(),
                PARTITIONS,
            )))
        })
        .count() as u64;
    assert_eq!(
        b2_documents,
        held_conversations + 1,
        "each message once: the copy's, then what came after"
    );

    // a shard answers a text over 1 KiB as its snippet, made by the shard (an answer stays
    // bounded): a long message between two other users, in a conversation of a1's partition
    // (last: it changes that partition's statistics, so the rankings compared above)
    let long_conversation = (0..)
        .map(|index| format!("dm:{run}long{index}a:{run}long{index}b"))
        .find(|conversation| {
            u64::from(chorus_log::partition_for_key(
                conversation.as_bytes(),
                PARTITIONS,
            )) == a1_partition
        })
        .context("a conversation of a1's partition")?;
    let long_text = format!("longword {}", "filler words ".repeat(120));
    let results = Api::new(&ingest.url)
        .business(
            json!([{"type": "send", "id": "long", "conversation": long_conversation,
            "sender": long_conversation.split(':').nth(1), "text": long_text}]),
        )
        .await?;
    ensure!(results[0]["seq"] == 1, "{results:?}");
    let request = json!({"q": "longword", "limit": 10, "barrier_ms": 1000, "texts": true,
        "partitions": {a1_partition.to_string(): [long_conversation]}});
    let long_hit = settled("a1 indexed the long message", async || {
        let answer = ask_a1(&request).await?;
        Ok(answer["hits"]
            .as_array()
            .and_then(|hits| hits.first())
            .cloned())
    })
    .await?;
    assert!(long_hit["text"].is_null(), "{long_hit}");
    assert!(
        long_hit["hit"]["snippet"]
            .as_str()
            .is_some_and(|snippet| snippet.contains("<b>longword</b>") && snippet.len() < 1024),
        "{long_hit}"
    );

    // the shard route is the cluster's own: without the key it answers 401
    let refused = reqwest::Client::new()
        .post(format!("{}/v1/shards/search", a1.url))
        .json(&json!({"q": "shardword", "partitions": {}, "limit": 10, "barrier_ms": 0}))
        .send()
        .await?;
    assert_eq!(refused.status(), 401);
    Ok(())
}

/// Search nodes serving `[http]` TLS with certificates of a private CA (made by the test) ask
/// each other over `https://`, trusting that CA through `search.peer_ca_file`: a query on either
/// node of the set gathers every partition, nothing partial.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_shards_ask_each_other_over_https_with_a_private_ca() -> anyhow::Result<()> {
    let Some(services) = distributed_services() else {
        return Ok(());
    };
    let run = format!("st{}", std::process::id());
    let data = tempfile::tempdir()?;
    let [ca_file, cert_file, key_file] = certificate_files(data.path())?;
    let plain = data.path().join("plain.toml");
    std::fs::write(&plain, format!("[log]\npartitions = {PARTITIONS}\n"))?;
    let secured = data.path().join("tls.toml");
    std::fs::write(
        &secured,
        format!(
            "[log]\npartitions = {PARTITIONS}\n\
             [http]\ntls_cert_file = \"{cert_file}\"\ntls_key_file = \"{key_file}\"\n\
             [search]\nreplica_set = \"a\"\npeer_ca_file = \"{ca_file}\"\n"
        ),
    )?;
    let spawn = async |config: &std::path::Path, role: &str, node: &str| {
        let arguments = chorus_tests::role_arguments(config, role, 0, &data.path().join(node));
        ChildServer::spawn(&arguments, &role_environment(&services, &run, node)).await
    };
    let _router = spawn(&plain, "router", "router").await?;
    let ingest = spawn(&plain, "ingest", "ingest").await?;
    let a1 = spawn(&secured, "search", "a1").await?;
    let a2 = spawn(&secured, "search", "a2").await?;
    ensure!(a1.url.starts_with("https://"), "{}", a1.url);
    // the test trusts the same CA, and only it
    let client = reqwest::Client::builder()
        .tls_certs_only(reqwest::Certificate::from_pem_bundle(&std::fs::read(
            &ca_file,
        )?)?)
        .build()?;

    let (alice, _) = one_message_per_conversation(&ingest, &run).await?;
    let token = chorus_tests::token(&alice, None);
    let search = async |node: &ChildServer| -> anyhow::Result<Value> {
        let response = client
            .get(format!(
                "{}/v1/search?q=shardword%20needle&limit=100",
                node.url
            ))
            .bearer_auth(&token)
            .send()
            .await?;
        ensure!(response.status() == 200, "search: {}", response.status());
        Ok(response.json().await?)
    };
    let (one, two) = settled(
        "the set split the partitions and indexed them",
        async || {
            let (one, two) = (
                shard_view_with(&client, &a1).await?,
                shard_view_with(&client, &a2).await?,
            );
            let indexed = hit_keys(&search(&a1).await?).len() == CONVERSATIONS;
            Ok((split_between(&one, &two) && indexed).then_some((one, two)))
        },
    )
    .await?;
    for entry in [&one, &two] {
        assert!(
            entry["url"]
                .as_str()
                .is_some_and(|url| url.starts_with("https://")),
            "a shard advertises https: {entry}"
        );
    }
    for node in [&a1, &a2] {
        let answer = search(node).await?;
        assert_eq!(answer["partial"], false, "{answer}");
        assert_eq!(hit_keys(&answer).len(), CONVERSATIONS, "{answer}");
    }
    Ok(())
}
