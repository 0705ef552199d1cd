//! HTTP calls against a node, as a user (a token) or as a business system (the test API key):
//! every call returns the status with the body, and the paged reads follow every page. Also the
//! node's `/metrics`, read as Prometheus text.

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::credentials::{API_KEY, token};

/// HTTP calls against a server.
#[derive(Clone)]
pub struct Api {
    pub base: String,
    pub http: reqwest::Client,
}

impl Api {
    pub fn new(base: &str) -> Api {
        Api {
            base: base.to_owned(),
            http: reqwest::Client::new(),
        }
    }

    /// GET with a user token; returns (status, body).
    pub async fn get(&self, user: &str, path: &str) -> anyhow::Result<(u16, Value)> {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(token(user, None))
            .send()
            .await?;
        let status = response.status().as_u16();
        Ok((status, response.json().await?))
    }

    /// POST JSON with a bearer credential; returns (status, body).
    pub async fn post(
        &self,
        bearer: &str,
        path: &str,
        body: &Value,
    ) -> anyhow::Result<(u16, Value)> {
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(bearer)
            .json(body)
            .send()
            .await?;
        let status = response.status().as_u16();
        Ok((status, response.json().await?))
    }

    /// Business events with the test API key; returns the `results`.
    pub async fn business(&self, events: Value) -> anyhow::Result<Vec<Value>> {
        let (status, body) = self
            .post(API_KEY, "/v1/events", &json!({ "events": events }))
            .await?;
        if status != 200 {
            bail!("POST /v1/events answered {status}: {body}");
        }
        Ok(body["results"].as_array().cloned().unwrap_or_default())
    }

    pub async fn events(
        &self,
        user: &str,
        conversation: &str,
        after_seq: u64,
    ) -> anyhow::Result<Vec<Value>> {
        let mut all = Vec::new();
        let mut after = after_seq;
        loop {
            let path =
                format!("/v1/conversations/{conversation}/events?after_seq={after}&limit=1000");
            let (status, body) = self.get(user, &path).await?;
            if status != 200 {
                bail!("GET {path} answered {status}: {body}");
            }
            let page = body["events"].as_array().cloned().unwrap_or_default();
            let Some(last) = page.last() else { break };
            after = last["seq"].as_u64().context("seq")?;
            all.extend(page);
        }
        Ok(all)
    }

    pub async fn messages(&self, user: &str, conversation: &str) -> anyhow::Result<Vec<Value>> {
        let mut all = Vec::new();
        let mut after = 0;
        loop {
            let path =
                format!("/v1/conversations/{conversation}/messages?after_seq={after}&limit=1000");
            let (status, body) = self.get(user, &path).await?;
            if status != 200 {
                bail!("GET {path} answered {status}: {body}");
            }
            let page = body["messages"].as_array().cloned().unwrap_or_default();
            let Some(last) = page.last() else { break };
            after = last["seq"].as_u64().context("seq")?;
            all.extend(page);
        }
        Ok(all)
    }

    pub async fn search(&self, user: &str, query: &str) -> anyhow::Result<Vec<Value>> {
        let encoded: String = url_encode(query);
        let (status, body) = self
            .get(user, &format!("/v1/search?q={encoded}&limit=100"))
            .await?;
        if status != 200 {
            bail!("search answered {status}: {body}");
        }
        Ok(body["hits"].as_array().cloned().unwrap_or_default())
    }
}

/// Percent-encodes a query value.
pub fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (byte as char).to_string()
            }
            _ => format!("%{byte:02X}"),
        })
        .collect()
}

/// The value of one Prometheus sample in a `/metrics` text, e.g.
/// `metric(text, "chorus_breaker_transitions_total", &[("breaker", "redis"), ("state", "open")])`;
/// 0 when absent. Labels must all match (order-independent).
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (series_name, series_labels) = match series.split_once('{') {
                Some((series_name, rest)) => (series_name, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            if series_name != name {
                return None;
            }
            let matches = labels
                .iter()
                .all(|(key, value)| series_labels.contains(&format!("{key}=\"{value}\"")));
            matches.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}

/// `GET <base>/metrics` as text.
pub async fn metrics_text(base: &str) -> anyhow::Result<String> {
    Ok(reqwest::get(format!("{base}/metrics"))
        .await?
        .text()
        .await?)
}
