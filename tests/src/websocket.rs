//! A WebSocket client session of one user: connects with a test token and waits for `welcome`,
//! sends frames, and finds the frames a test expects. A frame read while looking for another is
//! kept in a backlog, in arrival order, so no frame is lost to a test that waits for a later one.
//! Every wait has a deadline ([`WAIT`] unless the caller gives one).

use anyhow::{anyhow, bail};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::WAIT;
use crate::credentials::token;

/// A WebSocket client session.
pub struct Client {
    pub user: String,
    pub session: String,
    stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// Frames read while looking for another one, in arrival order.
    backlog: Vec<Value>,
    /// The code of the server's close frame, once one was read.
    pub closed_with: Option<u16>,
}

impl Client {
    /// Connects as `user` (optionally naming the device) and waits for `welcome`.
    pub async fn connect(ws_url: &str, user: &str, device: Option<&str>) -> anyhow::Result<Client> {
        let url = format!("{ws_url}?token={}", token(user, device));
        let (stream, _) =
            tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url)).await??;
        let mut client = Client {
            user: user.to_owned(),
            session: String::new(),
            stream,
            backlog: Vec::new(),
            closed_with: None,
        };
        let welcome = client.expect(|frame| frame["type"] == "welcome").await?;
        assert_eq!(welcome["user"], user);
        client.session = welcome["session"].as_str().unwrap_or_default().to_owned();
        Ok(client)
    }

    pub async fn send_raw(&mut self, message: Message) -> anyhow::Result<()> {
        self.stream.send(message).await?;
        Ok(())
    }

    pub async fn send_json(&mut self, frame: Value) -> anyhow::Result<()> {
        self.send_raw(Message::text(frame.to_string())).await
    }

    /// Sends a message and returns its ack (or the error frame as `Err`).
    pub async fn send_message(
        &mut self,
        id: &str,
        conversation: &str,
        text: &str,
    ) -> anyhow::Result<Value> {
        self.send_json(
            json!({"type": "send", "id": id, "conversation": conversation, "text": text}),
        )
        .await?;
        self.outcome(id).await
    }

    /// Waits for the ack or error frame of client message `id`.
    pub async fn outcome(&mut self, id: &str) -> anyhow::Result<Value> {
        let frame = self
            .expect(|frame| {
                (frame["type"] == "ack" || frame["type"] == "error") && frame["id"] == id
            })
            .await?;
        if frame["type"] == "error" {
            return Err(anyhow!("error frame: {frame}"));
        }
        Ok(frame)
    }

    /// Next raw message from the socket (frames, close), with the deadline.
    pub async fn next_message(&mut self) -> anyhow::Result<Option<Message>> {
        match tokio::time::timeout(WAIT, self.stream.next()).await {
            Err(_) => bail!("no message within {WAIT:?}"),
            Ok(None) => Ok(None),
            Ok(Some(message)) => Ok(Some(message?)),
        }
    }

    /// The first frame (from the backlog, then the socket) that matches; others are kept.
    pub async fn expect(&mut self, matches: impl Fn(&Value) -> bool) -> anyhow::Result<Value> {
        if let Some(index) = self.backlog.iter().position(&matches) {
            return Ok(self.backlog.remove(index));
        }
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let message = tokio::time::timeout_at(deadline, self.stream.next())
                .await
                .map_err(|_| {
                    anyhow!(
                        "{}: no matching frame within {WAIT:?}; backlog {:?}",
                        self.user,
                        self.backlog
                    )
                })?;
            let Some(message) = message else {
                bail!("{}: connection closed", self.user)
            };
            let message = message?;
            let Message::Text(text) = message else {
                if let Message::Close(close) = message {
                    self.closed_with = close.as_ref().map(|close| u16::from(close.code));
                    bail!("{}: closed by server: {close:?}", self.user);
                }
                continue;
            };
            let frame: Value = serde_json::from_str(&text)?;
            if matches(&frame) {
                return Ok(frame);
            }
            self.backlog.push(frame);
        }
    }

    /// Collects `count` `event` frames of `conversation`, in arrival order.
    pub async fn events(&mut self, conversation: &str, count: usize) -> anyhow::Result<Vec<Value>> {
        let mut events = Vec::with_capacity(count);
        while events.len() < count {
            let conversation = conversation.to_owned();
            events.push(
                self.expect(move |frame| {
                    frame["type"] == "event" && frame["conversation"] == conversation
                })
                .await?,
            );
        }
        Ok(events)
    }

    pub async fn close(mut self) -> anyhow::Result<()> {
        self.stream.close(None).await?;
        Ok(())
    }

    /// The next frame (backlog first) arriving before `until`; `None` when the time is up.
    pub async fn next_frame(
        &mut self,
        until: tokio::time::Instant,
    ) -> anyhow::Result<Option<Value>> {
        if !self.backlog.is_empty() {
            return Ok(Some(self.backlog.remove(0)));
        }
        loop {
            let message = match tokio::time::timeout_at(until, self.stream.next()).await {
                Err(_) => return Ok(None),
                Ok(None) => bail!("{}: connection closed", self.user),
                Ok(Some(message)) => message?,
            };
            match message {
                Message::Text(text) => return Ok(Some(serde_json::from_str(&text)?)),
                Message::Close(close) => {
                    self.closed_with = close.as_ref().map(|close| u16::from(close.code));
                    bail!("{}: closed by server: {close:?}", self.user)
                }
                _ => {}
            }
        }
    }
}
