//! Fuzz entries (feature `fuzzing`): one `fn(&[u8])` per target of the fuzz crate
//! (`tests/fuzz`), each feeding the bytes to the gateway's real parsers and checking the
//! invariants that are cheap to check. Nothing here parses on its own: an entry only cuts
//! its input into the pieces a parser takes.
//!
//! The same entries replay the committed corpora in `cargo test` (`tests/it/fuzz_corpora.rs`),
//! so a panic here is a failure in CI as well as a crash for the fuzzer. The async
//! parsers run on a current-thread runtime kept per thread: call the entries from plain
//! threads, never from inside a tokio runtime.
//!
//! | entry | input |
//! |---|---|
//! | [`request_head`] | a client's request head (public listener) |
//! | [`function_reply`] | a function's HTTP reply |
//! | [`sigv4`] | `authorization \n x-amz-date \n path \n query \n body` |
//! | [`dialect_replies`] | 2 bytes status, 1 byte content type, the reply body |
//! | [`sendback_bodies`] | 1 byte route and flags, `target \n body` |
//! | [`config`] | TOML, then after a NUL byte `KEY=VALUE` lines (`--path=value`: a flag) |
//! | [`client_address`] | 1 byte parser (`% 3`: PROXY header, `X-Forwarded-For`, `Forwarded`), the bytes |

use std::cell::OnceCell;
use std::collections::BTreeMap;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode, header};
use http_body_util::Full;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::runtime::Runtime;
use tokio_tungstenite::tungstenite::Message;

use crate::config::{AwsCredential, Config, Dialect, FunctionsConfig};
use crate::dialect::aws::sigv4::{self, EXECUTE_API, Rejection, SignedRequest, Verifier};
use crate::dialect::model::Verdict;
use crate::edge::forwarded::{self, Hop};
use crate::edge::handshake;
use crate::edge::proxy_protocol::{self, Parsed};
use crate::edge::serve::{MAX_HEAD, keeps_alive, parse_head};
use crate::function::http_client::{HttpReply, read_reply};
use crate::function::invoke::Reply;
use crate::request;
use crate::{Gateway, Options};

/// The largest reply body `function_reply` accepts (small, so that the cap is reached).
const MAX_REPLY_BODY: usize = 1024;

/// The send-back token and AWS key of the `sendback_bodies` gateway.
const TOKEN: &str = "fuzzing-token-0123456789";
const ACCESS_KEY_ID: &str = "AKIDEXAMPLE";
const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
const REGION: &str = "us-east-1";
/// `20150830T123600Z`: the clock `sigv4` verifies at.
const SIGV4_NOW_SECS: u64 = 1_440_938_160;

/// A runtime per thread, and the gateway `sendback_bodies` sends to, built on first use.
struct Harness {
    /// Dropped before the runtime its listeners are registered with.
    gateway: OnceCell<Gateway>,
    runtime: Runtime,
}

thread_local! {
    static HARNESS: Harness = Harness {
        gateway: OnceCell::new(),
        runtime: tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("fuzzing: cannot build a tokio runtime: {e}")),
    };
}

/// A client's request head, as the public listener parses it, then the upgrade checks.
pub fn request_head(data: &[u8]) {
    let Ok(Some((req, len))) = parse_head(data) else {
        return;
    };
    assert!(
        len <= data.len() && len <= MAX_HEAD,
        "head of {len} bytes accepted"
    );
    // What the listener sees when the head arrives in pieces: not complete before its
    // last byte, the same request at it.
    assert!(
        matches!(parse_head(&data[..len - 1]), Ok(None)),
        "a head is complete or refused before its last byte"
    );
    match parse_head(&data[..len]) {
        Ok(Some((again, again_len))) => {
            assert_eq!(again_len, len);
            assert_eq!(again.uri(), req.uri());
            assert_eq!(again.headers(), req.headers());
        }
        _ => panic!("a complete head parses differently without what follows it"),
    }
    let has_body = req.headers().contains_key(header::TRANSFER_ENCODING)
        || req
            .headers()
            .get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0");
    if keeps_alive(&req) {
        assert!(!has_body, "a connection with a request body is kept alive");
    }
    let _ = handshake::wants_websocket(&req);
    if let Ok(accept) = handshake::check(&req) {
        assert_eq!(req.method(), Method::GET);
        assert_eq!(req.version(), http::Version::HTTP_11);
        assert!(!has_body, "an upgrade with a body is accepted");
        assert_eq!(
            accept.len(),
            28,
            "Sec-WebSocket-Accept is base64 of 20 bytes"
        );
        let offered = handshake::offered_subprotocols(req.headers());
        let reply = handshake::switching_protocols(&accept, offered.first().map(String::as_str));
        assert_eq!(reply.status(), StatusCode::SWITCHING_PROTOCOLS);
    }
}

/// A function's HTTP reply, as the function client reads it: once in one read, once a
/// few bytes per read. Where both read it, they read the same reply.
pub fn function_reply(data: &[u8]) {
    let whole = block_on(async {
        let mut stream = data;
        read_reply(&mut stream, MAX_REPLY_BODY).await
    });
    let trickled = block_on(async {
        let mut stream = Trickle {
            data,
            step: 1 + data.len() % 7,
        };
        read_reply(&mut stream, MAX_REPLY_BODY).await
    });
    for (reply, _) in whole.iter().chain(trickled.iter()) {
        check_reply(reply);
    }
    if let (Ok((a, _)), Ok((b, _))) = (&whole, &trickled) {
        assert_eq!(
            (a.status, &a.content_type, &a.kept, &a.body),
            (b.status, &b.content_type, &b.kept, &b.body),
            "the reply depends on how its bytes were split into reads"
        );
    }
}

fn check_reply(reply: &HttpReply) {
    assert!(reply.body.len() <= MAX_REPLY_BODY, "body over the cap");
    assert!(
        !(100..200).contains(&reply.status),
        "an interim reply returned as the reply"
    );
    for (name, _) in &reply.kept {
        assert!(name.starts_with("x-amzn-") || name == "www-authenticate");
    }
}

/// An `AsyncRead` giving at most `step` bytes per read.
struct Trickle<'a> {
    data: &'a [u8],
    step: usize,
}

impl AsyncRead for Trickle<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let n = self.step.min(self.data.len()).min(buf.remaining());
        let (now, rest) = self.data.split_at(n);
        buf.put_slice(now);
        self.data = rest;
        Poll::Ready(Ok(()))
    }
}

/// SigV4: the `Authorization` parser, the precheck and the verification of a request made
/// from the input against a fixed key; then a request signed by `sign` verifies, and
/// fails once a byte of its signature is changed.
pub fn sigv4(data: &[u8]) {
    let mut fields = data.splitn(5, |b| *b == b'\n');
    let mut next = || fields.next().unwrap_or_default();
    let (authorization, date, path, query, body) = (next(), next(), next(), next(), next());
    let path = String::from_utf8_lossy(path);
    let query = String::from_utf8_lossy(query);
    let credentials = [AwsCredential {
        access_key_id: ACCESS_KEY_ID.to_owned(),
        secret_access_key: SECRET.to_owned(),
    }];
    let verifier = Verifier {
        region: REGION,
        service: EXECUTE_API,
        credentials: &credentials,
    };
    if let Ok(text) = std::str::from_utf8(authorization)
        && let Ok(auth) = sigv4::parse_authorization(text)
    {
        assert_eq!(auth.signature.len(), 64);
        assert!(auth.signed_headers.iter().all(|h| !h.is_empty()));
    }

    let mut headers = HeaderMap::new();
    headers.insert(
        header::HOST,
        HeaderValue::from_static("example.amazonaws.com"),
    );
    if let Ok(date) = HeaderValue::from_bytes(date) {
        headers.insert("x-amz-date", date);
    }
    if let Ok(value) = HeaderValue::from_bytes(authorization) {
        headers.insert(header::AUTHORIZATION, value);
    }
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(SIGV4_NOW_SECS);
    let req = SignedRequest {
        method: "POST",
        path: &path,
        query: &query,
        headers: &headers,
        body,
    };
    let _ = verifier.precheck(&headers);
    if let Ok(key) = verifier.verify(&req, now) {
        // Accepted: the signature must be the one the key makes for this request.
        assert_eq!(key, ACCESS_KEY_ID);
        let auth = verifier
            .precheck(&headers)
            .unwrap_or_else(|e| panic!("verified, yet the precheck refuses: {e}"));
        let mut unsigned = headers.clone();
        unsigned.remove(header::AUTHORIZATION);
        let signed: Vec<&str> = auth.signed_headers.iter().map(String::as_str).collect();
        let expected = sigv4::sign(
            &SignedRequest {
                headers: &unsigned,
                ..req
            },
            ACCESS_KEY_ID,
            SECRET,
            &auth.region,
            &auth.service,
            &signed,
        );
        assert!(
            expected.ends_with(&format!("Signature={}", auth.signature)),
            "a signature the key did not make was accepted"
        );
    }

    // Round trip at the input's date when it is one, else at the fixed clock.
    let date = std::str::from_utf8(date)
        .ok()
        .filter(|d| sigv4::parse_amz_date(d).is_some())
        .unwrap_or("20150830T123600Z");
    let Some(signed_at) = sigv4::parse_amz_date(date) else {
        return;
    };
    let mut headers = HeaderMap::new();
    headers.insert(
        header::HOST,
        HeaderValue::from_static("example.amazonaws.com"),
    );
    let Ok(date_value) = HeaderValue::from_str(date) else {
        return;
    };
    headers.insert("x-amz-date", date_value);
    let req = SignedRequest {
        headers: &headers,
        ..req
    };
    let authorization = sigv4::sign(
        &req,
        ACCESS_KEY_ID,
        SECRET,
        REGION,
        EXECUTE_API,
        &["host", "x-amz-date"],
    );
    let verify_with = |authorization: &str| {
        let mut with_auth = headers.clone();
        match HeaderValue::from_str(authorization) {
            Ok(value) => with_auth.insert(header::AUTHORIZATION, value),
            Err(_) => panic!("sign made an Authorization that is no header value"),
        };
        verifier.verify(
            &SignedRequest {
                headers: &with_auth,
                ..req
            },
            signed_at,
        )
    };
    assert_eq!(
        verify_with(&authorization),
        Ok(ACCESS_KEY_ID.to_owned()),
        "a request signed by `sign` does not verify"
    );
    // One hex digit of the signature changed: still well-formed, no longer the signature.
    let at = authorization.len() - 1 - data.len() % 64;
    let mut tampered = authorization.into_bytes();
    tampered[at] = if tampered[at] == b'0' { b'1' } else { b'0' };
    let Ok(tampered) = String::from_utf8(tampered) else {
        panic!("a changed hex digit made the signature not UTF-8");
    };
    assert!(
        matches!(verify_with(&tampered), Err(Rejection::Mismatch { .. })),
        "a changed signature verifies"
    );
}

/// A function's reply body as each dialect reads it: the register verdict, the transport
/// reply (one-way and two-way), and the route a client message with these bytes takes.
pub fn dialect_replies(data: &[u8]) {
    let [s0, s1, content_type, body @ ..] = data else {
        return;
    };
    let reply = Reply {
        // httparse reads three digits.
        status: u16::from_be_bytes([*s0, *s1]) % 1000,
        content_type: match content_type % 4 {
            0 => None,
            1 => Some("application/json".to_owned()),
            2 => Some("application/octet-stream".to_owned()),
            _ => Some("text/plain; charset=utf-8".to_owned()),
        },
        body: Bytes::copy_from_slice(body),
    };
    let offered = ["chat".to_owned(), "v2.json".to_owned()];
    let max_context = 64;
    for dialect in [Dialect::Native, Dialect::Aws, Dialect::Tencent] {
        match crate::dialect::register_verdict(dialect, &reply, &offered, max_context) {
            Ok(Verdict::Refuse { status, .. }) => {
                assert!((400..600).contains(&status), "refused with {status}");
            }
            Ok(Verdict::Accept(accept)) => {
                if let Some(p) = &accept.subprotocol {
                    assert!(offered.contains(p), "subprotocol {p} was not offered");
                }
                let context = serde_json::to_vec(&accept.context).map_or(0, |c| c.len());
                assert!(accept.context.is_null() || context <= max_context);
            }
            Err(_) => {}
        }
        for two_way in [false, true] {
            let message = crate::dialect::transport_reply(dialect, two_way, &reply);
            if dialect == Dialect::Tencent || (dialect == Dialect::Native && !two_way) {
                assert!(
                    matches!(message, Ok(None)),
                    "{dialect:?} sent back {message:?}"
                );
            }
        }
    }
    let mut functions = FunctionsConfig {
        transport: Some("http://127.0.0.1:9/default".into()),
        route_selection_expression: "$request.body.action".to_owned(),
        ..FunctionsConfig::default()
    };
    for route in ["sendmessage", "join"] {
        functions.routes.insert(
            route.to_owned(),
            format!("http://127.0.0.1:9/{route}").into(),
        );
    }
    let message = match std::str::from_utf8(body) {
        Ok(text) => Message::text(text),
        Err(_) => Message::Binary(reply.body.clone()),
    };
    let (key, _) = crate::dialect::select_route(&functions, &message)
        .unwrap_or_else(|| panic!("no route despite a $default route"));
    assert!(key == "$default" || functions.routes.contains_key(key));
}

/// The routes of `sendback_bodies`, by the low three bits of the first byte.
const ROUTES: [(Method, &str); 8] = [
    (Method::POST, "/@connections/"),
    (Method::POST, "/@connections"),
    (Method::POST, "/@groups/"),
    (Method::DELETE, "/@connections/"),
    (Method::POST, "/@tencent"),
    (Method::POST, "/prod/@connections/"),
    (Method::GET, "/@groups/"),
    // The target line is `METHOD /path?query`.
    (Method::GET, ""),
];
/// Flag: `Content-Type: application/octet-stream`.
const BINARY: u8 = 0x08;
/// Flag: no credentials (else the bearer token, or a SigV4 signature on the AWS route).
const ANONYMOUS: u8 = 0x10;

/// A send-back request to the real send-back router of a gateway on the embedded store:
/// first byte route and flags (`ROUTES`, `BINARY`, `ANONYMOUS`), then the request target
/// after the route's prefix, a newline, and the body. No connection exists, so requests
/// end in the adapters' parsing, the store, or 410.
pub fn sendback_bodies(data: &[u8]) {
    let [flags, rest @ ..] = data else { return };
    let (line, body) = match rest.iter().position(|b| *b == b'\n') {
        Some(at) => (&rest[..at], &rest[at + 1..]),
        None => (rest, &[][..]),
    };
    let Ok(line) = std::str::from_utf8(line) else {
        return;
    };
    let (method, target) = match &ROUTES[usize::from(flags & 7)] {
        (_, "") => {
            let (method, target) = line.split_once(' ').unwrap_or((line, "/"));
            let Ok(method) = Method::from_bytes(method.as_bytes()) else {
                return;
            };
            (method, target.to_owned())
        }
        (method, prefix) => (method.clone(), format!("{prefix}{line}")),
    };
    let mut builder = Request::builder()
        .method(method)
        .uri(target)
        .header(header::HOST, "127.0.0.1")
        .header(header::CONTENT_LENGTH, body.len());
    if flags & BINARY != 0 {
        builder = builder.header(header::CONTENT_TYPE, "application/octet-stream");
    }
    let Ok(mut req) = builder.body(Full::new(Bytes::copy_from_slice(body))) else {
        return;
    };
    let path = req.uri().path().to_owned();
    let anonymous = flags & ANONYMOUS != 0;
    let aws = !path.starts_with("/@tencent") && path.starts_with("/prod/@connections/");
    if !anonymous {
        let authorization = if aws {
            sign_now(&mut req, body)
        } else {
            format!("Bearer {TOKEN}")
        };
        match HeaderValue::from_str(&authorization) {
            Ok(value) => req.headers_mut().insert(header::AUTHORIZATION, value),
            Err(_) => return,
        };
    }
    let status = HARNESS.with(|h| {
        let gateway = h.gateway.get_or_init(|| {
            h.runtime
                .block_on(Gateway::bind(sendback_config(), Options::default()))
                .unwrap_or_else(|e| panic!("fuzzing: cannot start the gateway: {e}"))
        });
        h.runtime.block_on(gateway.router.handle(req)).status()
    });
    assert_ne!(status, StatusCode::INTERNAL_SERVER_ERROR);
    let credentials = [StatusCode::UNAUTHORIZED, StatusCode::FORBIDDEN];
    if anonymous && path != "/healthz" && !request::decode_segment(&path).contains(TOKEN) {
        assert!(
            credentials.contains(&status) || status == StatusCode::METHOD_NOT_ALLOWED,
            "a request without credentials got {status}"
        );
    }
    if !anonymous {
        assert!(
            !credentials.contains(&status),
            "a request with credentials got {status}"
        );
    }
}

/// Signs `req` for the management API at the current time (what the router checks
/// against): adds `x-amz-date` and returns the `Authorization` value.
fn sign_now(req: &mut Request<Full<Bytes>>, body: &[u8]) -> String {
    let date = sigv4::format_amz_date(SystemTime::now());
    if let Ok(value) = HeaderValue::from_str(&date) {
        req.headers_mut().insert("x-amz-date", value);
    }
    let signed = SignedRequest {
        method: req.method().as_str(),
        path: req.uri().path(),
        query: req.uri().query().unwrap_or_default(),
        headers: req.headers(),
        body,
    };
    sigv4::sign(
        &signed,
        ACCESS_KEY_ID,
        SECRET,
        REGION,
        EXECUTE_API,
        &["host", "x-amz-date"],
    )
}

/// The `sendback_bodies` gateway: embedded store, both listeners on loopback port 0, the
/// token and one AWS key.
fn sendback_config() -> Config {
    let mut config = Config::default();
    let loopback = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    config.public.listen = loopback;
    config.sendback.listen = loopback;
    config.sendback.token = Some(TOKEN.to_owned());
    config.aws.credentials = vec![AwsCredential {
        access_key_id: ACCESS_KEY_ID.to_owned(),
        secret_access_key: SECRET.to_owned(),
    }];
    config
}

/// A config as `Config::load` reads it: TOML text, then after a NUL byte one `KEY=VALUE`
/// line per environment variable, or `--dotted.path=value` per command-line flag.
pub fn config(data: &[u8]) {
    let (text, env) = match data.iter().position(|b| *b == 0) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &[][..]),
    };
    let (Ok(text), Ok(env)) = (std::str::from_utf8(text), std::str::from_utf8(env)) else {
        return;
    };
    let mut vars = BTreeMap::new();
    let mut flags = Vec::new();
    for line in env.lines() {
        let (key, value) = line.split_once('=').unwrap_or((line, ""));
        match key.strip_prefix("--") {
            Some(path) => flags.push((path.to_owned(), value.to_owned())),
            None => {
                vars.insert(key.to_owned(), value.to_owned());
            }
        }
    }
    if let Err(e) = Config::from_str_with_env(text, "fuzz input", &vars, &flags) {
        // Its message names the field: formatting it must not fail either.
        let _ = e.to_string();
    }
}

/// Runs a future to completion on this thread's runtime.
fn block_on<F: std::future::Future>(future: F) -> F::Output {
    HARNESS.with(|h| h.runtime.block_on(future))
}

/// The client-address parsers of the public listener: a PROXY protocol header (v1 or v2),
/// or header values of `X-Forwarded-For` / `Forwarded` (one value per line).
pub fn client_address(data: &[u8]) {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    match which % 3 {
        0 => proxy_header(rest),
        parser => {
            let values = rest.split(|b| *b == b'\n');
            let hops = if parser == 1 {
                forwarded::x_forwarded_for(values)
            } else {
                forwarded::forwarded(values).unwrap_or_default()
            };
            // Everything trusted: the walk ends at the list's start or its first
            // non-address; nothing trusted: the peer itself.
            let peer = std::net::IpAddr::from([127, 0, 0, 1]);
            let all = forwarded::rightmost_untrusted(peer, &hops, |_| true);
            let first_addr = hops
                .iter()
                .rev()
                .take_while(|h| matches!(h, Hop::Addr(_)))
                .last();
            match first_addr {
                Some(Hop::Addr(ip)) => assert_eq!(all, *ip),
                _ => assert_eq!(all, peer),
            }
            assert_eq!(forwarded::rightmost_untrusted(peer, &hops, |_| false), peer);
        }
    }
}

/// A PROXY header: a complete one lies within the input and the protocol's bounds, and
/// parses the same alone; no shorter prefix of it is complete.
fn proxy_header(data: &[u8]) {
    let Parsed::Complete { source, len } = proxy_protocol::parse(data) else {
        return;
    };
    assert!(
        len <= data.len(),
        "a header of {len} bytes in {}",
        data.len()
    );
    assert!(len <= 16 + usize::from(u16::MAX), "a header of {len} bytes");
    if data.first() == Some(&b'P') {
        assert!(len <= 107, "a v1 header of {len} bytes");
    }
    assert!(
        matches!(proxy_protocol::parse(&data[..len]), Parsed::Complete { source: s, len: l } if s == source && l == len)
    );
    for cut in [0, len / 2, len.saturating_sub(1)] {
        if cut < len {
            assert!(!matches!(
                proxy_protocol::parse(&data[..cut]),
                Parsed::Complete { .. }
            ));
        }
    }
}
