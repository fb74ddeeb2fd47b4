//! The bytes on their way to one connection's socket, in order: encoded frames waiting to
//! be written, a plain socket itself, and a pending close request.
//!
//! Every byte the connection sends passes through here under one mutex, whoever sends
//! it: the socket task's own frames (replies, pings, pongs, the close frame; through
//! tungstenite and [`SocketIo`](crate::socket::sockio::SocketIo)), and the frames the
//! send-back API queues. So frames never interleave, and a frame the socket took in part
//! is finished before any other byte.
//!
//! On a plain socket (no TLS, no `limits.write_delay`) the send-back API writes its frames
//! itself: a push onto an empty queue tells the caller to [`flush`](Outbox::flush) it,
//! which writes the queue with one non-blocking `writev` on the caller's task. No wake-up,
//! no task poll, no copy. Only what the socket does not take at once wakes the socket
//! task, which writes the rest under its write timeout. A group send pushes to every
//! member first and flushes after, so back-to-back sends still reach a slow member as one
//! write. On TLS the socket task writes everything (the TLS state is its own): a push
//! wakes it, as before; a burst of pushes costs one wake-up. With `limits.write_delay`
//! pushed frames are held apart until the socket task releases them, so its own replies
//! overtake them.
//!
//! Producers never wait: a full queue is an error they report (429), so a slow client
//! cannot grow memory without bound. An idle connection's empty queue allocates nothing.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Why a message was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushError {
    /// The queue holds its limit of messages or bytes.
    Full,
    /// The connection is closing or closed.
    Closed,
}

/// What a successful push asks of the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Pushed {
    /// Nothing: the socket task, or whoever pushed before, writes it.
    Queued,
    /// Call [`Outbox::flush`] (soon, and without holding other locks): this push made the
    /// queue of a socket the caller may write non-empty.
    Flush,
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

/// The socket task's TLS stream, which only it may write: what its writes go through on a
/// `wss://` connection.
pub(crate) type Tls<'a> = Option<&'a mut (dyn AsyncWrite + Unpin + Send)>;

/// Kept small: it is part of every connection's [`Connection`](crate::socket::registry::Connection)
/// for the connection's whole life (what is rare is boxed).
#[derive(Debug, Default)]
struct State {
    /// Encoded frames not yet written, in order; the first may be written in part (what
    /// was written is advanced off it).
    queue: VecDeque<Bytes>,
    /// Bytes queued and not written.
    bytes: usize,
    /// A plain socket, whole: the socket task reads it through here too (one allocation
    /// less than splitting it in halves).
    socket: Option<TcpStream>,
    /// What few connections ever need.
    rare: Option<Box<Rare>>,
    /// `queue[0]` is written in part.
    started: bool,
    /// Whether callers of [`Outbox::push`] write the socket themselves.
    direct: bool,
    /// Pushed frames go to `held`.
    delay: bool,
    /// A close was requested (it may already have been taken by
    /// [`Outbox::take_close`]): nothing more is accepted, so nothing is acknowledged that
    /// will not be written.
    closing: bool,
    closed: bool,
    /// The socket task, while it waits for something to write.
    waiter: Option<Waker>,
}

/// The part of [`State`] most connections never use, boxed when first needed.
#[derive(Debug, Default)]
struct Rare {
    /// With `limits.write_delay`: pushed frames wait here, apart from the socket task's
    /// own (replies overtake them), until the task [`release`](Outbox::release)s them.
    held: VecDeque<Bytes>,
    close: Option<CloseRequest>,
}

impl State {
    /// Whether the socket task has something to do.
    fn ready(&self) -> bool {
        !self.queue.is_empty() || self.held() > 0 || self.close_pending()
    }

    /// How many frames are held (`limits.write_delay`).
    fn held(&self) -> usize {
        self.rare.as_ref().map_or(0, |r| r.held.len())
    }

    /// Whether a close is requested and not taken yet.
    fn close_pending(&self) -> bool {
        self.rare.as_ref().is_some_and(|r| r.close.is_some())
    }

    /// Queues a copy of `bytes`, the socket task's own (not counted against the limits
    /// producers see, but in the queued bytes).
    fn queue_own(&mut self, bytes: &[u8]) {
        if !bytes.is_empty() {
            self.bytes += bytes.len();
            self.queue.push_back(Bytes::copy_from_slice(bytes));
        }
    }

    /// Drops `n` written bytes off the front of the queue.
    fn advance(&mut self, mut n: usize) {
        self.bytes -= n;
        while n > 0 {
            let Some(front) = self.queue.front_mut() else {
                return;
            };
            if n < front.len() {
                front.advance(n);
                self.started = true;
                return;
            }
            n -= front.len();
            self.started = false;
            self.queue.pop_front();
        }
        if self.queue.is_empty() && self.queue.capacity() > 64 {
            self.queue = VecDeque::new();
        }
    }

    /// Writes queued frames until the queue is empty (true), the socket takes no more
    /// (false), or it fails. With `cx` (the socket task), a socket that takes no more
    /// wakes the task when it does; without (a producer), nothing is registered.
    fn write_queue(
        &mut self,
        mut cx: Option<&mut Context<'_>>,
        tls: &mut Tls<'_>,
    ) -> io::Result<bool> {
        const SLICES: usize = 64;
        while !self.queue.is_empty() {
            let mut slices = [IoSlice::new(&[]); SLICES];
            let mut count = 0;
            for (slot, frame) in slices.iter_mut().zip(&self.queue) {
                *slot = IoSlice::new(frame);
                count += 1;
            }
            let written = write_slices(
                tls,
                self.socket.as_mut(),
                cx.as_deref_mut(),
                &slices[..count],
            );
            match written {
                Poll::Ready(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
                Poll::Ready(Ok(n)) => self.advance(n),
                Poll::Ready(Err(e)) => return Err(e),
                Poll::Pending => return Ok(false),
            }
        }
        Ok(true)
    }
}

/// Writes `slices` to the TLS stream or the plain socket's write half: with `cx`, as the
/// socket task (a socket that takes nothing wakes it when it can); without, only what the
/// socket takes now. One slice is a `send`, cheaper in the kernel than a `writev`.
fn write_slices(
    tls: &mut Tls<'_>,
    sink: Option<&mut TcpStream>,
    cx: Option<&mut Context<'_>>,
    slices: &[IoSlice<'_>],
) -> Poll<io::Result<usize>> {
    let one: Option<&[u8]> = match slices {
        [only] => Some(only),
        _ => None,
    };
    match (tls.as_deref_mut(), sink, cx, one) {
        (Some(tls), _, Some(cx), _) => Pin::new(tls).poll_write_vectored(cx, slices),
        (None, Some(sink), Some(cx), Some(one)) => Pin::new(sink).poll_write(cx, one),
        (None, Some(sink), Some(cx), None) => Pin::new(sink).poll_write_vectored(cx, slices),
        (None, Some(sink), None, one) => {
            let written = match one {
                Some(one) => sink.try_write(one),
                None => sink.try_write_vectored(slices),
            };
            match written {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Poll::Pending,
                other => Poll::Ready(other),
            }
        }
        _ => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
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

    /// Hands the outbox a plain socket; with `direct`, producers write to it themselves
    /// (see [`Pushed::Flush`]).
    pub fn attach(&self, socket: TcpStream, direct: bool) {
        let mut state = self.lock();
        state.socket = Some(socket);
        state.direct = direct;
    }

    /// Holds pushed frames until [`release`](Outbox::release) (`limits.write_delay`).
    pub fn hold_pushes(&self) {
        let mut state = self.lock();
        state.delay = true;
        state.direct = false;
    }

    /// Moves the held frames to the write queue, behind what is there.
    pub fn release(&self) {
        let mut state = self.lock();
        if let Some(rare) = state.rare.as_mut() {
            let held = std::mem::take(&mut rare.held);
            state.queue.extend(held);
        }
    }

    /// Closes a plain socket when the socket task ends.
    pub fn detach(&self) {
        let socket = {
            let mut state = self.lock();
            state.direct = false;
            state.socket.take()
        };
        drop(socket);
    }

    /// The socket task's read of a plain socket.
    pub(crate) fn poll_read(
        &self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.lock().socket.as_mut() {
            Some(socket) => Pin::new(socket).poll_read(cx, buf),
            None => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
    }

    /// Queues an encoded frame for the socket.
    pub fn push(&self, frame: &Bytes, limits: QueueLimits) -> Result<Pushed, PushError> {
        let len = frame.len();
        let waiter = {
            let mut state = self.lock();
            if state.closed || state.closing {
                return Err(PushError::Closed);
            }
            if state.queue.len() + state.held() >= limits.messages
                || state.bytes + len > limits.bytes
            {
                return Err(PushError::Full);
            }
            let was_empty = state.queue.is_empty();
            state.bytes += len;
            if state.delay {
                let rare = state.rare.get_or_insert_default();
                rare.held.push_back(frame.clone());
            } else {
                state.queue.push_back(frame.clone());
            }
            if state.direct {
                return Ok(if was_empty {
                    Pushed::Flush
                } else {
                    Pushed::Queued
                });
            }
            state.waiter.take()
        };
        if let Some(waiter) = waiter {
            waiter.wake();
        }
        Ok(Pushed::Queued)
    }

    /// Writes what is queued, without waiting, on the caller's task (after a push that
    /// answered [`Pushed::Flush`]). What the socket does not take at once, or an error, is
    /// left to the socket task, which this wakes.
    pub fn flush(&self) {
        let waiter = {
            let mut state = self.lock();
            if !state.direct || state.queue.is_empty() {
                return;
            }
            match state.write_queue(None, &mut None) {
                Ok(true) => return,
                Ok(false) | Err(_) => state.waiter.take(),
            }
        };
        if let Some(waiter) = waiter {
            waiter.wake();
        }
    }

    /// The socket task's own write of `buf` (whole frames from tungstenite): written now
    /// if nothing is queued before it, else queued behind what is. Always takes all of
    /// `buf`: what the socket does not take waits in the queue for
    /// [`poll_flush_own`](Outbox::poll_flush_own), so no frame is ever left half written
    /// outside the queue.
    pub(crate) fn poll_write_own(
        &self,
        cx: &mut Context<'_>,
        buf: &[u8],
        mut tls: Tls<'_>,
    ) -> Poll<io::Result<usize>> {
        let mut state = self.lock();
        if !state.queue.is_empty() {
            state.queue_own(buf);
            return match state.write_queue(Some(cx), &mut tls) {
                Err(e) => Poll::Ready(Err(e)),
                Ok(_) => Poll::Ready(Ok(buf.len())),
            };
        }
        let written = write_slices(
            &mut tls,
            state.socket.as_mut(),
            Some(cx),
            &[IoSlice::new(buf)],
        );
        match written {
            Poll::Ready(Ok(n)) => state.queue_own(&buf[n..]),
            Poll::Pending => state.queue_own(buf),
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
        }
        Poll::Ready(Ok(buf.len()))
    }

    /// Writes everything queued: ready once the queue is empty (and, on TLS, flushed).
    pub(crate) fn poll_flush_own(
        &self,
        cx: &mut Context<'_>,
        tls: Tls<'_>,
    ) -> Poll<io::Result<()>> {
        self.poll_drain(cx, tls, false)
    }

    /// Writes everything queued, then shuts the write side down (FIN, or TLS close_notify).
    pub(crate) fn poll_shutdown_own(
        &self,
        cx: &mut Context<'_>,
        tls: Tls<'_>,
    ) -> Poll<io::Result<()>> {
        self.poll_drain(cx, tls, true)
    }

    /// Writes everything queued, then flushes the stream, or with `shutdown` shuts its
    /// write side down.
    fn poll_drain(
        &self,
        cx: &mut Context<'_>,
        mut tls: Tls<'_>,
        shutdown: bool,
    ) -> Poll<io::Result<()>> {
        let mut state = self.lock();
        match state.write_queue(Some(cx), &mut tls) {
            Err(e) => Poll::Ready(Err(e)),
            Ok(false) => Poll::Pending,
            Ok(true) => match (tls, state.socket.as_mut(), shutdown) {
                (Some(tls), _, false) => Pin::new(tls).poll_flush(cx),
                (Some(tls), _, true) => Pin::new(tls).poll_shutdown(cx),
                (None, Some(socket), true) => Pin::new(socket).poll_shutdown(cx),
                // A plain socket's writes are not buffered.
                (None, _, _) => Poll::Ready(Ok(())),
            },
        }
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
            state.rare.get_or_insert_default().close = Some(request);
            state.waiter.take()
        };
        if let Some(waiter) = waiter {
            waiter.wake();
        }
        true
    }

    /// Whether a close is requested and not taken yet.
    pub fn close_requested(&self) -> bool {
        self.lock().close_pending()
    }

    /// The close request, once everything queued before it is written.
    pub fn take_close(&self) -> Option<CloseRequest> {
        let mut state = self.lock();
        if state.queue.is_empty() && state.held() == 0 {
            state.rare.as_mut().and_then(|r| r.close.take())
        } else {
            None
        }
    }

    /// Whether nothing waits to be written.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.lock().queue.is_empty()
    }

    /// Marks the connection closed: later pushes fail with [`PushError::Closed`], and what
    /// is still queued is dropped (but a frame the socket took in part, which must be
    /// finished before a close frame can follow). Returns how many frames were dropped.
    pub fn mark_closed(&self) -> usize {
        let mut state = self.lock();
        state.closed = true;
        state.waiter = None;
        let kept = if state.started {
            state.queue.pop_front()
        } else {
            None
        };
        let held = state
            .rare
            .as_mut()
            .map_or(0, |r| std::mem::take(&mut r.held).len());
        let dropped = state.queue.len() + held;
        state.queue = VecDeque::new();
        state.bytes = 0;
        if let Some(front) = kept {
            state.bytes = front.len();
            state.queue.push_back(front);
        }
        dropped
    }

    /// Whether the connection is closed or closing.
    pub fn is_closed(&self) -> bool {
        let state = self.lock();
        state.closed || state.closing
    }

    /// Waits until there is something to write or a close request. Ready at once if there
    /// already is.
    pub async fn wait(&self) {
        self.wait_for(State::ready).await
    }

    /// Waits until a close is requested that [`take_close`](Outbox::take_close) has not
    /// taken yet (queued messages do not wake it). The socket task races its pending
    /// writes against it: a close requested while the client reads nothing ends the
    /// connection at once.
    pub async fn wait_close_request(&self) {
        self.wait_for(State::close_pending).await
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
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    const LIMITS: QueueLimits = QueueLimits {
        messages: 2,
        bytes: 10,
    };

    fn bytes(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    /// A connected pair of sockets on loopback: the outbox's, the peer.
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (accepted.unwrap().0, client.unwrap())
    }

    #[test]
    fn bounded_by_count_and_bytes() {
        let outbox = Outbox::default();
        assert_eq!(outbox.push(&bytes("12345"), LIMITS), Ok(Pushed::Queued));
        assert_eq!(outbox.push(&bytes("123456"), LIMITS), Err(PushError::Full));
        assert_eq!(outbox.push(&bytes("1"), LIMITS), Ok(Pushed::Queued));
        assert_eq!(outbox.push(&bytes(""), LIMITS), Err(PushError::Full));
        let mut state = outbox.lock();
        state.advance(6);
        assert!(state.queue.is_empty());
        drop(state);
        assert_eq!(outbox.push(&bytes("123456789"), LIMITS), Ok(Pushed::Queued));
    }

    #[test]
    fn close_request_stops_pushes_and_waits_for_the_queue() {
        let outbox = Outbox::default();
        assert_eq!(outbox.push(&bytes("x"), LIMITS), Ok(Pushed::Queued));
        let request = CloseRequest {
            code: 1000,
            reason: String::new(),
            reaped: false,
        };
        assert!(outbox.request_close(request.clone()));
        assert!(!outbox.request_close(request.clone()));
        assert_eq!(outbox.push(&bytes("x"), LIMITS), Err(PushError::Closed));
        assert_eq!(
            outbox.take_close(),
            None,
            "a message queued before it goes first"
        );
        outbox.lock().advance(1);
        assert_eq!(outbox.take_close(), Some(request.clone()));
        // Still closing after the request was taken: not accepted, not acknowledged.
        assert_eq!(outbox.push(&bytes("x"), LIMITS), Err(PushError::Closed));
        assert!(outbox.is_closed());
        assert!(!outbox.request_close(request));
    }

    #[test]
    fn closing_keeps_a_frame_written_in_part_and_drops_the_rest() {
        let outbox = Outbox::default();
        let limits = QueueLimits {
            messages: 10,
            bytes: 100,
        };
        for frame in ["abc", "def", "ghi"] {
            assert_eq!(outbox.push(&bytes(frame), limits), Ok(Pushed::Queued));
        }
        outbox.lock().advance(1);
        assert_eq!(outbox.mark_closed(), 2);
        let state = outbox.lock();
        assert_eq!(state.queue.len(), 1);
        assert_eq!(&state.queue[0][..], b"bc");
        assert_eq!(state.bytes, 2);
    }

    #[tokio::test]
    async fn a_plain_socket_is_written_by_the_producer_in_order() {
        let (socket, mut peer) = pair().await;
        let outbox = Outbox::default();
        outbox.attach(socket, true);
        let limits = QueueLimits {
            messages: 10,
            bytes: 100,
        };
        assert_eq!(outbox.push(&bytes("one "), limits), Ok(Pushed::Flush));
        assert_eq!(
            outbox.push(&bytes("two "), limits),
            Ok(Pushed::Queued),
            "the first push's flush writes it too"
        );
        outbox.flush();
        assert!(outbox.is_empty());
        assert_eq!(outbox.push(&bytes("three"), limits), Ok(Pushed::Flush));
        outbox.flush();
        let mut got = [0u8; 13];
        peer.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"one two three");
        outbox.detach();
        assert!(outbox.lock().socket.is_none());
        assert_eq!(peer.read(&mut got).await.unwrap(), 0, "closed");
    }

    #[tokio::test]
    async fn what_the_socket_does_not_take_wakes_the_socket_task() {
        let (socket, mut peer) = pair().await;
        let outbox = std::sync::Arc::new(Outbox::default());
        outbox.attach(socket, true);
        let limits = QueueLimits {
            messages: 100_000,
            bytes: 1 << 30,
        };
        let waiter = tokio::spawn({
            let outbox = outbox.clone();
            async move {
                // The socket task: waits, then writes the rest itself.
                outbox.wait().await;
                poll_fn(|cx| outbox.poll_flush_own(cx, None)).await
            }
        });
        tokio::task::yield_now().await;
        let frame = Bytes::from(vec![7u8; 64 * 1024]);
        let mut pushed = 0;
        // Until the socket's buffers are full and a frame stays queued.
        while outbox.is_empty() {
            if outbox.push(&frame, limits).unwrap() == Pushed::Flush {
                outbox.flush();
            }
            pushed += 1;
        }
        let mut total = 0;
        let mut buf = vec![0u8; 1 << 16];
        while total < pushed * frame.len() {
            let n = peer.read(&mut buf).await.unwrap();
            assert!(buf[..n].iter().all(|&b| b == 7));
            total += n;
        }
        tokio::time::timeout(std::time::Duration::from_secs(10), waiter)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(outbox.is_empty());
    }

    #[tokio::test]
    async fn wait_sees_a_push_made_before_it() {
        let outbox = Outbox::default();
        assert_eq!(outbox.push(&bytes("x"), LIMITS), Ok(Pushed::Queued));
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

        let outbox = Outbox::default();
        let counter = Arc::new(Counter(0.into()));
        let waker = std::task::Waker::from(counter.clone());
        let mut cx = Context::from_waker(&waker);
        let poll = |cx: &mut Context<'_>| std::pin::pin!(outbox.wait()).poll(cx);
        assert_eq!(poll(&mut cx), Poll::Pending, "nothing queued yet");
        for _ in 0..3 {
            let _ = outbox.push(&bytes("x"), LIMITS_MANY).unwrap();
        }
        assert_eq!(counter.0.load(SeqCst), 1);
        assert_eq!(poll(&mut cx), Poll::Ready(()));
        outbox.lock().advance(3);
        assert_eq!(poll(&mut cx), Poll::Pending, "written: nothing to do");
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
        assert_eq!(outbox.push(&bytes("x"), LIMITS), Ok(Pushed::Queued));
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
        // Taken: no close request waits any more.
        outbox.lock().advance(1);
        assert!(outbox.take_close().is_some());
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
