//! The sending half of a session's socket: every write bounded in time and abandoned when the
//! hub flags the session as a slow consumer; frames queued together written together.

use std::sync::Arc;
use std::time::Duration;

use chorus_core::metrics::Metrics;
use chorus_core::presence::Frame;
use futures_util::{Sink, SinkExt};
use tokio_tungstenite::tungstenite::Error as WsError;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use super::Closing;
use crate::hub::Outbox;

/// Most frames written in one go: after that many the session reads its client again before it
/// takes more from its outbox.
const COALESCE_FRAMES: usize = 64;

/// Why a write to the socket did not complete.
pub(super) enum WriteFailure {
    /// The connection is broken or closed: nothing more can be written.
    Broken,
    /// The client is not reading: the write outlasted `limits.session_write_timeout_ms`, or the
    /// outbox overflowed while it was pending.
    Stalled,
}

/// The sending half of a session's socket. Every write is bounded by
/// `limits.session_write_timeout_ms` and gives up as soon as the hub flags the session as a slow
/// consumer, so a client that stops reading never holds its session open.
pub(super) struct SocketWriter<S> {
    pub(super) sink: S,
    /// `limits.session_write_timeout_ms`.
    pub(super) write_timeout: Duration,
    /// The session's outbox, to notice when it overflows.
    pub(super) outbox: Arc<Outbox>,
    /// Counts writes that timed out (`rejections_total{reason="session_write_timeout"}`).
    pub(super) metrics: Arc<Metrics>,
}

impl<S> SocketWriter<S>
where
    S: Sink<Message, Error = WsError> + Unpin,
{
    /// Writes one message and flushes it.
    pub(super) async fn write(&mut self, message: Message) -> Result<(), WriteFailure> {
        let sink = &mut self.sink;
        Self::bounded(
            self.write_timeout,
            &self.outbox,
            &self.metrics,
            sink.send(message),
        )
        .await
    }

    /// Writes `first` and the frames already queued behind it in the outbox (at most
    /// [`COALESCE_FRAMES`] in all), then flushes once. The socket's write buffer
    /// (`WRITE_BUFFER_BYTES`) goes to the kernel whenever it fills, so a burst into a busy
    /// session costs one `sendto` per buffer rather than one per frame; a lone frame is written
    /// at once, as before. Returns how many frames were written.
    pub(super) async fn write_queued(
        &mut self,
        first: Frame,
        outbox: &Outbox,
    ) -> Result<usize, WriteFailure> {
        let sink = &mut self.sink;
        let mut written = 0;
        let burst = async {
            sink.feed(Message::text(&*first)).await?;
            written += 1;
            while written < COALESCE_FRAMES {
                let Some(frame) = outbox.try_recv() else {
                    break;
                };
                sink.feed(Message::text(&*frame)).await?;
                written += 1;
            }
            sink.flush().await
        };
        Self::bounded(self.write_timeout, &self.outbox, &self.metrics, burst).await?;
        Ok(written)
    }

    /// `write` within the write timeout, abandoned if the session becomes a slow consumer.
    async fn bounded(
        write_timeout: Duration,
        outbox: &Outbox,
        metrics: &Metrics,
        write: impl std::future::Future<Output = Result<(), WsError>>,
    ) -> Result<(), WriteFailure> {
        tokio::select! {
            written = tokio::time::timeout(write_timeout, write) => {
                match written {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(error)) => {
                        tracing::debug!(%error, "websocket write failed");
                        Err(WriteFailure::Broken)
                    }
                    Err(_) => {
                        tracing::debug!("websocket write timed out: the client does not read");
                        metrics.reject("session_write_timeout");
                        Err(WriteFailure::Stalled)
                    }
                }
            }
            _ = outbox.overflowed() => Err(WriteFailure::Stalled),
        }
    }

    /// Sends the close frame, if any, and flushes, within one write timeout; a client that does
    /// not read by then is dropped without it.
    pub(super) async fn close(&mut self, closing: Option<Closing>) {
        let sink = &mut self.sink;
        let close = async move {
            if let Some((code, reason)) = closing {
                let frame = CloseFrame {
                    code: CloseCode::from(code),
                    reason: reason.into(),
                };
                sink.send(Message::Close(Some(frame))).await?;
            }
            sink.close().await
        };
        if tokio::time::timeout(self.write_timeout, close)
            .await
            .is_err()
        {
            tracing::debug!("close frame not written in time; dropping the connection");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Context, Poll};

    use futures_util::StreamExt;
    use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadBuf};
    use tokio_tungstenite::WebSocketStream;
    use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

    use super::*;

    /// A socket that counts the writes that reach it (each one a `sendto` on a real socket).
    struct CountingSocket {
        inner: DuplexStream,
        writes: Arc<AtomicUsize>,
    }

    impl AsyncRead for CountingSocket {
        fn poll_read(
            mut self: Pin<&mut Self>,
            context: &mut Context<'_>,
            buffer: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.inner).poll_read(context, buffer)
        }
    }

    impl AsyncWrite for CountingSocket {
        fn poll_write(
            mut self: Pin<&mut Self>,
            context: &mut Context<'_>,
            buffer: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            let written = Pin::new(&mut self.inner).poll_write(context, buffer);
            if matches!(written, Poll::Ready(Ok(_))) {
                self.writes.fetch_add(1, Ordering::SeqCst);
            }
            written
        }

        fn poll_flush(
            mut self: Pin<&mut Self>,
            context: &mut Context<'_>,
        ) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.inner).poll_flush(context)
        }

        fn poll_shutdown(
            mut self: Pin<&mut Self>,
            context: &mut Context<'_>,
        ) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.inner).poll_shutdown(context)
        }
    }

    #[tokio::test]
    async fn a_burst_of_queued_frames_is_written_in_a_few_writes_in_order() {
        let (server_end, client_end) = tokio::io::duplex(1 << 20);
        let writes = Arc::new(AtomicUsize::new(0));
        let socket = WebSocketStream::from_raw_socket(
            CountingSocket {
                inner: server_end,
                writes: writes.clone(),
            },
            Role::Server,
            Some(WebSocketConfig::default().write_buffer_size(4 * 1024)),
        )
        .await;
        let mut client = WebSocketStream::from_raw_socket(client_end, Role::Client, None).await;
        let mut writer = SocketWriter {
            sink: socket,
            write_timeout: Duration::from_secs(5),
            outbox: Outbox::new(200),
            metrics: Arc::new(Metrics::new()),
        };
        let outbox = writer.outbox.clone();
        let frame = |n: usize| -> Frame {
            format!(r#"{{"type":"event","conversation":"g:team","seq":{n},"text":"message {n}"}}"#)
                .into()
        };
        for n in 2..=100 {
            outbox.push(frame(n));
        }

        let mut total = 0;
        while total < 100 {
            let first = if total == 0 {
                frame(1)
            } else {
                outbox.recv().await.expect("queued")
            };
            let written = writer
                .write_queued(first, &outbox)
                .await
                .unwrap_or_else(|_| panic!("the write failed"));
            assert!(written <= COALESCE_FRAMES);
            total += written;
        }
        assert_eq!(total, 100);
        let syscalls = writes.load(Ordering::SeqCst);
        // 100 frames of about 70 bytes: two bursts (64 + 36), each written a 4 KiB buffer at a time
        assert!(
            syscalls <= 6,
            "100 queued frames took {syscalls} writes (one per frame before coalescing)"
        );
        for n in 1..=100 {
            let message = client.next().await.expect("open").expect("a frame");
            assert_eq!(message.into_text().expect("text").as_str(), &*frame(n));
        }

        // a lone frame still goes out at once
        let before = writes.load(Ordering::SeqCst);
        writer
            .write_queued(frame(101), &outbox)
            .await
            .unwrap_or_else(|_| panic!("the write failed"));
        assert_eq!(writes.load(Ordering::SeqCst), before + 1);
        let message = client.next().await.expect("open").expect("a frame");
        assert_eq!(message.into_text().expect("text").as_str(), &*frame(101));
    }
}
