//! The bounded outbound queue of one connection: messages waiting to be written to its
//! socket, and a pending close request.
//!
//! A plain mutex-guarded `VecDeque` with a `Notify`, not a channel: an idle connection's
//! empty queue allocates nothing. Producers (the send-back API, function replies) never
//! wait: a full queue is an error they report (429), so a slow client cannot grow memory
//! without bound.

use std::collections::VecDeque;
use std::sync::Mutex;

use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Message;

/// Why a message was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushError {
    /// The queue holds its limit of messages or bytes.
    Full,
    /// The connection is closing or closed.
    Closed,
}

/// A close the connection should perform once the messages queued before it are written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseRequest {
    /// The close code to send.
    pub code: u16,
    /// The close reason to send.
    pub reason: String,
}

/// The queue itself.
#[derive(Debug, Default)]
pub struct Outbox {
    state: Mutex<State>,
    notify: Notify,
}

#[derive(Debug, Default)]
struct State {
    queue: VecDeque<Message>,
    bytes: usize,
    close: Option<CloseRequest>,
    /// A close was requested (it may already have been taken by [`Outbox::drain`]):
    /// nothing more is accepted, so nothing is acknowledged that will not be written.
    closing: bool,
    closed: bool,
}

/// Limits for one push.
#[derive(Debug, Clone, Copy)]
pub struct QueueLimits {
    /// The most messages queued.
    pub messages: usize,
    /// The most bytes queued.
    pub bytes: usize,
}

impl Outbox {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a message for the socket.
    pub fn push(&self, message: Message, limits: QueueLimits) -> Result<(), PushError> {
        let len = message.len();
        {
            let mut state = self.lock();
            if state.closed || state.closing {
                return Err(PushError::Closed);
            }
            if state.queue.len() >= limits.messages || state.bytes + len > limits.bytes {
                return Err(PushError::Full);
            }
            state.bytes += len;
            state.queue.push_back(message);
            if state.queue.capacity() > 64 && state.queue.len() == 1 {
                state.queue.shrink_to(8);
            }
        }
        self.notify.notify_one();
        Ok(())
    }

    /// Asks the connection to close after writing what is queued. Returns false if it is
    /// already closing or closed.
    pub fn request_close(&self, request: CloseRequest) -> bool {
        {
            let mut state = self.lock();
            if state.closed || state.closing {
                return false;
            }
            state.closing = true;
            state.close = Some(request);
        }
        self.notify.notify_one();
        true
    }

    /// Takes everything queued (appended to `out`) and the close request, if any.
    pub fn drain(&self, out: &mut Vec<Message>) -> Option<CloseRequest> {
        let mut state = self.lock();
        out.extend(state.queue.drain(..));
        state.bytes = 0;
        if state.queue.capacity() > 64 {
            state.queue = VecDeque::new();
        }
        state.close.take()
    }

    /// Marks the connection closed: later pushes fail with [`PushError::Closed`], and what
    /// is still queued is dropped. Returns how many messages were dropped.
    pub fn mark_closed(&self) -> usize {
        let mut state = self.lock();
        state.closed = true;
        let dropped = state.queue.len();
        state.queue = VecDeque::new();
        state.bytes = 0;
        dropped
    }

    /// Whether the connection is closed or closing.
    pub fn is_closed(&self) -> bool {
        let state = self.lock();
        state.closed || state.closing
    }

    /// Waits until something is pushed or a close is requested (a permit is stored if that
    /// happened since the last wait, so no wake-up is lost).
    pub async fn wait(&self) {
        self.notify.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: QueueLimits = QueueLimits {
        messages: 2,
        bytes: 10,
    };

    #[test]
    fn bounded_by_count_and_bytes() {
        let outbox = Outbox::default();
        outbox.push(Message::text("12345"), LIMITS).unwrap();
        assert_eq!(
            outbox.push(Message::text("123456"), LIMITS),
            Err(PushError::Full)
        );
        outbox.push(Message::text("1"), LIMITS).unwrap();
        assert_eq!(outbox.push(Message::text(""), LIMITS), Err(PushError::Full));
        let mut out = Vec::new();
        assert_eq!(outbox.drain(&mut out), None);
        assert_eq!(out.len(), 2);
        outbox.push(Message::text("123456789"), LIMITS).unwrap();
    }

    #[test]
    fn close_request_stops_pushes() {
        let outbox = Outbox::default();
        assert!(outbox.request_close(CloseRequest {
            code: 1000,
            reason: String::new()
        }));
        assert!(!outbox.request_close(CloseRequest {
            code: 1000,
            reason: String::new()
        }));
        assert_eq!(
            outbox.push(Message::text("x"), LIMITS),
            Err(PushError::Closed)
        );
        assert!(outbox.drain(&mut Vec::new()).is_some());
        // Still closing after the request was taken: not accepted, not acknowledged.
        assert_eq!(
            outbox.push(Message::text("x"), LIMITS),
            Err(PushError::Closed)
        );
        assert!(outbox.is_closed());
        assert!(!outbox.request_close(CloseRequest {
            code: 1000,
            reason: String::new()
        }));
    }

    #[tokio::test]
    async fn wait_sees_a_push_made_before_it() {
        let outbox = Outbox::default();
        outbox.push(Message::text("x"), LIMITS).unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(5), outbox.wait())
            .await
            .unwrap();
    }
}
