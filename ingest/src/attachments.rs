//! Attachments: files that messages carry (docs/protocol.md, "Attachments").
//!
//! A client asks for an upload (`POST /v1/attachments`: conversation, name, size, type) and
//! gets an id and a URL to `PUT` the bytes to; a `send` frame then names the id, and the node
//! fills the message's `attachment` (id, name, size, type) from what the upload recorded, never
//! from the client. Downloads (`GET /v1/attachments/{id}`) are served to the members of the
//! conversation the file was uploaded for; forwarding a message copies its file into the target
//! conversation under a new id.
//!
//! The bytes live in an object store (the `object_store` crate: local files for `chorus serve`,
//! S3-compatible in distributed mode), each upload as two objects: `attachments/<id>/meta.json`
//! (who uploaded what for which conversation, written when the upload is asked for) and
//! `attachments/<id>/file`, which appears whole or not at all once the upload completes.

mod routes;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Buf;
use chorus_core::config::AttachmentsSection;
use chorus_core::error::{ApiError, ErrorCode};
use chorus_core::metrics::Metrics;
use chorus_core::validate::{
    validate_attachment_id, validate_attachment_name, validate_media_type,
};
use chorus_schemas::Attachment;
use futures_util::{Stream, StreamExt};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

pub(crate) use routes::routes;

/// Bytes of a file buffered before they go to the store as one part.
const PART_BYTES: usize = 5 * 1024 * 1024;
/// Parts of one upload in flight to the store at once.
const PARTS_IN_FLIGHT: usize = 2;
/// Bytes of files held in memory by downloads at once, over the node (a download is answered
/// whole; past this it waits, then `unavailable`).
const DOWNLOAD_BUFFER_BYTES: u32 = 256 * 1024 * 1024;
/// Longest wait for room in the download buffer.
const DOWNLOAD_WAIT: Duration = Duration::from_secs(10);

/// What a client asks for when it wants to upload a file.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UploadRequest {
    /// The conversation the file is for: only its members may download it.
    pub conversation: String,
    pub name: String,
    /// The file's size in bytes; the upload must send exactly this many.
    pub size: u64,
    /// Its media type (`image/png`).
    #[serde(rename = "type")]
    pub content_type: String,
}

/// What the store keeps about an upload, beside its bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Meta {
    uploader: String,
    conversation: String,
    name: String,
    size: u64,
    content_type: String,
    /// Until when the bytes may be uploaded (milliseconds since the Unix epoch).
    upload_expires_at_ms: i64,
}

impl Meta {
    fn attachment(&self, id: &str) -> Attachment {
        Attachment {
            id: id.to_owned(),
            name: self.name.clone(),
            size: self.size,
            content_type: self.content_type.clone(),
        }
    }
}

/// A file to download: what it is, and its bytes.
pub(crate) struct Download {
    pub(crate) attachment: Attachment,
    pub(crate) conversation: String,
    pub(crate) bytes: bytes::Bytes,
    /// Room in the download buffer, held until the bytes are sent.
    pub(crate) _permit: tokio::sync::OwnedSemaphorePermit,
}

/// The node's attachments: the store, and the limits of `[attachments]`.
pub struct Attachments {
    store: Arc<dyn ObjectStore>,
    config: AttachmentsSection,
    uploads: Arc<Semaphore>,
    download_buffer: Arc<Semaphore>,
    metrics: Arc<Metrics>,
}

/// Opens the store `[attachments]` names: `file:///path` or `s3://bucket`, or, when empty,
/// `default_dir` (the embedded default); `None` when there is neither (distributed nodes
/// without a shared store).
pub fn open_store(
    config: &AttachmentsSection,
    default_dir: Option<&Path>,
) -> Result<Option<Arc<dyn ObjectStore>>, object_store::Error> {
    if let Some(bucket) = config.store.strip_prefix("s3://") {
        let mut builder = object_store::aws::AmazonS3Builder::new()
            .with_bucket_name(bucket.trim_matches('/'))
            .with_region(&config.s3_region);
        if !config.s3_endpoint.is_empty() {
            builder = builder
                .with_endpoint(&config.s3_endpoint)
                .with_allow_http(config.s3_endpoint.starts_with("http://"));
        }
        if !config.s3_access_key_id.is_empty() {
            builder = builder
                .with_access_key_id(&config.s3_access_key_id)
                .with_secret_access_key(&config.s3_secret_access_key);
        }
        return Ok(Some(Arc::new(builder.build()?)));
    }
    let dir = match config.store.strip_prefix("file://") {
        Some(path) => std::path::PathBuf::from(path),
        None => match default_dir {
            Some(dir) => dir.to_path_buf(),
            None => return Ok(None),
        },
    };
    std::fs::create_dir_all(&dir).map_err(|source| object_store::Error::Generic {
        store: "LocalFileSystem",
        source: Box::new(source),
    })?;
    Ok(Some(Arc::new(
        object_store::local::LocalFileSystem::new_with_prefix(dir)?,
    )))
}

fn meta_path(id: &str) -> ObjectPath {
    ObjectPath::from(format!("attachments/{id}/meta.json"))
}

fn file_path(id: &str) -> ObjectPath {
    ObjectPath::from(format!("attachments/{id}/file"))
}

fn unix_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as i64)
}

fn store_failed(error: object_store::Error) -> ApiError {
    tracing::warn!(%error, "attachment store failed");
    ApiError::new(
        ErrorCode::Unavailable,
        "the attachment store is unavailable; retry",
    )
}

fn no_such_attachment() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "no such attachment")
}

impl Attachments {
    pub fn new(
        store: Arc<dyn ObjectStore>,
        config: AttachmentsSection,
        metrics: Arc<Metrics>,
    ) -> Self {
        Attachments {
            store,
            uploads: Arc::new(Semaphore::new(config.max_concurrent_uploads)),
            download_buffer: Arc::new(Semaphore::new(DOWNLOAD_BUFFER_BYTES as usize)),
            config,
            metrics,
        }
    }

    fn count(&self, operation: &str, outcome: &Result<impl Sized, ApiError>) {
        let outcome = match outcome {
            Ok(_) => "ok",
            Err(error) if error.code == ErrorCode::Unavailable => "failed",
            Err(_) => "refused",
        };
        self.metrics
            .attachment_operations
            .with_label_values(&[operation, outcome])
            .inc();
    }

    /// Checks a request against the limits (the caller has checked membership), records it,
    /// and returns the new upload's id and until when it may be uploaded.
    pub(crate) async fn request(
        &self,
        uploader: &str,
        request: UploadRequest,
    ) -> Result<(String, i64), ApiError> {
        let outcome = self.record_request(uploader, request).await;
        self.count("request", &outcome);
        outcome
    }

    async fn record_request(
        &self,
        uploader: &str,
        request: UploadRequest,
    ) -> Result<(String, i64), ApiError> {
        validate_attachment_name(&request.name)?;
        validate_media_type(&request.content_type)?;
        if request.size == 0 {
            return Err(ApiError::new(ErrorCode::BadRequest, "the file is empty"));
        }
        if request.size > self.config.max_bytes {
            return Err(ApiError::new(
                ErrorCode::TooLarge,
                format!(
                    "the file is {} bytes, the limit is {} (attachments.max_bytes)",
                    request.size, self.config.max_bytes
                ),
            ));
        }
        if !self.config.accepts(&request.content_type) {
            return Err(ApiError::new(
                ErrorCode::UnsupportedType,
                format!(
                    "{} files are not accepted here (attachments.types: {})",
                    request.content_type,
                    self.config.types.join(", ")
                ),
            ));
        }
        let id = uuid::Uuid::new_v4().simple().to_string();
        let expires_at =
            unix_millis().saturating_add(self.config.upload_expiry().as_millis() as i64);
        let meta = Meta {
            uploader: uploader.to_owned(),
            conversation: request.conversation,
            name: request.name,
            size: request.size,
            content_type: request.content_type,
            upload_expires_at_ms: expires_at,
        };
        let json = serde_json::to_vec(&meta).expect("meta serializes");
        self.store
            .put(&meta_path(&id), PutPayload::from(json))
            .await
            .map_err(store_failed)?;
        Ok((id, expires_at))
    }

    async fn meta(&self, id: &str) -> Result<Meta, ApiError> {
        validate_attachment_id(id).map_err(|_| no_such_attachment())?;
        let bytes = match self.store.get(&meta_path(id)).await {
            Ok(found) => found.bytes().await.map_err(store_failed)?,
            Err(object_store::Error::NotFound { .. }) => return Err(no_such_attachment()),
            Err(error) => return Err(store_failed(error)),
        };
        serde_json::from_slice(&bytes).map_err(|error| {
            tracing::error!(%error, id, "unreadable attachment meta");
            ApiError::new(ErrorCode::Internal, "unreadable attachment record")
        })
    }

    /// Whether the file's bytes are all in the store.
    async fn uploaded(&self, id: &str) -> Result<bool, ApiError> {
        match self.store.head(&file_path(id)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(error) => Err(store_failed(error)),
        }
    }

    /// Receives the bytes of upload `id` from its uploader: exactly the size asked for, within
    /// the upload's expiry, once. The file appears in the store whole or not at all.
    pub(crate) async fn upload<S, B>(
        &self,
        uploader: &str,
        id: &str,
        body: S,
    ) -> Result<Attachment, ApiError>
    where
        S: Stream<Item = Result<B, warp::Error>> + Send,
        B: Buf + Send,
    {
        let outcome = self.receive(uploader, id, body).await;
        self.count("upload", &outcome);
        outcome
    }

    async fn receive<S, B>(&self, uploader: &str, id: &str, body: S) -> Result<Attachment, ApiError>
    where
        S: Stream<Item = Result<B, warp::Error>> + Send,
        B: Buf + Send,
    {
        let meta = self.meta(id).await?;
        if meta.uploader != uploader {
            return Err(ApiError::new(
                ErrorCode::Forbidden,
                "this upload was asked for by another user",
            ));
        }
        if unix_millis() > meta.upload_expires_at_ms {
            return Err(ApiError::new(
                ErrorCode::NotFound,
                "this upload has expired; ask for a new one",
            ));
        }
        if self.uploaded(id).await? {
            return Err(ApiError::new(
                ErrorCode::BadRequest,
                "this attachment is already uploaded",
            ));
        }
        let _slot = self.uploads.clone().try_acquire_owned().map_err(|_| {
            ApiError::new(
                ErrorCode::Unavailable,
                "this node is receiving as many uploads as it takes; retry",
            )
        })?;
        let upload = self
            .store
            .put_multipart(&file_path(id))
            .await
            .map_err(store_failed)?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
        let mut received: u64 = 0;
        let mut body = std::pin::pin!(body);
        let failure = loop {
            let chunk = match body.next().await {
                None => break None,
                Some(Ok(chunk)) => chunk,
                Some(Err(error)) => {
                    break Some(ApiError::new(
                        ErrorCode::BadRequest,
                        format!("the upload broke off: {error}"),
                    ));
                }
            };
            received = received.saturating_add(chunk.remaining() as u64);
            if received > meta.size {
                break Some(ApiError::new(
                    ErrorCode::TooLarge,
                    format!("more than the {} bytes asked for", meta.size),
                ));
            }
            let mut chunk = chunk;
            while chunk.has_remaining() {
                let slice = chunk.chunk();
                let length = slice.len();
                writer.write(slice);
                chunk.advance(length);
            }
            if let Err(error) = writer.wait_for_capacity(PARTS_IN_FLIGHT).await {
                break Some(store_failed(error));
            }
        };
        let failure = failure.or_else(|| {
            (received != meta.size).then(|| {
                ApiError::new(
                    ErrorCode::BadRequest,
                    format!(
                        "the upload has {received} bytes, {} were asked for",
                        meta.size
                    ),
                )
            })
        });
        if let Some(error) = failure {
            if let Err(abort) = writer.abort().await {
                tracing::warn!(error = %abort, id, "aborting an upload failed");
            }
            return Err(error);
        }
        writer.finish().await.map_err(store_failed)?;
        Ok(meta.attachment(id))
    }

    /// The attachment a message from `sender` into `conversation` may carry: an upload that
    /// sender asked for, for that conversation, whose bytes are all there.
    pub(crate) async fn for_message(
        &self,
        sender: &str,
        conversation: &str,
        id: &str,
    ) -> Result<Attachment, ApiError> {
        let meta = self.meta(id).await?;
        if meta.uploader != sender || meta.conversation != conversation {
            return Err(ApiError::new(
                ErrorCode::Forbidden,
                "a message carries only a file its sender uploaded for its conversation",
            ));
        }
        if !self.uploaded(id).await? {
            return Err(ApiError::new(
                ErrorCode::BadRequest,
                "this attachment's bytes are not uploaded yet",
            ));
        }
        Ok(meta.attachment(id))
    }

    /// A copy of `attachment` for `conversation`, recorded as `forwarder`'s (forwarding: the
    /// forwarder could read the original).
    pub(crate) async fn copy_for(
        &self,
        forwarder: &str,
        conversation: &str,
        attachment: &Attachment,
    ) -> Result<Attachment, ApiError> {
        let outcome = self.copy(forwarder, conversation, attachment).await;
        self.count("forward", &outcome);
        outcome
    }

    async fn copy(
        &self,
        forwarder: &str,
        conversation: &str,
        attachment: &Attachment,
    ) -> Result<Attachment, ApiError> {
        let original = self.meta(&attachment.id).await?;
        let id = uuid::Uuid::new_v4().simple().to_string();
        self.store
            .copy(&file_path(&attachment.id), &file_path(&id))
            .await
            .map_err(|error| match error {
                object_store::Error::NotFound { .. } => no_such_attachment(),
                error => store_failed(error),
            })?;
        let meta = Meta {
            uploader: forwarder.to_owned(),
            conversation: conversation.to_owned(),
            upload_expires_at_ms: 0,
            ..original
        };
        let json = serde_json::to_vec(&meta).expect("meta serializes");
        self.store
            .put(&meta_path(&id), PutPayload::from(json))
            .await
            .map_err(store_failed)?;
        Ok(meta.attachment(&id))
    }

    /// The file `id` and the conversation it belongs to (the caller checks membership before
    /// sending it), held in memory within the node's download buffer.
    pub(crate) async fn download(&self, id: &str) -> Result<Download, ApiError> {
        let meta = self.meta(id).await?;
        if !self.uploaded(id).await? {
            return Err(no_such_attachment());
        }
        let weight = u32::try_from(meta.size)
            .unwrap_or(u32::MAX)
            .min(DOWNLOAD_BUFFER_BYTES);
        let permit = tokio::time::timeout(
            DOWNLOAD_WAIT,
            self.download_buffer.clone().acquire_many_owned(weight),
        )
        .await
        .ok()
        .and_then(Result::ok)
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::Unavailable,
                "this node is sending as many files as it holds; retry",
            )
        })?;
        let bytes = match self.store.get(&file_path(id)).await {
            Ok(found) => found.bytes().await.map_err(store_failed)?,
            Err(object_store::Error::NotFound { .. }) => return Err(no_such_attachment()),
            Err(error) => return Err(store_failed(error)),
        };
        Ok(Download {
            attachment: meta.attachment(id),
            conversation: meta.conversation,
            bytes,
            _permit: permit,
        })
    }

    /// Counts a download's outcome.
    pub(crate) fn counted<T>(&self, outcome: Result<T, ApiError>) -> Result<T, ApiError> {
        self.count("download", &outcome);
        outcome
    }
}

/// Media types a browser may show inline from this origin: images that cannot run script.
/// Everything else is sent as `application/octet-stream`, to be saved, so that an uploaded
/// page or SVG never runs as this origin.
pub(crate) fn shown_inline(media_type: &str) -> bool {
    matches!(
        media_type,
        "image/png" | "image/jpeg" | "image/gif" | "image/webp" | "image/avif"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_images_that_cannot_run_script_are_inline() {
        assert!(shown_inline("image/png"));
        assert!(shown_inline("image/jpeg"));
        assert!(!shown_inline("image/svg+xml"));
        assert!(!shown_inline("text/html"));
        assert!(!shown_inline("application/pdf"));
    }
}
