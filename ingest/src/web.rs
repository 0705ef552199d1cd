//! The web chat client: the static files of `web/` (at the workspace root), embedded in the
//! binary, served at `/` (the page) and `/web/<file>` (its script and style sheet), plus
//! `/web/config.json`: where the page reads history and search from (`[web] read_url`; empty
//! means this origin, as with `chorus serve`; in the distributed mode, the search nodes).
//!
//! Every ingest node serves them, so the page comes with `chorus serve` and with each
//! distributed ingest node. Nothing is read from disk at run time and nothing shadows the API:
//! the routes take only `GET /` and `GET /web/…`; an unknown file answers the usual JSON
//! `not_found` error.

use chorus_core::error::{ApiError, ErrorCode};
use chorus_core::http::error_response;
use warp::Filter;
use warp::Reply;
use warp::filters::BoxedFilter;
use warp::http::{HeaderValue, StatusCode, header};
use warp::reply::Response;

/// One embedded file: its name under `/web/`, content type and bytes.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static str,
}

const INDEX: Asset = Asset {
    name: "index.html",
    content_type: "text/html; charset=utf-8",
    body: include_str!("../../web/index.html"),
};

/// What `/web/<file>` serves.
const ASSETS: &[Asset] = &[
    INDEX,
    Asset {
        name: "chorus-client.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../../web/chorus-client.js"),
    },
    Asset {
        name: "app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../../web/app.js"),
    },
    Asset {
        name: "style.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("../../web/style.css"),
    },
];

/// The files change with the binary, so a browser revalidates rather than keeping an old page
/// after an upgrade; they are small.
const CACHE_CONTROL: &str = "no-cache";

fn asset_response(asset: &Asset) -> Response {
    let mut response = Response::new(asset.body.into());
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(CACHE_CONTROL),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    *response.status_mut() = StatusCode::OK;
    response
}

fn asset_named(name: &str) -> Response {
    match ASSETS.iter().find(|asset| asset.name == name) {
        Some(asset) => asset_response(asset),
        None => error_response(&ApiError::new(
            ErrorCode::NotFound,
            format!("no such file: /web/{name}"),
        )),
    }
}

/// `GET /` (the page) and `GET /web/<file>`.
pub fn routes(read_url: &str) -> BoxedFilter<(Response,)> {
    let page = warp::path::end()
        .and(warp::get())
        .map(|| asset_response(&INDEX));
    // where the page reads history and search from (`[web] read_url`; empty: this origin)
    let settings = serde_json::json!({ "read_url": read_url.trim_end_matches('/') });
    let config = warp::path!("web" / "config.json")
        .and(warp::get())
        .map(move || {
            let mut response = warp::reply::json(&settings).into_response();
            response.headers_mut().insert(
                header::CACHE_CONTROL,
                HeaderValue::from_static(CACHE_CONTROL),
            );
            response
        });
    let files = warp::path!("web" / String)
        .and(warp::get())
        .map(|name: String| asset_named(&name));
    page.or(config).unify().or(files).unify().boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn get(path: &str) -> warp::http::Response<bytes::Bytes> {
        warp::test::request()
            .method("GET")
            .path(path)
            .reply(&routes("http://search.example:8081/"))
            .await
    }

    #[tokio::test]
    async fn serves_the_page_and_its_files_with_their_types() {
        let page = get("/").await;
        assert_eq!(page.status(), 200);
        assert_eq!(page.headers()["content-type"], "text/html; charset=utf-8");
        assert_eq!(page.headers()["cache-control"], CACHE_CONTROL);
        for (path, content_type) in [
            ("/web/index.html", "text/html; charset=utf-8"),
            ("/web/chorus-client.js", "text/javascript; charset=utf-8"),
            ("/web/app.js", "text/javascript; charset=utf-8"),
            ("/web/style.css", "text/css; charset=utf-8"),
        ] {
            let response = get(path).await;
            assert_eq!(response.status(), 200, "{path}");
            assert_eq!(response.headers()["content-type"], content_type, "{path}");
        }
    }

    #[tokio::test]
    async fn the_page_learns_where_to_read_from() {
        let response = get("/web/config.json").await;
        assert_eq!(response.status(), 200);
        let body: serde_json::Value = serde_json::from_slice(response.body()).expect("json");
        assert_eq!(body["read_url"], "http://search.example:8081");
    }

    #[tokio::test]
    async fn an_unknown_file_is_a_json_not_found() {
        let response = get("/web/secret.txt").await;
        assert_eq!(response.status(), 404);
        let body: serde_json::Value = serde_json::from_slice(response.body()).expect("json");
        assert_eq!(body["error"]["code"], "not_found");
    }

    #[tokio::test]
    async fn other_paths_are_left_to_other_routes() {
        for path in [
            "/v1/conversations",
            "/health",
            "/metrics",
            "/web",
            "/index.html",
        ] {
            let rejected = warp::test::request()
                .method("GET")
                .path(path)
                .filter(&routes(""))
                .await;
            assert!(
                rejected.is_err(),
                "{path} must not be taken by the web routes"
            );
        }
    }
}
