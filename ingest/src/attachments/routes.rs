//! The attachments' HTTP routes: ask for an upload, upload, download.

use std::sync::Arc;

use chorus_core::auth::Claims;
use chorus_core::error::{ApiError, ErrorCode};
use chorus_core::http::{json_body, json_response, respond, user_claims};
use serde_json::json;
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::{HeaderValue, header};
use warp::reply::Response;

use super::{Attachments, UploadRequest, shown_inline};
use crate::Ingest;

fn with_ingest(
    ingest: Arc<Ingest>,
) -> impl Filter<Extract = (Arc<Ingest>,), Error = std::convert::Infallible> + Clone {
    warp::any().map(move || ingest.clone())
}

/// The node's attachments, or `unavailable` when it has no store.
fn attachments(ingest: &Ingest) -> Result<&Attachments, ApiError> {
    ingest.attachments.as_deref().ok_or_else(|| {
        ApiError::new(
            ErrorCode::Unavailable,
            "attachments are off on this node: set attachments.store to a shared store",
        )
    })
}

/// `POST /v1/attachments`, `PUT /v1/attachments/{id}`, `GET /v1/attachments/{id}`.
pub(crate) fn routes(ingest: Arc<Ingest>) -> BoxedFilter<(Response,)> {
    let request = warp::path!("v1" / "attachments")
        .and(warp::post())
        .and(user_claims(ingest.tokens.clone()))
        .and(json_body::<UploadRequest>(
            ingest.config.limits.max_http_body_bytes,
        ))
        .and(with_ingest(ingest.clone()))
        .then(
            |claims: Result<Claims, ApiError>,
             request: Result<UploadRequest, ApiError>,
             ingest: Arc<Ingest>| async move {
                respond(match (claims, request) {
                    (Err(error), _) | (Ok(_), Err(error)) => Err(error),
                    (Ok(claims), Ok(request)) => ask(&ingest, &claims.sub, request).await,
                })
            },
        );
    // the declared length is checked against the upload's own size as the bytes arrive; this
    // refuses a larger body before any is read
    let upload = warp::path!("v1" / "attachments" / String)
        .and(warp::put())
        .and(user_claims(ingest.tokens.clone()))
        .and(warp::body::content_length_limit(
            ingest.config.attachments.max_bytes,
        ))
        .and(warp::body::stream())
        .and(with_ingest(ingest.clone()))
        .then(
            |id: String, claims: Result<Claims, ApiError>, body, ingest: Arc<Ingest>| async move {
                respond(match claims {
                    Err(error) => Err(error),
                    Ok(claims) => {
                        match attachments(&ingest) {
                            Err(error) => Err(error),
                            Ok(attachments) => attachments
                                .upload(&claims.sub, &id, body)
                                .await
                                .map(|attachment| {
                                    json_response(
                                        200,
                                        &chorus_core::protocol::outbound::attachment_json(
                                            &attachment,
                                        ),
                                    )
                                }),
                        }
                    }
                })
            },
        );
    let download = warp::path!("v1" / "attachments" / String)
        .and(warp::get())
        .and(user_claims(ingest.tokens.clone()))
        .and(with_ingest(ingest))
        .then(
            |id: String, claims: Result<Claims, ApiError>, ingest: Arc<Ingest>| async move {
                respond(match claims {
                    Err(error) => Err(error),
                    Ok(claims) => download(&ingest, &claims.sub, &id).await,
                })
            },
        );
    request.or(upload).unify().or(download).unify().boxed()
}

async fn ask(ingest: &Ingest, user: &str, request: UploadRequest) -> Result<Response, ApiError> {
    let attachments = attachments(ingest)?;
    ingest.check_rates(user)?;
    if !ingest
        .members_of(&request.conversation)
        .await?
        .iter()
        .any(|member| member == user)
    {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            "not a member of this conversation",
        ));
    }
    let (id, expires_at) = attachments.request(user, request).await?;
    Ok(json_response(
        201,
        &json!({
            "id": id,
            "upload_url": format!("/v1/attachments/{id}"),
            "method": "PUT",
            "expires_at": expires_at,
        }),
    ))
}

async fn download(ingest: &Ingest, user: &str, id: &str) -> Result<Response, ApiError> {
    let attachments = attachments(ingest)?;
    let outcome = async {
        let file = attachments.download(id).await?;
        if !ingest
            .members_of(&file.conversation)
            .await?
            .iter()
            .any(|member| member == user)
        {
            // a non-member learns nothing about the file, not even that it exists
            return Err(ApiError::new(ErrorCode::NotFound, "no such attachment"));
        }
        Ok(file)
    }
    .await;
    let file = attachments.counted(outcome)?;
    let attachment = &file.attachment;
    let inline = shown_inline(&attachment.content_type);
    let mut response = Response::new(file.bytes.clone().into());
    let headers = response.headers_mut();
    let content_type = if inline {
        attachment.content_type.as_str()
    } else {
        "application/octet-stream"
    };
    if let Ok(value) = HeaderValue::from_str(content_type) {
        headers.insert(header::CONTENT_TYPE, value);
    }
    let disposition = format!(
        "{}; filename*=UTF-8''{}",
        if inline { "inline" } else { "attachment" },
        percent_encode(&attachment.name)
    );
    if let Ok(value) = HeaderValue::from_str(&disposition) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; sandbox"),
    );
    // a file never changes under its id; only its members may read it
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, max-age=86400, immutable"),
    );
    Ok(response)
}

/// RFC 5987 encoding of a file name for `Content-Disposition`.
fn percent_encode(name: &str) -> String {
    let mut encoded = String::with_capacity(name.len());
    for byte in name.bytes() {
        if byte.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&byte) {
            encoded.push(byte as char);
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

#[cfg(test)]
mod tests {
    #[test]
    fn file_names_are_percent_encoded() {
        assert_eq!(super::percent_encode("a b/猫.png"), "a%20b%2F%E7%8C%AB.png");
    }
}
