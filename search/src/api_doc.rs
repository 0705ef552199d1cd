//! The read API's part of the OpenAPI document (`GET /v1/openapi.json`): one annotated item per
//! route of [`crate::routes`], next to them, with the types the routes answer with.

#![allow(dead_code)] // the items exist for their annotations: utoipa reads them, nothing calls them

use chorus_store::SearchHit;
use chorus_store::history::{ConversationSummary, MemberView, MessageView, PinView};
use serde::Serialize;
use utoipa::{OpenApi, ToSchema};

/// `GET /v1/conversations`.
#[derive(Serialize, ToSchema)]
struct ConversationsPage {
    conversations: Vec<ConversationSummary>,
    /// The `after` of the next page; absent on the last.
    next: Option<String>,
}

/// `GET /v1/conversations/{id}/events`: timeline events, as the WebSocket's `event` frames.
#[derive(Serialize, ToSchema)]
struct EventsPage {
    events: Vec<serde_json::Value>,
}

#[derive(Serialize, ToSchema)]
struct MessagesPage {
    messages: Vec<MessageView>,
}

#[derive(Serialize, ToSchema)]
struct Pins {
    pins: Vec<PinView>,
}

#[derive(Serialize, ToSchema)]
struct Members {
    members: Vec<MemberView>,
}

#[derive(Serialize, ToSchema)]
struct Hits {
    hits: Vec<SearchHit>,
    /// Some partitions the caller's conversations live in were not searched: the search shard
    /// holding them did not answer in time (`missing_partitions` names them). Always `false`
    /// on a node that is not a shard.
    partial: bool,
    /// Only when `partial`: the timeline partitions no shard answered for.
    missing_partitions: Option<Vec<u32>>,
}

/// `{"error":{"code":"…","message":"…"}}`.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Serialize, ToSchema)]
struct ErrorDetail {
    /// `bad_request`, `unauthorized`, `forbidden`, `not_found`, `too_large`, `rate_limited`,
    /// `unavailable`, `internal`, `blocked`, `refused`.
    code: String,
    message: String,
}

/// The caller's conversations, sorted by id, a page at a time.
#[utoipa::path(get, path = "/v1/conversations", tag = "history",
    params(("after" = Option<String>, Query, description = "only ids sorted after it"),
           ("limit" = Option<usize>, Query, description = "at most this many (default and maximum limits.max_conversations_page)")),
    responses((status = 200, body = ConversationsPage), (status = 401, body = ErrorBody)),
    security(("user_token" = [])))]
fn conversations() {}

/// A conversation's timeline after a seq (gap filling).
#[utoipa::path(get, path = "/v1/conversations/{id}/events", tag = "history",
    params(("id" = String, Path, description = "the conversation"),
           ("after_seq" = Option<u64>, Query), ("limit" = Option<usize>, Query)),
    responses((status = 200, body = EventsPage), (status = 403, body = ErrorBody)),
    security(("user_token" = [])))]
fn events() {}

/// A conversation's messages as they stand now.
#[utoipa::path(get, path = "/v1/conversations/{id}/messages", tag = "history",
    params(("id" = String, Path), ("after_seq" = Option<u64>, Query),
           ("before_seq" = Option<u64>, Query), ("limit" = Option<usize>, Query)),
    responses((status = 200, body = MessagesPage), (status = 403, body = ErrorBody)),
    security(("user_token" = [])))]
fn messages() {}

/// A conversation's pinned messages, most recently pinned first.
#[utoipa::path(get, path = "/v1/conversations/{id}/pins", tag = "history",
    params(("id" = String, Path)),
    responses((status = 200, body = Pins), (status = 403, body = ErrorBody)),
    security(("user_token" = [])))]
fn pins() {}

/// A group's members and their roles (members only).
#[utoipa::path(get, path = "/v1/conversations/{id}/members", tag = "history",
    params(("id" = String, Path)),
    responses((status = 200, body = Members), (status = 403, body = ErrorBody)),
    security(("user_token" = [])))]
fn members() {}

/// Full-text search in the caller's conversations.
#[utoipa::path(get, path = "/v1/search", tag = "search",
    params(("q" = String, Query), ("conversation" = Option<String>, Query),
           ("limit" = Option<usize>, Query)),
    responses((status = 200, body = Hits), (status = 400, body = ErrorBody)),
    security(("user_token" = [])))]
fn search() {}

/// The read API's routes.
#[derive(OpenApi)]
#[openapi(paths(conversations, events, messages, pins, members, search))]
pub struct ReadApiDoc;
