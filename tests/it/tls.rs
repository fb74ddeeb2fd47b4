//! TLS end to end: `wss://` beside `ws://` (Rust, Python and Node clients), the certificate
//! reloaded while connections stay open, bad certificate files refused before any port is
//! bound, https functions with a private CA (and the clear errors without it or with an
//! expired certificate), the send-back API over TLS, and relays between nodes over https.
//! Every certificate is made here: a CA, server certificates for `localhost` and
//! 127.0.0.1 signed by it, an expired one, one from another CA.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use functions::event::EventKind;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use tests::gateway::{TestGateway, next_message, send_text};
use tests::process::{GatewayProcess, TempDir};
use tests::scripted::{Scripted, ScriptedFunction};
use tests::tls::{connect_wss, https_request, server_config};
use tokio_tungstenite::tungstenite::Message;

const WAIT: Duration = Duration::from_secs(15);

// ------------------------------------------------------------------ certificates

/// A certificate authority (also used by the AWS tests over https).
pub struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A server certificate and its key, PEM.
#[derive(Clone)]
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: Vec<u8>,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Ca { issuer }
    }

    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A certificate for `localhost` and 127.0.0.1 named `cn`, valid now.
    pub fn leaf(&self, cn: &str) -> Leaf {
        self.leaf_valid(cn, false)
    }

    /// A certificate for `localhost` and 127.0.0.1 that expired in 2021.
    pub fn expired_leaf(&self, cn: &str) -> Leaf {
        self.leaf_valid(cn, true)
    }

    fn leaf_valid(&self, cn: &str, expired: bool) -> Leaf {
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
        }
    }
}

impl Leaf {
    /// Writes `<name>.crt` and `<name>.key` into `dir`; returns their paths.
    pub fn write(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let cert = dir.join(format!("{name}.crt"));
        let key = dir.join(format!("{name}.key"));
        std::fs::write(&cert, &self.cert_pem).unwrap();
        std::fs::write(&key, &self.key_pem).unwrap();
        (cert, key)
    }

    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        server_config(&self.cert_pem, &self.key_pem)
    }
}

fn write_ca(ca: &Ca, dir: &Path) -> PathBuf {
    let path = dir.join("ca.pem");
    std::fs::write(&path, ca.pem()).unwrap();
    path
}

fn any_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

fn tls_files(cert: &Path, key: &Path) -> gateway::config::TlsFiles {
    gateway::config::TlsFiles {
        cert_file: cert.to_owned(),
        key_file: key.to_owned(),
    }
}

/// A function that echoes each message as `echo:<text>` (native two-way reply).
async fn echo_function(tls: Option<Arc<rustls::ServerConfig>>) -> ScriptedFunction {
    ScriptedFunction::start_tls(tls, |e| match &e.kind {
        EventKind::Transport { data, .. } => Scripted::text(format!("echo:{data}")),
        _ => Scripted::ok(),
    })
    .await
}

/// A gateway with a `wss://` listener presenting the certificate in `cert`/`key`.
async fn tls_gateway(function: &ScriptedFunction, cert: &Path, key: &Path) -> TestGateway {
    let url = function.url();
    let files = tls_files(cert, key);
    TestGateway::start(move |c| {
        tests::gateway::route_all(c, &url);
        c.public.tls = Some(gateway::config::PublicTlsConfig {
            listen: any_port(),
            files,
        });
    })
    .await
}

async fn expect_text<S>(client: &mut tokio_tungstenite::WebSocketStream<S>, text: &str)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    assert_eq!(next_message(client).await, Some(Message::text(text)));
}

// ------------------------------------------------------------------ wss

/// One gateway, both listeners: a message round trip through the function on each, the
/// same events (the client's address included), and a clean close over TLS.
#[tokio::test]
async fn wss_and_ws_side_by_side_carry_messages_through_the_function() {
    let dir = TempDir::new();
    let ca = Ca::new("Switchboard test CA");
    let leaf = ca.leaf("gateway-a");
    let (cert, key) = leaf.write(dir.path(), "gw");
    let function = echo_function(None).await;
    let gw = tls_gateway(&function, &cert, &key).await;
    let tls_addr = gw.public_tls.expect("a TLS listener");
    assert_ne!(tls_addr, gw.public);

    let (mut wss, presented) = connect_wss(tls_addr, "/?via=tls", &ca.pem())
        .await
        .expect("wss connects");
    assert_eq!(presented, leaf.der, "the configured certificate");
    let mut ws = gw.connect("/?via=plain").await;
    send_text(&mut wss, "over tls").await;
    send_text(&mut ws, "in clear").await;
    expect_text(&mut wss, "echo:over tls").await;
    expect_text(&mut ws, "echo:in clear").await;

    let registers = function
        .wait_until("two registers", WAIT, |e| {
            e.iter()
                .filter(|e| matches!(e.kind, EventKind::Register { .. }))
                .count()
                == 2
        })
        .await;
    for event in registers {
        if let EventKind::Register { request } = &event.kind {
            assert_eq!(request.source_ip, "127.0.0.1", "{request:?}");
        }
    }

    let id = function.events()[0].connection_id.clone();
    wss.close(None).await.expect("close over TLS");
    let cleanups = function
        .wait_until("a cleanup", WAIT, |e| {
            e.iter().any(|e| e.kind.name() == "cleanup")
        })
        .await;
    assert!(cleanups.iter().any(|e| e.kind.name() == "cleanup"));
    assert!(!id.is_empty());
    // A client that does not trust the CA gets no connection.
    let stranger = Ca::new("another CA");
    assert!(connect_wss(tls_addr, "/", &stranger.pem()).await.is_err());
    gw.shutdown().await;
}

/// A pending slot is held through the TLS handshake: with one slot taken by a TCP
/// connection that never starts its handshake, the next is closed at once; when the
/// handshake timeout ends the first, a new client gets in.
#[tokio::test]
async fn the_tls_handshake_holds_a_pending_slot_within_the_handshake_timeout() {
    let dir = TempDir::new();
    let ca = Ca::new("CA");
    let (cert, key) = ca.leaf("gw").write(dir.path(), "gw");
    let function = echo_function(None).await;
    let url = function.url();
    let files = tls_files(&cert, &key);
    let gw = TestGateway::start(move |c| {
        tests::gateway::route_all(c, &url);
        c.limits.max_pending_connections = 1;
        c.limits.handshake_timeout = Duration::from_millis(500);
        c.public.tls = Some(gateway::config::PublicTlsConfig {
            listen: any_port(),
            files,
        });
    })
    .await;
    let tls_addr = gw.public_tls.unwrap();
    let silent = tokio::net::TcpStream::connect(tls_addr).await.unwrap();
    let started = tokio::time::Instant::now();
    // The silent one is closed by the handshake timeout; meanwhile others are refused.
    tests::wait::eventually(
        "a wss client gets in once the silent one is closed",
        WAIT,
        || async { connect_wss(tls_addr, "/", &ca.pem()).await.is_ok() },
    )
    .await;
    assert!(started.elapsed() >= Duration::from_millis(400));
    let mut buf = [0u8; 1];
    let read = tokio::time::timeout(WAIT, async {
        use tokio::io::AsyncReadExt;
        let mut silent = silent;
        silent.read(&mut buf).await
    })
    .await
    .expect("the silent connection is closed");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
}

/// Python `websockets` with `ssl.create_default_context(cafile=...)`, and Node `ws` with
/// `ca`, both round trip a message over wss.
#[tokio::test]
async fn python_and_node_clients_speak_wss() {
    let dir = TempDir::new();
    let ca = Ca::new("CA");
    let ca_file = write_ca(&ca, dir.path());
    let (cert, key) = ca.leaf("gw").write(dir.path(), "gw");
    let function = echo_function(None).await;
    let gw = tls_gateway(&function, &cert, &key).await;
    let url = format!("wss://localhost:{}/", gw.public_tls.unwrap().port());
    let clients = Path::new(env!("CARGO_MANIFEST_DIR")).join("clients");

    if let Some(python) = tests::python::find_python3(
        "import websockets",
        "python3 with websockets (apt-get install python3-websockets)",
    ) {
        let out = tokio::process::Command::new(python)
            .arg(clients.join("wss.py"))
            .args([&url, ca_file.to_str().unwrap(), "from python"])
            .env_remove("HTTPS_PROXY")
            .env_remove("https_proxy")
            .output()
            .await
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let reply: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
        assert_eq!(reply["reply"], "echo:from python");
    }

    match tests::find_program("NODE", "node", &["/usr/bin/node"]) {
        None => tests::skip_or_fail("node not installed"),
        Some(_) if !clients.join("node_modules/ws").is_dir() => {
            tests::skip_or_fail("ws not installed in tests/clients (npm ci)")
        }
        Some(node) => {
            let out = tokio::process::Command::new(node)
                .arg(clients.join("wss.js"))
                .args([&url, ca_file.to_str().unwrap(), "from node"])
                .output()
                .await
                .unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "{stdout}{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let reply: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
            assert_eq!(reply["reply"], "echo:from node");
        }
    }
}

// ------------------------------------------------------------------ reload

/// Files replaced under an in-process gateway: within a few polls a new connection sees
/// the new certificate, and the connection made with the old one still works.
#[tokio::test]
async fn a_replaced_certificate_is_served_to_new_connections_and_open_ones_stay() {
    let dir = TempDir::new();
    let ca = Ca::new("CA");
    let a = ca.leaf("cert-a");
    let b = ca.leaf("cert-b");
    let (cert, key) = a.write(dir.path(), "gw");
    let function = echo_function(None).await;
    let gw = tls_gateway(&function, &cert, &key).await;
    let addr = gw.public_tls.unwrap();
    let (mut old, presented) = connect_wss(addr, "/", &ca.pem()).await.unwrap();
    assert_eq!(presented, a.der);

    b.write(dir.path(), "gw");
    tests::wait::eventually("a new connection sees certificate B", WAIT, || async {
        let (_, presented) = connect_wss(addr, "/", &ca.pem()).await.unwrap();
        presented == b.der
    })
    .await;
    send_text(&mut old, "still here").await;
    expect_text(&mut old, "echo:still here").await;

    // A broken replacement is refused and B stays.
    std::fs::write(&key, "not a key").unwrap();
    let (_, presented) = connect_wss(addr, "/", &ca.pem()).await.unwrap();
    assert_eq!(presented, b.der);
    gw.shutdown().await;
}

fn tls_config_toml(function: &str, cert: &Path, key: &Path, extra: &str) -> String {
    format!(
        r#"
[public]
listen = "127.0.0.1:0"
[public.tls]
listen = "127.0.0.1:0"
cert_file = "{}"
key_file = "{}"
[sendback]
listen = "127.0.0.1:0"
token = "{}"
[functions]
register = "{function}"
transport = "{function}"
cleanup = "{function}"
{extra}
"#,
        cert.display(),
        key.display(),
        tests::gateway::TOKEN
    )
}

/// SIGHUP to the gateway process reloads the certificate: new connections see B, the one
/// made with A still carries messages; a reload that fails is logged naming the file and
/// keeps B.
#[tokio::test]
async fn sighup_reloads_the_certificate_of_a_running_process() {
    let dir = TempDir::new();
    let ca = Ca::new("CA");
    let a = ca.leaf("cert-a");
    let b = ca.leaf("cert-b");
    let (cert, key) = a.write(dir.path(), "gw");
    let function = echo_function(None).await;
    let mut gw = GatewayProcess::start(
        &crate::switchboard_bin(),
        &tls_config_toml(&function.url(), &cert, &key, ""),
    )
    .await;
    let addr: SocketAddr = gw.public_tls().expect("a TLS listener").parse().unwrap();
    let (mut old, presented) = connect_wss(addr, "/", &ca.pem()).await.unwrap();
    assert_eq!(presented, a.der);

    b.write(dir.path(), "gw");
    gw.process().signal("HUP");
    gw.log().line_with(&["SIGHUP", "reloading"], WAIT).await;
    tests::wait::eventually("a new connection sees certificate B", WAIT, || async {
        let (_, presented) = connect_wss(addr, "/", &ca.pem()).await.unwrap();
        presented == b.der
    })
    .await;
    send_text(&mut old, "still here").await;
    expect_text(&mut old, "echo:still here").await;

    std::fs::write(&cert, "garbage").unwrap();
    gw.process().signal("HUP");
    let warned = gw.log().line_with(&["not reloaded"], WAIT).await;
    assert!(warned.contains(cert.to_str().unwrap()), "{warned}");
    let (_, presented) = connect_wss(addr, "/", &ca.pem()).await.unwrap();
    assert_eq!(presented, b.der);
    drop(old);
    gw.terminate().await;
}

// ------------------------------------------------------------------ bad files

/// A certificate or key that cannot be used stops `switchboard check` and `switchboard`
/// itself with a non-zero exit naming the file, before any port is bound.
#[tokio::test]
async fn bad_certificate_files_are_refused_before_any_port_is_bound() {
    let dir = TempDir::new();
    let ca = Ca::new("CA");
    let (cert, key) = ca.leaf("good").write(dir.path(), "good");
    let (_, other_key) = ca.leaf("other").write(dir.path(), "other");
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "this is not PEM\n").unwrap();
    let missing = dir.path().join("missing.pem");
    let empty_ca = dir.path().join("empty-ca.pem");
    std::fs::write(&empty_ca, "").unwrap();
    // A port free now: the gateway must not be found on it after failing.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let toml = |cert: &Path, key: &Path, extra: &str| {
        tls_config_toml("http://127.0.0.1:1/fn", cert, key, extra).replacen(
            "listen = \"127.0.0.1:0\"",
            &format!("listen = \"127.0.0.1:{port}\""),
            1,
        )
    };
    let cases = [
        (toml(&missing, &key, ""), "public.tls.cert_file", &missing),
        (toml(&garbage, &key, ""), "public.tls.cert_file", &garbage),
        (toml(&cert, &garbage, ""), "public.tls.key_file", &garbage),
        (
            toml(&cert, &other_key, ""),
            "public.tls.key_file",
            &other_key,
        ),
        (toml(&cert, &missing, ""), "public.tls.key_file", &missing),
        (
            toml(
                &cert,
                &key,
                &format!("ca_file = \"{}\"", empty_ca.display()),
            ),
            "functions.ca_file",
            &empty_ca,
        ),
    ];
    for (config, field, file) in cases {
        let path = dir.path().join("gateway.toml");
        std::fs::write(&path, &config).unwrap();
        for command in [&["check"][..], &[]] {
            let out = tokio::process::Command::new(crate::switchboard_bin())
                .args(command)
                .arg("--config")
                .arg(&path)
                .output()
                .await
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{command:?} {field}: {text}");
            assert!(
                text.contains(field) && text.contains(file.to_str().unwrap()),
                "{command:?}: the message names {field} and {}: {text}",
                file.display()
            );
            assert!(!text.contains("gateway listening"), "{text}");
            let key_line = std::fs::read_to_string(&other_key).unwrap();
            let key_line = key_line.lines().nth(1).unwrap();
            assert!(
                !text.contains("this is not PEM") && !text.contains(key_line),
                "no file content: {text}"
            );
        }
        std::net::TcpListener::bind(("127.0.0.1", port))
            .unwrap_or_else(|e| panic!("{field}: port {port} was bound: {e}"));
    }
}

// ------------------------------------------------------------------ https functions

/// An https function with a certificate from the private CA named in `functions.ca_file`:
/// register, messages and cleanup all go over TLS.
#[tokio::test]
async fn https_functions_are_called_with_the_private_ca() {
    let dir = TempDir::new();
    let ca = Ca::new("private CA");
    let ca_file = write_ca(&ca, dir.path());
    let function = echo_function(Some(ca.leaf("fn").server_config())).await;
    assert!(function.url().starts_with("https://localhost:"));
    let url = function.url();
    let gw = TestGateway::start(move |c| {
        tests::gateway::route_all(c, &url);
        c.functions.ca_file = Some(ca_file);
    })
    .await;
    let mut client = gw.connect("/").await;
    let id = function.wait_register().await;
    for text in ["one", "two"] {
        send_text(&mut client, text).await;
        expect_text(&mut client, &format!("echo:{text}")).await;
    }
    client.close(None).await.unwrap();
    function.wait_cleanup(&id).await;
    gw.shutdown().await;
}

/// Calls to an https function reuse their TLS connection, as plain ones do: three
/// registers, one after the other, cost one connection (and one handshake).
#[tokio::test]
async fn https_function_connections_are_kept_alive() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let dir = TempDir::new();
    let ca = Ca::new("private CA");
    let ca_file = write_ca(&ca, dir.path());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let acceptor = tokio_rustls::TlsAcceptor::from(ca.leaf("fn").server_config());
    let accepted = Arc::new(AtomicUsize::new(0));
    let counted = accepted.clone();
    let server = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            counted.fetch_add(1, Ordering::SeqCst);
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper::service::service_fn(|_request| async {
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(
                        http_body_util::Full::new(bytes::Bytes::new()),
                    ))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    let url = format!("https://localhost:{port}/register");
    let gw = TestGateway::start(move |c| {
        c.functions.register = Some(url.into());
        c.functions.ca_file = Some(ca_file);
    })
    .await;
    for _ in 0..3 {
        let client = gw.connect("/").await;
        drop(client);
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "one kept-alive TLS connection"
    );
    gw.shutdown().await;
    server.abort();
}

/// Without the CA, and with an expired certificate: register fails, the client gets the
/// refusal a failed register gives (502), and the log says why, naming the host.
#[tokio::test]
async fn https_functions_that_do_not_verify_refuse_the_connection_with_a_clear_log() {
    let dir = TempDir::new();
    let ca = Ca::new("private CA");
    let ca_file = write_ca(&ca, dir.path());
    let (cert, key) = ca.leaf("gw").write(dir.path(), "gw");
    let trusted_but_unknown = echo_function(Some(ca.leaf("fn").server_config())).await;
    let expired = echo_function(Some(ca.expired_leaf("old").server_config())).await;
    for (function, extra, reason) in [
        (&trusted_but_unknown, String::new(), "UnknownIssuer"),
        (
            &expired,
            format!("ca_file = \"{}\"", ca_file.display()),
            "expired",
        ),
    ] {
        let gw = GatewayProcess::start(
            &crate::switchboard_bin(),
            &tls_config_toml(&function.url(), &cert, &key, &extra),
        )
        .await;
        let url = format!("ws://{}/", gw.public());
        match tokio_tungstenite::connect_async(url).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                assert_eq!(response.status(), 502, "{reason}");
            }
            other => panic!("{reason}: expected a 502 refusal, got {other:?}"),
        }
        let line = gw
            .log()
            .line_with(&["register function failed"], WAIT)
            .await;
        assert!(
            line.contains("certificate verify failed for localhost") && line.contains(reason),
            "{line}"
        );
        assert!(
            !line.contains("/fn"),
            "the URL's path is not logged: {line}"
        );
        gw.terminate().await;
    }
}

// ------------------------------------------------------------------ send-back

/// The send-back API over TLS: the native API reached with the test CA, plain HTTP not
/// answered on it.
#[tokio::test]
async fn the_sendback_api_serves_tls() {
    let dir = TempDir::new();
    let ca = Ca::new("CA");
    let (cert, key) = ca.leaf("sendback").write(dir.path(), "sb");
    let function = echo_function(None).await;
    let url = function.url();
    let files = tls_files(&cert, &key);
    let gw = TestGateway::start(move |c| {
        tests::gateway::route_all(c, &url);
        c.sendback.tls = Some(files);
    })
    .await;
    let mut client = gw.connect("/").await;
    let id = function.wait_register().await;
    let auth = format!("Bearer {}", tests::gateway::TOKEN);
    let (status, body) = https_request(
        gw.sendback,
        &ca.pem(),
        "POST",
        &format!("/@connections/{id}"),
        &[("authorization", &auth)],
        b"pushed over https",
    )
    .await
    .expect("https send-back");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    expect_text(&mut client, "pushed over https").await;
    let plain = tests::gateway::sendback_request(
        reqwest::Method::POST,
        format!("{}/@connections/{id}", gw.sendback_url()),
    )
    .body("x")
    .send()
    .await;
    assert!(plain.is_err(), "plain HTTP gets no answer: {plain:?}");
    drop(client);
    gw.shutdown().await;
}

/// Two nodes on one store, both send-back listeners over TLS and advertising https: a send
/// made to node B for a client on node A is relayed over TLS and arrives.
#[tokio::test]
async fn relays_between_nodes_go_over_https() {
    let dir = TempDir::new();
    let ca = Ca::new("cluster CA");
    let ca_file = write_ca(&ca, dir.path());
    let (cert_a, key_a) = ca.leaf("node-a").write(dir.path(), "a");
    let (cert_b, key_b) = ca.leaf("node-b").write(dir.path(), "b");
    let function = echo_function(None).await;
    let store: store::SharedStore = Arc::new(store::MemoryStore::new());
    let node = |name: &'static str, cert: PathBuf, key: PathBuf| {
        let (url, ca_file, store) = (function.url(), ca_file.clone(), store.clone());
        async move {
            TestGateway::start_with(
                move |c| {
                    c.node_id = name.to_owned();
                    tests::gateway::route_all(c, &url);
                    c.sendback.tls = Some(tls_files(&cert, &key));
                    c.functions.ca_file = Some(ca_file);
                },
                gateway::Options {
                    store: Some(store),
                    ..gateway::Options::default()
                },
            )
            .await
        }
    };
    let a = node("node-a", cert_a, key_a).await;
    let b = node("node-b", cert_b, key_b).await;
    let address = tests::wait::eventually_some("node A's heartbeat", WAIT, || async {
        a.store.node_address("node-a").await.ok().flatten()
    })
    .await;
    assert_eq!(address, format!("https://{}", a.sendback));
    let mut on_a = a.connect("/").await;
    let id = function.wait_register().await;
    let auth = format!("Bearer {}", tests::gateway::TOKEN);
    let (status, body) = https_request(
        b.sendback,
        &ca.pem(),
        "POST",
        &format!("/@connections/{id}"),
        &[("authorization", &auth)],
        b"relayed over https",
    )
    .await
    .expect("send to node B");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    expect_text(&mut on_a, "relayed over https").await;
    drop(on_a);
    a.shutdown().await;
    b.shutdown().await;
}

// ------------------------------------------------------------------ footprint

/// The resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// What an idle connection costs the gateway process, plain and over TLS: N connections
/// of each kind opened and held, the growth of its resident memory divided by N. Prints
/// both. Measured at 2,000 of each: plain 3.9 KiB, wss 11.5 to 11.9 KiB (2.9x in a debug
/// build, 3.0x in a release one): rustls keeps a 4 KiB record buffer, the cipher state
/// and its session (a boxed 1.2 KiB) per connection, and has no way to release them while
/// idle. Fails past 3.5x, a guard against a regression. Ignored by default (it opens
/// thousands of connections); run with
/// `cargo test -p tests --test it tls::idle -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn idle_wss_connection_footprint() {
    const N: usize = 2000;
    let dir = TempDir::new();
    let ca = Ca::new("CA");
    let (cert, key) = ca.leaf("gw").write(dir.path(), "gw");
    let config = tls_config_toml("http://127.0.0.1:1/fn", &cert, &key, "")
        .replace("register = \"http://127.0.0.1:1/fn\"\n", "")
        .replace("transport = \"http://127.0.0.1:1/fn\"\n", "")
        .replace("cleanup = \"http://127.0.0.1:1/fn\"\n", "");
    let mut gw = GatewayProcess::start(&crate::switchboard_bin(), &config).await;
    let pid = gw.process().pid().unwrap();
    let plain: SocketAddr = gw.public().parse().unwrap();
    let tls: SocketAddr = gw.public_tls().unwrap().parse().unwrap();
    // Warm up both paths (allocator arenas, the session cache), then measure.
    for _ in 0..50 {
        drop(
            tokio_tungstenite::connect_async(format!("ws://{plain}/"))
                .await
                .unwrap(),
        );
        drop(connect_wss(tls, "/", &ca.pem()).await.unwrap());
    }
    let before = rss_kib(pid);
    let mut held_plain = Vec::new();
    for _ in 0..N {
        held_plain.push(
            tokio_tungstenite::connect_async(format!("ws://{plain}/"))
                .await
                .unwrap()
                .0,
        );
    }
    let after_plain = rss_kib(pid);
    let mut held_tls = Vec::new();
    for _ in 0..N {
        held_tls.push(connect_wss(tls, "/", &ca.pem()).await.unwrap().0);
    }
    let after_tls = rss_kib(pid);
    let per_plain = (after_plain - before) as f64 / N as f64;
    let per_tls = (after_tls - after_plain) as f64 / N as f64;
    println!(
        "idle connections, gateway RSS per connection: plain {per_plain:.2} KiB, wss {per_tls:.2} KiB ({:.1}x)",
        per_tls / per_plain
    );
    assert!(
        per_tls <= 3.5 * per_plain,
        "wss {per_tls:.2} KiB vs plain {per_plain:.2} KiB"
    );
    drop((held_plain, held_tls));
    gw.terminate().await;
}
