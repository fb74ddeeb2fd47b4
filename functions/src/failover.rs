//! Which send-back URL a request tries first, and when a request may try the next one.
//!
//! A [`SendBack`](crate::SendBack) may be given several base URLs: one per gateway node
//! sharing a store (any node reaches every connection), or one balanced address. A request
//! goes to the URL that last worked ([`Urls::order`]); it moves on to the next only when
//! the node surely did nothing with it ([`Attempt`]): the connection could not be opened
//! (refused, unreachable, connect timeout), or the gateway refused it unread because it is
//! shutting down (503 `shutting_down`). A request that reached a node and then failed (a
//! reset or timeout after it was written, any other status) may have been acted on, and
//! sends are not idempotent: it is never sent again.
//!
//! A URL that failed is tried after the others for [`RETRY_FAILED_AFTER`], so a dead node
//! costs one failed connect when it goes, not one per request; if every URL failed
//! recently, all are tried anyway, the least recently failed first.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::codes;
use crate::error::FunctionsError;

/// How long a URL that failed is tried only after the ones that did not.
pub(crate) const RETRY_FAILED_AFTER: Duration = Duration::from_secs(5);

/// What one attempt at one URL came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Attempt {
    /// The node answered (any status but a refusal): it works.
    Answered,
    /// The node did nothing with the request: the next URL may be tried.
    NotDelivered,
    /// The request may have reached the node: it must not be sent again.
    MayHaveActed,
}

impl Attempt {
    /// The outcome of a request that got no reply. Only a failure to connect (refused,
    /// unreachable, DNS, the connect timeout) proves nothing was sent; a pooled connection
    /// found closed before the request was written is retried by the HTTP client itself.
    pub(crate) fn of_error(err: &reqwest::Error) -> Attempt {
        if err.is_connect() {
            Attempt::NotDelivered
        } else {
            Attempt::MayHaveActed
        }
    }

    /// The outcome of a reply. A 503 `shutting_down` is a node refusing work because it
    /// drains: it did nothing. Other 503s are about the target, not the node that answered
    /// (`node_unavailable`: the node holding the connection is silent, and every node
    /// would say so; `store_unavailable` may come after part of a group send was done).
    pub(crate) fn of_error_reply(err: &FunctionsError) -> Attempt {
        match err {
            FunctionsError::Unavailable { code, .. } if code == codes::SHUTTING_DOWN => {
                Attempt::NotDelivered
            }
            _ => Attempt::Answered,
        }
    }
}

/// The base URLs of a send-back API, in the order given, shared by a client's clones.
#[derive(Debug)]
pub(crate) struct Urls {
    urls: Vec<Url>,
    /// The index of the URL that last worked (the first given until one fails).
    preferred: AtomicUsize,
    /// The origin of the failure times.
    epoch: Instant,
}

#[derive(Debug)]
struct Url {
    /// Without a trailing `/`.
    base: String,
    /// When this URL last failed, in milliseconds after `epoch` plus one; 0 for never.
    failed_at: AtomicU64,
}

impl Urls {
    /// `bases` must not be empty.
    pub(crate) fn new(bases: Vec<String>) -> Urls {
        debug_assert!(!bases.is_empty());
        Urls {
            urls: bases
                .into_iter()
                .map(|base| Url {
                    base,
                    failed_at: AtomicU64::new(0),
                })
                .collect(),
            preferred: AtomicUsize::new(0),
            epoch: Instant::now(),
        }
    }

    /// The base URL at `index`.
    pub(crate) fn base(&self, index: usize) -> &str {
        &self.urls[index].base
    }

    /// How many base URLs there are (at least one).
    pub(crate) fn len(&self) -> usize {
        self.urls.len()
    }

    /// Every base URL, in the order given.
    pub(crate) fn bases(&self) -> impl Iterator<Item = &str> {
        self.urls.iter().map(|url| url.base.as_str())
    }

    /// The indexes a request tries, in order: from the URL that last worked on, those that
    /// have not failed within [`RETRY_FAILED_AFTER`], then those that have, least recently
    /// failed first.
    pub(crate) fn order(&self) -> Vec<usize> {
        self.order_at(self.now())
    }

    /// [`Urls::order`] at `now` (milliseconds after `epoch`, plus one).
    fn order_at(&self, now: u64) -> Vec<usize> {
        let n = self.urls.len();
        let start = self.preferred.load(Ordering::Relaxed) % n;
        let window = millis(RETRY_FAILED_AFTER);
        let mut order: Vec<usize> = (0..n).map(|k| (start + k) % n).collect();
        // A stable sort: the rotation order holds among equals.
        order.sort_by_key(|&i| {
            let failed_at = self.urls[i].failed_at.load(Ordering::Relaxed);
            let recent = failed_at != 0 && now.saturating_sub(failed_at) < window;
            if recent { (1, failed_at) } else { (0, 0) }
        });
        order
    }

    /// The URL at `index` answered: later requests start there.
    pub(crate) fn worked(&self, index: usize) {
        self.urls[index].failed_at.store(0, Ordering::Relaxed);
        self.preferred.store(index, Ordering::Relaxed);
    }

    /// The URL at `index` did not take a request: later requests start at the next one
    /// (unless another request already moved on) and try it last for a while.
    pub(crate) fn failed(&self, index: usize) {
        self.failed_at(index, self.now());
    }

    /// [`Urls::failed`] at `now` (milliseconds after `epoch`, plus one).
    fn failed_at(&self, index: usize, now: u64) {
        self.urls[index]
            .failed_at
            .store(now.max(1), Ordering::Relaxed);
        let next = (index + 1) % self.urls.len();
        let _ = self
            .preferred
            .compare_exchange(index, next, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// Milliseconds since `epoch`, plus one (0 means "never failed").
    fn now(&self) -> u64 {
        millis(self.epoch.elapsed()).saturating_add(1)
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn urls(n: usize) -> Urls {
        Urls::new((0..n).map(|i| format!("http://node-{i}")).collect())
    }

    #[test]
    fn requests_start_at_the_url_that_last_worked() {
        let urls = urls(3);
        assert_eq!(urls.order(), [0, 1, 2]);
        urls.worked(2);
        assert_eq!(urls.order(), [2, 0, 1]);
        assert_eq!(urls.base(2), "http://node-2");
        assert_eq!(urls.bases().count(), 3);
    }

    #[test]
    fn a_failed_url_is_tried_last_until_its_back_off_passes() {
        let urls = urls(3);
        // Node 0 dies: the request that found out moves on, and so do later ones.
        urls.failed_at(0, 1_000);
        assert_eq!(urls.order_at(1_001), [1, 2, 0]);
        urls.worked(1);
        assert_eq!(urls.order_at(1_002), [1, 2, 0]);
        // Node 1 dies too: node 2 first, then the failed ones, the older failure first.
        urls.failed_at(1, 1_100);
        assert_eq!(urls.order_at(1_101), [2, 0, 1]);
        // Node 2 dies: every URL is still tried, least recently failed first.
        urls.failed_at(2, 1_200);
        assert_eq!(urls.order_at(1_201), [0, 1, 2]);
        // A URL that answers again loses its mark.
        urls.worked(1);
        assert_eq!(urls.order_at(1_202), [1, 0, 2]);
        // Once the back-off has passed, the rotation from the working URL holds.
        let later = 1_200 + millis(RETRY_FAILED_AFTER);
        assert_eq!(urls.order_at(later), [1, 2, 0]);
    }

    #[test]
    fn a_failure_seen_late_does_not_move_requests_off_a_working_url() {
        let urls = urls(2);
        // Two requests started at node 0; the first failed over to node 1, which worked.
        urls.failed(0);
        urls.worked(1);
        // The second one's failure arrives now: requests stay on node 1.
        urls.failed(0);
        assert_eq!(urls.order(), [1, 0]);
    }

    #[test]
    fn only_a_draining_refusal_moves_on() {
        let unavailable = |code: &str| FunctionsError::Unavailable {
            code: code.into(),
            message: String::new(),
        };
        assert_eq!(
            Attempt::of_error_reply(&unavailable(codes::SHUTTING_DOWN)),
            Attempt::NotDelivered
        );
        for code in [codes::NODE_UNAVAILABLE, codes::STORE_UNAVAILABLE, "unknown"] {
            assert_eq!(
                Attempt::of_error_reply(&unavailable(code)),
                Attempt::Answered,
                "{code}"
            );
        }
        assert_eq!(
            Attempt::of_error_reply(&FunctionsError::Gone),
            Attempt::Answered
        );
    }

    // ------------------------------------------------------------------ SendBack over
    // several URLs, against real servers.

    use std::sync::Arc;

    use http::StatusCode;
    use serde_json::json;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    use crate::test_api::{self, TestApi};
    use crate::{Message, SendBack};

    /// A send-back API answering every request with `status` and `{"error": code}`, or
    /// 200 for no code.
    async fn api(status: StatusCode, code: Option<&'static str>) -> TestApi {
        test_api::start(move |_| match code {
            Some(code) => test_api::json(status, &json!({"error": code, "message": "no"})),
            None => test_api::empty(status),
        })
        .await
    }

    /// `http://127.0.0.1:<port>` where nothing listens (bound, then released).
    fn refused_url() -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    }

    /// How a [`half_server`] ends a connection once it has read a whole request.
    #[derive(Clone, Copy)]
    enum Ending {
        /// Closes it (FIN).
        Close,
        /// Resets it (RST).
        Reset,
    }

    /// A server that reads each request whole (head and `content-length` body), counts it
    /// and ends the connection without answering: a node that took the request and died.
    async fn half_server(how: Ending) -> (String, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(AtomicUsize::new(0));
        let counter = seen.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let counter = counter.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        let Ok(n) = stream.read(&mut chunk).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        if request_complete(&buf) {
                            break;
                        }
                    }
                    counter.fetch_add(1, Ordering::SeqCst);
                    if let Ending::Reset = how {
                        let _ = stream.set_zero_linger();
                    }
                });
            }
        });
        (url, seen)
    }

    /// Whether `buf` holds a whole request head and the body its `content-length` names.
    fn request_complete(buf: &[u8]) -> bool {
        let text = String::from_utf8_lossy(buf);
        let Some((head, body)) = text.split_once("\r\n\r\n") else {
            return false;
        };
        let length = head
            .lines()
            .filter_map(|line| line.split_once(':'))
            .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-length"))
            .and_then(|(_, value)| value.trim().parse::<usize>().ok())
            .unwrap_or(0);
        body.len() >= length
    }

    fn sendback(urls: &[&str]) -> SendBack {
        SendBack::with_urls(urls, Some("s3cret".to_owned())).unwrap()
    }

    #[tokio::test]
    async fn a_refused_connection_moves_on_to_the_next_url() {
        let live = api(StatusCode::OK, None).await;
        let dead = refused_url();
        let client = sendback(&[&dead, &live.base]);
        for i in 0..3 {
            client
                .send("c1", &Message::text(format!("m{i}")))
                .await
                .unwrap();
        }
        let seen = live.requests();
        assert_eq!(seen.len(), 3, "each request once, on the live node");
        assert_eq!(seen[0].body.as_ref(), b"m0");
        assert_eq!(seen[0].header("authorization"), Some("Bearer s3cret"));
        assert_eq!(client.base_urls(), [dead.as_str(), live.base.as_str()]);

        // Every URL refusing: the error is the connect failure.
        let err = sendback(&[&dead, &refused_url()])
            .send("c1", &Message::text("x"))
            .await
            .unwrap_err();
        match &err {
            FunctionsError::Transport(e) => assert!(e.is_connect(), "{err:?}"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[tokio::test]
    async fn requests_stay_on_the_url_that_worked() {
        // A draining node refuses unread; later requests go straight to the one that took
        // the first, so the draining node sees one request, not one per request.
        let draining = api(StatusCode::SERVICE_UNAVAILABLE, Some(codes::SHUTTING_DOWN)).await;
        let live = api(StatusCode::OK, None).await;
        let client = sendback(&[&draining.base, &live.base]);
        for _ in 0..4 {
            client
                .send_to_group("lobby", &Message::binary(vec![1u8, 2]), &["c1"])
                .await
                .ok();
        }
        assert_eq!(draining.requests().len(), 1);
        let seen = live.requests();
        assert_eq!(seen.len(), 4);
        assert_eq!(seen[3].uri.path(), "/@groups/lobby");
        assert_eq!(seen[3].uri.query(), Some("exclude=c1"));
        assert_eq!(seen[3].body.as_ref(), &[1u8, 2]);
        // Clones share what was learnt.
        client.clone().get("c1").await.ok();
        assert_eq!(draining.requests().len(), 1);
        assert_eq!(live.requests().len(), 5);
    }

    #[tokio::test]
    async fn a_503_about_the_target_is_not_sent_elsewhere() {
        for code in [codes::NODE_UNAVAILABLE, codes::STORE_UNAVAILABLE] {
            let first = api(StatusCode::SERVICE_UNAVAILABLE, Some(code)).await;
            let second = api(StatusCode::OK, None).await;
            let err = sendback(&[&first.base, &second.base])
                .send("c1", &Message::text("x"))
                .await
                .unwrap_err();
            assert!(
                matches!(&err, FunctionsError::Unavailable { code: c, .. } if c == code),
                "{err:?}"
            );
            assert_eq!(first.requests().len(), 1);
            assert!(second.requests().is_empty(), "{code}: sent twice");
        }
    }

    #[tokio::test]
    async fn a_request_that_may_have_been_acted_on_is_never_sent_again() {
        for how in [Ending::Close, Ending::Reset] {
            let (half, seen) = half_server(how).await;
            let second = api(StatusCode::OK, None).await;
            let client = sendback(&[&half, &second.base]);
            let err = client
                .send("c1", &Message::text("maybe delivered"))
                .await
                .unwrap_err();
            assert!(matches!(err, FunctionsError::Transport(_)), "{err:?}");
            let batch = ["a".to_owned(), "b".to_owned()];
            let err = client
                .send_many(&batch, &Message::text("x"))
                .await
                .unwrap_err();
            assert!(matches!(err, FunctionsError::Transport(_)), "{err:?}");
            assert_eq!(
                seen.load(Ordering::SeqCst),
                2,
                "each request reached it once"
            );
            assert!(
                second.requests().is_empty(),
                "a request that may have been acted on went to another node"
            );
        }
    }

    #[test]
    fn every_url_is_checked_and_one_is_needed() {
        let none: [&str; 0] = [];
        assert!(matches!(
            SendBack::with_urls(none, None),
            Err(FunctionsError::InvalidBaseUrl { .. })
        ));
        match SendBack::with_urls(["http://a:1", "b:2"], None) {
            Err(FunctionsError::InvalidBaseUrl { url, .. }) => assert_eq!(url, "b:2"),
            other => panic!("unexpected {other:?}"),
        }
        let client = SendBack::with_urls(["http://a:1/", "http://b:2/x/"], None).unwrap();
        assert_eq!(client.base_url(), "http://a:1");
        assert_eq!(client.base_urls(), ["http://a:1", "http://b:2/x"]);
        let shown = format!("{client:?}");
        assert!(shown.contains("http://b:2/x"), "{shown}");
    }
}
