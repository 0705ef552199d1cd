//! Attachments end to end: a member asks for an upload, puts the bytes, sends a message that
//! carries the file, and the other member downloads it; non-members, oversized files, refused
//! types, short or long uploads and files borrowed from others are refused with clear errors;
//! forwarding copies the file for the target conversation. Once on the embedded default (local
//! files) and once on a real S3-compatible server (`scripts/services/s3`); and across two
//! distributed ingest nodes sharing that store (uploaded through one, downloaded through the
//! other), beside one with no store, which refuses attachments as `unavailable`.

use std::sync::Arc;

use chorus_tests::{ChildServer, Client, TestServer, metric, metrics_text, token};
use object_store::{ObjectStore, ObjectStoreExt};
use serde_json::{Value, json};

/// The bytes of a small PNG-looking file: not every byte the same, so a mix-up shows.
fn file_bytes(length: usize) -> Vec<u8> {
    let mut bytes = b"\x89PNG\r\n\x1a\n".to_vec();
    bytes.extend((0..length.saturating_sub(8)).map(|n| (n * 31 % 251) as u8));
    bytes
}

struct Http {
    base: String,
    http: reqwest::Client,
}

impl Http {
    /// `POST /v1/attachments` as `user`.
    async fn ask(&self, user: &str, request: Value) -> anyhow::Result<(u16, Value)> {
        let response = self
            .http
            .post(format!("{}/v1/attachments", self.base))
            .bearer_auth(token(user, None))
            .json(&request)
            .send()
            .await?;
        Ok((response.status().as_u16(), response.json().await?))
    }

    /// `PUT` of `bytes` to an upload URL as `user`.
    async fn put(&self, user: &str, url: &str, bytes: Vec<u8>) -> anyhow::Result<(u16, Value)> {
        let response = self
            .http
            .put(format!("{}{url}", self.base))
            .bearer_auth(token(user, None))
            .body(bytes)
            .send()
            .await?;
        Ok((response.status().as_u16(), response.json().await?))
    }

    /// Asks for an upload and puts the bytes; returns the attachment id.
    async fn upload(
        &self,
        user: &str,
        conversation: &str,
        name: &str,
        content_type: &str,
        bytes: Vec<u8>,
    ) -> anyhow::Result<String> {
        let (status, asked) = self
            .ask(
                user,
                json!({"conversation": conversation, "name": name, "size": bytes.len(), "type": content_type}),
            )
            .await?;
        anyhow::ensure!(status == 201, "ask: {status} {asked}");
        let url = asked["upload_url"].as_str().unwrap_or_default().to_owned();
        let (status, uploaded) = self.put(user, &url, bytes).await?;
        anyhow::ensure!(status == 200, "put: {status} {uploaded}");
        Ok(asked["id"].as_str().unwrap_or_default().to_owned())
    }

    /// `GET /v1/attachments/{id}` as `user`: status, headers and bytes.
    async fn download(
        &self,
        user: &str,
        id: &str,
    ) -> anyhow::Result<(u16, reqwest::header::HeaderMap, Vec<u8>)> {
        let response = self
            .http
            .get(format!("{}/v1/attachments/{id}", self.base))
            .bearer_auth(token(user, None))
            .send()
            .await?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        Ok((status, headers, response.bytes().await?.to_vec()))
    }
}

/// Sends `frame` and returns its answer: the `ack` or the `error` frame.
async fn answer(client: &mut Client, frame: Value) -> anyhow::Result<Value> {
    let id = frame["id"].clone();
    client.send_json(frame).await?;
    client
        .expect(|reply| reply["id"] == id && (reply["type"] == "ack" || reply["type"] == "error"))
        .await
}

/// Upload, send and download by members; each refusal with its error. `store` is where the
/// node keeps files, to check the bytes are really there.
async fn upload_send_download(
    server: &TestServer,
    store: Arc<dyn ObjectStore>,
) -> anyhow::Result<()> {
    let http = Http {
        base: server.url(),
        http: reqwest::Client::new(),
    };
    let url = server.ws_url();
    let mut alice = Client::connect(&url, "alice", None).await?;
    let mut bob = Client::connect(&url, "bob", None).await?;
    let mut carol = Client::connect(&url, "carol", None).await?;

    // a picture, large enough to go to the store in two parts
    let picture = file_bytes(6 * 1024 * 1024 + 123);
    let id = http
        .upload(
            "alice",
            "dm:alice:bob",
            "猫 photo.png",
            "image/png",
            picture.clone(),
        )
        .await?;
    let stored = store
        .get(&object_store::path::Path::from(format!(
            "attachments/{id}/file"
        )))
        .await?
        .bytes()
        .await?;
    assert!(
        stored.as_ref() == picture.as_slice(),
        "the store holds the bytes"
    );

    let ack = answer(
        &mut alice,
        json!({"type": "send", "id": "p1", "conversation": "dm:alice:bob", "text": "", "attachment": id}),
    )
    .await?;
    assert_eq!(ack["type"], "ack", "{ack}");
    let expected =
        json!({"id": id, "name": "猫 photo.png", "size": picture.len(), "type": "image/png"});
    let event = bob
        .expect(|frame| frame["type"] == "event" && frame["seq"] == ack["seq"])
        .await?;
    assert_eq!(
        event["attachment"], expected,
        "members get the file's details"
    );
    let history = server.api().messages("bob", "dm:alice:bob").await?;
    assert_eq!(history[0]["attachment"], expected, "history keeps them");

    let (status, headers, bytes) = http.download("bob", &id).await?;
    assert_eq!(status, 200);
    assert!(bytes == picture, "bob downloads the bytes alice uploaded");
    assert_eq!(
        headers["content-type"], "image/png",
        "images are shown inline"
    );
    assert_eq!(headers["x-content-type-options"], "nosniff");
    let (status, _, bytes) = http.download("carol", &id).await?;
    assert_eq!(
        (status, bytes.is_empty()),
        (404, false),
        "a non-member gets not_found (an error body, not the file)"
    );
    assert!(!String::from_utf8_lossy(&bytes).contains("PNG"));

    // limits and refusals, each with its own error
    let (status, refused) = http
        .ask(
            "alice",
            json!({"conversation": "dm:alice:bob", "name": "huge.zip", "size": 26 * 1024 * 1024, "type": "application/zip"}),
        )
        .await?;
    assert_eq!(
        (status, &refused["error"]["code"]),
        (413, &json!("too_large"))
    );
    let (status, refused) = http
        .ask(
            "alice",
            json!({"conversation": "dm:alice:bob", "name": "page.html", "size": 10, "type": "text/html"}),
        )
        .await?;
    assert_eq!(
        (status, &refused["error"]["code"]),
        (415, &json!("unsupported_type"))
    );
    let (status, refused) = http
        .ask(
            "carol",
            json!({"conversation": "dm:alice:bob", "name": "x.png", "size": 10, "type": "image/png"}),
        )
        .await?;
    assert_eq!(
        (status, &refused["error"]["code"]),
        (403, &json!("forbidden"))
    );
    let (status, refused) = http
        .ask(
            "alice",
            json!({"conversation": "dm:alice:bob", "name": "../etc/passwd", "size": 10, "type": "text/plain"}),
        )
        .await?;
    assert_eq!(
        (status, &refused["error"]["code"]),
        (400, &json!("bad_request"))
    );

    // an upload of other than the size asked for is refused, and leaves no file
    let (_, asked) = http
        .ask(
            "alice",
            json!({"conversation": "dm:alice:bob", "name": "short.txt", "size": 100, "type": "text/plain"}),
        )
        .await?;
    let short = asked["id"].as_str().unwrap_or_default().to_owned();
    let upload_url = asked["upload_url"].as_str().unwrap_or_default().to_owned();
    let (status, refused) = http.put("alice", &upload_url, vec![b'a'; 150]).await?;
    assert_eq!(
        (status, &refused["error"]["code"]),
        (413, &json!("too_large"))
    );
    let (status, refused) = http.put("alice", &upload_url, vec![b'a'; 40]).await?;
    assert_eq!(
        (status, &refused["error"]["code"]),
        (400, &json!("bad_request"))
    );
    let (status, refused) = http.put("bob", &upload_url, vec![b'a'; 100]).await?;
    assert_eq!(
        (status, &refused["error"]["code"]),
        (403, &json!("forbidden")),
        "only the user who asked uploads"
    );
    let refused = answer(
        &mut alice,
        json!({"type": "send", "id": "p2", "conversation": "dm:alice:bob", "text": "see", "attachment": short}),
    )
    .await?;
    assert_eq!(
        refused["code"], "bad_request",
        "not uploaded yet: {refused}"
    );
    let (status, _) = http.put("alice", &upload_url, vec![b'a'; 100]).await?;
    assert_eq!(status, 200, "the right size goes through");
    let (status, refused) = http.put("alice", &upload_url, vec![b'a'; 100]).await?;
    assert_eq!(
        (status, &refused["error"]["code"]),
        (400, &json!("bad_request")),
        "once"
    );

    // a message carries only its sender's file, for its conversation
    let refused = answer(
        &mut bob,
        json!({"type": "send", "id": "p3", "conversation": "dm:alice:bob", "text": "mine?", "attachment": id}),
    )
    .await?;
    assert_eq!(refused["code"], "forbidden", "{refused}");
    let refused = answer(
        &mut alice,
        json!({"type": "send", "id": "p4", "conversation": "dm:alice:carol", "text": "look", "attachment": id}),
    )
    .await?;
    assert_eq!(
        refused["code"], "forbidden",
        "not the conversation it was uploaded for"
    );
    let refused = answer(
        &mut alice,
        json!({"type": "send", "id": "p5", "conversation": "dm:alice:bob", "text": "", "attachment": "0".repeat(32)}),
    )
    .await?;
    assert_eq!(refused["code"], "not_found", "{refused}");
    let refused = answer(
        &mut alice,
        json!({"type": "send", "id": "p6", "conversation": "dm:alice:bob", "text": ""}),
    )
    .await?;
    assert_eq!(refused["code"], "bad_request", "no text and no file");

    // bob forwards the picture to carol: she gets a copy of her own, not the original
    let forwarded = answer(
        &mut bob,
        json!({"type": "forward", "id": "f1", "conversation": "dm:bob:carol", "source": "dm:alice:bob", "seq": ack["seq"]}),
    )
    .await?;
    assert_eq!(forwarded["type"], "ack", "{forwarded}");
    let copy = carol
        .expect(|frame| frame["type"] == "event" && frame["conversation"] == "dm:bob:carol")
        .await?;
    let copy_id = copy["attachment"]["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert_ne!(copy_id, id, "a new id for the target's members");
    assert_eq!(copy["attachment"]["name"], "猫 photo.png");
    let (status, _, bytes) = http.download("carol", &copy_id).await?;
    assert_eq!(status, 200);
    assert!(bytes == picture, "carol downloads the copy");
    let (status, _, _) = http.download("carol", &id).await?;
    assert_eq!(status, 404, "and still not the original");

    // a file that is not an image is sent to be saved, never shown as a page of this origin
    let notes = http
        .upload(
            "alice",
            "dm:alice:bob",
            "notes.txt",
            "text/plain",
            b"<script>x</script>".to_vec(),
        )
        .await?;
    let (status, headers, _) = http.download("bob", &notes).await?;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "application/octet-stream");
    assert!(
        headers["content-disposition"]
            .to_str()?
            .starts_with("attachment;")
    );

    let text = metrics_text(&server.url()).await?;
    for (operation, outcome, at_least) in [
        ("request", "ok", 3.0),
        ("request", "refused", 3.0),
        ("upload", "ok", 3.0),
        ("upload", "refused", 4.0),
        ("download", "ok", 3.0),
        ("download", "refused", 2.0),
        ("forward", "ok", 1.0),
    ] {
        let counted = metric(
            &text,
            "chorus_attachment_operations_total",
            &[("operation", operation), ("outcome", outcome)],
        );
        assert!(counted >= at_least, "{operation} {outcome}: {counted}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_upload_send_and_download_on_local_files() -> anyhow::Result<()> {
    let server = TestServer::start_with(chorus_tests::generous_limits).await?;
    let store: Arc<dyn ObjectStore> =
        Arc::new(object_store::local::LocalFileSystem::new_with_prefix(
            server.data_dir.path().join("attachments"),
        )?);
    upload_send_download(&server, store).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_upload_send_and_download_on_an_s3_server() -> anyhow::Result<()> {
    let Some(s3) = chorus_tests::s3_service() else {
        return Ok(());
    };
    let settings = s3.clone();
    let server = TestServer::start_with(move |config| {
        chorus_tests::generous_limits(config);
        config.attachments.store = format!("s3://{}", settings.bucket);
        config.attachments.s3_endpoint = settings.endpoint.clone();
        config.attachments.s3_access_key_id = settings.access_key_id.clone();
        config.attachments.s3_secret_access_key = settings.secret_access_key.clone();
    })
    .await?;
    let store: Arc<dyn ObjectStore> = Arc::new(
        object_store::aws::AmazonS3Builder::new()
            .with_bucket_name(&s3.bucket)
            .with_region("us-east-1")
            .with_endpoint(&s3.endpoint)
            .with_allow_http(true)
            .with_access_key_id(&s3.access_key_id)
            .with_secret_access_key(&s3.secret_access_key)
            .build()?,
    );
    upload_send_download(&server, store).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distributed_ingest_nodes_share_the_s3_store() -> anyhow::Result<()> {
    let Some(services) = chorus_tests::distributed_services() else {
        return Ok(());
    };
    let Some(s3) = chorus_tests::s3_service() else {
        return Ok(());
    };
    let run = format!("files{}", std::process::id());
    let role = |name: &str| {
        vec![
            name.to_owned(),
            "--listen".to_owned(),
            "127.0.0.1:0".to_owned(),
        ]
    };
    let with_store = |node: &str| {
        let mut environment = chorus_tests::role_environment(&services, &run, node);
        environment.extend([
            ("CHORUS_ATTACHMENTS_STORE", format!("s3://{}", s3.bucket)),
            ("CHORUS_ATTACHMENTS_S3_ENDPOINT", s3.endpoint.clone()),
            (
                "CHORUS_ATTACHMENTS_S3_ACCESS_KEY_ID",
                s3.access_key_id.clone(),
            ),
            (
                "CHORUS_ATTACHMENTS_S3_SECRET_ACCESS_KEY",
                s3.secret_access_key.clone(),
            ),
        ]);
        environment
    };
    let _router = ChildServer::spawn(
        &role("router"),
        &chorus_tests::role_environment(&services, &run, "router"),
    )
    .await?;
    let east = ChildServer::spawn(&role("ingest"), &with_store("ingest-a")).await?;
    let west = ChildServer::spawn(&role("ingest"), &with_store("ingest-b")).await?;
    let bare = ChildServer::spawn(
        &role("ingest"),
        &chorus_tests::role_environment(&services, &run, "ingest-c"),
    )
    .await?;

    let alice = format!("{run}alice");
    let bob = format!("{run}bob");
    let conversation = format!("dm:{alice}:{bob}");
    let mut alice_client = Client::connect(&east.ws_url(), &alice, None).await?;
    let mut bob_client = Client::connect(&west.ws_url(), &bob, None).await?;
    let picture = file_bytes(300_000);
    let through_east = Http {
        base: east.url.clone(),
        http: reqwest::Client::new(),
    };
    let id = through_east
        .upload(
            &alice,
            &conversation,
            "map.png",
            "image/png",
            picture.clone(),
        )
        .await?;
    let ack = answer(
        &mut alice_client,
        json!({"type": "send", "id": "s1", "conversation": conversation, "text": "the map", "attachment": id}),
    )
    .await?;
    assert_eq!(ack["type"], "ack", "{ack}");
    let event = bob_client
        .expect(|frame| frame["type"] == "event" && frame["seq"] == ack["seq"])
        .await?;
    assert_eq!(event["attachment"]["id"], json!(id));
    let through_west = Http {
        base: west.url.clone(),
        http: reqwest::Client::new(),
    };
    let (status, _, bytes) = through_west.download(&bob, &id).await?;
    assert_eq!(
        status, 200,
        "the other node serves the file from the shared store"
    );
    assert!(bytes == picture);

    // a distributed node with no shared store refuses, clearly, rather than keep files alone
    let through_bare = Http {
        base: bare.url.clone(),
        http: reqwest::Client::new(),
    };
    let (status, refused) = through_bare
        .ask(
            &alice,
            json!({"conversation": conversation, "name": "a.png", "size": 10, "type": "image/png"}),
        )
        .await?;
    assert_eq!(
        (status, &refused["error"]["code"]),
        (503, &json!("unavailable"))
    );
    let mut on_bare = Client::connect(&bare.ws_url(), &alice, None).await?;
    let refused = answer(
        &mut on_bare,
        json!({"type": "send", "id": "s2", "conversation": conversation, "text": "", "attachment": id}),
    )
    .await?;
    assert_eq!(refused["code"], "unavailable", "{refused}");
    Ok(())
}
