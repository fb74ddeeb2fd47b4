//! The bounded outbound queue of one connection: messages waiting to be written to its
//! socket, and a pending close request.
//!
//! A plain mutex-guarded `VecDeque` holding the socket task's waker, not a channel: an
//! idle connection's empty queue allocates nothing, and a push takes one lock, which also
//! hands it the waker to wake (only the first push after the task last looked wakes it,
//! so a burst of pushes costs one wake-up). Producers (the send-back API, function
//! replies) never wait: a full queue is an error they report (429), so a slow client
//! cannot grow memory without bound.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::Mutex;
use std::task::{Poll, Waker};

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
    /// This node was reaped while it could not beat and another node already sent this
    /// connection's cleanup: close it without sending one again.
    pub reaped: bool,
}

/// The queue itself.
#[derive(Debug, Default)]
pub struct Outbox {
    state: Mutex<State>,
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
    /// The socket task, while it waits for something to write.
    waiter: Option<Waker>,
}

impl State {
    /// Whether the socket task has something to do.
    fn ready(&self) -> bool {
        !self.queue.is_empty() || self.close.is_some()
    }
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
        let waiter = {
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
            state.waiter.take()
        };
        if let Some(waiter) = waiter {
            waiter.wake();
        }
        Ok(())
    }

    /// Asks the connection to close after writing what is queued. Returns false if it is
    /// already closing or closed.
    pub fn request_close(&self, request: CloseRequest) -> bool {
        let waiter = {
            let mut state = self.lock();
            if state.closed || state.closing {
                return false;
            }
            state.closing = true;
            state.close = Some(request);
            state.waiter.take()
        };
        if let Some(waiter) = waiter {
            waiter.wake();
        }
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
        state.waiter = None;
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

    /// Waits until there is something to [`drain`](Outbox::drain): a queued message or a
    /// close request. Ready at once if there already is.
    pub async fn wait(&self) {
        self.wait_for(State::ready).await
    }

    /// Waits until a close is requested that [`drain`](Outbox::drain) has not taken yet
    /// (queued messages do not wake it). The socket task races its pending writes against
    /// it: a close requested while the client reads nothing ends the connection at once.
    pub async fn wait_close_request(&self) {
        self.wait_for(|state| state.close.is_some()).await
    }

    /// Waits until `ready(state)`; the one waker slot is the socket task's, whichever of
    /// the two waits it is in.
    async fn wait_for(&self, ready: fn(&State) -> bool) {
        poll_fn(|cx| {
            let mut state = self.lock();
            if ready(&state) {
                return Poll::Ready(());
            }
            match &mut state.waiter {
                Some(waiter) if waiter.will_wake(cx.waker()) => {}
                waiter => *waiter = Some(cx.waker().clone()),
            }
            Poll::Pending
        })
        .await
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
            reason: String::new(),
            reaped: false,
        }));
        assert!(!outbox.request_close(CloseRequest {
            code: 1000,
            reason: String::new(),
            reaped: false,
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
            reason: String::new(),
            reaped: false,
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

    /// A waker that counts its wake-ups.
    struct Counter(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for Counter {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[test]
    fn a_burst_of_pushes_wakes_the_waiting_task_once() {
        use std::sync::Arc;
        use std::sync::atomic::Ordering::SeqCst;
        use std::task::{Context, Poll};

        let outbox = Outbox::default();
        let counter = Arc::new(Counter(0.into()));
        let waker = std::task::Waker::from(counter.clone());
        let mut cx = Context::from_waker(&waker);
        let poll = |cx: &mut Context<'_>| std::pin::pin!(outbox.wait()).poll(cx);
        assert_eq!(poll(&mut cx), Poll::Pending, "nothing queued yet");
        for _ in 0..3 {
            outbox.push(Message::text("x"), LIMITS_MANY).unwrap();
        }
        assert_eq!(counter.0.load(SeqCst), 1);
        assert_eq!(poll(&mut cx), Poll::Ready(()));
        let mut out = Vec::new();
        outbox.drain(&mut out);
        assert_eq!(out.len(), 3);
        assert_eq!(poll(&mut cx), Poll::Pending, "drained: nothing to do");
        assert!(outbox.request_close(CloseRequest {
            code: 1000,
            reason: String::new(),
            reaped: false,
        }));
        assert_eq!(counter.0.load(SeqCst), 2, "a close request wakes it too");
        assert_eq!(poll(&mut cx), Poll::Ready(()));
    }

    #[tokio::test]
    async fn a_close_request_wakes_a_close_wait_and_messages_do_not() {
        use std::sync::Arc;
        let outbox = Arc::new(Outbox::default());
        let waiter = tokio::spawn({
            let outbox = outbox.clone();
            async move { outbox.wait_close_request().await }
        });
        outbox.push(Message::text("x"), LIMITS).unwrap();
        tokio::task::yield_now().await;
        assert!(
            !waiter.is_finished(),
            "a queued message is not a close request"
        );
        assert!(outbox.request_close(CloseRequest {
            code: 1000,
            reason: String::new(),
            reaped: false,
        }));
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap();
        // Taken by drain: no close request waits any more.
        outbox.drain(&mut Vec::new());
        let pending = tokio::time::timeout(
            std::time::Duration::from_millis(20),
            outbox.wait_close_request(),
        );
        assert!(pending.await.is_err());
    }

    const LIMITS_MANY: QueueLimits = QueueLimits {
        messages: 100,
        bytes: 1000,
    };
}
