//! A node's delivery channel on a Redis Cluster: sharded pub/sub (`SSUBSCRIBE`, Redis 7),
//! which lives on the master of the channel's slot.
//!
//! The subscription is a RESP3 connection to that master, found by asking a node (the last
//! owner, then the seeds) and following its `MOVED` answer. It follows the slot: when the
//! connection drops (the master died: a replica takes over), when the server ends the
//! subscription (`sunsubscribe`: the slot moved, or the master became a replica), or when the
//! `SSUBSCRIBE` that is sent again every [`CHECK_EVERY`] fails (no answer, or `MOVED`), the
//! owner is looked up again and the channel subscribed there. Until then publishers find
//! nobody on the channel and deliveries take the broadcast path.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use chorus_core::presence::{Delivery, DeliverySink, PresenceError};
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Msg, ProtocolVersion, PushInfo, PushKind, Value};
use tokio::sync::Notify;

use crate::connection::Endpoints;
use crate::{CONNECT_TIMEOUT, RESPONSE_TIMEOUT, unavailable};

/// How often a held subscription is confirmed on its node.
const CHECK_EVERY: Duration = Duration::from_secs(1);
/// Most `MOVED` answers followed from one node asked.
const MAX_REDIRECTS: usize = 3;

/// A channel subscribed on the master of its slot.
pub(crate) struct ShardedSubscription {
    /// Kept open: dropping it ends the subscription.
    connection: MultiplexedConnection,
    /// Where it is held: the slot's master.
    pub(crate) owner: (String, u16),
    /// Told when the connection drops or the server ends the subscription.
    lost: Arc<Notify>,
    channel: String,
}

impl ShardedSubscription {
    /// Subscribes `channel` on its slot's master, asking `last_owner` first, then the seeds.
    pub(crate) async fn open(
        endpoints: &Endpoints,
        channel: &str,
        sink: Arc<dyn DeliverySink>,
        last_owner: Option<&(String, u16)>,
    ) -> Result<Self, PresenceError> {
        let mut candidates: Vec<(String, u16)> = last_owner.into_iter().cloned().collect();
        candidates.extend(endpoints.seed_addresses());
        let mut last_error = PresenceError::Unavailable("no redis node to ask".into());
        for candidate in candidates {
            let mut node = candidate;
            for _ in 0..=MAX_REDIRECTS {
                match Self::try_node(endpoints, channel, sink.clone(), &node).await {
                    Ok(subscription) => return Ok(subscription),
                    Err(Attempt::Moved(owner)) => node = owner,
                    Err(Attempt::Failed(error)) => {
                        last_error = error;
                        break;
                    }
                }
            }
        }
        Err(last_error)
    }

    async fn try_node(
        endpoints: &Endpoints,
        channel: &str,
        sink: Arc<dyn DeliverySink>,
        node: &(String, u16),
    ) -> Result<Self, Attempt> {
        let lost = Arc::new(Notify::new());
        let on_push = {
            let lost = lost.clone();
            move |push: PushInfo| -> Result<(), Infallible> {
                match push.kind {
                    PushKind::SMessage => deliver(&*sink, push),
                    PushKind::SUnsubscribe | PushKind::Disconnection => lost.notify_one(),
                    _ => {}
                }
                Ok(())
            }
        };
        let client = endpoints
            .client_at(&node.0, node.1)
            .map_err(|error| Attempt::Failed(unavailable(error)))?;
        let mut info = client.get_connection_info().clone();
        let settings = info
            .redis_settings()
            .clone()
            .set_protocol(ProtocolVersion::RESP3);
        info = info.set_redis_settings(settings);
        let client =
            redis::Client::open(info).map_err(|error| Attempt::Failed(unavailable(error)))?;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_push_sender(on_push);
        let mut connection = client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|error| Attempt::Failed(unavailable(error)))?;
        ssubscribe(&mut connection, channel).await?;
        Ok(ShardedSubscription {
            connection,
            owner: node.clone(),
            lost,
            channel: channel.to_owned(),
        })
    }

    /// Returns when the subscription is lost: the connection dropped, the server ended it, or
    /// confirming it on its node failed.
    pub(crate) async fn held(mut self) {
        loop {
            tokio::select! {
                _ = self.lost.notified() => return,
                _ = tokio::time::sleep(CHECK_EVERY) => {
                    if ssubscribe(&mut self.connection, &self.channel).await.is_err() {
                        return;
                    }
                }
            }
        }
    }
}

/// Why a node did not take the subscription.
enum Attempt {
    /// Another node owns the slot.
    Moved((String, u16)),
    Failed(PresenceError),
}

/// `SSUBSCRIBE channel` on a master (again, on a held subscription: the node confirms it is
/// still a master owning the slot). A replica would take the subscription too, but `SPUBLISH`
/// on its master counts only the master's subscribers: a replica answers where its master is
/// (`ROLE`). In RESP3 the confirmation push is the command's answer.
async fn ssubscribe(connection: &mut MultiplexedConnection, channel: &str) -> Result<(), Attempt> {
    let role: Vec<Value> = redis::cmd("ROLE")
        .query_async(connection)
        .await
        .map_err(|error| Attempt::Failed(unavailable(error)))?;
    if let Some(master) = master_of_replica(&role) {
        return Err(Attempt::Moved(master));
    }
    let answer = redis::cmd("SSUBSCRIBE")
        .arg(channel)
        .query_async::<Value>(connection)
        .await;
    match answer {
        Ok(_) => Ok(()),
        Err(error) => match error
            .redirect_node()
            .and_then(|(address, _)| parse_address(address))
        {
            Some(owner) => Err(Attempt::Moved(owner)),
            None => Err(Attempt::Failed(unavailable(error))),
        },
    }
}

/// Where the master is, from a replica's `ROLE` answer (`slave`, host, port, …); `None` for a
/// master.
fn master_of_replica(role: &[Value]) -> Option<(String, u16)> {
    let kind: String = redis::from_redis_value_ref(role.first()?).ok()?;
    if kind != "slave" {
        return None;
    }
    let host: String = redis::from_redis_value_ref(role.get(1)?).ok()?;
    let port: u16 = redis::from_redis_value_ref(role.get(2)?).ok()?;
    Some((host, port))
}

fn parse_address(address: &str) -> Option<(String, u16)> {
    let (host, port) = address.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Some((host.to_owned(), port.parse().ok()?))
}

fn deliver(sink: &dyn DeliverySink, push: PushInfo) {
    let Some(message) = Msg::from_push_info(push) else {
        return;
    };
    let Ok(payload) = message.get_payload::<String>() else {
        return;
    };
    match serde_json::from_str::<Delivery>(&payload) {
        Ok(delivery) => sink.deliver(delivery),
        Err(error) => tracing::warn!(%error, "undecodable delivery ignored"),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_address;

    #[test]
    fn moved_addresses_parse() {
        assert_eq!(
            parse_address("127.0.0.1:7001"),
            Some(("127.0.0.1".to_owned(), 7001))
        );
        assert_eq!(parse_address("[::1]:7001"), Some(("::1".to_owned(), 7001)));
        assert_eq!(parse_address("nowhere"), None);
    }
}
