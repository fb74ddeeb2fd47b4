//! The function client on hyper-util's pooled client (`hyper_util::client::legacy::Client`
//! with `HttpConnector`), behind the surface [`crate::function::invoke`] uses from
//! [`crate::function::http_client`]: `new(max_idle, idle_timeout)`, `endpoint(url)`,
//! `post`/`send` returning the same [`HttpReply`] or [`HttpError`]. Built only with the
//! gateway's `hyper-client` feature, which makes the invoker use it (the relay keeps the
//! hand-written client): the two are measured against each other with the echo benchmark
//! (tests/bench/README.md).
//!
//! What matches the hand-written client: `http://` URLs only; the headers sent (`Host`,
//! `Content-Length`, the caller's, a caller's `host` replacing the URL's); at most
//! `max_idle` idle connections per origin, each kept at most `idle_timeout`; `TCP_NODELAY`;
//! reply heads of at most 64 KiB and 64 headers; a body declared larger than `max_body`
//! refused before it is read, and any other stopped at `max_body` (`Limited`); transfer
//! codings other than `chunked` alone, or in an HTTP/1.0 reply, refused as malformed.
//! What differs: hyper runs each connection on a task of its own (a call hands its request
//! over a channel and is woken with the reply), and a pooled connection the function
//! closed is retried by hyper only when the request was not yet written.

use std::error::Error as StdError;
use std::io;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Uri, Version, header};
use http_body_util::{BodyExt as _, Full, LengthLimitError, Limited};
use hyper::body::Body as _;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::function::http_client::{HttpError, HttpReply};

/// The longest reply head read (hyper's read buffer: a head must fit in it).
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// The most reply headers read.
const MAX_HEADERS: usize = 64;

/// The client: hyper-util's connection pool, keyed by origin.
#[derive(Debug, Clone)]
pub struct HyperClient {
    client: Client<HttpConnector, Full<Bytes>>,
}

/// A parsed `http://` URL on the client's pool.
#[derive(Debug)]
pub struct Endpoint {
    client: Client<HttpConnector, Full<Bytes>>,
    uri: Uri,
    /// `host[:port]`, for connect errors.
    authority: String,
}

impl HyperClient {
    /// A client keeping at most `max_idle` idle connections per origin, each for at most
    /// `idle_timeout`.
    pub fn new(max_idle: usize, idle_timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(max_idle)
            .pool_idle_timeout(idle_timeout)
            .pool_timer(TokioTimer::new())
            .http1_max_buf_size(MAX_HEAD_BYTES)
            .http1_max_headers(MAX_HEADERS)
            .build(connector);
        HyperClient { client }
    }

    /// Parses `url` into an endpoint on this client's pool.
    pub fn endpoint(&self, url: &str) -> Result<Endpoint, HttpError> {
        let bad = || HttpError::BadUrl(url.to_owned());
        let parsed = url::Url::parse(url).map_err(|_| bad())?;
        if parsed.scheme() != "http" {
            return Err(bad());
        }
        let host = parsed.host_str().ok_or_else(bad)?;
        let authority = match parsed.port() {
            Some(p) => format!("{host}:{p}"),
            None => host.to_owned(),
        };
        let uri = Uri::try_from(parsed.as_str()).map_err(|_| bad())?;
        Ok(Endpoint {
            client: self.client.clone(),
            uri,
            authority,
        })
    }
}

impl Endpoint {
    /// POSTs `body` with `headers` (plus `Host` and `Content-Length`) and reads the whole
    /// reply, its body capped at `max_body` bytes.
    pub async fn post(
        &self,
        headers: &[(&str, &str)],
        body: &Bytes,
        max_body: usize,
    ) -> Result<HttpReply, HttpError> {
        self.send("POST", headers, body, max_body).await
    }

    /// Sends a `method` request, otherwise as [`Endpoint::post`]; a `host` among `headers`
    /// replaces the URL's.
    pub async fn send(
        &self,
        method: &str,
        headers: &[(&str, &str)],
        body: &Bytes,
        max_body: usize,
    ) -> Result<HttpReply, HttpError> {
        let method = Method::from_bytes(method.as_bytes()).map_err(invalid_input)?;
        let mut request = Request::builder().method(method).uri(self.uri.clone());
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request
            .body(Full::new(body.clone()))
            .map_err(invalid_input)?;
        let response = self
            .client
            .request(request)
            .await
            .map_err(|e| self.request_error(&e))?;
        check_codings(response.version(), response.headers())?;
        let status = response.status().as_u16();
        let mut content_type = None;
        let mut kept = Vec::new();
        for (name, value) in response.headers() {
            let name = name.as_str();
            if name == "content-type" {
                content_type = std::str::from_utf8(value.as_bytes())
                    .ok()
                    .map(str::to_owned);
            } else if name.starts_with("x-amzn-") || name == "www-authenticate" {
                if let Ok(value) = std::str::from_utf8(value.as_bytes()) {
                    kept.push((name.to_owned(), value.to_owned()));
                }
            }
        }
        let body = response.into_body();
        // Refused before it is read, as the hand-written client does.
        if body.size_hint().lower() > max_body as u64 {
            return Err(HttpError::TooLarge(max_body));
        }
        let body = Limited::new(body, max_body)
            .collect()
            .await
            .map_err(|e| body_error(&*e, max_body))?
            .to_bytes();
        Ok(HttpReply {
            status,
            content_type,
            kept,
            body,
        })
    }

    /// The error of a request that got no reply head.
    fn request_error(&self, e: &hyper_util::client::legacy::Error) -> HttpError {
        if e.is_connect() {
            return HttpError::Connect {
                authority: self.authority.clone(),
                source: io_error(e),
            };
        }
        match find::<hyper::Error>(e) {
            Some(h) if h.is_parse() => HttpError::Malformed(h.to_string()),
            Some(h) if h.is_incomplete_message() => HttpError::ClosedBeforeReply,
            _ => HttpError::Io(io_error(e)),
        }
    }
}

/// Transfer codings other than exactly `chunked` in an HTTP/1.1 reply are refused, as the
/// hand-written client refuses them (see its module header).
fn check_codings(version: Version, headers: &HeaderMap) -> Result<(), HttpError> {
    let mut codings = Vec::new();
    let mut any = false;
    for value in headers.get_all(header::TRANSFER_ENCODING) {
        any = true;
        codings.extend(
            value
                .as_bytes()
                .split(|&b| b == b',')
                .map(<[u8]>::trim_ascii)
                .filter(|c| !c.is_empty()),
        );
    }
    if !any {
        return Ok(());
    }
    if version != Version::HTTP_11 {
        return Err(HttpError::Malformed(
            "Transfer-Encoding in an HTTP/1.0 reply".into(),
        ));
    }
    match codings.as_slice() {
        [only] if only.eq_ignore_ascii_case(b"chunked") => Ok(()),
        _ => Err(HttpError::Malformed(
            "transfer codings other than `chunked` alone".into(),
        )),
    }
}

/// The error of a reply body that could not be read whole.
fn body_error(e: &(dyn StdError + 'static), max_body: usize) -> HttpError {
    if e.downcast_ref::<LengthLimitError>().is_some() {
        return HttpError::TooLarge(max_body);
    }
    if find::<hyper::Error>(e).is_some_and(|h| h.is_incomplete_message()) {
        return HttpError::ClosedMidReply;
    }
    let io = io_error(e);
    match io.kind() {
        io::ErrorKind::UnexpectedEof => HttpError::ClosedMidReply,
        io::ErrorKind::InvalidInput | io::ErrorKind::InvalidData => {
            HttpError::Malformed(io.to_string())
        }
        _ => HttpError::Io(io),
    }
}

/// The first error of type `T` in `e`'s source chain, `e` included.
fn find<'a, T: StdError + 'static>(e: &'a (dyn StdError + 'static)) -> Option<&'a T> {
    let mut next = Some(e);
    while let Some(e) = next {
        if let Some(found) = e.downcast_ref::<T>() {
            return Some(found);
        }
        next = e.source();
    }
    None
}

/// An `io::Error` for `e`: the kind of the first I/O error in its chain (`Other` if none),
/// the message of the whole chain.
fn io_error(e: &(dyn StdError + 'static)) -> io::Error {
    let kind = find::<io::Error>(e).map_or(io::ErrorKind::Other, io::Error::kind);
    let mut message = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        next = cause.source();
    }
    io::Error::new(kind, message)
}

/// A method, header or request the caller built wrong.
fn invalid_input(e: impl std::fmt::Display) -> HttpError {
    HttpError::Io(io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    use tokio::net::TcpListener;

    use super::*;

    /// What the raw server does with each request, in order.
    #[derive(Clone, Copy)]
    enum Step {
        /// Writes these bytes and waits for the next request.
        Reply(&'static [u8]),
        /// Writes these bytes and closes the connection.
        ReplyAndClose(&'static [u8]),
        /// Closes the connection without a reply.
        Close,
    }
    use Step::*;

    /// What the raw server saw: connections accepted and each request head.
    #[derive(Default)]
    struct Seen {
        accepted: usize,
        heads: Vec<String>,
    }

    /// A server that answers requests with `steps`, one per request, whatever
    /// connection it comes on; its URL and what it saw.
    async fn raw_server(steps: Vec<Step>) -> (String, Arc<Mutex<Seen>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/fn?x=1", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Seen::default()));
        let steps = Arc::new(Mutex::new(steps.into_iter()));
        let seen2 = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                seen2.lock().unwrap().accepted += 1;
                let (steps, seen) = (steps.clone(), seen2.clone());
                tokio::spawn(async move {
                    let mut reader = BufReader::new(stream);
                    loop {
                        let mut head = String::new();
                        let mut len = 0;
                        loop {
                            let mut line = String::new();
                            if reader.read_line(&mut line).await.unwrap_or(0) == 0 {
                                return;
                            }
                            if let Some(v) =
                                line.to_ascii_lowercase().strip_prefix("content-length: ")
                            {
                                len = v.trim().parse().unwrap();
                            }
                            head.push_str(&line);
                            if line == "\r\n" {
                                break;
                            }
                        }
                        let mut body = vec![0; len];
                        reader.read_exact(&mut body).await.unwrap();
                        seen.lock().unwrap().heads.push(head);
                        let next = steps.lock().unwrap().next().unwrap_or(Close);
                        match next {
                            Reply(reply) => reader.get_mut().write_all(reply).await.unwrap(),
                            ReplyAndClose(reply) => {
                                reader.get_mut().write_all(reply).await.unwrap();
                                return;
                            }
                            Close => return,
                        }
                    }
                });
            }
        });
        (url, seen)
    }

    async fn post(client: &HyperClient, url: &str) -> Result<HttpReply, HttpError> {
        let endpoint = client.endpoint(url).unwrap();
        endpoint
            .post(&[("x-test", "1")], &Bytes::from_static(b"{}"), 1024)
            .await
    }

    fn client() -> HyperClient {
        HyperClient::new(4, Duration::from_secs(60))
    }

    #[tokio::test]
    async fn replies_come_whole_on_one_kept_connection_with_the_headers_sent() {
        let reply: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Amzn-ErrorType: E\r\nContent-Length: 7\r\n\r\n{\"a\":1}";
        let chunked: &[u8] = b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nX-Trailer: t\r\n\r\n";
        let (url, seen) = raw_server(vec![Reply(reply), Reply(chunked)]).await;
        let c = client();
        let r = post(&c, &url).await.unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.content_type.as_deref(), Some("application/json"));
        assert_eq!(r.kept, vec![("x-amzn-errortype".into(), "E".into())]);
        assert_eq!(&r.body[..], b"{\"a\":1}");
        let r = post(&c, &url).await.unwrap();
        assert_eq!((r.status, &r.body[..]), (201, &b"abcde"[..]));
        let seen = seen.lock().unwrap();
        assert_eq!(seen.accepted, 1);
        let head = seen.heads[0].to_ascii_lowercase();
        assert!(head.starts_with("post /fn?x=1 http/1.1\r\n"), "{head}");
        for line in ["host: 127.0.0.1:", "content-length: 2\r\n", "x-test: 1\r\n"] {
            assert!(head.contains(line), "{line} missing: {head}");
        }
    }

    #[tokio::test]
    async fn a_host_header_replaces_the_urls() {
        let (url, seen) = raw_server(vec![Reply(b"HTTP/1.1 204 No Content\r\n\r\n")]).await;
        let endpoint = client().endpoint(&url).unwrap();
        let r = endpoint
            .send("PUT", &[("host", "peer.example")], &Bytes::new(), 1024)
            .await
            .unwrap();
        assert_eq!((r.status, r.body.len()), (204, 0));
        let head = seen.lock().unwrap().heads[0].to_ascii_lowercase();
        assert!(head.starts_with("put /fn?x=1 http/1.1\r\n"), "{head}");
        assert!(head.contains("host: peer.example\r\n"), "{head}");
        assert_eq!(head.matches("host:").count(), 1, "{head}");
    }

    #[tokio::test]
    async fn bodies_over_the_cap_are_refused_however_framed() {
        let declared: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n";
        let (url, _) = raw_server(vec![Reply(declared)]).await;
        assert!(matches!(
            post(&client(), &url).await,
            Err(HttpError::TooLarge(1024))
        ));
        let chunks: &'static [u8] = Box::leak(
            [
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n401\r\n".as_slice(),
                &[b'a'; 0x401],
                b"\r\n0\r\n\r\n",
            ]
            .concat()
            .into_boxed_slice(),
        );
        let (url, _) = raw_server(vec![Reply(chunks)]).await;
        assert!(matches!(
            post(&client(), &url).await,
            Err(HttpError::TooLarge(1024))
        ));
    }

    #[tokio::test]
    async fn broken_and_malformed_replies_are_errors() {
        let (url, _) = raw_server(vec![Close]).await;
        let err = post(&client(), &url).await.unwrap_err();
        assert!(matches!(err, HttpError::ClosedBeforeReply), "{err}");

        let cut: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc";
        let (url, _) = raw_server(vec![ReplyAndClose(cut)]).await;
        let err = post(&client(), &url).await.unwrap_err();
        assert!(err.is_partial_reply(), "{err}");

        for garbage in [
            b"SMTP ready\r\n\r\n".as_slice(),
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        ] {
            let (url, _) = raw_server(vec![ReplyAndClose(garbage)]).await;
            let err = post(&client(), &url).await.unwrap_err();
            assert!(
                matches!(err, HttpError::Malformed(_)),
                "{}: {err:?}",
                String::from_utf8_lossy(garbage)
            );
        }
    }

    #[tokio::test]
    async fn urls_and_connections_that_cannot_work_are_errors() {
        let c = client();
        assert!(matches!(
            c.endpoint("https://example.com/"),
            Err(HttpError::BadUrl(_))
        ));
        assert!(matches!(c.endpoint("not a url"), Err(HttpError::BadUrl(_))));
        // A port nothing listens on: bind one, then free it.
        let port = {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            l.local_addr().unwrap().port()
        };
        let err = post(&c, &format!("http://127.0.0.1:{port}/"))
            .await
            .unwrap_err();
        match err {
            HttpError::Connect { authority, source } => {
                assert_eq!(authority, format!("127.0.0.1:{port}"));
                assert_eq!(source.kind(), io::ErrorKind::ConnectionRefused);
            }
            other => panic!("{other:?}"),
        }
    }
}
