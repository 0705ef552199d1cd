//! `GET /v1/openapi.json`, the OpenAPI document generated from the code, against the running
//! server and the written contract: every route it names answers with a status it documents,
//! and every route docs/protocol.md documents is in it.

use chorus_tests::{API_KEY, TestServer, token};
use serde_json::{Value, json};

/// The routes docs/protocol.md names as `` `METHOD /path` `` (a path may wrap onto the next
/// line), with `<param>` written `{param}`.
fn documented_routes() -> Vec<(String, String)> {
    let text = include_str!("../../docs/protocol.md").replace("\n  ", " ");
    let mut routes = Vec::new();
    for method in ["GET", "POST", "PUT", "DELETE"] {
        let marker = format!("`{method} /");
        let mut rest = text.as_str();
        while let Some(at) = rest.find(&marker) {
            let path: String = rest[at + marker.len() - 1..]
                .chars()
                .take_while(|character| !matches!(character, '`' | ' ' | '?'))
                .collect();
            routes.push((
                method.to_lowercase(),
                path.replace('<', "{").replace('>', "}"),
            ));
            rest = &rest[at + marker.len()..];
        }
    }
    routes.sort();
    routes.dedup();
    routes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_names_every_route_and_every_route_it_names_answers()
-> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let http = reqwest::Client::new();
    let document: Value = http
        .get(format!("{}/v1/openapi.json", server.url()))
        .send()
        .await?
        .json()
        .await?;
    assert!(
        document["openapi"]
            .as_str()
            .is_some_and(|version| version.starts_with("3.")),
        "{document}"
    );
    let paths = document["paths"].as_object().expect("paths");

    // what the written contract documents is in the document
    let documented = documented_routes();
    assert!(documented.len() >= 15, "{documented:?}");
    for (method, path) in &documented {
        assert!(
            paths.get(path).and_then(|item| item.get(method)).is_some(),
            "{method} {path} is documented in docs/protocol.md but not in the OpenAPI document"
        );
    }

    // and every route of the document answers, with a status it documents
    let alice = token("alice", None);
    for (path, item) in paths {
        for (method, operation) in item.as_object().expect("path item") {
            let query = if path == "/v1/search" { "?q=hello" } else { "" };
            let url = format!(
                "{}{}{query}",
                server.url(),
                path.replace("{id}", "dm:alice:bob")
                    .replace("{file}", "app.js")
            );
            let mut request = match method.as_str() {
                "get" => http.get(&url),
                "post" => http.post(&url),
                "put" => http.put(&url),
                other => panic!("{other} {path}: a method the test does not know"),
            };
            let schemes: Vec<&str> = operation["security"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|requirement| requirement.as_object())
                .flat_map(|requirement| requirement.keys().map(String::as_str))
                .collect();
            if schemes.contains(&"user_token") {
                request = request.bearer_auth(&alice);
            } else if schemes.contains(&"api_key") {
                request = request.bearer_auth(API_KEY);
            }
            request = match path.as_str() {
                "/v1/events" => request.json(&json!({"events": []})),
                "/v1/conversations" if method == "post" => {
                    request.json(&json!({"id": "g:documented", "members": ["bob"]}))
                }
                "/v1/dev/token" => request.json(&json!({"user": "alice"})),
                "/v1/attachments" => request.json(
                    &json!({"conversation": "dm:alice:bob", "name": "a.txt", "size": 1, "type": "text/plain"}),
                ),
                "/v1/admin/replay" => request.json(&json!({"projection": "search"})),
                _ => request,
            };
            let status = request.send().await?.status().as_u16().to_string();
            let documented: Vec<&String> = operation["responses"]
                .as_object()
                .expect("responses")
                .keys()
                .collect();
            assert!(
                documented.contains(&&status),
                "{method} {path} answered {status}, which it does not document ({documented:?})"
            );
        }
    }
    server.served.shutdown().await
}
