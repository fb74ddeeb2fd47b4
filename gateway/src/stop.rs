//! The gateway's shutdown signal: a [`CancellationToken`] plus a flag that can be read
//! without a lock.
//!
//! Every socket task waits for shutdown on every turn of its loop. The token's own future
//! takes the token's lock, and the lock of its waiter list, each time it is polled; every
//! connection of the node shares both, so on a busy node (a fan-out wakes 10,000 tasks at
//! once) the two cores would pass those locks back and forth. [`Stop::watch`] enters the
//! waiter list once and afterwards reads only the flag.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use pin_project_lite::pin_project;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

/// Cancelled once, when shutdown starts.
#[derive(Debug, Default)]
pub struct Stop {
    token: CancellationToken,
    /// Set before the token is cancelled.
    stopping: AtomicBool,
}

impl Stop {
    /// Starts shutdown: every waiter wakes.
    pub fn cancel(&self) {
        self.stopping.store(true, Ordering::Release);
        self.token.cancel();
    }

    /// Whether shutdown has started (no lock taken).
    pub fn is_cancelled(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// Resolves once shutdown starts. Cheap to create and drop: for one-off waits.
    pub fn cancelled(&self) -> WaitForCancellationFuture<'_> {
        self.token.cancelled()
    }

    /// Resolves once shutdown starts; made once and polled again and again by one task,
    /// it takes the shared locks only on its first poll.
    pub fn watch(&self) -> Watch<'_> {
        Watch {
            stop: self,
            waiting: self.token.cancelled(),
            registered: false,
        }
    }
}

pin_project! {
    /// The future of [`Stop::watch`]. Must be polled by one task only: the waker of its
    /// first poll is the one woken.
    pub struct Watch<'a> {
        stop: &'a Stop,
        #[pin]
        waiting: WaitForCancellationFuture<'a>,
        registered: bool,
    }
}

impl Future for Watch<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        if this.stop.is_cancelled() {
            return Poll::Ready(());
        }
        if *this.registered {
            // In the token's waiter list with this task's waker: cancel() sets the flag
            // before it wakes us, so the check above sees it.
            return Poll::Pending;
        }
        *this.registered = true;
        this.waiting.poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_watch_polled_many_times_still_wakes_on_cancel() {
        let stop = Arc::new(Stop::default());
        let (polled, mut polled_rx) = tokio::sync::mpsc::unbounded_channel();
        let task = tokio::spawn({
            let stop = stop.clone();
            async move {
                let mut watch = std::pin::pin!(stop.watch());
                // Poll it several times, as the socket loop does, before it resolves.
                for _ in 0..3 {
                    let pending = std::future::poll_fn(|cx| {
                        Poll::Ready(watch.as_mut().poll(cx).is_pending())
                    })
                    .await;
                    assert!(pending);
                    polled.send(()).unwrap();
                }
                watch.await;
            }
        });
        for _ in 0..3 {
            polled_rx.recv().await.unwrap();
        }
        assert!(!stop.is_cancelled());
        stop.cancel();
        assert!(stop.is_cancelled());
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the watch resolves after cancel")
            .unwrap();
    }

    #[tokio::test]
    async fn a_watch_made_after_cancel_is_ready() {
        let stop = Stop::default();
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(5), stop.watch())
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(5), stop.cancelled())
            .await
            .unwrap();
    }
}
