//! The backend half of a passthrough connection, driven by the client's socket task
//! (`socket::task`): reading the backend's messages one at a time (the task reads the
//! next only once the last is written to the client, so a slow client stalls the backend
//! instead of filling memory), writing the client's messages to it, and closing it with
//! the client's close code, or 1001 when the client went away. Its pings are answered by
//! tungstenite; only text and binary messages pass, whole (fragments are reassembled).

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::error::{Error as WsError, ProtocolError};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};

use crate::passthrough::dial::BackendWs;

/// How long the backend has to answer our close frame.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// Messages and payload bytes each way: `in` from the client to the backend, `out` from
/// the backend to the client (what cleanup's `stats` carries).
pub(crate) type Stats = wire::event::PassthroughStats;

/// What the backend sent.
#[derive(Debug)]
pub(crate) enum FromBackend {
    /// A text or binary message, for the client.
    Message(Message),
    /// Its close frame (code 1000 when it gave none): the client gets the same.
    Closed(u16, String),
    /// It went away without a close frame, or broke the protocol.
    Lost(String),
    /// A message over the route's `max_message_bytes`.
    TooBig,
}

/// The WebSocket to the backend, and what went through it.
pub(crate) struct Pump {
    ws: BackendWs,
    /// The backend's host, for logs.
    pub host: String,
    pub stats: Stats,
    /// The route's `max_message_bytes` (the client's limit too).
    pub max_message_bytes: usize,
    /// The backend closed or went away: nothing more is sent to it.
    done: bool,
}

/// The client's and the backend's WebSocket config on a route: `base` (the gateway's
/// buffers) with the route's message limit, and room to write one message of that size.
pub(crate) fn ws_config(base: WebSocketConfig, max_message_bytes: usize) -> WebSocketConfig {
    let room = max_message_bytes
        .saturating_add(base.write_buffer_size)
        .saturating_add(64);
    base.max_message_size(Some(max_message_bytes))
        .max_frame_size(Some(max_message_bytes))
        .max_write_buffer_size(base.max_write_buffer_size.max(room))
}

impl Pump {
    pub fn new(ws: BackendWs, host: String, max_message_bytes: usize) -> Self {
        Pump {
            ws,
            host,
            max_message_bytes,
            stats: Stats::default(),
            done: false,
        }
    }

    /// The backend's next message (pings and pongs are handled on the way). Cancel-safe:
    /// nothing is taken from the backend until a message is returned.
    pub async fn next(&mut self) -> FromBackend {
        loop {
            let frame = self.ws.next().await;
            let message = match frame {
                None | Some(Err(WsError::ConnectionClosed | WsError::AlreadyClosed)) => {
                    self.done = true;
                    return FromBackend::Lost("the backend closed the connection".into());
                }
                Some(Err(WsError::Capacity(_))) => return FromBackend::TooBig,
                Some(Err(WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake))) => {
                    self.done = true;
                    return FromBackend::Lost("the backend went away without a close frame".into());
                }
                Some(Err(e)) => {
                    self.done = true;
                    return FromBackend::Lost(e.to_string());
                }
                Some(Ok(message)) => message,
            };
            match message {
                Message::Text(_) | Message::Binary(_) => {
                    self.stats.messages_out += 1;
                    self.stats.bytes_out += message.len() as u64;
                    return FromBackend::Message(message);
                }
                // Boxed: the client's socket task holds a waiting `next` in its state for
                // the connection's whole life, and this rare path's timer would double it.
                Message::Close(frame) => return Box::pin(self.closed(frame)).await,
                // Answered by tungstenite on the next read or write.
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
            }
        }
    }

    /// The backend sent a close frame: tungstenite queued its answer; send it, briefly.
    async fn closed(&mut self, frame: Option<CloseFrame>) -> FromBackend {
        self.done = true;
        let _ = tokio::time::timeout(CLOSE_WAIT, SinkExt::close(&mut self.ws)).await;
        let (code, reason) = frame
            .map(|f| (u16::from(f.code), f.reason.as_str().to_owned()))
            .unwrap_or((1000, String::new()));
        FromBackend::Closed(code, reason)
    }

    /// Writes a client's message to the backend (the caller bounds the wait).
    pub async fn send(&mut self, message: Message) -> Result<(), WsError> {
        let len = message.len() as u64;
        self.ws.send(message).await?;
        self.stats.messages_in += 1;
        self.stats.bytes_in += len;
        Ok(())
    }

    /// Whether the backend is still open.
    pub fn is_open(&self) -> bool {
        !self.done
    }

    /// Closes the backend with `code` (no code when `None`) and `reason`, waits briefly
    /// for its answer, then shuts the connection down. Does nothing if it is closed.
    pub async fn close(&mut self, code: Option<u16>, reason: &str) {
        if self.done {
            return;
        }
        self.done = true;
        let frame = code.map(|code| CloseFrame {
            code: CloseCode::from(code),
            reason: truncate(reason, 123).into(),
        });
        let _ = tokio::time::timeout(CLOSE_WAIT, async {
            if self.ws.send(Message::Close(frame)).await.is_err() {
                return;
            }
            loop {
                match self.ws.next().await {
                    Some(Ok(Message::Close(_))) => return,
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => break,
                }
            }
            // tungstenite reads nothing after an error (an oversize message): read the
            // rest raw, so the backend, still sending it, gets to read our close frame.
            let mut sink = [0u8; 16 * 1024];
            while let Ok(n) = self.ws.get_mut().read(&mut sink).await {
                if n == 0 {
                    return;
                }
            }
        })
        .await;
        let _ = tokio::time::timeout(CLOSE_WAIT, self.ws.get_mut().shutdown()).await;
    }
}

/// At most `max` bytes of `text`, cut on a character boundary (a close reason is at most
/// 123 bytes).
pub(crate) fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}
