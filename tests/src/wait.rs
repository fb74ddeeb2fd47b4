//! Bounded polling for the end-to-end tests: wait for a condition, never for a time.
//!
//! [`eventually`] and [`eventually_some`] call the check every 10 ms until it
//! succeeds, and panic with `timed out after {timeout:?} waiting for {what}`
//! otherwise. A check that itself hangs is cut off at the deadline too. [`within`]
//! returns `false` instead, for a caller that reports what is missing itself.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

/// Pause between two checks.
pub const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// Polls `check` every [`POLL_INTERVAL`] until it returns `true`.
///
/// Panics with `timed out after {timeout:?} waiting for {what}` if that does not
/// happen within `timeout` (including when a single check runs past the deadline).
pub async fn eventually<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    eventually_some(what, timeout, || {
        let fut = check();
        async move { fut.await.then_some(()) }
    })
    .await
}

/// Polls `check` every [`POLL_INTERVAL`] until it returns `Some(value)`, and
/// returns that value.
///
/// Panics with `timed out after {timeout:?} waiting for {what}` otherwise.
pub async fn eventually_some<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, check()).await {
            Ok(Some(value)) => return value,
            Ok(None) if Instant::now() < deadline => tokio::time::sleep(POLL_INTERVAL).await,
            _ => panic!("timed out after {timeout:?} waiting for {what}"),
        }
    }
}

/// Polls `check` every [`POLL_INTERVAL`] until it returns `true`; `false` if it has not
/// within `timeout`.
pub async fn within<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, check()).await {
            Ok(true) => return true,
            Ok(false) if Instant::now() < deadline => tokio::time::sleep(POLL_INTERVAL).await,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn eventually_returns_once_the_condition_holds() {
        let calls = Arc::new(AtomicUsize::new(0));
        let c = calls.clone();
        eventually("third call", Duration::from_secs(5), || {
            let c = c.clone();
            async move { c.fetch_add(1, Ordering::SeqCst) + 1 >= 3 }
        })
        .await;
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn eventually_sees_changes_made_by_another_task() {
        let flag = Arc::new(AtomicUsize::new(0));
        let f = flag.clone();
        tokio::spawn(async move {
            tokio::task::yield_now().await;
            f.store(1, Ordering::SeqCst);
        });
        eventually("the flag", Duration::from_secs(5), || {
            let flag = flag.clone();
            async move { flag.load(Ordering::SeqCst) == 1 }
        })
        .await;
    }

    #[tokio::test]
    #[should_panic(expected = "timed out after 50ms waiting for the impossible")]
    async fn eventually_panics_with_what_on_timeout() {
        eventually("the impossible", Duration::from_millis(50), || async {
            false
        })
        .await;
    }

    #[tokio::test]
    #[should_panic(expected = "timed out after 50ms waiting for a hanging check")]
    async fn eventually_cuts_off_a_hanging_check() {
        eventually("a hanging check", Duration::from_millis(50), || {
            std::future::pending::<bool>()
        })
        .await;
    }

    #[tokio::test]
    async fn within_says_whether_the_condition_held_in_time() {
        let mut n = 0;
        assert!(
            within(Duration::from_secs(5), || {
                n += 1;
                let v = n;
                async move { v == 3 }
            })
            .await
        );
        assert!(!within(Duration::from_millis(30), || async { false }).await);
    }

    #[tokio::test]
    async fn eventually_some_returns_the_value() {
        let mut n = 0;
        let got = eventually_some("n to reach 4", Duration::from_secs(5), || {
            n += 1;
            let v = n;
            async move { (v == 4).then(|| format!("value {v}")) }
        })
        .await;
        assert_eq!(got, "value 4");
    }

    #[tokio::test]
    #[should_panic(expected = "timed out after 30ms waiting for nothing")]
    async fn eventually_some_panics_on_timeout() {
        let _: u8 = eventually_some("nothing", Duration::from_millis(30), || async { None }).await;
    }
}
