//! The search/history API: what clients read.
//!
//! - `GET /v1/conversations?after&limit`: the caller's conversations with last seq and read
//!   cursor, sorted by id, in pages of at most `limits.max_conversations_page` (the default
//!   `limit`); `next` names the cursor of the next page when there is one;
//! - `GET /v1/conversations/{id}/events?after_seq&limit`: the timeline, for gap filling;
//! - `GET /v1/conversations/{id}/messages?after_seq|before_seq&limit`: messages as they stand;
//! - `GET /v1/conversations/{id}/pins`: the pinned messages, most recently pinned first;
//! - `GET /v1/conversations/{id}/members`: a group's members and their roles (members only);
//! - `GET /v1/search?q&conversation&limit`: full-text search with snippets; `q` is parsed by the
//!   bounded grammar of `chorus_store::search_query` before anything is read, and one over
//!   `limits.max_search_query_bytes`, `_depth` or `_clauses` answers `400 bad_request` naming
//!   the bound; the scope (the caller's conversations, thousands of them or one) is a single
//!   filter per partition. Where search nodes are shards ([`shards`]), the partitions
//!   are searched on the nodes holding them and the answer says `partial` when one did not
//!   answer in time.
//!
//! Every read is scoped to the caller: a conversation the caller is not a member of answers 403,
//! whether or not it exists (so non-members learn nothing about it), and search only ever looks
//! in the caller's conversations. A former member of a group (removed, left, or the group
//! disbanded) reads it up to the event that removed them: events, messages, pins and a search
//! scoped to it stop there ([`Scope`]); it is no longer in their list.
//!
//! Reads are consistent with the log (read-your-writes): before answering, a read takes the end
//! offset of the relevant `timeline` partitions and waits, at most `projector.read_barrier_ms`,
//! until the projection has applied them. So a client that got an ack or an event finds it in
//! history. If a projection lags beyond the barrier, the read answers with what it has.
//!
//! The API reads only its slice of the configuration, [`SearchApiConfig`] (built by the
//! composition with [`SearchApiConfig::from_config`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use chorus_core::auth::{Claims, TokenAuthority};
use chorus_core::config::ChorusConfig;
use chorus_core::error::{ApiError, ErrorCode};
use chorus_core::http::{json_response, respond, user_claims};
use chorus_core::ids::Conversation;
use chorus_core::progress::ProjectionProgress;
use chorus_core::swap::Swap;
use chorus_log::{EventLog, Offset, PartitionId, partition_for_key};
use chorus_store::history::{MessagePage, MessageView};
use chorus_store::search_index::parse_user_query;
use chorus_store::{
    HistoryError, HistoryStore, SearchError, SearchIndex, SearchQueryLimits, merge_hits,
};
use serde::Deserialize;

pub mod api_doc;
mod scope;
mod shard_routes;
pub mod shards;
use scope::Scope;
use serde_json::json;
use shards::{LocalShard, ShardAnswer, ShardRequest, Shards};
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::reply::Response;

/// Largest page of events or messages.
const MAX_PAGE: usize = 1000;
/// Largest number of search hits.
const MAX_HITS: usize = 100;
/// The longest text a shard answers with a hit for the asking node to make its snippet from;
/// a longer one (up to `limits.max_text_bytes`) is answered as its snippet, made by the shard.
const SHIPPED_TEXT_BYTES: usize = 1024;

/// The configuration the search/history API reads: its slice of [`ChorusConfig`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchApiConfig {
    /// Partitions of the `timeline` topic (`log.partitions`).
    pub partitions: PartitionId,
    /// The `timeline` topic, whose end offsets the read barrier waits for.
    pub timeline_topic: String,
    /// Longest a read waits for the projections (`projector.read_barrier_ms`).
    pub read_barrier: Duration,
    /// Largest page of `GET /v1/conversations`, also its default (`limits.max_conversations_page`).
    pub max_conversations_page: usize,
    /// Bounds of a search query (`limits.max_search_query_*`).
    pub query_limits: SearchQueryLimits,
    /// How long messages live where a conversation set no time-to-live, in seconds
    /// (`projector.message_ttl_s`; `None`: forever).
    pub message_ttl_s: Option<u64>,
}

impl SearchApiConfig {
    /// The slice of `config` the API reads.
    pub fn from_config(config: &ChorusConfig) -> SearchApiConfig {
        SearchApiConfig {
            partitions: config.partitions(),
            timeline_topic: config.topics().timeline,
            read_barrier: Duration::from_millis(config.projector.read_barrier_ms),
            max_conversations_page: config.limits.max_conversations_page,
            query_limits: SearchQueryLimits {
                max_bytes: config.limits.max_search_query_bytes,
                max_depth: config.limits.max_search_query_depth,
                max_clauses: config.limits.max_search_query_clauses,
            },
            message_ttl_s: (config.projector.message_ttl_s > 0)
                .then_some(config.projector.message_ttl_s),
        }
    }
}

/// What the search/history API reads from.
pub struct SearchApi {
    pub config: SearchApiConfig,
    pub log: Arc<dyn EventLog>,
    /// The history store; replaced when a live replay switches in a rebuilt one.
    pub history: Arc<Swap<dyn HistoryStore>>,
    /// The search index; replaced likewise.
    pub index: Arc<Swap<SearchIndex>>,
    pub history_progress: Arc<ProjectionProgress>,
    pub search_progress: Arc<ProjectionProgress>,
    pub tokens: Arc<TokenAuthority>,
    /// This node is one search shard of a replica set ([`shards`]): searches are gathered from
    /// the nodes holding the partitions. `None`: it holds every partition.
    pub shards: Option<Arc<Shards>>,
}

#[derive(Debug, Deserialize)]
struct PageQuery {
    after_seq: Option<u64>,
    before_seq: Option<u64>,
    limit: Option<usize>,
}

#[derive(Debug, Deserialize)]
struct ConversationsQuery {
    /// Only conversations with an id greater than this (the previous page's `next`).
    after: Option<String>,
    limit: Option<usize>,
}

#[derive(Debug, Deserialize)]
struct SearchQuery {
    q: String,
    conversation: Option<String>,
    limit: Option<usize>,
}

fn unavailable(error: HistoryError) -> ApiError {
    tracing::warn!(%error, "history store read failed");
    ApiError::new(
        ErrorCode::Unavailable,
        format!("history is unavailable: {error}"),
    )
}

impl SearchApi {
    fn partitions(&self) -> u32 {
        self.config.partitions
    }

    /// Waits until `progress` has applied everything the log had in `partitions` when called,
    /// at most `projector.read_barrier_ms` in all; past it, the read answers with what the
    /// projection has.
    /// Returns the end offsets it waited for: a second projection read in the same request
    /// may wait for the same ones ([`SearchApi::wait_for_ends`]), since whatever was
    /// acknowledged before the request lies below them.
    async fn barrier(
        &self,
        progress: &ProjectionProgress,
        partitions: &BTreeSet<PartitionId>,
    ) -> BTreeMap<PartitionId, Offset> {
        let ends = self.end_offsets(partitions).await;
        self.wait_for_ends(progress, &ends, self.config.read_barrier)
            .await;
        ends
    }

    /// The log's end offset of each of `partitions` (those the log answered for), all asked at
    /// once: one broker round trip, not one per partition.
    async fn end_offsets(
        &self,
        partitions: &BTreeSet<PartitionId>,
    ) -> BTreeMap<PartitionId, Offset> {
        if partitions.is_empty() {
            return BTreeMap::new();
        }
        let partitions: Vec<PartitionId> = partitions.iter().copied().collect();
        self.log
            .end_offsets(&self.config.timeline_topic, &partitions)
            .await
    }

    /// Waits, at most `limit` in all, until `progress` has applied each partition up to its
    /// offset in `ends`; returns the partitions still behind.
    async fn wait_for_ends(
        &self,
        progress: &ProjectionProgress,
        ends: &BTreeMap<PartitionId, Offset>,
        limit: Duration,
    ) -> BTreeSet<PartitionId> {
        let deadline = tokio::time::Instant::now() + limit;
        let waits = ends.iter().map(|(partition, end)| async move {
            let limit = deadline.saturating_duration_since(tokio::time::Instant::now());
            if progress.wait_for(*partition, *end, limit).await {
                return None;
            }
            tracing::debug!(partition, end, "projection behind the read barrier");
            Some(*partition)
        });
        futures_util::future::join_all(waits)
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    fn partition_of(&self, conversation: &str) -> PartitionId {
        partition_for_key(conversation.as_bytes(), self.partitions())
    }

    /// What `user` may read of `conversation_id` ([`Scope`]): all of it as a member, up to
    /// their removal as a former member of a group, nothing otherwise; its expired messages
    /// never.
    async fn authorize(&self, user: &str, conversation_id: &str) -> Result<Scope, ApiError> {
        let scope = self.membership_scope(user, conversation_id).await?;
        let ttl = self
            .history
            .get()
            .retention(conversation_id)
            .await
            .map_err(unavailable)?
            .or(self.config.message_ttl_s);
        Ok(scope.with_retention(ttl))
    }

    async fn membership_scope(&self, user: &str, conversation_id: &str) -> Result<Scope, ApiError> {
        let conversation = Conversation::parse(conversation_id)
            .map_err(|error| ApiError::new(ErrorCode::BadRequest, error.to_string()))?;
        let not_a_member =
            || ApiError::new(ErrorCode::Forbidden, "not a member of this conversation");
        if let Conversation::Direct { .. } = conversation {
            if conversation.is_direct_member(user) {
                return Ok(Scope::ALL);
            }
            return Err(not_a_member());
        }
        let history = self.history.get();
        if history
            .is_member(conversation_id, user)
            .await
            .map_err(unavailable)?
        {
            return Ok(Scope::ALL);
        }
        match history
            .removed_at(conversation_id, user)
            .await
            .map_err(unavailable)?
        {
            Some(removal) => Ok(Scope {
                up_to: Some(removal),
                sent_since: None,
            }),
            None => Err(not_a_member()),
        }
    }

    /// Waits for the history projection of the conversation's partition, then authorizes: a
    /// member just added may read at once, a member just removed only up to their removal.
    async fn consistent_authorize(
        &self,
        user: &str,
        conversation: &str,
    ) -> Result<Scope, ApiError> {
        let partition = self.partition_of(conversation);
        self.barrier(&self.history_progress, &BTreeSet::from([partition]))
            .await;
        self.authorize(user, conversation).await
    }

    async fn conversations(
        &self,
        claims: Claims,
        page: ConversationsQuery,
    ) -> Result<Response, ApiError> {
        let max_page = self.config.max_conversations_page;
        let limit = page.limit.unwrap_or(max_page).clamp(1, max_page);
        let all: BTreeSet<PartitionId> = (0..self.partitions()).collect();
        self.barrier(&self.history_progress, &all).await;
        // one more than the page tells whether a next page exists
        let mut conversations = self
            .history
            .get()
            .conversations_page(&claims.sub, page.after.as_deref(), limit + 1)
            .await
            .map_err(unavailable)?;
        for summary in &mut conversations {
            // how long its messages live, the node's default where it set none
            summary.message_ttl_s = summary.message_ttl_s.or(self.config.message_ttl_s);
        }
        if conversations.len() <= limit {
            return Ok(json_response(200, &json!({"conversations": conversations})));
        }
        conversations.truncate(limit);
        let next = conversations.last().map(|summary| summary.id.clone());
        Ok(json_response(
            200,
            &json!({"conversations": conversations, "next": next}),
        ))
    }

    async fn events(
        &self,
        claims: Claims,
        conversation: String,
        page: PageQuery,
    ) -> Result<Response, ApiError> {
        let scope = self
            .consistent_authorize(&claims.sub, &conversation)
            .await?;
        let limit = page.limit.unwrap_or(100).clamp(1, MAX_PAGE);
        let events = self
            .history
            .get()
            .events(&conversation, page.after_seq.unwrap_or(0), limit)
            .await
            .map_err(unavailable)?;
        let events: Vec<_> = events
            .iter()
            .take_while(|event| event.seq.is_some_and(|seq| scope.admits(seq)))
            .map(|event| scope.event_item(event))
            .collect();
        Ok(json_response(200, &json!({"events": events})))
    }

    async fn messages(
        &self,
        claims: Claims,
        conversation: String,
        page: PageQuery,
    ) -> Result<Response, ApiError> {
        let scope = self
            .consistent_authorize(&claims.sub, &conversation)
            .await?;
        let limit = page.limit.unwrap_or(50).clamp(1, MAX_PAGE);
        let which = match (page.after_seq, page.before_seq) {
            (Some(_), Some(_)) => {
                return Err(ApiError::new(
                    ErrorCode::BadRequest,
                    "give after_seq or before_seq, not both",
                ));
            }
            (_, Some(before)) => MessagePage::Before(scope.bound_before(before)),
            (after, None) => MessagePage::After(after.unwrap_or(0)),
        };
        let history = self.history.get();
        let mut messages = history
            .messages(&conversation, which, limit)
            .await
            .map_err(unavailable)?;
        messages.retain(|message| scope.shows(message));
        messages.iter_mut().for_each(|message| scope.trim(message));
        with_reactions(
            history.as_ref(),
            &conversation,
            &claims.sub,
            messages.iter_mut(),
        )
        .await?;
        Ok(json_response(200, &json!({"messages": messages})))
    }

    /// A group's members and their roles: for its members only.
    async fn members(&self, claims: Claims, conversation: String) -> Result<Response, ApiError> {
        if !self
            .consistent_authorize(&claims.sub, &conversation)
            .await?
            .is_member()
        {
            return Err(ApiError::new(
                ErrorCode::Forbidden,
                "not a member of this conversation",
            ));
        }
        let members = match Conversation::parse(&conversation) {
            Ok(Conversation::Direct { first, second }) => [first, second]
                .into_iter()
                .map(|user| json!({"user": user, "role": "member"}))
                .collect(),
            _ => self
                .history
                .get()
                .roster(&conversation)
                .await
                .map_err(unavailable)?
                .into_iter()
                .map(|member| json!(member))
                .collect::<Vec<_>>(),
        };
        Ok(json_response(200, &json!({"members": members})))
    }

    /// The conversation's pinned messages, most recently pinned first.
    async fn pins(&self, claims: Claims, conversation: String) -> Result<Response, ApiError> {
        let scope = self
            .consistent_authorize(&claims.sub, &conversation)
            .await?;
        let history = self.history.get();
        let mut pins = history.pins(&conversation).await.map_err(unavailable)?;
        pins.retain(|pin| scope.admits(pin.pinned_seq) && scope.shows(&pin.message));
        pins.iter_mut().for_each(|pin| scope.trim(&mut pin.message));
        with_reactions(
            history.as_ref(),
            &conversation,
            &claims.sub,
            pins.iter_mut().map(|pin| &mut pin.message),
        )
        .await?;
        Ok(json_response(200, &json!({"pins": pins})))
    }

    async fn search(&self, claims: Claims, query: SearchQuery) -> Result<Response, ApiError> {
        if query.q.trim().is_empty() {
            return Err(ApiError::new(ErrorCode::BadRequest, "q must not be empty"));
        }
        // parsed before anything is read: a query over a bound costs nothing
        let text_query =
            parse_user_query(&query.q, &self.config.query_limits).map_err(search_failure)?;
        // the scope of each conversation searched: membership, and when its messages expire
        let (scopes, ends): (HashMap<String, Scope>, _) = match &query.conversation {
            Some(conversation) => {
                let partition = self.partition_of(conversation);
                let ends = self
                    .barrier(&self.history_progress, &BTreeSet::from([partition]))
                    .await;
                let scope = self.authorize(&claims.sub, conversation).await?;
                (HashMap::from([(conversation.clone(), scope)]), ends)
            }
            None => {
                let all: BTreeSet<PartitionId> = (0..self.partitions()).collect();
                let ends = self.barrier(&self.history_progress, &all).await;
                let scopes = self
                    .history
                    .get()
                    .searchable_conversations(&claims.sub)
                    .await
                    .map_err(unavailable)?
                    .into_iter()
                    .map(|(conversation, ttl)| {
                        let ttl = ttl.or(self.config.message_ttl_s);
                        (conversation, Scope::ALL.with_retention(ttl))
                    })
                    .collect();
                (scopes, ends)
            }
        };
        let limit = query.limit.unwrap_or(20).clamp(1, MAX_HITS);
        let mut by_partition: BTreeMap<PartitionId, Vec<String>> = BTreeMap::new();
        for conversation in scopes.keys() {
            by_partition
                .entry(self.partition_of(conversation))
                .or_default()
                .push(conversation.clone());
        }
        // the search index waits for the same end offsets the history did
        let ends: BTreeMap<PartitionId, Offset> = ends
            .into_iter()
            .filter(|(partition, _)| by_partition.contains_key(partition))
            .collect();
        let (mut hits, missing) = match &self.shards {
            // each shard waits for these end offsets in its own index
            Some(shards) => {
                let gathered = shards
                    .gather(&query.q, by_partition, &ends, limit, self)
                    .await;
                // the snippets of the winners only
                let mut winners = merge_hits(gathered.hits, limit);
                let index = self.index.get();
                let hits = tokio::task::spawn_blocking(move || {
                    index.fill_snippets(&mut winners, &gathered.snippet_terms);
                    winners
                })
                .await
                .map_err(|error| ApiError::new(ErrorCode::Internal, error.to_string()))?;
                let hits = hits.into_iter().map(|scored| scored.hit).collect();
                (hits, gathered.missing)
            }
            None => {
                self.wait_for_ends(&self.search_progress, &ends, self.config.read_barrier)
                    .await;
                let conversations: Vec<String> = scopes.keys().cloned().collect();
                let index = self.index.get();
                let hits = tokio::task::spawn_blocking(move || {
                    index.search_parsed(text_query.as_ref(), &conversations, limit)
                })
                .await
                .map_err(|error| ApiError::new(ErrorCode::Internal, error.to_string()))?
                .map_err(search_failure)?;
                (hits, BTreeSet::new())
            }
        };
        // the best hits the caller may read: up to a former member's removal, not expired
        hits.retain(|hit| {
            scopes
                .get(&hit.conversation)
                .is_some_and(|scope| scope.admits(hit.seq) && !scope.expired(hit.ts))
        });
        if missing.is_empty() {
            return Ok(json_response(200, &json!({"hits": hits, "partial": false})));
        }
        // never silently short: the partitions no shard answered for
        Ok(json_response(
            200,
            &json!({"hits": hits, "partial": true, "missing_partitions": missing}),
        ))
    }

    /// This node's answer as a search shard: the best hits of the partitions asked that it
    /// holds and that met its read barrier; the others named as not held, or behind (a
    /// partition just assigned, still catching up), for the asking node to ask elsewhere or
    /// report missing: a shard never answers short in silence.
    pub async fn shard_search(&self, request: ShardRequest) -> Result<ShardAnswer, ApiError> {
        let text_query =
            parse_user_query(&request.q, &self.config.query_limits).map_err(search_failure)?;
        let held = match &self.shards {
            Some(shards) => shards.held(),
            None => (0..self.partitions()).collect(),
        };
        let (mine, not_held): (BTreeMap<_, _>, BTreeMap<_, _>) = request
            .partitions
            .into_iter()
            .partition(|(partition, _)| held.contains(partition));
        // the end offsets the asking node read for this request, else read here
        let unknown: BTreeSet<PartitionId> = mine
            .keys()
            .filter(|partition| !request.ends.contains_key(partition))
            .copied()
            .collect();
        let mut ends = self.end_offsets(&unknown).await;
        ends.extend(
            mine.keys()
                .filter_map(|partition| Some((*partition, *request.ends.get(partition)?))),
        );
        let barrier = Duration::from_millis(request.barrier_ms).min(self.config.read_barrier);
        let behind = self
            .wait_for_ends(&self.search_progress, &ends, barrier)
            .await;
        let conversations: Vec<String> = mine
            .into_iter()
            .filter(|(partition, _)| !behind.contains(partition))
            .flat_map(|(_, conversations)| conversations)
            .collect();
        let limit = request.limit.clamp(1, MAX_HITS);
        let index = self.index.get();
        let texts = request.texts;
        let matches = tokio::task::spawn_blocking(move || {
            let mut matches = index.matches(text_query.as_ref(), &conversations, limit)?;
            if texts {
                // an answer carries at most `limit` × SHIPPED_TEXT_BYTES of text
                index.fill_long_snippets(&mut matches, SHIPPED_TEXT_BYTES);
            } else {
                // an asking node of an earlier version takes snippets
                index.fill_snippets(&mut matches.hits, &matches.snippet_terms);
                matches.snippet_terms.clear();
            }
            Ok(matches)
        })
        .await
        .map_err(|error| ApiError::new(ErrorCode::Internal, error.to_string()))?
        .map_err(search_failure)?;
        Ok(ShardAnswer {
            hits: matches.hits,
            snippet_terms: matches.snippet_terms,
            not_held: not_held.into_keys().collect(),
            behind,
        })
    }
}

#[async_trait::async_trait]
impl LocalShard for SearchApi {
    async fn search(&self, request: ShardRequest) -> Result<ShardAnswer, String> {
        self.shard_search(request)
            .await
            .map_err(|error| error.to_string())
    }
}

/// Adds each message's reactions, as `reader` sees them (whether they reacted); a recalled
/// message shows none.
async fn with_reactions<'a>(
    history: &dyn HistoryStore,
    conversation: &str,
    reader: &str,
    messages: impl Iterator<Item = &'a mut MessageView>,
) -> Result<(), ApiError> {
    let mut messages: Vec<&mut MessageView> =
        messages.filter(|message| !message.recalled).collect();
    let seqs: Vec<u64> = messages.iter().map(|message| message.seq).collect();
    if seqs.is_empty() {
        return Ok(());
    }
    let mut reactions = history
        .reactions(conversation, &seqs, reader)
        .await
        .map_err(unavailable)?;
    for message in messages.iter_mut() {
        if let Some(counts) = reactions.remove(&message.seq) {
            message.reactions = counts;
        }
    }
    Ok(())
}

/// A refused query is the caller's `400 bad_request`; anything else, the index's `503`.
fn search_failure(error: SearchError) -> ApiError {
    match error {
        SearchError::BadQuery(message) => ApiError::new(ErrorCode::BadRequest, message),
        other => ApiError::new(ErrorCode::Unavailable, other.to_string()),
    }
}

/// The read routes.
pub fn routes(api: Arc<SearchApi>) -> BoxedFilter<(Response,)> {
    let claims = user_claims(api.tokens.clone());
    let with_api = {
        let api = api.clone();
        warp::any().map(move || api.clone())
    };
    let list =
        warp::path!("v1" / "conversations")
            .and(warp::get())
            .and(claims.clone())
            .and(warp::query::<ConversationsQuery>())
            .and(with_api.clone())
            .then(
                |claims: Result<Claims, ApiError>,
                 page: ConversationsQuery,
                 api: Arc<SearchApi>| async move {
                    respond(match claims {
                        Ok(claims) => api.conversations(claims, page).await,
                        Err(error) => Err(error),
                    })
                },
            );
    let conversation_reads = warp::path!("v1" / "conversations" / String / String)
        .and(warp::get())
        .and(claims.clone())
        .and(warp::query::<PageQuery>())
        .and(with_api.clone())
        .then(
            |conversation: String,
             what: String,
             claims: Result<Claims, ApiError>,
             page: PageQuery,
             api: Arc<SearchApi>| async move {
                let conversation = decode_path(&conversation);
                respond(match (claims, what.as_str()) {
                    (Err(error), _) => Err(error),
                    (Ok(claims), "events") => api.events(claims, conversation, page).await,
                    (Ok(claims), "messages") => api.messages(claims, conversation, page).await,
                    (Ok(claims), "pins") => api.pins(claims, conversation).await,
                    (Ok(claims), "members") => api.members(claims, conversation).await,
                    (Ok(_), _) => Err(ApiError::new(ErrorCode::NotFound, "no such endpoint")),
                })
            },
        );
    let search = warp::path!("v1" / "search")
        .and(warp::get())
        .and(claims)
        .and(warp::query::<SearchQuery>())
        .and(with_api.clone())
        .then(
            |claims: Result<Claims, ApiError>, query: SearchQuery, api: Arc<SearchApi>| async move {
                respond(match claims {
                    Ok(claims) => api.search(claims, query).await,
                    Err(error) => Err(error),
                })
            },
        );
    let reads = list.or(conversation_reads).unify().or(search).unify();

    match &api.shards {
        // a sharded node also answers the other shards, and says what it holds
        Some(shards) => {
            let key = Arc::<str>::from(shards.settings().api_key.as_str());
            reads
                .or(shard_routes::routes(api.clone(), key))
                .unify()
                .boxed()
        }
        None => reads.boxed(),
    }
}

/// Percent-decodes a path segment (`dm%3Aalice%3Abob` → `dm:alice:bob`).
fn decode_path(segment: &str) -> String {
    percent_encoding::percent_decode_str(segment)
        .decode_utf8_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_query_limits_are_the_default_configuration() {
        assert_eq!(
            SearchApiConfig::from_config(&ChorusConfig::default()).query_limits,
            SearchQueryLimits::default()
        );
    }
}
