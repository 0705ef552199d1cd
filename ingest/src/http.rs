//! HTTP writes: business events (`POST /v1/events`), group creation by a user
//! (`POST /v1/conversations`), and dev tokens (`POST /v1/dev/token`).
//!
//! A write is answered once its outcome is known: the router's ack (with the seq) or its error,
//! delivered typed ([`EventOutcome`]) to a one-shot waiter in the hub and written as JSON only
//! in the response. Retried ids are idempotent.

use std::sync::Arc;
use std::time::Duration;

use chorus_core::auth::{Claims, SYSTEM_SENDER, unix_millis};
use chorus_core::error::{ApiError, ErrorCode};
use chorus_core::http::{api_key, json_body, json_response, respond, user_claims};
use chorus_core::protocol::outbound::EventOutcome;
use chorus_core::validate::validate_ingress;
use chorus_schemas::{EventBody, IngressEvent};
use serde::Deserialize;
use serde_json::{Value, json};
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::reply::Response;

use crate::Ingest;

/// How long an HTTP write waits for the router's outcomes, for the whole request.
const OUTCOME_WAIT: Duration = Duration::from_secs(15);

/// One item of `POST /v1/events`.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
enum BusinessEvent {
    Send {
        id: String,
        conversation: String,
        sender: String,
        text: String,
        /// The seq of the message (same conversation) this one answers.
        #[serde(default)]
        reply_to: Option<u64>,
    },
    CreateGroup {
        id: String,
        conversation: String,
        members: Vec<String>,
        title: Option<String>,
    },
    AddMembers {
        id: String,
        conversation: String,
        members: Vec<String>,
    },
    RemoveMembers {
        id: String,
        conversation: String,
        members: Vec<String>,
    },
    /// Gives a member of a group a role (`owner`, `admin`, `member`).
    SetRole {
        id: String,
        conversation: String,
        member: String,
        role: chorus_schemas::Role,
    },
    Rename {
        id: String,
        conversation: String,
        title: String,
    },
    Disband {
        id: String,
        conversation: String,
    },
    /// How long the conversation's messages live, in seconds (0: the node's default).
    SetRetention {
        id: String,
        conversation: String,
        ttl_seconds: u64,
    },
}

#[derive(Debug, Deserialize)]
struct BusinessBatch {
    events: Vec<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateConversation {
    id: String,
    #[serde(default)]
    members: Vec<String>,
    title: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DevTokenRequest {
    user: String,
    device: Option<String>,
}

impl Ingest {
    fn new_event(
        &self,
        conversation: String,
        sender: String,
        id: String,
        body: EventBody,
    ) -> IngressEvent {
        IngressEvent {
            event_id: uuid::Uuid::now_v7().to_string(),
            conversation,
            sender,
            client_msg_id: Some(id),
            ts_ms: unix_millis(),
            origin_cluster: self.config.cluster.clone(),
            origin_node: Some(self.config.node_id.clone()),
            origin_session: Some(format!("http-{}", uuid::Uuid::new_v4().simple())),
            trusted: false,
            body,
        }
    }

    /// Appends validated events and waits for each one's outcome, in input order.
    async fn write_and_wait(&self, events: Vec<IngressEvent>) -> Vec<EventOutcome> {
        let waiters: Vec<_> = events
            .iter()
            .map(|event| {
                self.hub
                    .wait_for(event.origin_session.as_deref().unwrap_or_default())
            })
            .collect();
        if let Err(error) = self.append(&events).await {
            for event in &events {
                self.hub
                    .forget_waiter(event.origin_session.as_deref().unwrap_or_default());
            }
            return events
                .iter()
                .map(|event| EventOutcome::Failed {
                    client_msg_id: event.client_msg_id.clone(),
                    error: error.clone(),
                })
                .collect();
        }
        let mut outcomes = Vec::with_capacity(events.len());
        let deadline = tokio::time::Instant::now() + OUTCOME_WAIT;
        for (event, waiter) in events.iter().zip(waiters) {
            let outcome = match tokio::time::timeout_at(deadline, waiter).await {
                Ok(Ok(outcome)) => outcome,
                _ => {
                    self.hub
                        .forget_waiter(event.origin_session.as_deref().unwrap_or_default());
                    EventOutcome::Failed {
                        client_msg_id: event.client_msg_id.clone(),
                        error: ApiError::new(
                            ErrorCode::Unavailable,
                            "the event is durable but was not sequenced in time; retry with the same id",
                        ),
                    }
                }
            };
            outcomes.push(outcome);
        }
        outcomes
    }

    async fn business_batch(&self, batch: BusinessBatch) -> Result<Response, ApiError> {
        let limits = &self.config.limits;
        if batch.events.len() > limits.max_batch_events {
            return Err(ApiError::new(
                ErrorCode::TooLarge,
                format!("at most {} events per request", limits.max_batch_events),
            ));
        }
        if self.node_limiter.check().is_err() {
            self.metrics.reject("rate_limited");
            return Err(ApiError::new(
                ErrorCode::RateLimited,
                "this node is at its request rate",
            ));
        }
        let mut results: Vec<Value> = Vec::with_capacity(batch.events.len());
        let mut accepted = Vec::new();
        let mut accepted_slots = Vec::new();
        for item in batch.events {
            let id = item.get("id").and_then(Value::as_str).map(str::to_owned);
            let parsed = serde_json::from_value::<BusinessEvent>(item)
                .map_err(|error| ApiError::new(ErrorCode::BadRequest, error.to_string()))
                .and_then(|event| {
                    let ingress = self.business_ingress(event);
                    validate_ingress(&ingress, limits).map(|_| ingress)
                });
            match parsed {
                Ok(ingress) => {
                    accepted_slots.push(results.len());
                    results.push(Value::Null);
                    accepted.push(ingress);
                }
                Err(error) => {
                    self.metrics.reject(error.code.as_str());
                    results.push(json!({"id": id, "error": error.http_body()["error"]}));
                }
            }
        }
        let ids: Vec<Option<String>> = accepted
            .iter()
            .map(|event| event.client_msg_id.clone())
            .collect();
        let outcomes = self.write_and_wait(accepted).await;
        for ((slot, id), outcome) in accepted_slots.into_iter().zip(ids).zip(outcomes) {
            results[slot] = match outcome {
                EventOutcome::Acked { seq, event_id, .. } => {
                    json!({"id": id, "seq": seq, "event_id": event_id})
                }
                EventOutcome::Failed { error, .. } => {
                    json!({"id": id, "error": error.http_body()["error"]})
                }
                EventOutcome::Accepted { home, .. } => {
                    json!({"id": id, "accepted": true, "home": home})
                }
            };
        }
        Ok(json_response(200, &json!({"results": results})))
    }

    fn business_ingress(&self, event: BusinessEvent) -> IngressEvent {
        let (conversation, sender, id, body) = match event {
            BusinessEvent::Send {
                id,
                conversation,
                sender,
                text,
                reply_to,
            } => (
                conversation,
                sender,
                id,
                EventBody::MessageSent(chorus_schemas::Message {
                    text,
                    reply_to,
                    ..chorus_schemas::Message::default()
                }),
            ),
            BusinessEvent::CreateGroup {
                id,
                conversation,
                members,
                title,
            } => (
                conversation,
                SYSTEM_SENDER.to_owned(),
                id,
                EventBody::ConversationCreated { title, members },
            ),
            BusinessEvent::AddMembers {
                id,
                conversation,
                members,
            } => (
                conversation,
                SYSTEM_SENDER.to_owned(),
                id,
                EventBody::MembersAdded { members },
            ),
            BusinessEvent::RemoveMembers {
                id,
                conversation,
                members,
            } => (
                conversation,
                SYSTEM_SENDER.to_owned(),
                id,
                EventBody::MembersRemoved { members },
            ),
            BusinessEvent::SetRole {
                id,
                conversation,
                member,
                role,
            } => (
                conversation,
                SYSTEM_SENDER.to_owned(),
                id,
                EventBody::RoleChanged { member, role },
            ),
            BusinessEvent::Rename {
                id,
                conversation,
                title,
            } => (
                conversation,
                SYSTEM_SENDER.to_owned(),
                id,
                EventBody::ConversationRenamed { title },
            ),
            BusinessEvent::Disband { id, conversation } => (
                conversation,
                SYSTEM_SENDER.to_owned(),
                id,
                EventBody::ConversationDisbanded {
                    members: Vec::new(),
                },
            ),
            BusinessEvent::SetRetention {
                id,
                conversation,
                ttl_seconds,
            } => (
                conversation,
                SYSTEM_SENDER.to_owned(),
                id,
                EventBody::RetentionSet { ttl_seconds },
            ),
        };
        let mut ingress = self.new_event(conversation, sender, id, body);
        ingress.trusted = true;
        ingress
    }

    async fn create_group(
        &self,
        claims: Claims,
        request: CreateConversation,
    ) -> Result<Response, ApiError> {
        self.check_rates(&claims.sub)?;
        let mut members = request.members;
        if !members.contains(&claims.sub) {
            members.insert(0, claims.sub.clone());
        }
        let id = format!("create-{}", request.id);
        let event = self.new_event(
            request.id.clone(),
            claims.sub,
            id,
            EventBody::ConversationCreated {
                title: request.title,
                members,
            },
        );
        validate_ingress(&event, &self.config.limits)?;
        match self.write_and_wait(vec![event]).await.pop() {
            Some(EventOutcome::Acked { seq, event_id, .. }) => Ok(json_response(
                201,
                &json!({"id": request.id, "seq": seq, "event_id": event_id}),
            )),
            Some(EventOutcome::Failed { error, .. }) => Err(error),
            // a group is homed where it is created, so its creation is never forwarded
            Some(EventOutcome::Accepted { home, .. }) => Ok(json_response(
                202,
                &json!({"id": request.id, "accepted": true, "home": home}),
            )),
            None => Err(ApiError::new(ErrorCode::Internal, "no outcome")),
        }
    }
}

fn with_ingest(
    ingest: Arc<Ingest>,
) -> impl Filter<Extract = (Arc<Ingest>,), Error = std::convert::Infallible> + Clone {
    warp::any().map(move || ingest.clone())
}

pub(crate) fn business_events(ingest: Arc<Ingest>) -> BoxedFilter<(Response,)> {
    let key: Arc<str> = ingest.config.api_key.as_str().into();
    warp::path!("v1" / "events")
        .and(warp::post())
        .and(api_key(key))
        .and(json_body::<BusinessBatch>(
            ingest.config.limits.max_http_body_bytes,
        ))
        .and(with_ingest(ingest))
        .then(
            |authorized: Result<(), ApiError>,
             batch: Result<BusinessBatch, ApiError>,
             ingest: Arc<Ingest>| async move {
                respond(match (authorized, batch) {
                    (Err(error), _) | (Ok(()), Err(error)) => Err(error),
                    (Ok(()), Ok(batch)) => ingest.business_batch(batch).await,
                })
            },
        )
        .boxed()
}

pub(crate) fn create_conversation(ingest: Arc<Ingest>) -> BoxedFilter<(Response,)> {
    warp::path!("v1" / "conversations")
        .and(warp::post())
        .and(user_claims(ingest.tokens.clone()))
        .and(json_body::<CreateConversation>(
            ingest.config.limits.max_http_body_bytes,
        ))
        .and(with_ingest(ingest))
        .then(
            |claims: Result<Claims, ApiError>,
             request: Result<CreateConversation, ApiError>,
             ingest: Arc<Ingest>| async move {
                respond(match (claims, request) {
                    (Err(error), _) | (Ok(_), Err(error)) => Err(error),
                    (Ok(claims), Ok(request)) => ingest.create_group(claims, request).await,
                })
            },
        )
        .boxed()
}

pub(crate) fn dev_token(ingest: Arc<Ingest>) -> BoxedFilter<(Response,)> {
    warp::path!("v1" / "dev" / "token")
        .and(warp::post())
        .and(json_body::<DevTokenRequest>(4096))
        .and(with_ingest(ingest))
        .map(
            |request: Result<DevTokenRequest, ApiError>, ingest: Arc<Ingest>| {
                respond(if !ingest.config.dev_mode {
                    Err(ApiError::new(
                        ErrorCode::NotFound,
                        "dev tokens are off (dev mode is off)",
                    ))
                } else {
                    request.and_then(|request| {
                        ingest
                            .tokens
                            .issue(
                                &request.user,
                                request.device.as_deref(),
                                ingest.config.token_ttl_secs,
                            )
                            .map(|token| json_response(200, &json!({"token": token})))
                            .map_err(|error| {
                                ApiError::new(ErrorCode::BadRequest, error.to_string())
                            })
                    })
                })
            },
        )
        .boxed()
}
