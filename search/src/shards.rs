//! Sharded search: the search nodes of a replica set split `timeline`'s partitions (they share
//! one consumer group, see `chorus_projector::Projections::search_shard_of`), and a query goes
//! to one node holding each partition it needs (scatter-gather).
//!
//! - **Finding each other.** Every sharded node announces `{replica_set, node, url,
//!   partitions}` in a [`ShardRegistry`] (Redis in the distributed roles, an entry with a TTL
//!   renewed every third of it, whenever the partitions it holds change, and every second while
//!   their positions move), and withdraws it
//!   when it stops. The partitions are what its search projection holds now
//!   ([`ProjectionProgress::held`]), i.e. what the group assigned it.
//! - **Choosing a replica.** For each partition a query needs: this node if it holds it (no
//!   network), else a node of its own replica set, else one of another set; a node that failed
//!   or timed out in the last [`UNHEALTHY_FOR`] comes last. Partitions whose node refused or
//!   failed fast are asked of the next candidate while time remains.
//! - **Answering.** Each shard searches the partitions it holds, after its read barrier (at
//!   most half the shard timeout; a partition still behind it, e.g. just assigned and catching
//!   up, is not searched but named, and asked of the next candidate), and answers its best hits
//!   with their BM25 scores, which come
//!   from each partition's own statistics, so the asking node merges them
//!   ([`chorus_store::merge_hits`]: score, then newer, conversation, seq) exactly as one node
//!   holding every partition would. Shards answer texts, not snippets, with the snippet
//!   weights of their partitions: the asking node makes the snippets of the merged winners
//!   only, as that one node would. A partition no shard answered for in time is reported
//!   missing and the answer says `partial`: never silently short.
//!
//! Shards are called at `POST /v1/shards/search` with the business API key (a secret the nodes
//! of a cluster share); the request names the conversations of each partition, already scoped
//! to the caller by the asking node.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chorus_core::progress::ProjectionProgress;
use chorus_log::{Offset, PartitionId};
use chorus_store::search_index::PartitionSnapshot;
use chorus_store::{ScoredHit, SearchIndex, SnippetTerms};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

/// How long a shard that failed or timed out is asked only when no other holds its partitions.
pub const UNHEALTHY_FOR: Duration = Duration::from_secs(10);
/// How long a read of the registry serves queries.
const REGISTRY_CACHE: Duration = Duration::from_millis(500);
/// How often the announcer looks whether the held partitions changed.
const HELD_CHECK: Duration = Duration::from_millis(200);
/// How often at most positions alone are announced again.
const POSITIONS_EVERY: Duration = Duration::from_secs(1);

/// One search node as the registry knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardEntry {
    pub replica_set: String,
    pub node: String,
    /// Where it answers `POST /v1/shards/search`.
    pub url: String,
    /// The partitions it holds (indexes, and answers for).
    pub partitions: BTreeSet<PartitionId>,
    /// How far it had indexed each of them when it last announced (a node joining picks a
    /// peer well ahead to copy a partition from).
    #[serde(default)]
    pub positions: BTreeMap<PartitionId, Offset>,
}

#[derive(Debug, thiserror::Error)]
#[error("shard registry: {0}")]
pub struct RegistryError(pub String);

/// Where search shards announce themselves and find each other (the port; Redis adapts it in
/// the distributed roles).
#[async_trait]
pub trait ShardRegistry: Send + Sync + 'static {
    /// Announces `entry` for `ttl`.
    async fn announce(&self, entry: &ShardEntry, ttl: Duration) -> Result<(), RegistryError>;
    /// Removes `entry` at once.
    async fn withdraw(&self, entry: &ShardEntry) -> Result<(), RegistryError>;
    /// Every live entry.
    async fn entries(&self) -> Result<Vec<ShardEntry>, RegistryError>;
}

/// This node as a shard: its identity and bounds (from `[search]`).
#[derive(Debug, Clone)]
pub struct ShardSettings {
    pub replica_set: String,
    pub node: String,
    /// Where the other nodes reach this one.
    pub url: String,
    /// Longest wait for one shard's answer (`search.shard_timeout_ms`).
    pub timeout: Duration,
    /// Lifetime of this node's registry entry (`search.registry_ttl_ms`).
    pub ttl: Duration,
    /// The key shards are called with (`auth.api_key`).
    pub api_key: String,
    /// A partition assigned to this node is copied from a peer holding it at least this many
    /// records ahead of the local index (`search.copy_min_records`).
    pub copy_min_records: u64,
    /// Longest a copy may take (`search.copy_timeout_ms`); past it the partition is indexed
    /// from the log.
    pub copy_timeout: Duration,
    /// The roots trusted, alone, for peers' `https://` (`search.peer_ca_file`); empty: the
    /// system's roots.
    pub peer_roots: Vec<reqwest::Certificate>,
}

/// What the asking node sends a shard.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShardRequest {
    /// The user's query, parsed again (within the same bounds) by the shard.
    pub q: String,
    /// The conversations to search, by partition (already scoped to the caller).
    pub partitions: BTreeMap<PartitionId, Vec<String>>,
    pub limit: usize,
    /// Longest the shard waits for its read barrier.
    pub barrier_ms: u64,
    /// The log's end offsets the asking node read for this request (its history's barrier):
    /// the shard's barrier waits for them instead of asking the log again. A partition missing
    /// here is asked of the log.
    #[serde(default)]
    pub ends: BTreeMap<PartitionId, Offset>,
    /// The asking node makes the snippets of the hits that win the merge: answer each hit's
    /// text and the snippet weights of its partition instead of a snippet. Unset (a node of an
    /// earlier version asking): answer snippets.
    #[serde(default)]
    pub texts: bool,
}

/// What a shard answers.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct ShardAnswer {
    /// Its best hits over the partitions it holds, with their scores, and their texts when
    /// asked for ([`ShardRequest::texts`]), else their snippets.
    pub hits: Vec<ScoredHit>,
    /// The snippet weights of the partitions of `hits` (with texts).
    #[serde(default)]
    pub snippet_terms: BTreeMap<PartitionId, SnippetTerms>,
    /// Partitions asked of it that it does not hold (any more): ask another node.
    pub not_held: BTreeSet<PartitionId>,
    /// Partitions it holds but whose index did not reach the log's end within the barrier (just
    /// assigned, catching up): not searched; ask another node.
    #[serde(default)]
    pub behind: BTreeSet<PartitionId>,
}

/// What the shards answered for one query.
#[derive(Debug, Default)]
pub struct Gathered {
    pub hits: Vec<ScoredHit>,
    /// The snippet weights of the partitions of `hits`.
    pub snippet_terms: BTreeMap<PartitionId, SnippetTerms>,
    /// Partitions no shard answered for in time.
    pub missing: BTreeSet<PartitionId>,
}

/// Searches the partitions this node holds (the caller's local answer, no network).
#[async_trait]
pub trait LocalShard: Send + Sync {
    async fn search(&self, request: ShardRequest) -> Result<ShardAnswer, String>;
}

/// This node's part in sharded search: announcing what it holds, and asking the others.
pub struct Shards {
    settings: ShardSettings,
    registry: Arc<dyn ShardRegistry>,
    /// The search projection's progress: which partitions this node holds.
    held: Arc<ProjectionProgress>,
    client: reqwest::Client,
    /// The registry as last read, and when.
    cache: tokio::sync::Mutex<Option<(Instant, Arc<Vec<ShardEntry>>)>>,
    /// Nodes (by url) that failed or timed out, until when they come last.
    unhealthy: Mutex<HashMap<String, Instant>>,
    /// The last [`KEPT_COPIES`] partitions copied from peers, oldest first.
    copies: Mutex<std::collections::VecDeque<CopiedPartition>>,
}

/// How many copies [`Shards::copies`] remembers.
const KEPT_COPIES: usize = 64;

/// A partition this node copied from a peer (`GET /v1/admin/search/shards` lists them).
#[derive(Debug, Clone, Serialize)]
pub struct CopiedPartition {
    pub partition: PartitionId,
    /// The peer's node id.
    pub from: String,
    /// This node's position before, and the copy's.
    pub position_before: Offset,
    pub position: Offset,
    pub files: usize,
    pub bytes: u64,
    pub millis: u64,
}

impl Shards {
    pub fn new(
        settings: ShardSettings,
        registry: Arc<dyn ShardRegistry>,
        held: Arc<ProjectionProgress>,
    ) -> Result<Arc<Self>, reqwest::Error> {
        let mut client = reqwest::Client::builder()
            .connect_timeout(settings.timeout)
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(32);
        if !settings.peer_roots.is_empty() {
            client = client.tls_certs_only(settings.peer_roots.clone());
        }
        let client = client.build()?;
        Ok(Arc::new(Shards {
            settings,
            registry,
            held,
            client,
            cache: tokio::sync::Mutex::new(None),
            unhealthy: Mutex::new(HashMap::new()),
            copies: Mutex::new(std::collections::VecDeque::new()),
        }))
    }

    pub fn settings(&self) -> &ShardSettings {
        &self.settings
    }

    /// This node's entry as it stands.
    pub fn own_entry(&self) -> ShardEntry {
        let partitions = self.held.held();
        let positions = partitions
            .iter()
            .map(|partition| (*partition, self.held.position(*partition)))
            .collect();
        ShardEntry {
            replica_set: self.settings.replica_set.clone(),
            node: self.settings.node.clone(),
            url: self.settings.url.clone(),
            partitions,
            positions,
        }
    }

    /// The partitions this node holds now.
    pub fn held(&self) -> BTreeSet<PartitionId> {
        self.held.held()
    }

    /// Announces this node until `stop` resolves, then withdraws it: every third of the TTL,
    /// at once when its partitions change, and at most every [`POSITIONS_EVERY`] when only
    /// their positions moved. A registry that fails is tried again at the next turn (the entry
    /// lives a whole TTL).
    pub async fn announce(self: Arc<Self>, stop: impl Future<Output = ()>) {
        let mut stop = std::pin::pin!(stop);
        let renew = self.settings.ttl / 3;
        let mut announced: Option<(Instant, ShardEntry)> = None;
        loop {
            let entry = self.own_entry();
            let due = announced.as_ref().is_none_or(|(at, last)| {
                at.elapsed() >= renew
                    || last.partitions != entry.partitions
                    || (last.positions != entry.positions && at.elapsed() >= POSITIONS_EVERY)
            });
            if due {
                match self.registry.announce(&entry, self.settings.ttl).await {
                    Ok(()) => announced = Some((Instant::now(), entry)),
                    Err(error) => tracing::warn!(%error, "announcing this search shard failed"),
                }
            }
            tokio::select! {
                _ = &mut stop => break,
                _ = tokio::time::sleep(HELD_CHECK) => {}
            }
        }
        if let Err(error) = self.registry.withdraw(&self.own_entry()).await {
            tracing::warn!(%error, "withdrawing this search shard failed; it expires");
        }
    }

    /// The registry, read at most every [`REGISTRY_CACHE`].
    pub async fn entries(&self) -> Result<Arc<Vec<ShardEntry>>, RegistryError> {
        let mut cache = self.cache.lock().await;
        if let Some((at, entries)) = cache.as_ref()
            && at.elapsed() < REGISTRY_CACHE
        {
            return Ok(entries.clone());
        }
        let entries = Arc::new(self.registry.entries().await?);
        *cache = Some((Instant::now(), entries.clone()));
        Ok(entries)
    }

    fn is_unhealthy(&self, url: &str) -> bool {
        let mut unhealthy = self.unhealthy.lock();
        match unhealthy.get(url) {
            Some(until) if *until > Instant::now() => true,
            Some(_) => {
                unhealthy.remove(url);
                false
            }
            None => false,
        }
    }

    fn mark_unhealthy(&self, url: &str) {
        self.unhealthy
            .lock()
            .insert(url.to_owned(), Instant::now() + UNHEALTHY_FOR);
    }

    /// The nodes to ask for `partition`, best first (see the module docs); this node is named
    /// by its own url.
    fn candidates(&self, entries: &[ShardEntry], partition: PartitionId) -> Vec<String> {
        let mut holders: Vec<&ShardEntry> = entries
            .iter()
            .filter(|entry| entry.url != self.settings.url && entry.partitions.contains(&partition))
            .collect();
        holders.sort_by_key(|entry| {
            (
                self.is_unhealthy(&entry.url),
                entry.replica_set != self.settings.replica_set,
                entry.node.clone(),
            )
        });
        let mut urls = Vec::with_capacity(holders.len() + 1);
        if self.held.held().contains(&partition) {
            urls.push(self.settings.url.clone());
        }
        urls.extend(holders.into_iter().map(|entry| entry.url.clone()));
        urls
    }

    /// Asks the shards holding `partitions` (conversations by partition) for their best `limit`
    /// hits of `q`; this node's own partitions through `local`.
    pub async fn gather(
        &self,
        q: &str,
        mut partitions: BTreeMap<PartitionId, Vec<String>>,
        ends: &BTreeMap<PartitionId, Offset>,
        limit: usize,
        local: &dyn LocalShard,
    ) -> Gathered {
        let deadline = Instant::now() + self.settings.timeout;
        let entries = match self.entries().await {
            Ok(entries) => entries,
            Err(error) => {
                tracing::warn!(%error, "search shard registry unavailable; asking only this node");
                Arc::new(Vec::new())
            }
        };
        let mut gathered = Gathered::default();
        // the nodes already asked for each partition
        let mut asked: BTreeMap<PartitionId, BTreeSet<String>> = BTreeMap::new();
        while !partitions.is_empty() {
            let mut by_node: BTreeMap<String, BTreeMap<PartitionId, Vec<String>>> = BTreeMap::new();
            for (partition, conversations) in std::mem::take(&mut partitions) {
                let tried = asked.entry(partition).or_default();
                let next = self
                    .candidates(&entries, partition)
                    .into_iter()
                    .find(|url| !tried.contains(url));
                match next {
                    Some(url) if Instant::now() < deadline => {
                        tried.insert(url.clone());
                        by_node
                            .entry(url)
                            .or_default()
                            .insert(partition, conversations);
                    }
                    _ => {
                        gathered.missing.insert(partition);
                    }
                }
            }
            let calls = by_node.into_iter().map(|(url, asked_partitions)| {
                let ends = asked_partitions
                    .keys()
                    .filter_map(|partition| Some((*partition, *ends.get(partition)?)))
                    .collect();
                let request = ShardRequest {
                    q: q.to_owned(),
                    partitions: asked_partitions,
                    limit,
                    barrier_ms: (self.settings.timeout / 2).as_millis() as u64,
                    ends,
                    texts: true,
                };
                async move {
                    let remaining = deadline.saturating_duration_since(Instant::now());
                    let answer = if url == self.settings.url {
                        let asked: Vec<PartitionId> = request.partitions.keys().copied().collect();
                        let answer = tokio::time::timeout(remaining, local.search(request.clone()));
                        match answer.await {
                            Ok(Ok(answer)) => Ok(answer),
                            Ok(Err(error)) => Err((error, false)),
                            Err(_) => Err((
                                format!("no answer within the shard timeout for {asked:?}"),
                                true,
                            )),
                        }
                    } else {
                        self.ask(&url, &request, remaining).await
                    };
                    (url, request, answer)
                }
            });
            for (url, request, answer) in futures_util::future::join_all(calls).await {
                match answer {
                    Ok(answer) => {
                        gathered.hits.extend(answer.hits);
                        gathered.snippet_terms.extend(answer.snippet_terms);
                        for partition in answer.not_held.into_iter().chain(answer.behind) {
                            if let Some(conversations) = request.partitions.get(&partition) {
                                partitions.insert(partition, conversations.clone());
                            }
                        }
                    }
                    Err((error, timed_out)) => {
                        tracing::warn!(%url, %error, timed_out, "search shard did not answer");
                        self.mark_unhealthy(&url);
                        // a timeout used the whole budget: nothing is asked again
                        for (partition, conversations) in request.partitions {
                            if timed_out {
                                gathered.missing.insert(partition);
                            } else {
                                partitions.insert(partition, conversations);
                            }
                        }
                    }
                }
            }
        }
        gathered
    }

    /// One call to a shard; `Err((why, timed_out))`.
    async fn ask(
        &self,
        url: &str,
        request: &ShardRequest,
        remaining: Duration,
    ) -> Result<ShardAnswer, (String, bool)> {
        let call = self
            .client
            .post(format!("{url}/v1/shards/search"))
            .bearer_auth(&self.settings.api_key)
            .json(request)
            .timeout(remaining)
            .send();
        let response = call.await.map_err(|error| {
            let timed_out = error.is_timeout();
            (error.to_string(), timed_out)
        })?;
        if !response.status().is_success() {
            return Err((format!("answered {}", response.status()), false));
        }
        response.json::<ShardAnswer>().await.map_err(|error| {
            let timed_out = error.is_timeout();
            (error.to_string(), timed_out)
        })
    }
}

impl Shards {
    /// When a peer holds `partition` at least `copy_min_records` ahead of `position` (this
    /// node's index of it), copies the peer's index of it into `index` (replacing the local
    /// one) and returns the copy's position, from which the projection continues; `None` when
    /// no peer is far enough ahead. Bounded by `copy_timeout`; a failed copy leaves the local
    /// index as it was (the partition is then indexed from the log).
    pub async fn copy_if_ahead(
        &self,
        index: Arc<SearchIndex>,
        partition: PartitionId,
        position: Offset,
    ) -> Result<Option<Offset>, String> {
        let entries = self.entries().await.map_err(|error| error.to_string())?;
        // the peers far enough ahead, furthest first (healthy ones before the others)
        let mut peers: Vec<(Offset, &ShardEntry)> = entries
            .iter()
            .filter(|entry| entry.url != self.settings.url)
            .filter_map(|entry| {
                let ahead = *entry.positions.get(&partition)?;
                (entry.partitions.contains(&partition)
                    && ahead >= position.saturating_add(self.settings.copy_min_records))
                .then_some((ahead, entry))
            })
            .collect();
        peers.sort_by_key(|(ahead, entry)| {
            (self.is_unhealthy(&entry.url), std::cmp::Reverse(*ahead))
        });
        if peers.is_empty() {
            tracing::debug!(partition, position, "no peer far enough ahead to copy from");
            return Ok(None);
        }
        let deadline = Instant::now() + self.settings.copy_timeout;
        let mut failures = Vec::new();
        for (_, peer) in peers {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                failures.push(format!(
                    "not copied within {:?}",
                    self.settings.copy_timeout
                ));
                break;
            }
            match tokio::time::timeout(remaining, self.copy_from(&index, peer, partition, position))
                .await
            {
                Ok(Ok(installed)) => return Ok(Some(installed)),
                Ok(Err(error)) => {
                    self.mark_unhealthy(&peer.url);
                    failures.push(format!("{}: {error}", peer.node));
                }
                Err(_) => {
                    self.mark_unhealthy(&peer.url);
                    failures.push(format!("{}: not copied in time", peer.node));
                }
            }
        }
        Err(failures.join("; "))
    }

    /// Copies `partition` from `peer` into `index`; a copy that fails leaves nothing behind.
    async fn copy_from(
        &self,
        index: &Arc<SearchIndex>,
        peer: &ShardEntry,
        partition: PartitionId,
        position: Offset,
    ) -> Result<Offset, String> {
        let started = Instant::now();
        let incoming = index.incoming_dir(partition).map_err(|e| e.to_string())?;
        let installed = async {
            let snapshot = self.fetch_copy(&peer.url, partition, &incoming).await?;
            let (index, from) = (index.clone(), incoming.clone());
            let installed =
                tokio::task::spawn_blocking(move || index.install_partition(partition, &from))
                    .await
                    .map_err(|error| error.to_string())?
                    .map_err(|error| error.to_string())?;
            Ok::<_, String>((snapshot, installed))
        }
        .await;
        let (snapshot, installed) = match installed {
            Ok(done) => done,
            Err(error) => {
                let _ = tokio::fs::remove_dir_all(&incoming).await;
                return Err(error);
            }
        };
        let copied = CopiedPartition {
            partition,
            from: peer.node.clone(),
            position_before: position,
            position: installed,
            files: snapshot.files.len(),
            bytes: snapshot.files.iter().map(|file| file.bytes).sum(),
            millis: started.elapsed().as_millis() as u64,
        };
        tracing::info!(?copied, "search partition copied from a peer");
        let mut copies = self.copies.lock();
        if copies.len() == KEPT_COPIES {
            copies.pop_front();
        }
        copies.push_back(copied);
        Ok(installed)
    }

    /// The partitions this node copied from peers lately, oldest first.
    pub fn copies(&self) -> Vec<CopiedPartition> {
        self.copies.lock().iter().cloned().collect()
    }

    /// Asks `url` for a snapshot of `partition` and downloads its files into `into`, a chunk at
    /// a time; the peer's snapshot is dropped whatever happens.
    async fn fetch_copy(
        &self,
        url: &str,
        partition: PartitionId,
        into: &std::path::Path,
    ) -> Result<PartitionSnapshot, String> {
        let response = self
            .client
            .post(format!("{url}/v1/shards/partitions/{partition}/snapshot"))
            .bearer_auth(&self.settings.api_key)
            .timeout(self.settings.timeout)
            .send()
            .await
            .map_err(|error| error.to_string())?;
        if !response.status().is_success() {
            return Err(format!("snapshot refused: {}", response.status()));
        }
        let snapshot: PartitionSnapshot = response.json().await.map_err(|e| e.to_string())?;
        let downloaded = self.download(url, &snapshot, into).await;
        let _ = self
            .client
            .delete(format!("{url}/v1/shards/snapshots/{}", snapshot.id))
            .bearer_auth(&self.settings.api_key)
            .timeout(self.settings.timeout)
            .send()
            .await;
        downloaded.map(|()| snapshot)
    }

    async fn download(
        &self,
        url: &str,
        snapshot: &PartitionSnapshot,
        into: &std::path::Path,
    ) -> Result<(), String> {
        use tokio::io::AsyncWriteExt;
        for file in &snapshot.files {
            let mut written = tokio::fs::File::create(into.join(&file.name))
                .await
                .map_err(|error| error.to_string())?;
            let mut offset = 0;
            while offset < file.bytes {
                let chunk = self
                    .client
                    .get(format!(
                        "{url}/v1/shards/snapshots/{}/{}?offset={offset}",
                        snapshot.id, file.name
                    ))
                    .bearer_auth(&self.settings.api_key)
                    .timeout(self.settings.timeout)
                    .send()
                    .await
                    .map_err(|error| error.to_string())?;
                if !chunk.status().is_success() {
                    return Err(format!("{} answered {}", file.name, chunk.status()));
                }
                let bytes = chunk.bytes().await.map_err(|error| error.to_string())?;
                if bytes.is_empty() {
                    return Err(format!("{} ended at {offset} of {}", file.name, file.bytes));
                }
                written
                    .write_all(&bytes)
                    .await
                    .map_err(|error| error.to_string())?;
                offset += bytes.len() as u64;
            }
            written
                .sync_all()
                .await
                .map_err(|error| error.to_string())?;
            if offset != file.bytes {
                return Err(format!(
                    "{}: {offset} bytes, expected {}",
                    file.name, file.bytes
                ));
            }
        }
        Ok(())
    }
}
