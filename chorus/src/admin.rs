//! The operator's routes every role composes: `GET /health` and `GET /metrics`
//! ([`operations`]), `POST /v1/admin/replay` ([`admin_replay`], which asks the node's projector
//! through its [`ProjectorHandle`]) and `GET /v1/admin/analytics` ([`analytics_route`]), and
//! the client side of the replay route ([`ask_running_node_to_replay`], what `chorus replay`
//! does when the data directory is in use).
//!
//! The admin routes take the business API key; they hold no state of their own.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::Context;
use chorus_clickhouse::ClickHouseHistory;
use chorus_core::data_layout::DataLayout;
use chorus_core::error::{ApiError, ErrorCode};
use chorus_core::metrics::Metrics;
use chorus_projector::replay::ReplayError;
use chorus_projector::supervisor::LiveReplayError;
use chorus_projector::{Projection, ProjectorHandle, ReplayReport};
use warp::Filter;

use crate::health::Dependencies;

/// A role's HTTP routes.
pub(crate) type Routes = warp::filters::BoxedFilter<(warp::reply::Response,)>;

/// `GET /health` (the node's dependencies, see [`crate::health`]), `GET /metrics` and
/// `GET /v1/openapi.json` (the HTTP API, [`crate::openapi`]).
pub(crate) fn operations(metrics: Arc<Metrics>, dependencies: Arc<Dependencies>) -> Routes {
    let reported = dependencies.clone();
    let health = warp::path!("health").and(warp::get()).map(move || {
        let (code, body) = reported.health();
        chorus_core::http::json_response(code, &body)
    });
    let readiness = dependencies.clone();
    let ready = warp::path!("health" / "ready")
        .and(warp::get())
        .map(move || {
            let (code, body) = readiness.ready();
            chorus_core::http::json_response(code, &body)
        });
    // the process answers: that is all liveness says (see `crate::health`)
    let live = warp::path!("health" / "live")
        .and(warp::get())
        .map(|| chorus_core::http::json_response(200, &serde_json::json!({"status": "alive"})));
    let health = health.or(ready).unify().or(live).unify();
    let metrics_route = warp::path!("metrics").and(warp::get()).map(move || {
        let mut body = metrics.render();
        body.push_str(&dependencies.render());
        warp::reply::Reply::into_response(warp::reply::with_header(
            body,
            "content-type",
            "text/plain; version=0.0.4",
        ))
    });
    let openapi = warp::path!("v1" / "openapi.json").and(warp::get()).map(|| {
        warp::reply::Reply::into_response(warp::reply::with_header(
            crate::openapi::DOCUMENT.as_str(),
            "content-type",
            "application/json",
        ))
    });
    health.or(metrics_route).unify().or(openapi).unify().boxed()
}

#[derive(serde::Deserialize)]
struct AdminReplay {
    projection: Projection,
}

/// `POST /v1/admin/replay` (business API key): rebuilds projections on the running node.
pub(crate) fn admin_replay(api_key: Arc<str>, projector: ProjectorHandle) -> Routes {
    warp::path!("v1" / "admin" / "replay")
        .and(warp::post())
        .and(chorus_core::http::api_key(api_key))
        .and(chorus_core::http::json_body::<AdminReplay>(4096))
        .then(
            move |authorized: Result<(), ApiError>, body: Result<AdminReplay, ApiError>| {
                let projector = projector.clone();
                async move {
                    let outcome = async {
                        authorized?;
                        let body = body?;
                        let reports =
                            projector
                                .replay_live(body.projection)
                                .await
                                .map_err(|error| match error {
                                    LiveReplayError::NotRunning | LiveReplayError::Stopped => {
                                        ApiError::new(ErrorCode::Unavailable, error.to_string())
                                    }
                                    // asked for what this node does not keep
                                    LiveReplayError::Failed(ReplayError::Refused(_)) => {
                                        ApiError::new(ErrorCode::BadRequest, error.to_string())
                                    }
                                    LiveReplayError::Failed(_) => {
                                        ApiError::new(ErrorCode::Internal, error.to_string())
                                    }
                                })?;
                        Ok(chorus_core::http::json_response(
                            200,
                            &serde_json::json!({"reports": reports}),
                        ))
                    }
                    .await;
                    chorus_core::http::respond(outcome)
                }
            },
        )
        .boxed()
}

/// Asks the node running on this data directory to rebuild (`POST /v1/admin/replay`, see
/// `chorus_projector::replay`).
pub async fn ask_running_node_to_replay(
    layout: &DataLayout,
    api_key: &str,
    projection: Projection,
) -> anyhow::Result<Vec<ReplayReport>> {
    let url = layout.running_url().with_context(|| {
        format!(
            "{} is in use, but names no running node to ask",
            layout.root.display()
        )
    })?;
    let response = reqwest::Client::new()
        .post(format!("{url}/v1/admin/replay"))
        .bearer_auth(api_key)
        .json(&serde_json::json!({ "projection": projection }))
        .send()
        .await
        .with_context(|| format!("asking the node at {url} to replay"))?;
    let status = response.status();
    let body: serde_json::Value = response.json().await?;
    anyhow::ensure!(
        status.is_success(),
        "the node at {url} answered {status}: {body}"
    );
    Ok(serde_json::from_value(body["reports"].clone())?)
}

/// `GET /v1/admin/analytics?from_ms=&to_ms=&limit=` (business API key): message counts per day
/// and the most active conversations and senders over `[from_ms, to_ms)` (default: the last
/// 30 days; limit 10, at most 1000). Answers 404 `not_found` on a node without ClickHouse.
pub(crate) fn analytics_route(
    api_key: Arc<str>,
    history: Option<Arc<ClickHouseHistory>>,
) -> Routes {
    warp::path!("v1" / "admin" / "analytics")
        .and(warp::get())
        .and(chorus_core::http::api_key(api_key))
        .and(warp::query::<HashMap<String, String>>())
        .then(
            move |authorized: Result<(), ApiError>, query: HashMap<String, String>| {
                let history = history.clone();
                async move {
                    chorus_core::http::respond(
                        async {
                            authorized?;
                            let history = history.ok_or_else(|| {
                                ApiError::new(
                                    ErrorCode::NotFound,
                                    "analytics need the history in ClickHouse ([clickhouse] url)",
                                )
                            })?;
                            let number = |name: &str, default: i64| -> Result<i64, ApiError> {
                                query.get(name).map_or(Ok(default), |value| {
                                    value.parse().map_err(|_| {
                                        ApiError::new(
                                            ErrorCode::BadRequest,
                                            format!("{name} must be an integer"),
                                        )
                                    })
                                })
                            };
                            let now = std::time::SystemTime::now()
                                .duration_since(std::time::UNIX_EPOCH)
                                .map_or(0, |elapsed| elapsed.as_millis() as i64);
                            let to_ms = number("to_ms", now + 1)?;
                            let from_ms = number("from_ms", to_ms - 30 * 86_400_000)?;
                            let limit = number("limit", 10)?.clamp(1, 1000) as usize;
                            let report = history.analytics(from_ms, to_ms, limit).await.map_err(
                                |error| ApiError::new(ErrorCode::Unavailable, error.to_string()),
                            )?;
                            Ok(chorus_core::http::json_response(200, &report))
                        }
                        .await,
                    )
                }
            },
        )
        .boxed()
}
