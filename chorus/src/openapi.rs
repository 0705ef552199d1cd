//! `GET /v1/openapi.json`: the OpenAPI 3 document of the whole HTTP API, generated from the code.
//! Each stage documents the routes it serves next to them (`ingest::api_doc`,
//! `search::api_doc`); the operations routes of every role are documented here; this module
//! merges them and names the two credentials. A test checks that every route the document names
//! answers, and that every route docs/protocol.md documents is in it.

#![allow(dead_code)] // the items exist for their annotations: utoipa reads them, nothing calls them

use std::sync::LazyLock;

use utoipa::OpenApi;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};

/// The node's dependencies and whether it serves.
#[utoipa::path(get, path = "/health", tag = "operations",
    responses((status = 200, description = "`{\"status\":\"ok\"|\"degraded\",\"dependencies\":{…}}`"),
              (status = 503, description = "starting, or a required dependency is down")))]
fn health() {}

/// Prometheus metrics (text format).
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, content_type = "text/plain", description = "Prometheus text format")))]
fn metrics() {}

/// Rebuilds projections from the log on the running node (API key).
#[utoipa::path(post, path = "/v1/admin/replay", tag = "operations",
    request_body(content = Object, description = "`{\"projection\":\"history\"|\"search\"|\"all\"}`"),
    responses((status = 200, description = "`{\"reports\":[{\"projection\",\"records\",\"seconds\"}]}`"),
              (status = 400, description = "the node does not keep that projection (a search node and the history in ClickHouse)"),
              (status = 401)),
    security(("api_key" = [])))]
fn admin_replay() {}

/// Message counts per day and the most active conversations and senders (API key; ClickHouse).
#[utoipa::path(get, path = "/v1/admin/analytics", tag = "operations",
    params(("from_ms" = Option<i64>, Query), ("to_ms" = Option<i64>, Query),
           ("limit" = Option<usize>, Query)),
    responses((status = 200), (status = 401), (status = 404, description = "no ClickHouse history")),
    security(("api_key" = [])))]
fn admin_analytics() {}

/// This document.
#[utoipa::path(get, path = "/v1/openapi.json", tag = "operations",
    responses((status = 200, content_type = "application/json", description = "OpenAPI 3")))]
fn openapi_json() {}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Chorus",
        description = "The HTTP API of Chorus, a Kafka-centric instant-messaging engine. WebSocket frames and the log's wire formats: docs/protocol.md."
    ),
    paths(health, metrics, admin_replay, admin_analytics, openapi_json)
)]
struct OperationsDoc;

/// The whole document, built once.
pub static DOCUMENT: LazyLock<String> = LazyLock::new(|| {
    let mut document = OperationsDoc::openapi();
    document.merge(chorus_ingest::api_doc::EdgeApiDoc::openapi());
    document.merge(chorus_search::api_doc::ReadApiDoc::openapi());
    let components = document.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        "user_token",
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .bearer_format("JWT")
                .description(Some("a user's token (HS256 JWT, `sub` = the user)"))
                .build(),
        ),
    );
    components.add_security_scheme(
        "api_key",
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some("the business API key (`auth.api_key`)"))
                .build(),
        ),
    );
    document.to_json().unwrap_or_default()
});
