//! The public listener's own HTTP, spoken over raw TCP: plain requests on a keep-alive
//! connection (pipelined, HEAD, `Connection: close`), a WebSocket frame sent in the same
//! write as the upgrade request, the bound on a request head, and the bounds on
//! connections that are not WebSockets yet (how many, how idle, how slow).

use std::time::Duration;

use tests::gateway::TestGateway;
use tests::scripted::ScriptedFunction;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// The gateway's bound on a request head (request line, headers and the blank line).
const MAX_HEAD: usize = 64 * 1024;

async fn setup() -> (ScriptedFunction, TestGateway) {
    setup_with(|_| {}).await
}

async fn setup_with(
    configure: impl FnOnce(&mut gateway::Config),
) -> (ScriptedFunction, TestGateway) {
    let function = ScriptedFunction::accepting().await;
    let url = function.url();
    let gw = TestGateway::start(move |c| {
        c.functions.register = Some(url.into());
        configure(c);
    })
    .await;
    (function, gw)
}

/// Everything the gateway sends until it closes (bounded).
async fn read_to_close(tcp: &mut TcpStream) -> String {
    let mut reply = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut reply))
        .await
        .expect("the gateway answers and closes")
        .expect("read");
    String::from_utf8_lossy(&reply).into_owned()
}

#[tokio::test]
async fn plain_requests_share_a_keep_alive_connection() {
    let (_function, gw) = setup().await;
    let mut tcp = TcpStream::connect(gw.public).await.unwrap();
    // Three requests in one write: the gateway answers each, in order, and closes after
    // the one that asks for it.
    tcp.write_all(
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n\
          HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n\
          GET /nowhere HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let reply = read_to_close(&mut tcp).await;
    let answers: Vec<&str> = reply.split("HTTP/1.1 ").skip(1).collect();
    assert_eq!(answers.len(), 3, "{reply}");
    assert!(answers[0].starts_with("200 OK\r\n"), "{reply}");
    assert!(
        answers[0].ends_with("\r\n\r\nok\n"),
        "GET has the body: {reply}"
    );
    assert!(answers[1].starts_with("200 OK\r\n"), "{reply}");
    assert!(
        answers[1].contains("content-length: 3\r\n") && answers[1].ends_with("\r\n\r\n"),
        "HEAD has the length, not the body: {reply}"
    );
    assert!(
        answers[2].starts_with("426 Upgrade Required\r\n"),
        "{reply}"
    );
    assert!(answers[2].contains("connection: close\r\n"), "{reply}");

    // HTTP/1.0 without keep-alive: one answer, then the gateway closes.
    let mut tcp = TcpStream::connect(gw.public).await.unwrap();
    tcp.write_all(b"GET /healthz HTTP/1.0\r\n\r\n")
        .await
        .unwrap();
    let reply = read_to_close(&mut tcp).await;
    assert_eq!(reply.matches("HTTP/1.1 200").count(), 1, "{reply}");
    gw.shutdown().await;
}

#[tokio::test]
async fn a_frame_sent_with_the_upgrade_request_is_read() {
    let (function, gw) = setup().await;
    let mut tcp = TcpStream::connect(gw.public).await.unwrap();
    // The handshake and a masked text frame "ping" (answered by the gateway's heartbeat
    // with "pong") in one write, before any 101.
    let mask = [1u8, 2, 3, 4];
    let mut bytes = b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
        Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        .to_vec();
    bytes.extend_from_slice(&[0x81, 0x80 | 4]);
    bytes.extend_from_slice(&mask);
    bytes.extend(b"ping".iter().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));
    tcp.write_all(&bytes).await.unwrap();
    let mut got = Vec::new();
    let pong = [0x81u8, 4, b'p', b'o', b'n', b'g'];
    tokio::time::timeout(Duration::from_secs(10), async {
        while !got.windows(pong.len()).any(|w| w == pong) {
            let mut chunk = [0u8; 1024];
            let n = tcp.read(&mut chunk).await.unwrap();
            assert!(n > 0, "closed: {}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .expect("the 101 and then the pong");
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.starts_with("HTTP/1.1 101 Switching Protocols\r\n"),
        "{text}"
    );
    assert!(
        text.contains("sec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"),
        "{text}"
    );
    function.wait_register().await;
    gw.shutdown().await;
}

#[tokio::test]
async fn a_request_head_over_64_kib_gets_431() {
    let (function, gw) = setup().await;
    let mut tcp = TcpStream::connect(gw.public).await.unwrap();
    // Exactly the bound, never ending: the gateway reads all of it, then refuses.
    let mut head = b"GET / HTTP/1.1\r\nX-Big: ".to_vec();
    head.resize(64 * 1024, b'a');
    tcp.write_all(&head).await.unwrap();
    let reply = read_to_close(&mut tcp).await;
    assert!(
        reply.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
        "{reply}"
    );
    assert!(function.events().is_empty());
    // A head just under the bound is served.
    let mut tcp = TcpStream::connect(gw.public).await.unwrap();
    let mut head = b"GET /healthz HTTP/1.1\r\nConnection: close\r\nX-Big: ".to_vec();
    head.resize(60 * 1024, b'a');
    head.extend_from_slice(b"\r\n\r\n");
    tcp.write_all(&head).await.unwrap();
    let reply = read_to_close(&mut tcp).await;
    assert!(reply.starts_with("HTTP/1.1 200 OK\r\n"), "{reply}");
    gw.shutdown().await;
}

/// A complete request head of exactly `len` bytes: `start` (the request line and headers,
/// each ending in CRLF), an `X-Pad` header filling the rest, and the blank line.
fn head_of(len: usize, start: &str) -> Vec<u8> {
    let mut head = start.as_bytes().to_vec();
    head.extend_from_slice(b"X-Pad: ");
    let pad = len - head.len() - b"\r\n\r\n".len();
    head.resize(head.len() + pad, b'a');
    head.extend_from_slice(b"\r\n\r\n");
    assert_eq!(head.len(), len);
    head
}

/// Reads until the gateway closes (EOF or reset), at most `bound`: what it sent.
async fn until_closed(tcp: &mut (impl AsyncReadExt + Unpin), bound: Duration) -> Vec<u8> {
    let mut got = Vec::new();
    tokio::time::timeout(bound, async {
        let mut chunk = [0u8; 4096];
        loop {
            match tcp.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "the gateway did not close within {bound:?}; it sent: {}",
            String::from_utf8_lossy(&got)
        )
    });
    got
}

/// The head of the gateway's first reply (all it sent if it closed before one was whole).
async fn reply_head(tcp: &mut TcpStream) -> String {
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), async {
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            let mut chunk = [0u8; 1024];
            match tcp.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await
    .expect("a reply within 10 s");
    String::from_utf8_lossy(&got).into_owned()
}

/// Reads one `/healthz` answer (`ok\n`) on a keep-alive connection.
async fn healthz_answer(tcp: &mut TcpStream) -> String {
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), async {
        while !got.ends_with(b"\r\n\r\nok\n") {
            let mut chunk = [0u8; 1024];
            let n = tcp.read(&mut chunk).await.expect("read");
            assert!(n > 0, "closed: {}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .expect("an answer within 10 s");
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test]
async fn the_head_bound_is_exact_whatever_the_reads() {
    let (function, gw) = setup().await;
    // One byte over the bound, complete and sent in one write (so the gateway may read it
    // whole): refused, even as an upgrade request, and register is never called.
    let upgrade = "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
        Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
    for (start, what) in [
        (upgrade, "an upgrade"),
        (
            "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n",
            "a plain request",
        ),
    ] {
        for len in [MAX_HEAD + 1, 70_000] {
            let mut tcp = TcpStream::connect(gw.public).await.unwrap();
            tcp.write_all(&head_of(len, start)).await.unwrap();
            let reply = reply_head(&mut tcp).await;
            assert!(
                reply.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
                "{what} with a {len}-byte head: {reply}"
            );
        }
    }
    assert!(function.events().is_empty(), "{:?}", function.events());
    // Exactly the bound, in one write: served.
    let mut tcp = TcpStream::connect(gw.public).await.unwrap();
    tcp.write_all(&head_of(
        MAX_HEAD,
        "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n",
    ))
    .await
    .unwrap();
    let reply = read_to_close(&mut tcp).await;
    assert!(reply.starts_with("HTTP/1.1 200 OK\r\n"), "{reply}");
    // And as the second request of a keep-alive connection, after a small first one in the
    // same write.
    let mut tcp = TcpStream::connect(gw.public).await.unwrap();
    let mut both = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
    both.extend(head_of(
        MAX_HEAD,
        "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n",
    ));
    tcp.write_all(&both).await.unwrap();
    let reply = read_to_close(&mut tcp).await;
    assert_eq!(reply.matches("HTTP/1.1 200 OK\r\n").count(), 2, "{reply}");
    gw.shutdown().await;
}

#[tokio::test]
async fn connections_not_yet_websockets_are_bounded_and_websockets_do_not_count() {
    const PENDING: usize = 2;
    let function = ScriptedFunction::accepting().await;
    let url = function.url();
    let gw = TestGateway::start(move |c| {
        c.functions.register = Some(url.into());
        c.limits.max_pending_connections = PENDING;
        // Long enough that no idle connection below is closed for its silence.
        c.limits.handshake_timeout = Duration::from_secs(60);
    })
    .await;
    // As many WebSockets as pending slots: once open they hold none.
    let mut sockets = Vec::new();
    for _ in 0..PENDING {
        sockets.push(gw.connect("/").await);
    }
    // Connections that never send anything take every pending slot...
    let mut idle = Vec::new();
    for _ in 0..PENDING {
        idle.push(TcpStream::connect(gw.public).await.unwrap());
    }
    // ...so the next one is refused at once, before it sends anything.
    let mut refused = TcpStream::connect(gw.public).await.unwrap();
    let reply = until_closed(&mut refused, Duration::from_secs(10)).await;
    let reply = String::from_utf8_lossy(&reply);
    assert!(
        reply.starts_with("HTTP/1.1 503 Service Unavailable\r\n") && reply.contains("at_capacity"),
        "{reply}"
    );
    // The ones holding the slots are served.
    idle[1]
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let answer = healthz_answer(&mut idle[1]).await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    // One of them goes away: its slot frees, and a WebSocket client gets in.
    drop(idle.remove(0));
    let client = tests::wait::eventually_some(
        "a WebSocket once a pending slot frees",
        Duration::from_secs(10),
        || async {
            tokio_tungstenite::connect_async(gw.ws_url("/"))
                .await
                .ok()
                .map(|(client, _)| client)
        },
    )
    .await;
    sockets.push(client);
    assert_eq!(
        function
            .events()
            .iter()
            .filter(|e| e.kind.name() == "register")
            .count(),
        PENDING + 1
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed() {
    let (_function, gw) = setup_with(|c| {
        c.limits.keepalive_timeout = Duration::from_millis(300);
        // Far longer than the test's bound: only the keep-alive timeout can close it.
        c.limits.handshake_timeout = Duration::from_secs(60);
    })
    .await;
    let mut tcp = TcpStream::connect(gw.public).await.unwrap();
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let answer = healthz_answer(&mut tcp).await;
    assert!(
        !answer.contains("connection: close"),
        "kept alive: {answer}"
    );
    let served = Instant::now();
    let rest = until_closed(&mut tcp, Duration::from_secs(10)).await;
    assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
    assert!(
        served.elapsed() >= Duration::from_millis(250),
        "closed after {:?}, before the keep-alive timeout",
        served.elapsed()
    );
    gw.shutdown().await;
}

/// Sends `head` one byte every 50 ms until the gateway stops taking it; how many went out.
async fn trickle(mut to: tokio::net::tcp::OwnedWriteHalf, head: Vec<u8>) -> usize {
    for (sent, byte) in head.iter().enumerate() {
        if to.write_all(&[*byte]).await.is_err() {
            return sent;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    head.len()
}

#[tokio::test]
async fn a_head_trickled_a_byte_at_a_time_is_cut_at_the_handshake_timeout() {
    let timeout = Duration::from_millis(800);
    let (function, gw) = setup_with(|c| {
        c.limits.handshake_timeout = timeout;
        c.limits.keepalive_timeout = Duration::from_secs(60);
    })
    .await;
    // 200 bytes at 20 a second: 10 s for the whole head, each byte well within any timeout.
    let slow = head_of(200, "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n");
    // The first request of a connection, and the second one of a keep-alive connection
    // (whose head is timed from its first byte).
    for keep_alive_first in [false, true] {
        let mut tcp = TcpStream::connect(gw.public).await.unwrap();
        if keep_alive_first {
            tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .unwrap();
            healthz_answer(&mut tcp).await;
        }
        let started = Instant::now();
        let (mut from, to) = tcp.into_split();
        let writer = tokio::spawn(trickle(to, slow.clone()));
        let reply = until_closed(&mut from, Duration::from_secs(8)).await;
        let closed_after = started.elapsed();
        assert!(reply.is_empty(), "{}", String::from_utf8_lossy(&reply));
        assert!(
            closed_after >= timeout - Duration::from_millis(50),
            "closed after {closed_after:?}"
        );
        drop(from);
        let sent = writer.await.unwrap();
        assert!(sent < slow.len(), "the whole head went out");
    }
    assert!(function.events().is_empty(), "{:?}", function.events());
    gw.shutdown().await;
}

#[tokio::test]
async fn a_client_that_reads_no_reply_does_not_hold_its_pending_slot() {
    // A reply far larger than what the socket buffers take while the client reads nothing.
    let page = bytes::Bytes::from(vec![b'x'; 16 << 20]);
    let gw = TestGateway::start_with(
        |c| {
            c.limits.max_pending_connections = 1;
            c.limits.write_timeout = Duration::from_millis(300);
            c.limits.handshake_timeout = Duration::from_secs(60);
            c.limits.keepalive_timeout = Duration::from_secs(60);
        },
        gateway::Options {
            page: Some(page.clone()),
            ..Default::default()
        },
    )
    .await;
    let mut stuck = TcpStream::connect(gw.public).await.unwrap();
    stuck
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    // It holds the only pending slot until the write of its reply times out; then a
    // WebSocket client gets in.
    let _client = tests::wait::eventually_some(
        "a WebSocket once the stuck reply is given up",
        Duration::from_secs(10),
        || async {
            tokio_tungstenite::connect_async(gw.ws_url("/"))
                .await
                .ok()
                .map(|(client, _)| client)
        },
    )
    .await;
    let got = until_closed(&mut stuck, Duration::from_secs(10)).await;
    assert!(got.len() < page.len(), "the whole page went out");
    gw.shutdown().await;
}
