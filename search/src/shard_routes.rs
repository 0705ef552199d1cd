//! The routes of a search node that is a shard ([`crate::shards`]), all behind the business API
//! key the nodes of a cluster share:
//!
//! - `POST /v1/shards/search`: the node's answer for the partitions it holds
//!   ([`SearchApi::shard_search`]);
//! - `GET /v1/admin/search/shards`: what it holds and what it knows of the others;
//! - `POST /v1/shards/partitions/{p}/snapshot`, `GET /v1/shards/snapshots/{id}/{file}?offset=`,
//!   `DELETE /v1/shards/snapshots/{id}`: a copy of a partition it holds, for a node that was
//!   just assigned it (`chorus_store::search_index` `copy`: a snapshot of one commit, served a
//!   bounded chunk at a time).

use std::sync::Arc;

use chorus_core::error::{ApiError, ErrorCode};
use chorus_core::http::{api_key, json_body, json_response, respond};
use chorus_log::PartitionId;
use chorus_store::SearchError;
use serde::Deserialize;
use serde_json::json;
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::reply::Response;

use crate::SearchApi;
use crate::shards::ShardRequest;

/// Largest shard request: the conversations of a user in many conversations, by partition.
const MAX_SHARD_REQUEST_BYTES: u64 = 4 * 1024 * 1024;

#[derive(Debug, Deserialize)]
struct ChunkQuery {
    #[serde(default)]
    offset: u64,
}

/// A refused copy request is the caller's 404; anything else the index's 503.
fn copy_failure(error: SearchError) -> ApiError {
    match error {
        SearchError::BadQuery(message) => ApiError::new(ErrorCode::NotFound, message),
        other => ApiError::new(ErrorCode::Unavailable, other.to_string()),
    }
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, SearchError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|error| ApiError::new(ErrorCode::Internal, error.to_string()))?
        .map_err(copy_failure)
}

impl SearchApi {
    /// `GET /v1/admin/search/shards`.
    async fn shards_view(&self) -> Result<Response, ApiError> {
        let Some(shards) = &self.shards else {
            return Err(ApiError::new(
                ErrorCode::NotFound,
                "this node is not a search shard",
            ));
        };
        let held = shards.held();
        let index = self.index.get();
        let positions = index.positions();
        let documents = index.partition_documents();
        let partitions: Vec<_> = held
            .iter()
            .map(|partition| {
                json!({
                    "partition": partition,
                    "position": positions.get(*partition as usize),
                    "documents": documents.get(*partition as usize),
                })
            })
            .collect();
        let registry = shards
            .entries()
            .await
            .map_err(|error| ApiError::new(ErrorCode::Unavailable, error.to_string()))?;
        Ok(json_response(
            200,
            &json!({
                "replica_set": shards.settings().replica_set,
                "node": shards.settings().node,
                "url": shards.settings().url,
                "held": partitions,
                // every partition's: a shard holds documents of its own partitions only
                "documents": index.document_count(),
                "registry": registry.as_ref(),
                "copies": shards.copies(),
            }),
        ))
    }

    /// `POST /v1/shards/partitions/{p}/snapshot`: of the partition as this node's index has
    /// it, held now or lately (the snapshot's position says how far it goes; a peer that asks
    /// chose this node from the registry, which it may have read just before a rebalance).
    async fn snapshot(&self, partition: PartitionId) -> Result<Response, ApiError> {
        let index = self.index.get();
        let snapshot = blocking(move || index.snapshot_partition(partition)).await?;
        Ok(json_response(200, &snapshot))
    }
}

/// The shard routes (see the module docs).
pub(crate) fn routes(api: Arc<SearchApi>, key: Arc<str>) -> BoxedFilter<(Response,)> {
    let with_api = warp::any().map(move || api.clone());
    let shard_search = warp::path!("v1" / "shards" / "search")
        .and(warp::post())
        .and(api_key(key.clone()))
        .and(json_body::<ShardRequest>(MAX_SHARD_REQUEST_BYTES))
        .and(with_api.clone())
        .then(
            |authorized: Result<(), ApiError>,
             request: Result<ShardRequest, ApiError>,
             api: Arc<SearchApi>| async move {
                respond(match (authorized, request) {
                    (Err(error), _) | (_, Err(error)) => Err(error),
                    (Ok(()), Ok(request)) => api
                        .shard_search(request)
                        .await
                        .map(|answer| json_response(200, &answer)),
                })
            },
        );
    let view = warp::path!("v1" / "admin" / "search" / "shards")
        .and(warp::get())
        .and(api_key(key.clone()))
        .and(with_api.clone())
        .then(
            |authorized: Result<(), ApiError>, api: Arc<SearchApi>| async move {
                respond(match authorized {
                    Ok(()) => api.shards_view().await,
                    Err(error) => Err(error),
                })
            },
        );
    let snapshot = warp::path!("v1" / "shards" / "partitions" / PartitionId / "snapshot")
        .and(warp::post())
        .and(api_key(key.clone()))
        .and(with_api.clone())
        .then(
            |partition: PartitionId, authorized: Result<(), ApiError>, api: Arc<SearchApi>| async move {
                respond(match authorized {
                    Ok(()) => api.snapshot(partition).await,
                    Err(error) => Err(error),
                })
            },
        );
    let chunk = warp::path!("v1" / "shards" / "snapshots" / String / String)
        .and(warp::get())
        .and(api_key(key.clone()))
        .and(warp::query::<ChunkQuery>())
        .and(with_api.clone())
        .then(
            |id: String,
             file: String,
             authorized: Result<(), ApiError>,
             query: ChunkQuery,
             api: Arc<SearchApi>| async move {
                let read = async {
                    authorized?;
                    let index = api.index.get();
                    let bytes =
                        blocking(move || index.read_snapshot(&id, &file, query.offset, u64::MAX))
                            .await?;
                    let mut response = Response::new(bytes.into());
                    response.headers_mut().insert(
                        "content-type",
                        warp::http::HeaderValue::from_static("application/octet-stream"),
                    );
                    Ok(response)
                };
                respond(read.await)
            },
        );
    let drop = warp::path!("v1" / "shards" / "snapshots" / String)
        .and(warp::delete())
        .and(api_key(key))
        .and(with_api)
        .then(
            |id: String, authorized: Result<(), ApiError>, api: Arc<SearchApi>| async move {
                let dropped = async {
                    authorized?;
                    let index = api.index.get();
                    blocking(move || index.drop_snapshot(&id)).await?;
                    Ok(json_response(200, &json!({"dropped": true})))
                };
                respond(dropped.await)
            },
        );
    shard_search
        .or(view)
        .unify()
        .or(snapshot)
        .unify()
        .or(chunk)
        .unify()
        .or(drop)
        .unify()
        .boxed()
}
