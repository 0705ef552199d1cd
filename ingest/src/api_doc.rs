//! The edge's part of the OpenAPI document (`GET /v1/openapi.json`): one annotated item per
//! route the ingest stage serves (`http.rs`, `web.rs`, the WebSocket upgrade in `session.rs`),
//! with the request bodies they take. The WebSocket frames are documented in docs/protocol.md.

#![allow(dead_code)] // the items exist for their annotations: utoipa reads them, nothing calls them

use serde::Serialize;
use utoipa::{OpenApi, ToSchema};

/// `POST /v1/events`: business events, each with its own outcome.
#[derive(Serialize, ToSchema)]
struct BusinessEvents {
    /// Each one of `send`, `create_group`, `add_members`, `remove_members`, `set_role`,
    /// `rename`, `disband`, `set_retention` (docs/protocol.md), with its `id`.
    events: Vec<serde_json::Value>,
}

#[derive(Serialize, ToSchema)]
struct BusinessResults {
    /// In input order: `{"id","seq","event_id"}`, `{"id","accepted":true,"home"}` or
    /// `{"id","error":{"code","message"}}`.
    results: Vec<serde_json::Value>,
}

/// `POST /v1/conversations`: a group the caller creates and owns.
#[derive(Serialize, ToSchema)]
struct NewGroup {
    id: String,
    members: Vec<String>,
    title: Option<String>,
}

#[derive(Serialize, ToSchema)]
struct Sequenced {
    id: String,
    seq: u64,
    event_id: String,
}

#[derive(Serialize, ToSchema)]
struct DevTokenRequest {
    user: String,
    device: Option<String>,
}

#[derive(Serialize, ToSchema)]
struct DevToken {
    token: String,
}

/// The WebSocket of one client session (`?token=` or `Authorization: Bearer`); its frames are
/// in docs/protocol.md.
#[utoipa::path(get, path = "/v1/ws", tag = "edge",
    params(("token" = Option<String>, Query, description = "the user's token, when no Authorization header")),
    responses((status = 101, description = "switching to the WebSocket protocol"),
              (status = 400, description = "a bad WebSocket handshake"),
              (status = 426, description = "not a WebSocket handshake"),
              (status = 401, description = "no valid token")))]
fn websocket() {}

/// Business systems' events (API key).
#[utoipa::path(post, path = "/v1/events", tag = "business", request_body = BusinessEvents,
    responses((status = 200, body = BusinessResults)),
    security(("api_key" = [])))]
fn business_events() {}

/// Creates a group the caller owns.
#[utoipa::path(post, path = "/v1/conversations", tag = "edge", request_body = NewGroup,
    responses((status = 201, body = Sequenced), (status = 400), (status = 429)),
    security(("user_token" = [])))]
fn create_conversation() {}

/// A token for any user (dev mode only; 404 otherwise).
#[utoipa::path(post, path = "/v1/dev/token", tag = "edge", request_body = DevTokenRequest,
    responses((status = 200, body = DevToken), (status = 404)))]
fn dev_token() {}

#[derive(Serialize, ToSchema)]
struct UploadUrl {
    /// The attachment's id (32 hex digits): what a `send` frame's `attachment` names.
    id: String,
    /// Where to `PUT` the bytes (this node, with the same token).
    upload_url: String,
    method: String,
    /// Until when the bytes may be put (milliseconds since the Unix epoch).
    expires_at: i64,
}

/// An attachment as messages carry it.
#[derive(Serialize, ToSchema)]
struct AttachmentView {
    id: String,
    name: String,
    size: u64,
    #[serde(rename = "type")]
    content_type: String,
}

/// Asks for an upload: a file for a conversation the caller is a member of.
#[utoipa::path(post, path = "/v1/attachments", tag = "attachments",
    request_body = crate::attachments::UploadRequest,
    responses((status = 201, body = UploadUrl),
              (status = 400, description = "a bad name, type or size"),
              (status = 403, description = "not a member of the conversation"),
              (status = 413, description = "`too_large`: over `attachments.max_bytes`"),
              (status = 415, description = "`unsupported_type`: not in `attachments.types`"),
              (status = 429), (status = 503, description = "no attachment store on this node")),
    security(("user_token" = [])))]
fn ask_for_upload() {}

/// Uploads the bytes of an attachment asked for: exactly its size, by the user who asked,
/// once, before it expires.
#[utoipa::path(put, path = "/v1/attachments/{id}", tag = "attachments",
    params(("id" = String, Path, description = "the attachment's id")),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 200, body = AttachmentView),
              (status = 400, description = "not the size asked for, or already uploaded"),
              (status = 403, description = "asked for by another user"),
              (status = 404, description = "no such upload, or expired"),
              (status = 413, description = "more bytes than asked for"),
              (status = 503)),
    security(("user_token" = [])))]
fn upload() {}

/// Downloads an attachment: for the members of the conversation it was uploaded for. Images
/// come as themselves (inline); other files as `application/octet-stream`, to be saved.
#[utoipa::path(get, path = "/v1/attachments/{id}", tag = "attachments",
    params(("id" = String, Path, description = "the attachment's id"),
           ("token" = Option<String>, Query, description = "the user's token, when no Authorization header (for `<img src>`)")),
    responses((status = 200, content_type = "application/octet-stream", description = "the file"),
              (status = 401),
              (status = 404, description = "no such attachment, or not a member"),
              (status = 503)),
    security(("user_token" = [])))]
fn download() {}

/// The web client's page.
#[utoipa::path(get, path = "/", tag = "web",
    responses((status = 200, content_type = "text/html", description = "the page")))]
fn page() {}

/// Where the page reads history and search from.
#[utoipa::path(get, path = "/web/config.json", tag = "web",
    responses((status = 200, description = "`{\"read_url\":\"…\"}`")))]
fn web_config() {}

/// The page's script, style sheet and library.
#[utoipa::path(get, path = "/web/{file}", tag = "web",
    params(("file" = String, Path, description = "app.js, chorus-client.js, style.css, index.html")),
    responses((status = 200), (status = 404)))]
fn web_file() {}

/// The edge's routes.
#[derive(OpenApi)]
#[openapi(paths(
    websocket,
    business_events,
    create_conversation,
    ask_for_upload,
    upload,
    download,
    dev_token,
    page,
    web_config,
    web_file
))]
pub struct EdgeApiDoc;
