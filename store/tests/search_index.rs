//! The search index: multilingual matching, edits and recalls, scoping, replays and positions.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chorus_log::partition_for_key;
use chorus_schemas::{EventBody, TimelineEvent};
use chorus_store::search_index::{
    MAX_SEARCH_HITS, Matches, PartitionSnapshot, SearchError, SearchHit, SearchIndex,
    SearchQueryLimits, merge_hits, parse_user_query,
};
use tempfile::TempDir;

const BASE_TS: i64 = 1_700_000_000_000;

fn event(conversation: &str, seq: u64, sender: &str, body: EventBody) -> TimelineEvent {
    TimelineEvent {
        conversation: conversation.to_owned(),
        seq: body.is_sequenced().then_some(seq),
        event_id: format!("event-{conversation}-{seq}"),
        sender: sender.to_owned(),
        ts_ms: BASE_TS + seq as i64,
        origin_cluster: "test".to_owned(),
        client_msg_id: None,
        ingress_offset: 0,
        body,
    }
}

fn sent(conversation: &str, seq: u64, sender: &str, text: &str) -> TimelineEvent {
    event(conversation, seq, sender, EventBody::message(text))
}

fn edited(
    conversation: &str,
    seq: u64,
    sender: &str,
    target_seq: u64,
    text: &str,
) -> TimelineEvent {
    event(
        conversation,
        seq,
        sender,
        EventBody::MessageEdited {
            target_seq,
            text: text.to_owned(),
        },
    )
}

fn recalled(conversation: &str, seq: u64, sender: &str, target_seq: u64) -> TimelineEvent {
    event(
        conversation,
        seq,
        sender,
        EventBody::MessageRecalled { target_seq },
    )
}

/// An index in a temporary directory, fed the way the projector feeds it: each event goes to
/// its conversation's partition, with increasing offsets per partition.
struct Fixture {
    /// Keeps the index files alive.
    directory: TempDir,
    index: Arc<SearchIndex>,
    partitions: u32,
    /// The next offset per partition.
    next_offsets: Vec<u64>,
}

impl Fixture {
    fn new(partitions: u32) -> Fixture {
        let directory = tempfile::tempdir().unwrap();
        let index = SearchIndex::open(directory.path(), partitions).unwrap();
        Fixture {
            directory,
            index,
            partitions,
            next_offsets: vec![0; partitions as usize],
        }
    }

    fn partition_of(&self, conversation: &str) -> u32 {
        partition_for_key(conversation.as_bytes(), self.partitions)
    }

    /// Appends `events` to their partitions' logs and applies one batch per partition; returns
    /// the batches as applied.
    fn apply(
        &mut self,
        events: Vec<TimelineEvent>,
    ) -> BTreeMap<u32, (Vec<(u64, TimelineEvent)>, u64)> {
        let mut batches: BTreeMap<u32, (Vec<(u64, TimelineEvent)>, u64)> = BTreeMap::new();
        for event in events {
            let partition = self.partition_of(&event.conversation);
            let offset = self.next_offsets[partition as usize];
            self.next_offsets[partition as usize] += 1;
            let batch = batches.entry(partition).or_default();
            batch.0.push((offset, event));
            batch.1 = offset + 1;
        }
        for (partition, (records, next_offset)) in &batches {
            self.index.apply(*partition, records, *next_offset).unwrap();
        }
        batches
    }

    fn search(&self, query: &str, conversations: &[&str]) -> Vec<SearchHit> {
        let conversations: Vec<String> = conversations.iter().map(|id| (*id).to_owned()).collect();
        self.index.search(query, &conversations, 50).unwrap()
    }

    fn found(&self, query: &str, conversations: &[&str]) -> Vec<(String, u64)> {
        self.search(query, conversations)
            .into_iter()
            .map(|hit| (hit.conversation, hit.seq))
            .collect()
    }
}

fn hit(conversation: &str, seq: u64) -> (String, u64) {
    (conversation.to_owned(), seq)
}

#[test]
fn chinese_words_match_only_the_message_containing_them() {
    let mut fixture = Fixture::new(2);
    fixture.apply(vec![
        sent("g:cn", 1, "alice", "今天我们去北京开会"),
        sent("g:cn", 2, "bob", "明天下雨"),
    ]);
    assert_eq!(fixture.found("北京", &["g:cn"]), [hit("g:cn", 1)]);
    assert_eq!(fixture.found("开会", &["g:cn"]), [hit("g:cn", 1)]);
    assert_eq!(fixture.found("下雨", &["g:cn"]), [hit("g:cn", 2)]);
    assert!(
        fixture.found("北京 下雨", &["g:cn"]).is_empty(),
        "terms are ANDed"
    );
    let hits = fixture.search("北京", &["g:cn"]);
    assert!(
        hits[0].snippet.contains("<b>北京</b>"),
        "{:?}",
        hits[0].snippet
    );
    assert_eq!(
        (hits[0].sender.as_str(), hits[0].ts),
        ("alice", BASE_TS + 1)
    );
}

#[test]
fn chinese_multi_token_words_match_as_phrases() {
    let mut fixture = Fixture::new(2);
    fixture.apply(vec![
        sent("g:cn", 1, "alice", "我在北京大学读书"),
        sent("g:cn", 2, "bob", "大学在北京"),
    ]);
    assert_eq!(fixture.found("北京大学", &["g:cn"]), [hit("g:cn", 1)]);
    assert_eq!(
        fixture.found("北京开会", &["g:cn"]),
        [],
        "phrase parts must be adjacent"
    );
}

#[test]
fn english_is_stemmed_and_case_insensitive() {
    let mut fixture = Fixture::new(2);
    fixture.apply(vec![
        sent("g:en", 1, "alice", "We have a meeting tomorrow"),
        sent("g:en", 2, "bob", "Lunch later?"),
    ]);
    assert_eq!(fixture.found("meetings", &["g:en"]), [hit("g:en", 1)]);
    assert_eq!(fixture.found("MEETING", &["g:en"]), [hit("g:en", 1)]);
    assert_eq!(fixture.found("lunch", &["g:en"]), [hit("g:en", 2)]);
    let hits = fixture.search("meetings", &["g:en"]);
    assert_eq!(hits[0].snippet, "We have a <b>meeting</b> tomorrow");
}

#[test]
fn english_quoted_phrases_need_adjacent_words() {
    let mut fixture = Fixture::new(2);
    fixture.apply(vec![
        sent("g:en", 1, "alice", "the team meeting is at noon"),
        sent("g:en", 2, "bob", "a meeting of the team"),
    ]);
    assert_eq!(
        fixture.found("\"team meetings\"", &["g:en"]),
        [hit("g:en", 1)]
    );
    let mut both = fixture.found("team meeting", &["g:en"]);
    both.sort();
    assert_eq!(both, [hit("g:en", 1), hit("g:en", 2)]);
}

#[test]
fn japanese_is_found_by_kanji_words_and_kana_bigrams() {
    let mut fixture = Fixture::new(2);
    fixture.apply(vec![
        sent("g:ja", 1, "alice", "東京で会議をします"),
        sent("g:ja", 2, "bob", "明日は雨です"),
    ]);
    assert_eq!(fixture.found("会議", &["g:ja"]), [hit("g:ja", 1)]);
    assert_eq!(fixture.found("します", &["g:ja"]), [hit("g:ja", 1)]);
    assert_eq!(fixture.found("東京", &["g:ja"]), [hit("g:ja", 1)]);
    assert_eq!(fixture.found("会議をします", &["g:ja"]), [hit("g:ja", 1)]);
    assert_eq!(fixture.found("です", &["g:ja"]), [hit("g:ja", 2)]);
}

#[test]
fn korean_is_found_by_bigrams() {
    let mut fixture = Fixture::new(2);
    fixture.apply(vec![
        sent("g:ko", 1, "alice", "오늘 회의가 있습니다"),
        sent("g:ko", 2, "bob", "내일 비가 옵니다"),
    ]);
    assert_eq!(fixture.found("회의", &["g:ko"]), [hit("g:ko", 1)]);
    assert_eq!(fixture.found("회의가", &["g:ko"]), [hit("g:ko", 1)]);
    assert_eq!(fixture.found("내일", &["g:ko"]), [hit("g:ko", 2)]);
    assert!(fixture.found("점심", &["g:ko"]).is_empty());
}

#[test]
fn an_edit_replaces_the_text_and_keeps_sender_and_time() {
    let mut fixture = Fixture::new(2);
    fixture.apply(vec![sent("g:e", 1, "alice", "original apple")]);
    fixture.apply(vec![edited("g:e", 2, "alice", 1, "replacement banana")]);
    assert!(
        fixture.found("apple", &["g:e"]).is_empty(),
        "the old text is gone"
    );
    let hits = fixture.search("banana", &["g:e"]);
    assert_eq!(hits.len(), 1);
    assert_eq!(
        (hits[0].seq, hits[0].sender.as_str(), hits[0].ts),
        (1, "alice", BASE_TS + 1)
    );
    assert_eq!(fixture.index.document_count(), 1);

    fixture.apply(vec![
        sent("g:e", 3, "bob", "first cherry"),
        edited("g:e", 4, "bob", 3, "second cherry"),
        edited("g:e", 5, "bob", 3, "third date"),
    ]);
    let hits = fixture.search("date", &["g:e"]);
    assert_eq!(hits.len(), 1, "edits within one batch chain: {hits:?}");
    assert_eq!(
        (hits[0].seq, hits[0].sender.as_str(), hits[0].ts),
        (3, "bob", BASE_TS + 3)
    );
    assert!(fixture.found("cherry", &["g:e"]).is_empty());
    assert_eq!(fixture.index.document_count(), 2);
}

#[test]
fn a_recall_removes_the_message_for_good() {
    let mut fixture = Fixture::new(2);
    fixture.apply(vec![
        sent("g:r", 1, "alice", "secret plans"),
        sent("g:r", 2, "bob", "plans"),
    ]);
    fixture.apply(vec![recalled("g:r", 3, "alice", 1)]);
    assert_eq!(fixture.found("secret", &["g:r"]), []);
    assert_eq!(fixture.found("plans", &["g:r"]), [hit("g:r", 2)]);
    fixture.apply(vec![edited("g:r", 4, "alice", 1, "secret plans again")]);
    assert_eq!(
        fixture.found("secret", &["g:r"]),
        [],
        "an edit never revives a recalled message"
    );

    fixture.apply(vec![
        sent("g:r", 5, "bob", "fleeting words"),
        recalled("g:r", 6, "bob", 5),
        edited("g:r", 7, "bob", 5, "fleeting words edited"),
        edited("g:r", 8, "bob", 99, "fleeting edit of nothing"),
    ]);
    assert_eq!(
        fixture.found("fleeting", &["g:r"]),
        [],
        "within one batch too"
    );
    assert_eq!(fixture.index.document_count(), 1);
}

#[test]
fn results_only_come_from_the_given_conversations() {
    let mut fixture = Fixture::new(8);
    let conversations = ["g:a", "g:b", "dm:alice:bob", "g:c", "g:d", "g:e"];
    let events = conversations
        .iter()
        .map(|conversation| sent(conversation, 1, "alice", "shared words"))
        .collect();
    fixture.apply(events);
    let partitions: std::collections::BTreeSet<u32> = conversations
        .iter()
        .map(|conversation| fixture.partition_of(conversation))
        .collect();
    assert!(
        partitions.len() > 1,
        "the conversations span partitions: {partitions:?}"
    );

    assert_eq!(fixture.found("shared", &["g:a"]), [hit("g:a", 1)]);
    assert_eq!(
        fixture.found("shared", &["dm:alice:bob"]),
        [hit("dm:alice:bob", 1)]
    );
    assert!(
        fixture.found("shared", &[]).is_empty(),
        "no conversations, no hits"
    );
    assert!(fixture.found("shared", &["g:unknown"]).is_empty());
    let mut all = fixture.found("shared", &conversations);
    all.sort();
    let mut expected: Vec<(String, u64)> = conversations.iter().map(|id| hit(id, 1)).collect();
    expected.sort();
    assert_eq!(all, expected, "hits are merged across partitions");
    let scoped = fixture.found("shared conversation:g:b", &["g:a"]);
    assert!(
        scoped.is_empty(),
        "a field clause in the query cannot widen the scope: {scoped:?}"
    );
}

#[test]
fn the_limit_applies_after_merging_partitions() {
    let mut fixture = Fixture::new(4);
    let events = (0..6)
        .map(|index| sent(&format!("g:{index}"), 1, "alice", "budget review"))
        .collect();
    fixture.apply(events);
    let all: Vec<String> = (0..6).map(|index| format!("g:{index}")).collect();
    assert_eq!(fixture.index.search("budget", &all, 2).unwrap().len(), 2);
    assert_eq!(fixture.index.search("budget", &all, 100).unwrap().len(), 6);
    assert!(fixture.index.search("budget", &all, 0).unwrap().is_empty());
}

#[test]
fn every_limit_gives_the_head_of_one_ranking_each_hit_with_its_snippet() {
    // equal texts tie on score across partitions; the other texts score apart
    let mut fixture = Fixture::new(4);
    let mut events = Vec::new();
    for index in 0..8 {
        let conversation = format!("g:{index}");
        events.push(sent(&conversation, 1, "alice", "budget review"));
        events.push(sent(
            &conversation,
            2,
            "bob",
            "the budget and the budget plan",
        ));
        events.push(sent(
            &conversation,
            3,
            "carol",
            &format!("budget notes {index}"),
        ));
    }
    fixture.apply(events);
    let all: Vec<String> = (0..8).map(|index| format!("g:{index}")).collect();
    let ranking = fixture.index.search("budget", &all, 100).unwrap();
    assert_eq!(ranking.len(), 24);
    for limit in 1..=24 {
        let head = fixture.index.search("budget", &all, limit).unwrap();
        assert_eq!(head, ranking[..limit], "the best {limit}");
    }
    for hit in &ranking {
        assert!(hit.snippet.contains("<b>budget</b>"), "{hit:?}");
    }
}
#[test]
fn hits_merged_from_shards_get_the_snippets_one_index_gives() {
    // long texts: the query's two words far apart, so the weights of each partition choose
    // which one the snippet shows: "review" is the rarer word in even partitions, "budget" in
    // odd ones
    let mut fixture = Fixture::new(4);
    let filler = "lorem ipsum dolor sit amet ".repeat(8);
    let mut events = Vec::new();
    let all: Vec<String> = (0..8).map(|index| format!("g:{index}")).collect();
    for (index, conversation) in all.iter().enumerate() {
        events.push(sent(
            conversation,
            1,
            "alice",
            &format!("budget {filler} review {index}"),
        ));
        let common = match partition_for_key(conversation.as_bytes(), fixture.partitions) % 2 {
            0 => "budget again",
            _ => "review again",
        };
        for seq in 2..8 {
            events.push(sent(conversation, seq, "bob", common));
        }
    }
    fixture.apply(events);
    let query = parse_user_query("budget review", &SearchQueryLimits::default()).unwrap();
    let one_index = fixture
        .index
        .search_parsed(query.as_ref(), &all, 10)
        .unwrap();
    let long: Vec<&SearchHit> = one_index.iter().filter(|hit| hit.seq == 1).collect();
    assert!(
        long.iter()
            .any(|hit| hit.snippet.starts_with("<b>budget</b>")),
        "{long:?}"
    );
    assert!(
        long.iter()
            .any(|hit| !hit.snippet.contains("<b>budget</b>")),
        "{long:?}"
    );
    // two shards, each searching the conversations of its partitions, answering over the wire
    let shard_of =
        |conversation: &String| partition_for_key(conversation.as_bytes(), fixture.partitions) % 2;
    let mut gathered = Vec::new();
    let mut snippet_terms = BTreeMap::new();
    for shard in 0..2 {
        let mine: Vec<String> = all
            .iter()
            .filter(|conversation| shard_of(conversation) == shard)
            .cloned()
            .collect();
        let mut matches = fixture.index.matches(query.as_ref(), &mine, 10).unwrap();
        assert!(
            matches
                .hits
                .iter()
                .all(|scored| scored.hit.snippet.is_empty())
        );
        if shard == 1 {
            // this shard answers its long texts as snippets (bounding its answer)
            fixture.index.fill_long_snippets(&mut matches, 100);
            assert!(matches.hits.iter().any(|scored| scored.hit.seq == 1));
            for scored in &matches.hits {
                let long = scored.hit.seq == 1;
                assert_eq!(scored.text.is_empty(), long, "{scored:?}");
                assert_eq!(!scored.hit.snippet.is_empty(), long, "{scored:?}");
            }
        }
        let wire: Matches =
            serde_json::from_str(&serde_json::to_string(&matches).unwrap()).unwrap();
        gathered.extend(wire.hits);
        snippet_terms.extend(wire.snippet_terms);
    }
    let mut winners = merge_hits(gathered, 10);
    fixture.index.fill_snippets(&mut winners, &snippet_terms);
    assert!(winners.iter().all(|scored| scored.text.is_empty()));
    let merged: Vec<SearchHit> = winners.into_iter().map(|scored| scored.hit).collect();
    assert_eq!(
        merged, one_index,
        "the same hits, in the same order, with the same snippets"
    );
}

#[test]
fn replaying_batches_changes_nothing() {
    let mut fixture = Fixture::new(2);
    let batches = fixture.apply(vec![
        sent("g:p", 1, "alice", "alpha"),
        sent("g:p", 2, "alice", "beta"),
        edited("g:p", 3, "alice", 1, "alpha edited"),
    ]);
    let partition = fixture.partition_of("g:p");
    let (records, next_offset) = &batches[&partition];
    assert_eq!(fixture.index.position(partition).unwrap(), 3);
    assert_eq!(fixture.index.document_count(), 2);

    fixture
        .index
        .apply(partition, records, *next_offset)
        .unwrap();
    assert_eq!(fixture.index.document_count(), 2, "the same batch again");
    fixture.index.apply(partition, &records[..1], 1).unwrap();
    assert_eq!(fixture.index.document_count(), 2, "an older batch");
    assert_eq!(
        fixture.index.position(partition).unwrap(),
        3,
        "the position never goes back"
    );
    assert_eq!(
        fixture.found("edited", &["g:p"]),
        [hit("g:p", 1)],
        "the replayed send did not undo the edit"
    );

    let later = sent("g:p", 4, "alice", "gamma");
    let overlapping: Vec<(u64, TimelineEvent)> =
        records.iter().cloned().chain([(3, later)]).collect();
    fixture.index.apply(partition, &overlapping, 4).unwrap();
    assert_eq!(
        fixture.index.document_count(),
        3,
        "only the new record counts"
    );
    assert_eq!(fixture.index.position(partition).unwrap(), 4);

    fixture.index.apply(partition, &[], 9).unwrap();
    assert_eq!(
        fixture.index.position(partition).unwrap(),
        9,
        "an empty batch moves the position"
    );
    let mut positions = vec![0; 2];
    positions[partition as usize] = 9;
    assert_eq!(fixture.index.positions(), positions);
}

#[test]
fn positions_and_documents_survive_reopening() {
    let mut fixture = Fixture::new(3);
    fixture.apply(vec![
        sent("g:x", 1, "alice", "persistent note"),
        sent("g:y", 1, "bob", "another persistent note"),
        sent("g:x", 2, "alice", "third"),
    ]);
    let positions = fixture.index.positions();
    let Fixture {
        directory, index, ..
    } = fixture;
    drop(index);
    let reopened = reopen(directory.path(), 3);
    assert_eq!(reopened.positions(), positions);
    assert_eq!(reopened.document_count(), 3);
    let conversations = vec!["g:x".to_owned(), "g:y".to_owned()];
    assert_eq!(
        reopened
            .search("persistent", &conversations, 10)
            .unwrap()
            .len(),
        2
    );
}

/// Copies snapshot `snapshot` of `from` into `to`'s incoming directory, a chunk at a time, as a
/// peer fetches it.
fn copy_snapshot(from: &SearchIndex, to: &SearchIndex, snapshot: &PartitionSnapshot) -> PathBuf {
    let incoming = to.incoming_dir(snapshot.partition).unwrap();
    for file in &snapshot.files {
        let mut bytes = Vec::new();
        loop {
            let chunk = from
                .read_snapshot(&snapshot.id, &file.name, bytes.len() as u64, 7)
                .unwrap();
            if chunk.is_empty() {
                break;
            }
            bytes.extend(chunk);
        }
        assert_eq!(bytes.len() as u64, file.bytes, "{}", file.name);
        std::fs::write(incoming.join(&file.name), bytes).unwrap();
    }
    incoming
}

#[test]
fn a_partition_copied_from_a_peer_answers_the_same_and_continues_from_its_position() {
    let mut peer = Fixture::new(2);
    let conversation = "g:copied";
    let partition = peer.partition_of(conversation);
    for seq in 1..=30 {
        peer.apply(vec![sent(
            conversation,
            seq,
            "alice",
            &format!("copied note {seq}"),
        )]);
    }
    // an edit and a recall, so the copy carries deletes
    peer.apply(vec![
        edited(conversation, 31, "alice", 3, "rewritten words"),
        recalled(conversation, 32, "alice", 4),
    ]);
    let snapshot = peer.index.snapshot_partition(partition).unwrap();
    assert_eq!(snapshot.position, peer.index.position(partition).unwrap());
    // the peer goes on indexing meanwhile: the snapshot stays as of its commit
    peer.apply(vec![sent(conversation, 33, "alice", "copied note after")]);

    let mut replica = Fixture::new(2);
    let incoming = copy_snapshot(&peer.index, &replica.index, &snapshot);
    peer.index.drop_snapshot(&snapshot.id).unwrap();
    let position = replica
        .index
        .install_partition(partition, &incoming)
        .unwrap();
    assert_eq!(position, snapshot.position);
    assert_eq!(
        replica.index.position(partition).unwrap(),
        snapshot.position
    );
    let expected: Vec<(String, u64)> = (1..=30)
        .rev()
        .filter(|seq| *seq != 3 && *seq != 4)
        .map(|seq| hit(conversation, seq))
        .collect();
    let mut found = replica.found("copied", &[conversation]);
    found.sort_by_key(|hit| std::cmp::Reverse(hit.1));
    assert_eq!(found, expected);
    assert_eq!(
        replica.found("rewritten", &[conversation]),
        vec![hit(conversation, 3)]
    );

    // the replica continues from the copy's position: the record after it, and nothing twice
    replica.next_offsets[partition as usize] = snapshot.position;
    replica.apply(vec![sent(conversation, 33, "alice", "copied note after")]);
    assert_eq!(
        replica.found("after", &[conversation]),
        vec![hit(conversation, 33)]
    );
    assert_eq!(replica.index.document_count(), peer.index.document_count());

    // and it survives reopening, with nothing in transit left behind
    let Fixture {
        directory, index, ..
    } = replica;
    drop(index);
    let reopened = reopen(directory.path(), 2);
    assert_eq!(reopened.position(partition).unwrap(), snapshot.position + 1);
    assert!(!directory.path().join(".incoming").exists());
}

#[test]
fn a_copy_that_is_not_an_index_is_refused_and_the_partition_keeps_its_own() {
    let mut fixture = Fixture::new(1);
    fixture.apply(vec![sent("g:kept", 1, "alice", "kept words")]);
    let incoming = fixture.index.incoming_dir(0).unwrap();
    std::fs::write(incoming.join("meta.json"), b"{not json").unwrap();
    assert!(fixture.index.install_partition(0, &incoming).is_err());
    assert_eq!(fixture.found("kept", &["g:kept"]), vec![hit("g:kept", 1)]);
    fixture.apply(vec![sent("g:kept", 2, "alice", "kept again")]);
    assert_eq!(fixture.found("again", &["g:kept"]), vec![hit("g:kept", 2)]);
}

fn reopen(path: &Path, partitions: u32) -> Arc<SearchIndex> {
    SearchIndex::open(path, partitions).unwrap()
}

#[test]
fn empty_queries_are_rejected_and_odd_ones_are_tolerated() {
    let mut fixture = Fixture::new(2);
    fixture.apply(vec![sent(
        "g:q",
        1,
        "alice",
        "colon: \"quoted\" (parens) meeting",
    )]);
    let conversations = vec!["g:q".to_owned()];
    for empty in ["", "   ", "\t\n"] {
        let result = fixture.index.search(empty, &conversations, 10);
        assert!(
            matches!(result, Err(SearchError::BadQuery(_))),
            "{empty:?}: {result:?}"
        );
    }
    for odd in [
        "\"unterminated",
        "text:",
        "a:b:c",
        "(((",
        "-",
        "meeting AND",
        "sender:alice",
        "*",
        "!!!",
    ] {
        let result = fixture.index.search(odd, &conversations, 10);
        assert!(result.is_ok(), "{odd:?}: {result:?}");
    }
    assert_eq!(fixture.found("colon: meeting", &["g:q"]), [hit("g:q", 1)]);
    assert_eq!(
        fixture.found("text:meeting", &["g:q"]),
        [],
        "no field syntax: text:meeting is a phrase"
    );
    fixture.apply(vec![sent("g:q", 2, "bob", "standup at 10:30 sharp")]);
    assert_eq!(fixture.found("standup 10:30", &["g:q"]), [hit("g:q", 2)]);
    assert_eq!(
        fixture.found("standup 10:45", &["g:q"]),
        [],
        "the time is not dropped from the query"
    );
}

#[test]
fn snippets_escape_the_text_around_highlights() {
    let mut fixture = Fixture::new(2);
    fixture.apply(vec![sent(
        "g:s",
        1,
        "alice",
        "<script>x</script> & the meeting",
    )]);
    let hits = fixture.search("meeting", &["g:s"]);
    assert_eq!(
        hits[0].snippet,
        "&lt;script&gt;x&lt;/script&gt; &amp; the <b>meeting</b>"
    );
}

#[test]
fn the_index_is_shareable_across_threads() {
    fn assert_send_sync<T: Send + Sync + 'static>() {}
    assert_send_sync::<SearchIndex>();

    let mut fixture = Fixture::new(2);
    fixture.apply(vec![sent("g:t", 1, "alice", "threads")]);
    let index = Arc::clone(&fixture.index);
    let searcher = std::thread::spawn(move || {
        index
            .search("threads", &["g:t".to_owned()], 5)
            .unwrap()
            .len()
    });
    assert_eq!(searcher.join().unwrap(), 1);
}

#[test]
fn huge_limits_are_capped() {
    let mut fixture = Fixture::new(2);
    fixture.apply(vec![sent("g:l", 1, "alice", "limitless")]);
    let hits = fixture
        .index
        .search("limitless", &["g:l".to_owned()], usize::MAX)
        .unwrap();
    assert_eq!(hits.len(), 1);
}

#[test]
fn unknown_partitions_are_errors() {
    let fixture = Fixture::new(2);
    assert!(fixture.index.apply(2, &[], 1).is_err());
    assert!(fixture.index.position(7).is_err());
    assert!(SearchIndex::open(fixture.directory.path(), 0).is_err());
}

/// The query shapes that overflowed the stack of a node (issue 11, finding 1) and variants of
/// them: each answers an error or results, and the index keeps answering afterwards.
fn hostile_queries() -> Vec<(String, String)> {
    let mut shapes = vec![
        (
            "800 nested parentheses around a word".to_owned(),
            format!("{}meeting{}", "(".repeat(800), ")".repeat(800)),
        ),
        ("3,000 NOT".to_owned(), "NOT ".repeat(3_000) + "meeting"),
        ("5,000 unbalanced (".to_owned(), "(".repeat(5_000)),
        ("5,000 unbalanced )".to_owned(), ")".repeat(5_000)),
        (
            "deep +(".to_owned(),
            format!("{}meeting", "+(".repeat(2_000)),
        ),
        (
            "deep -(".to_owned(),
            format!("{}meeting", "-(".repeat(2_000)),
        ),
        (
            "deep quoted parentheses".to_owned(),
            format!("\"{}meeting{}\"", "(".repeat(3_000), ")".repeat(3_000)),
        ),
        (
            "deep quotes and parentheses".to_owned(),
            "(\"a\" ".repeat(2_000),
        ),
        (
            "deep field syntax".to_owned(),
            format!("{}meeting", "text:(".repeat(2_000)),
        ),
        (
            "many ORs".to_owned(),
            "meeting OR ".repeat(5_000) + "meeting",
        ),
        ("many ANDs".to_owned(), "a AND ".repeat(5_000) + "a"),
        ("many -".to_owned(), "-".repeat(10_000) + "meeting"),
        ("many NOT(".to_owned(), "NOT (".repeat(3_000) + "meeting"),
        (
            "deep ranges and sets".to_owned(),
            "[a TO {b IN [".repeat(1_000),
        ),
        ("many words".to_owned(), "meeting ".repeat(20_000)),
        ("long word".to_owned(), "m".repeat(100_000)),
        ("long CJK run".to_owned(), "北京大学".repeat(10_000)),
    ];
    let mut seed: u64 = 0x5eed;
    for length in [64, 512, 4_096] {
        let mut mixed = String::new();
        for _ in 0..length {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let pieces = [
                "(", ")", "\"", "-", "+", "NOT ", "AND ", "OR ", ":", "\\", " ", "a", "北", "*",
                "~2", "^3", "[", "]", "{", "}", "/",
            ];
            mixed.push_str(pieces[(seed >> 33) as usize % pieces.len()]);
        }
        shapes.push((format!("mixed operators ({length})"), mixed));
    }
    shapes
}

#[test]
fn hostile_queries_answer_an_error_or_results_and_never_crash() {
    let mut fixture = Fixture::new(2);
    fixture.apply(vec![sent("g:h", 1, "alice", "the meeting is at noon")]);
    let conversations = vec!["g:h".to_owned()];
    for (name, query) in hostile_queries() {
        let started = std::time::Instant::now();
        let result = fixture.index.search(&query, &conversations, 10);
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "{name}: took {:?}",
            started.elapsed()
        );
        match result {
            Ok(_) | Err(SearchError::BadQuery(_)) => {}
            Err(other) => panic!("{name}: {other}"),
        }
    }
    assert_eq!(
        fixture.found("meeting", &["g:h"]),
        [hit("g:h", 1)],
        "the index still answers"
    );
}

#[test]
fn hostile_queries_within_huge_bounds_still_never_crash() {
    let mut fixture = Fixture::new(2);
    fixture.apply(vec![sent("g:h", 1, "alice", "the meeting is at noon")]);
    let conversations = vec!["g:h".to_owned()];
    let huge_limits = SearchQueryLimits {
        max_bytes: 1 << 20,
        max_depth: 64,
        max_clauses: 1 << 20,
    };
    for (name, query) in hostile_queries() {
        let started = std::time::Instant::now();
        let result = fixture
            .index
            .search_with_limits(&query, &huge_limits, &conversations, 10);
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "{name}: took {:?}",
            started.elapsed()
        );
        match result {
            Ok(_) | Err(SearchError::BadQuery(_)) => {}
            Err(other) => panic!("{name}: {other}"),
        }
        let parsed = parse_user_query(&query, &huge_limits);
        assert!(
            matches!(parsed, Ok(_) | Err(SearchError::BadQuery(_))),
            "{name}"
        );
    }
    let nested_within_bound = format!("{}meeting{}", "(".repeat(64), ")".repeat(64));
    assert_eq!(
        fixture
            .index
            .search_with_limits(&nested_within_bound, &huge_limits, &conversations, 10)
            .unwrap()
            .len(),
        1,
        "64 levels are searched"
    );
}

/// The message of the refusal of `query` within `limits`.
fn refusal(fixture: &Fixture, query: &str, limits: &SearchQueryLimits) -> String {
    match fixture
        .index
        .search_with_limits(query, limits, &["g:h".to_owned()], 10)
    {
        Err(SearchError::BadQuery(message)) => message,
        other => panic!("{query:.40?} was not refused: {other:?}"),
    }
}

#[test]
fn the_crashing_shapes_are_refused_naming_their_bound() {
    let fixture = Fixture::new(2);
    let defaults = SearchQueryLimits::default();
    let nested = format!("{}meeting{}", "(".repeat(800), ")".repeat(800));
    let nots = "NOT ".repeat(3_000) + "meeting";
    let unbalanced = "(".repeat(5_000);
    for shape in [&nested, &nots, &unbalanced] {
        assert!(
            refusal(&fixture, shape, &defaults).contains("limits.max_search_query_bytes"),
            "{shape:.20}"
        );
    }
    let long_queries = SearchQueryLimits {
        max_bytes: 1 << 20,
        ..defaults
    };
    assert!(refusal(&fixture, &nested, &long_queries).contains("limits.max_search_query_depth"));
    assert!(
        refusal(&fixture, &unbalanced, &long_queries).contains("limits.max_search_query_depth")
    );
    assert!(refusal(&fixture, &nots, &long_queries).contains("limits.max_search_query_clauses"));
}

#[test]
fn the_query_grammar_keeps_its_operators() {
    let mut fixture = Fixture::new(2);
    fixture.apply(vec![
        sent("g:o", 1, "alice", "apple banana"),
        sent("g:o", 2, "alice", "apple cherry"),
        sent("g:o", 3, "alice", "date"),
    ]);
    let sorted = |query: &str| {
        let mut found = fixture.found(query, &["g:o"]);
        found.sort();
        found
    };
    assert_eq!(sorted("apple -banana"), [hit("g:o", 2)]);
    assert_eq!(sorted("apple NOT banana"), [hit("g:o", 2)]);
    assert_eq!(sorted("+apple +banana"), [hit("g:o", 1)]);
    assert_eq!(sorted("apple AND cherry"), [hit("g:o", 2)]);
    assert_eq!(sorted("banana OR date"), [hit("g:o", 1), hit("g:o", 3)]);
    assert_eq!(
        sorted("apple (banana OR cherry)"),
        [hit("g:o", 1), hit("g:o", 2)]
    );
    assert_eq!(sorted("apple -(banana OR cherry)"), []);
    assert_eq!(sorted("-apple"), [hit("g:o", 3)], "exclusions alone");
    assert_eq!(
        sorted("((apple banana"),
        [hit("g:o", 1)],
        "open groups close"
    );
    assert_eq!(
        sorted("apple) banana)"),
        [hit("g:o", 1)],
        "stray ) are ignored"
    );
    assert_eq!(sorted("\"banana apple\""), [], "phrases keep their order");
    assert_eq!(
        sorted("-\"apple banana\""),
        [hit("g:o", 2), hit("g:o", 3)],
        "an excluded phrase (a Tantivy assertion before ExcludedClause)"
    );
    assert_eq!(sorted("apple -\"apple cherry\""), [hit("g:o", 1)]);
}

#[test]
fn a_user_in_thousands_of_conversations_gets_a_bounded_search() {
    let mut fixture = Fixture::new(8);
    let member_of: Vec<String> = (0..5_000).map(|index| format!("g:many{index}")).collect();
    let mut events: Vec<TimelineEvent> = member_of
        .iter()
        .enumerate()
        .map(|(index, conversation)| {
            let text = if index % 1_000 == 7 {
                "the needle is here"
            } else {
                "ordinary hay"
            };
            sent(conversation, 1, "alice", text)
        })
        .collect();
    // conversations the user is not in, with the same words, must never answer
    events.extend((0..500).map(|index| sent(&format!("g:other{index}"), 1, "eve", "needle hay")));
    fixture.apply(events);

    let conversations: Vec<&str> = member_of.iter().map(String::as_str).collect();
    let started = std::time::Instant::now();
    let mut found = fixture.found("needle", &conversations);
    let needle_took = started.elapsed();
    found.sort();
    let mut expected: Vec<(String, u64)> = (0..5)
        .map(|thousand| hit(&format!("g:many{}", thousand * 1_000 + 7), 1))
        .collect();
    expected.sort();
    assert_eq!(found, expected, "exactly the user's matching conversations");

    let started = std::time::Instant::now();
    let hay = fixture
        .index
        .search("hay", &member_of, MAX_SEARCH_HITS)
        .unwrap();
    let hay_took = started.elapsed();
    assert_eq!(hay.len(), MAX_SEARCH_HITS, "the hit cap holds");
    assert!(
        hay.iter().all(|hit| hit.conversation.starts_with("g:many")),
        "never a conversation outside the scope"
    );
    assert!(
        needle_took < std::time::Duration::from_secs(2)
            && hay_took < std::time::Duration::from_secs(5),
        "searching 5,000 conversations took {needle_took:?} and {hay_took:?}"
    );
}
