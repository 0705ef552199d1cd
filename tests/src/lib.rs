//! Test support for Chorus's end-to-end tests: a real server (in-process on `127.0.0.1:0`, or the
//! `chorus` binary as a child process), real WebSocket clients, and an HTTP client.
//!
//! Waiting is always for a condition with a deadline (a frame, an HTTP answer), never a sleep.
//!
//! One module per mechanism, everything re-exported here:
//! - `in_process`: `chorus serve` inside the test ([`TestServer`], [`test_config`]);
//! - `child_server`: the `chorus` binary as a child process ([`ChildServer`], the role
//!   arguments and environment), launched by `chorus_process`, which the bench shares;
//! - `api`: HTTP calls as a user or a business system ([`Api`]), `/metrics` readings;
//! - `websocket`: one WebSocket session ([`Client`]);
//! - `participant`: a user who resends and reconnects through failures ([`Participant`]);
//! - `services`: the outside services of a run (skipped without them, a failure in CI) and a
//!   redis-server or ClickHouse harness of the test's own;
//! - `slow_client`: slow raw TCP clients and the `/health` answer that must stay prompt;
//! - `credentials`: the test secrets and tokens signed with them.

use std::time::Duration;

mod api;
mod child_server;
mod credentials;
mod in_process;
mod participant;
mod services;
mod slow_client;
pub mod tls;
mod websocket;

pub use api::{Api, metric, metrics_text, url_encode};
pub use child_server::{ChildServer, chorus_binary, role_arguments, role_environment};
pub use credentials::{API_KEY, JWT_SECRET, token};
pub use in_process::{TestServer, generous_limits, test_config};
pub use participant::{ACK_PATIENCE, CLOSE_SERVICE_RESTART, Participant, SEND_DEADLINE};
pub use services::{
    OwnClickHouse, OwnRedis, S3Service, SecuredKafka, clickhouse_service, distributed_services,
    free_port, s3_service, secured_kafka,
};
pub use slow_client::{
    PROMPT_ANSWER, health_status, open_partial_requests, partial_head_closed_after,
    read_until_closed,
};
pub use websocket::Client;

/// How long a test waits for one expected thing before failing.
pub const WAIT: Duration = Duration::from_secs(15);
