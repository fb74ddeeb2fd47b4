//! The client's real address behind proxies: PROXY protocol v1 and v2 headers written by a
//! raw TCP client before its upgrade request, `X-Forwarded-For` and `Forwarded` headers,
//! each believed from `public.trusted_proxies` only; then a real nginx in front of the
//! gateway, as a TCP proxy sending the PROXY protocol and as an HTTP proxy adding
//! `X-Forwarded-For` after a header the client forged.
//!
//! Everything runs on loopback. A client bound to 127.0.0.2 is seen by nginx as 127.0.0.2
//! while the gateway's TCP peer is nginx at 127.0.0.1, so the address the gateway reports
//! shows which one it believed; a peer is made untrusted by trusting only `10.9.9.9/32`.

use std::net::SocketAddr;
use std::time::Duration;

use functions::event::EventKind;
use gateway::config::RealIpHeader;
use serde_json::{Value, json};
use tests::gateway::{Client, TestGateway, connection_info, next_message, route_all, send_text};
use tests::nginx::Nginx;
use tests::recorder::RecordingFunction;
use tests::scripted::{Scripted, ScriptedFunction};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::MaybeTlsStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const WAIT: Duration = Duration::from_secs(10);
/// The v2 signature (HAProxy's PROXY protocol spec, section 2.2).
const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";

/// A gateway whose register and cleanup go to an accepting function, with the client
/// address settings `trusted` (CIDRs), `proxy_protocol` and `header`.
async fn setup(
    trusted: &[&str],
    proxy_protocol: bool,
    header: RealIpHeader,
) -> (ScriptedFunction, TestGateway) {
    let function = ScriptedFunction::accepting().await;
    let url = function.url();
    let trusted: Vec<_> = trusted.iter().map(|t| t.parse().unwrap()).collect();
    let gw = TestGateway::start(move |c| {
        route_all(c, &url);
        c.public.trusted_proxies = trusted;
        c.public.proxy_protocol = proxy_protocol;
        c.public.real_ip_header = header;
        c.limits.handshake_timeout = Duration::from_millis(500);
    })
    .await;
    (function, gw)
}

/// An upgrade request for `path` with `extra` header lines (each ending in `\r\n`).
fn upgrade_request(path: &str, extra: &str) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra}\r\n"
    )
    .into_bytes()
}

/// A masked text frame, as a client sends it.
fn client_text_frame(text: &str) -> Vec<u8> {
    let mask = [1u8, 2, 3, 4];
    let mut frame = vec![0x81, 0x80 | u8::try_from(text.len()).unwrap()];
    frame.extend_from_slice(&mask);
    frame.extend(text.bytes().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));
    frame
}

/// Sends `writes` one write each, then reads until the server has sent `until` (bounded).
async fn exchange(tcp: &mut TcpStream, writes: &[&[u8]], until: &[u8]) -> String {
    for write in writes {
        tcp.write_all(write).await.unwrap();
    }
    let mut got = Vec::new();
    tokio::time::timeout(WAIT, async {
        while !got.windows(until.len()).any(|w| w == until) {
            let mut chunk = [0u8; 1024];
            let n = tcp.read(&mut chunk).await.unwrap();
            assert!(n > 0, "closed: {}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {until:?} in {:?}", String::from_utf8_lossy(&got)));
    String::from_utf8_lossy(&got).into_owned()
}

/// The connection id and source address of the register event for `path`.
async fn registered(function: &ScriptedFunction, path: &str) -> (String, String) {
    let find = |events: &[functions::event::Event]| {
        events.iter().find_map(|e| match &e.kind {
            EventKind::Register { request } if request.path == path => {
                Some((e.connection_id.clone(), request.source_ip.clone()))
            }
            _ => None,
        })
    };
    let events = function
        .wait_until(&format!("the register of {path}"), WAIT, |e| {
            find(e).is_some()
        })
        .await;
    find(&events).unwrap()
}

/// What `GET /@connections/{id}` says the connection's source address is.
async fn info_source_ip(gw: &TestGateway, id: &str) -> String {
    connection_info(&gw.sendback_url(), id).await.source_ip
}

/// Asserts the gateway closes `tcp` without sending a byte (a reset counts: the gateway
/// closed with the client's bytes unread).
async fn closed_without_reply(tcp: &mut TcpStream, what: &str) {
    let mut got = Vec::new();
    let read = tokio::time::timeout(WAIT, tcp.read_to_end(&mut got))
        .await
        .unwrap_or_else(|_| panic!("{what}: the gateway did not close"));
    if let Err(e) = read {
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{what}: {e}");
    }
    assert!(got.is_empty(), "{what}: {}", String::from_utf8_lossy(&got));
}

/// A version 2 PROXY header for a TCP connection from `source`.
fn v2_header(source: SocketAddr, tlvs: &[u8]) -> Vec<u8> {
    let mut block = Vec::new();
    let family = match source {
        SocketAddr::V4(v4) => {
            block.extend_from_slice(&v4.ip().octets());
            block.extend_from_slice(&[127, 0, 0, 1]);
            0x11
        }
        SocketAddr::V6(v6) => {
            block.extend_from_slice(&v6.ip().octets());
            block.extend_from_slice(&std::net::Ipv6Addr::LOCALHOST.octets());
            0x21
        }
    };
    block.extend_from_slice(&source.port().to_be_bytes());
    block.extend_from_slice(&8080u16.to_be_bytes());
    block.extend_from_slice(tlvs);
    let mut header = V2_SIGNATURE.to_vec();
    header.extend_from_slice(&[0x21, family]);
    header.extend_from_slice(&u16::try_from(block.len()).unwrap().to_be_bytes());
    header.extend_from_slice(&block);
    header
}

#[tokio::test]
async fn proxy_protocol_headers_name_the_client() {
    let (function, gw) = setup(&["127.0.0.1/32"], true, RealIpHeader::None).await;

    // v1, the request and a first frame in one write: nothing after the header is lost.
    let mut tcp = TcpStream::connect(gw.public).await.unwrap();
    let mut bytes = b"PROXY TCP4 203.0.113.7 127.0.0.1 51000 8080\r\n".to_vec();
    bytes.extend(upgrade_request("/v1", ""));
    bytes.extend(client_text_frame("ping"));
    let reply = exchange(&mut tcp, &[&bytes], b"\x81\x04pong").await;
    assert!(reply.starts_with("HTTP/1.1 101 "), "{reply}");
    let (id, source_ip) = registered(&function, "/v1").await;
    assert_eq!(source_ip, "203.0.113.7");
    assert_eq!(info_source_ip(&gw, &id).await, "203.0.113.7");

    // v2 from IPv6 with TLVs, the header split over writes.
    let header = v2_header("[2001:db8::17]:4711".parse().unwrap(), &[0x04, 0, 2, 0, 0]);
    let mut tcp6 = TcpStream::connect(gw.public).await.unwrap();
    let request = upgrade_request("/v2", "");
    let reply = exchange(
        &mut tcp6,
        &[&header[..5], &header[5..20], &header[20..], &request],
        b"\r\n\r\n",
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 101 "), "{reply}");
    let (id6, source_ip) = registered(&function, "/v2").await;
    assert_eq!(source_ip, "2001:db8::17");
    assert_eq!(info_source_ip(&gw, &id6).await, "2001:db8::17");

    // v2 LOCAL (the balancer's own connection) and v1 UNKNOWN: the peer's address.
    let mut local = V2_SIGNATURE.to_vec();
    local.extend_from_slice(&[0x20, 0x00, 0, 0]);
    for (path, header) in [
        ("/local", local),
        ("/unknown", b"PROXY UNKNOWN\r\n".to_vec()),
    ] {
        let mut tcp = TcpStream::connect(gw.public).await.unwrap();
        let reply = exchange(
            &mut tcp,
            &[&header, &upgrade_request(path, "")],
            b"\r\n\r\n",
        )
        .await;
        assert!(reply.starts_with("HTTP/1.1 101 "), "{path}: {reply}");
        assert_eq!(registered(&function, path).await.1, "127.0.0.1", "{path}");
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn proxy_protocol_refuses_untrusted_peers_and_bad_headers() {
    // Only 10.9.9.9 may send headers: this loopback client is closed, header or not.
    let (function, gw) = setup(&["10.9.9.9/32"], true, RealIpHeader::None).await;
    let mut tcp = TcpStream::connect(gw.public).await.unwrap();
    let mut bytes = b"PROXY TCP4 203.0.113.7 127.0.0.1 51000 8080\r\n".to_vec();
    bytes.extend(upgrade_request("/untrusted", ""));
    tcp.write_all(&bytes).await.unwrap();
    closed_without_reply(&mut tcp, "an untrusted peer").await;
    gw.shutdown().await;

    let (function2, gw) = setup(&["127.0.0.1/32"], true, RealIpHeader::None).await;
    // No header: the request itself is not one.
    let mut tcp = TcpStream::connect(gw.public).await.unwrap();
    tcp.write_all(&upgrade_request("/bare", "")).await.unwrap();
    closed_without_reply(&mut tcp, "a request without a header").await;
    // A malformed header.
    let mut tcp = TcpStream::connect(gw.public).await.unwrap();
    let mut bytes = b"PROXY TCP4 203.0.113.7 127.0.0.1 51000\r\n".to_vec();
    bytes.extend(upgrade_request("/malformed", ""));
    tcp.write_all(&bytes).await.unwrap();
    closed_without_reply(&mut tcp, "a malformed header").await;
    // A header that never ends: closed at limits.handshake_timeout (500 ms).
    let mut tcp = TcpStream::connect(gw.public).await.unwrap();
    tcp.write_all(b"PROXY TCP4 203.0.113.7 ").await.unwrap();
    closed_without_reply(&mut tcp, "an unfinished header").await;
    // The listener still serves a proper one.
    let mut tcp = TcpStream::connect(gw.public).await.unwrap();
    let mut bytes = b"PROXY TCP4 198.51.100.3 127.0.0.1 51000 8080\r\n".to_vec();
    bytes.extend(upgrade_request("/good", ""));
    let reply = exchange(&mut tcp, &[&bytes], b"\r\n\r\n").await;
    assert!(reply.starts_with("HTTP/1.1 101 "), "{reply}");
    assert_eq!(registered(&function2, "/good").await.1, "198.51.100.3");
    for events in [function.events(), function2.events()] {
        let paths: Vec<String> = events
            .iter()
            .filter_map(|e| match &e.kind {
                EventKind::Register { request } => Some(request.path.clone()),
                _ => None,
            })
            .collect();
        assert!(paths.iter().all(|p| p == "/good"), "{paths:?}");
    }
    gw.shutdown().await;
}

/// Connects with `headers` added to the upgrade request, from `bind` if given.
async fn connect_with(
    target: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    bind: Option<&str>,
) -> Client {
    let mut request = format!("ws://{target}{path}")
        .into_client_request()
        .unwrap();
    for (name, value) in headers {
        let name = http::HeaderName::from_bytes(name.as_bytes()).unwrap();
        request.headers_mut().append(name, value.parse().unwrap());
    }
    let socket = TcpSocket::new_v4().unwrap();
    if let Some(bind) = bind {
        socket.bind(format!("{bind}:0").parse().unwrap()).unwrap();
    }
    let tcp = socket.connect(target).await.unwrap();
    let (client, _) = tokio_tungstenite::client_async(request, MaybeTlsStream::Plain(tcp))
        .await
        .expect("the upgrade succeeds");
    client
}

#[tokio::test]
async fn forwarding_headers_are_believed_from_trusted_peers_only() {
    let spoof = ("x-forwarded-for", "6.6.6.6");
    // Trusted: the right-most untrusted address; the client's own entry is left of it.
    let (function, gw) = setup(&["127.0.0.1/32"], false, RealIpHeader::XForwardedFor).await;
    let _a = connect_with(
        gw.public,
        "/xff",
        &[spoof, ("x-forwarded-for", "198.51.100.4, 127.0.0.1")],
        None,
    )
    .await;
    let (id, source_ip) = registered(&function, "/xff").await;
    assert_eq!(source_ip, "198.51.100.4");
    assert_eq!(info_source_ip(&gw, &id).await, "198.51.100.4");
    // `Forwarded` is not the configured header: ignored.
    let _b = connect_with(gw.public, "/other", &[("forwarded", "for=192.0.2.1")], None).await;
    assert_eq!(registered(&function, "/other").await.1, "127.0.0.1");
    gw.shutdown().await;

    let (function, gw) = setup(&["127.0.0.0/8"], false, RealIpHeader::Forwarded).await;
    let forwarded = r#"for=6.6.6.6, for="[2001:db8::5]:4711";proto=http, for=127.0.0.9"#;
    let _c = connect_with(gw.public, "/fwd", &[("forwarded", forwarded)], None).await;
    assert_eq!(registered(&function, "/fwd").await.1, "2001:db8::5");
    let _d = connect_with(gw.public, "/hidden", &[("forwarded", "for=_hidden")], None).await;
    assert_eq!(registered(&function, "/hidden").await.1, "127.0.0.1");
    gw.shutdown().await;

    // Untrusted peer: its headers say nothing.
    let (function, gw) = setup(&["10.9.9.9/32"], false, RealIpHeader::XForwardedFor).await;
    let _e = connect_with(gw.public, "/untrusted", &[spoof], None).await;
    assert_eq!(registered(&function, "/untrusted").await.1, "127.0.0.1");
    gw.shutdown().await;
}

#[tokio::test]
async fn a_proxy_protocol_address_that_is_trusted_lets_the_header_speak() {
    // A TCP balancer (127.0.0.1) in front of an HTTP proxy (10.0.0.5) in front of the
    // gateway: the PROXY header names the HTTP proxy, whose X-Forwarded-For names the client.
    let (function, gw) = setup(
        &["127.0.0.1/32", "10.0.0.0/8"],
        true,
        RealIpHeader::XForwardedFor,
    )
    .await;
    for (path, proxied, xff, want) in [
        ("/behind", "10.0.0.5", "6.6.6.6, 192.0.2.9", "192.0.2.9"),
        ("/direct", "203.0.113.1", "6.6.6.6", "203.0.113.1"),
    ] {
        let mut tcp = TcpStream::connect(gw.public).await.unwrap();
        let mut bytes = format!("PROXY TCP4 {proxied} 127.0.0.1 51000 8080\r\n").into_bytes();
        bytes.extend(upgrade_request(
            path,
            &format!("X-Forwarded-For: {xff}\r\n"),
        ));
        let reply = exchange(&mut tcp, &[&bytes], b"\r\n\r\n").await;
        assert!(reply.starts_with("HTTP/1.1 101 "), "{reply}");
        assert_eq!(registered(&function, path).await.1, want, "{path}");
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn aws_events_carry_the_proxied_address() {
    let rec = RecordingFunction::start(|_, _| Scripted::json(json!({"statusCode": 200}))).await;
    let (connect, disconnect) = (rec.url("connect"), rec.url("disconnect"));
    let gw = TestGateway::start(move |c| {
        c.functions.dialect = gateway::config::Dialect::Aws;
        c.functions.register = Some(connect.into());
        c.functions.cleanup = Some(disconnect.into());
        c.public.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
        c.public.proxy_protocol = true;
    })
    .await;
    let mut tcp = TcpStream::connect(gw.public).await.unwrap();
    let mut bytes = v2_header("192.0.2.44:40000".parse().unwrap(), &[]);
    bytes.extend(upgrade_request("/", ""));
    let reply = exchange(&mut tcp, &[&bytes], b"\r\n\r\n").await;
    assert!(reply.starts_with("HTTP/1.1 101 "), "{reply}");
    drop(tcp);
    let of = |kind: &'static str| move |e: &Value| e["requestContext"]["eventType"] == kind;
    let connected = rec.wait_event("CONNECT", WAIT, of("CONNECT")).await;
    let disconnected = rec.wait_event("DISCONNECT", WAIT, of("DISCONNECT")).await;
    for event in [&connected, &disconnected] {
        assert_eq!(
            event["requestContext"]["identity"]["sourceIp"],
            "192.0.2.44"
        );
    }
    assert_eq!(connected["headers"]["X-Forwarded-For"], "192.0.2.44");
    gw.shutdown().await;
}

/// The heartbeat answers through the proxy: the WebSocket works past the upgrade.
async fn heartbeat(client: &mut Client) {
    send_text(client, "ping").await;
    assert_eq!(next_message(client).await, Some(Message::text("pong")));
}

#[tokio::test]
async fn nginx_stream_proxy_protocol_passes_the_client_address() {
    let (function, gw) = setup(&["127.0.0.1/32"], true, RealIpHeader::None).await;
    let upstream = gw.public;
    let Some(nginx) = Nginx::require(&["stream"], |spot| {
        format!(
            "stream {{\n  server {{\n    listen {};\n    proxy_pass {upstream};\n    \
             proxy_protocol on;\n  }}\n}}\n",
            spot.listen
        )
    }) else {
        return;
    };
    let mut client = connect_with(nginx.addr(), "/nginx-stream", &[], Some("127.0.0.2")).await;
    heartbeat(&mut client).await;
    let (id, source_ip) = registered(&function, "/nginx-stream").await;
    assert_eq!(source_ip, "127.0.0.2", "nginx log:\n{}", nginx.log());
    assert_eq!(info_source_ip(&gw, &id).await, "127.0.0.2");
    // Past nginx, straight to the gateway, no header: refused.
    let mut tcp = TcpStream::connect(gw.public).await.unwrap();
    tcp.write_all(&upgrade_request("/direct", ""))
        .await
        .unwrap();
    closed_without_reply(&mut tcp, "a client that went around nginx").await;
    drop(client);
    function.wait_cleanup(&id).await;
    gw.shutdown().await;
}

#[tokio::test]
async fn nginx_x_forwarded_for_is_believed_and_a_forged_one_is_not() {
    let (function, gw) = setup(&["127.0.0.1/32"], false, RealIpHeader::XForwardedFor).await;
    let upstream = gw.public;
    let Some(nginx) = Nginx::require(&[], |spot| {
        format!(
            "http {{\n{temp}  access_log off;\n  server {{\n    listen {listen};\n    \
             location / {{\n      proxy_pass http://{upstream};\n      \
             proxy_http_version 1.1;\n      proxy_set_header Upgrade $http_upgrade;\n      \
             proxy_set_header Connection \"upgrade\";\n      proxy_set_header Host $host;\n      \
             proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n    }}\n  }}\n}}\n",
            temp = spot.http_temp_paths(),
            listen = spot.listen,
        )
    }) else {
        return;
    };
    // The client forges its own X-Forwarded-For; nginx appends the address it sees.
    let mut client = connect_with(
        nginx.addr(),
        "/nginx-http",
        &[("x-forwarded-for", "6.6.6.6")],
        Some("127.0.0.2"),
    )
    .await;
    heartbeat(&mut client).await;
    let (id, source_ip) = registered(&function, "/nginx-http").await;
    assert_eq!(source_ip, "127.0.0.2", "nginx log:\n{}", nginx.log());
    assert_eq!(info_source_ip(&gw, &id).await, "127.0.0.2");
    let forwarded = function.events_of("register", &id)[0].clone();
    match forwarded.kind {
        EventKind::Register { request } => assert_eq!(
            request.header("x-forwarded-for"),
            Some("6.6.6.6, 127.0.0.2"),
            "the header as nginx sent it"
        ),
        other => panic!("{other:?}"),
    }
    gw.shutdown().await;
}
