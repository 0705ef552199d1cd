//! HTTP plumbing shared by the stages that serve HTTP (`ingest`, `search`): user and API-key
//! authentication filters and the one JSON error shape.
//!
//! Credential checks go through the failed-authentication limiter of the request's origin
//! (`core::auth_limit`): a bad token or API key spends the source address's budget, and an
//! address over it gets `429 rate_limited`.
//!
//! Every error leaves as `{"error":{"code":…,"message":…}}` with the status of its code; handlers
//! return `Result<Response, ApiError>` and [`respond`] turns both sides into a response.

use std::sync::Arc;

use serde::Serialize;
use warp::Filter;
use warp::http::StatusCode;
use warp::reply::Response;

use crate::auth::{Claims, TokenAuthority, check_api_key};
use crate::auth_limit::{CredentialKind, RequestOrigin, authenticate};
use crate::error::{ApiError, ErrorCode};

/// A JSON response with a status.
pub fn json_response(status: u16, body: &impl Serialize) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    warp::reply::with_status(warp::reply::json(body), status).into_response_owned()
}

/// The JSON error response of an [`ApiError`].
pub fn error_response(error: &ApiError) -> Response {
    json_response(error.code.http_status(), &error.http_body())
}

/// Turns a handler's result into a response.
pub fn respond(result: Result<Response, ApiError>) -> Response {
    result.unwrap_or_else(|error| error_response(&error))
}

/// `Reply::into_response` without importing the trait at every call site.
trait IntoResponseOwned {
    fn into_response_owned(self) -> Response;
}

impl<T: warp::Reply> IntoResponseOwned for T {
    fn into_response_owned(self) -> Response {
        self.into_response()
    }
}

/// The token from `Authorization: Bearer …`, or else from `?token=…`.
pub fn bearer_token(authorization: Option<&str>, query: Option<&str>) -> Option<String> {
    if let Some(token) = authorization.and_then(|value| value.strip_prefix("Bearer ")) {
        return Some(token.trim().to_owned());
    }
    let query = query?;
    query.split('&').find_map(|pair| {
        let (name, value) = pair.split_once('=')?;
        (name == "token").then(|| value.to_owned())
    })
}

/// Extracts the caller's verified claims, or fails with an `unauthorized` [`ApiError`].
pub fn user_claims(
    authority: Arc<TokenAuthority>,
) -> impl Filter<Extract = (Result<Claims, ApiError>,), Error = warp::Rejection> + Clone {
    warp::header::optional::<String>("authorization")
        .and(warp::query::raw().or(warp::any().map(String::new)).unify())
        .and(warp::ext::optional::<RequestOrigin>())
        .map(
            move |authorization: Option<String>, query: String, origin: Option<RequestOrigin>| {
                let token = bearer_token(authorization.as_deref(), Some(query.as_str()))
                    .ok_or_else(|| {
                        ApiError::new(ErrorCode::Unauthorized, "missing bearer token")
                    })?;
                authenticate(origin.as_ref(), CredentialKind::Token, || {
                    authority
                        .verify(&token)
                        .map_err(|error| ApiError::new(ErrorCode::Unauthorized, error.to_string()))
                })
            },
        )
}

/// Checks the business API key, or fails with an `unauthorized` [`ApiError`].
pub fn api_key(
    configured: Arc<str>,
) -> impl Filter<Extract = (Result<(), ApiError>,), Error = warp::Rejection> + Clone {
    warp::header::optional::<String>("authorization")
        .and(warp::ext::optional::<RequestOrigin>())
        .map(
            move |authorization: Option<String>, origin: Option<RequestOrigin>| {
                let presented = bearer_token(authorization.as_deref(), None)
                    .ok_or_else(|| ApiError::new(ErrorCode::Unauthorized, "missing api key"))?;
                authenticate(origin.as_ref(), CredentialKind::ApiKey, || {
                    check_api_key(&configured, &presented)
                        .map_err(|error| ApiError::new(ErrorCode::Unauthorized, error.to_string()))
                })
            },
        )
}

/// Reads a JSON body of at most `limit` bytes into `T`, with any content type. Malformed or
/// mistyped JSON is a `bad_request` [`ApiError`] naming the problem, never a rejection.
pub fn json_body<T: serde::de::DeserializeOwned + Send>(
    limit: u64,
) -> impl Filter<Extract = (Result<T, ApiError>,), Error = warp::Rejection> + Clone {
    warp::body::content_length_limit(limit)
        .and(warp::body::bytes())
        .map(|body: bytes::Bytes| {
            serde_json::from_slice::<T>(&body).map_err(|error| {
                ApiError::new(
                    ErrorCode::BadRequest,
                    format!("malformed json body: {error}"),
                )
            })
        })
}

/// Maps warp's own rejections (no route, wrong method, bad body) to the JSON error shape.
pub async fn recover(rejection: warp::Rejection) -> Result<Response, std::convert::Infallible> {
    let error = if rejection.is_not_found() {
        ApiError::new(ErrorCode::NotFound, "no such endpoint")
    } else if rejection.find::<warp::reject::MethodNotAllowed>().is_some() {
        ApiError::new(ErrorCode::NotFound, "no such endpoint for this method")
    } else if rejection.find::<warp::reject::PayloadTooLarge>().is_some() {
        ApiError::new(ErrorCode::TooLarge, "request body too large")
    } else if let Some(body_error) = rejection.find::<warp::filters::body::BodyDeserializeError>() {
        ApiError::new(
            ErrorCode::BadRequest,
            format!("malformed json body: {body_error}"),
        )
    } else if rejection.find::<warp::reject::InvalidQuery>().is_some() {
        ApiError::new(ErrorCode::BadRequest, "invalid query string")
    } else if rejection
        .find::<warp::reject::UnsupportedMediaType>()
        .is_some()
    {
        ApiError::new(ErrorCode::BadRequest, "expected a json body")
    } else {
        ApiError::new(ErrorCode::BadRequest, format!("bad request: {rejection:?}"))
    };
    Ok(error_response(&error))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_from_header_or_query() {
        assert_eq!(
            bearer_token(Some("Bearer abc"), None).as_deref(),
            Some("abc")
        );
        assert_eq!(
            bearer_token(None, Some("a=1&token=xyz")).as_deref(),
            Some("xyz")
        );
        assert_eq!(bearer_token(Some("Basic x"), None), None);
    }
}
