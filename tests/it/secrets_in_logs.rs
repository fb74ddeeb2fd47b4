//! No secret reaches a log line, at any level: two `switchboard-under-test` processes on a
//! password-protected redis-server, logging at `trace`, are driven through the error paths
//! that carry a secret nearby (wrong and right send-back tokens on every API, the Tencent
//! URL with its token, SigV4 failures, a relay to a killed node, the store cut off, a
//! transport function that is down, `switchboard check` refusing configs), then every line
//! they wrote is searched for the token, the AWS secret and the Redis password.
//!
//! The test also asserts that the error paths were taken (their log lines are there), so
//! it cannot pass by logging nothing.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;
use tests::process::{GatewayProcess, OutputLines, TempDir};
use tests::proxy::TcpProxy;
use tests::redis::Resp;
use tests::scripted::ScriptedFunction;
use tokio::process::Command;

/// The send-back token both nodes share.
const TOKEN: &str = "sb-log-test-token-7f3a9c2e5d";
/// The AWS secret access key the management API verifies signatures with.
const AWS_SECRET: &str = "aws/log+test/secret/9b8c7d6e5f4a";
const AWS_KEY: &str = "AKIALOGTESTKEY000001";
/// The Redis password in the store URL.
const REDIS_PASSWORD: &str = "redis-log-test-pw-4e5f6a7b";
/// A session token of temporary AWS credentials, signed with the request.
const SESSION_TOKEN: &str = "IQoJb3JpZ2luX2VjELogtestsessiontoken";
/// A header a passthrough route adds to its backend's upgrade request.
const UPSTREAM_KEY: &str = "upstream-log-test-key-5c6d7e8f";
const SECRETS: [&str; 5] = [
    TOKEN,
    AWS_SECRET,
    REDIS_PASSWORD,
    SESSION_TOKEN,
    UPSTREAM_KEY,
];
const WAIT: Duration = Duration::from_secs(15);

fn node_config(node: &str, store: &str, register: &str, transport: &str) -> String {
    node_config_with(node, store, register, transport, "ws://127.0.0.1:9/")
}

/// [`node_config`] with passthrough routes: `/pt` to `backend`, `/pt-dead` to a dead port,
/// both adding [`UPSTREAM_KEY`].
fn node_config_with(
    node: &str,
    store: &str,
    register: &str,
    transport: &str,
    backend: &str,
) -> String {
    let dead = dead_port();
    let routes = format!(
        "[[passthrough]]\npath = \"/pt\"\nbackend = \"{backend}\"\nauth = \"none\"\n\
         headers = {{ \"x-upstream-key\" = \"{UPSTREAM_KEY}\" }}\n\
         [[passthrough]]\npath = \"/pt-dead\"\nbackend = \"ws://127.0.0.1:{dead}/\"\n\
         auth = \"none\"\nheaders = {{ \"x-upstream-key\" = \"{UPSTREAM_KEY}\" }}\n"
    );
    // After every other table: the keys after `[[passthrough]]` are the route's.
    format!(
        "node_id = \"{node}\"\nstore = \"{store}\"\nstore_prefix = \"logs\"\n\
         node_heartbeat = \"200ms\"\nnode_heartbeat_ttl = \"30s\"\nrelay_timeout = \"300ms\"\n\
         [public]\nlisten = \"127.0.0.1:0\"\n\
         [sendback]\nlisten = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n\
         [functions]\nregister = \"{register}\"\ntransport = \"{transport}\"\n\
         cleanup = \"{register}\"\nretries = 0\n\
         [aws]\nregion = \"eu-west-1\"\n\
         [[aws.credentials]]\naccess_key_id = \"{AWS_KEY}\"\nsecret_access_key = \"{AWS_SECRET}\"\n"
    ) + &routes
}

/// Asserts that no line of `log` holds a secret, and returns how many lines it had.
fn assert_no_secret(name: &str, lines: &[String]) -> usize {
    for line in lines {
        for secret in SECRETS {
            assert!(
                !line.contains(secret),
                "{name} logged a secret ({} chars): {line}",
                secret.len()
            );
        }
    }
    lines.len()
}

/// Waits until some line of `log` contains `needle`.
async fn wait_logged(log: &OutputLines, needle: &str) {
    log.line_with(&[needle], WAIT).await;
}

/// Sends a request to `url` until it answers `status` (the cluster settles meanwhile).
async fn until_status(request: impl Fn() -> reqwest::RequestBuilder, status: StatusCode) {
    let deadline = Instant::now() + WAIT;
    loop {
        let got = request().send().await.expect("send-back request").status();
        if got == status {
            return;
        }
        assert!(Instant::now() < deadline, "wanted {status}, still {got}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A port nothing listens on.
fn dead_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `switchboard check` on `config`: its output (stdout and stderr), asserting it failed.
async fn check_refuses(config: &str) -> Vec<String> {
    let dir = TempDir::new();
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, config).unwrap();
    let out = Command::new(crate::switchboard_bin())
        .arg("check")
        .arg("--config")
        .arg(&path)
        .env("SWITCHBOARD_LOG", "trace")
        .output()
        .await
        .expect("run switchboard check");
    assert!(!out.status.success(), "check accepted {config}");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    text.lines().map(str::to_owned).collect()
}

#[tokio::test]
async fn no_secret_reaches_a_log_line_on_any_error_path() {
    let Some(mut redis) = tests::redis::require_redis() else {
        return;
    };
    let set = redis
        .command(&["CONFIG", "SET", "requirepass", REDIS_PASSWORD])
        .unwrap();
    assert!(matches!(set, Resp::Simple(_)), "{set:?}");
    // Node B reaches Redis through a relay the test can cut.
    let proxy = TcpProxy::start(redis.addr()).await.unwrap();
    let store = |addr: std::net::SocketAddr| format!("redis://:{REDIS_PASSWORD}@{addr}");
    let function = ScriptedFunction::accepting().await;
    let dead_transport = format!("http://127.0.0.1:{}/transport", dead_port());

    let backend = tests::ws_backend::WsBackend::start(Default::default()).await;
    let mut a = GatewayProcess::start_logging(
        &crate::switchboard_bin(),
        &node_config_with(
            "gw-a",
            &store(redis.addr()),
            &function.url(),
            &dead_transport,
            &backend.url("/ws"),
        ),
        "trace",
    )
    .await;
    let b = GatewayProcess::start_logging(
        &crate::switchboard_bin(),
        &node_config(
            "gw-b",
            &store(proxy.addr()),
            &function.url(),
            &dead_transport,
        ),
        "trace",
    )
    .await;
    let (_base_a, base_b) = (
        format!("http://{}", a.sendback()),
        format!("http://{}", b.sendback()),
    );
    let http = reqwest::Client::new();

    // A client on node A; its id from the register event.
    let (mut client, _) = tokio_tungstenite::connect_async(format!("ws://{}/", a.public()))
        .await
        .expect("connect to node A");
    let id = function.events()[0].connection_id.clone();

    // Passthrough routes adding a secret header: one through to a backend, one failing.
    let (mut through, _) = tokio_tungstenite::connect_async(format!("ws://{}/pt", a.public()))
        .await
        .expect("a passthrough connection");
    assert_eq!(backend.seen()[0].headers["x-upstream-key"], UPSTREAM_KEY);
    futures_util::SinkExt::send(&mut through, "echo".into())
        .await
        .unwrap();
    assert!(tests::gateway::next_message(&mut through).await.is_some());
    drop(through);
    match tokio_tungstenite::connect_async(format!("ws://{}/pt-dead", a.public())).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 502),
        other => panic!("expected a 502: {other:?}"),
    }

    // The native API on B: relayed to A with the right token, refused with wrong ones.
    let send = |base: &str, token: &str| {
        http.post(format!("{base}/@connections/{id}"))
            .header("authorization", format!("Bearer {token}"))
            .body("hello")
    };
    assert_eq!(send(&base_b, TOKEN).send().await.unwrap().status(), 200);
    let near_miss = format!("{}x", &TOKEN[..TOKEN.len() - 1]);
    for token in [near_miss.as_str(), "", "short"] {
        assert_eq!(send(&base_b, token).send().await.unwrap().status(), 401);
    }
    // The token in a query string or as the path of an unknown route.
    let r = http
        .get(format!("{base_b}/{TOKEN}?token={TOKEN}"))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_client_error(), "{}", r.status());

    // The Tencent URL carries the token in its path: right, wrong, and a bad body.
    let tencent = |token: &str, body: serde_json::Value| {
        http.post(format!("{base_b}/@tencent/{token}")).json(&body)
    };
    let push = json!({"websocket": {"action": "data send", "secConnectionID": id, "data": "hi"}});
    assert_eq!(
        tencent(TOKEN, push.clone()).send().await.unwrap().status(),
        200
    );
    assert_eq!(
        tencent(&near_miss, push.clone())
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    let r = tencent(TOKEN, json!({"websocket": {"action": "nope"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    // SigV4: the right key with a wrong signature (the canonical request, session token
    // included, is logged), an unknown key, a malformed header.
    let amz_date = humantime::format_rfc3339_seconds(std::time::SystemTime::now())
        .to_string()
        .replace(['-', ':'], "");
    let day = &amz_date[..8];
    for authorization in [
        format!(
            "AWS4-HMAC-SHA256 Credential={AWS_KEY}/{day}/eu-west-1/execute-api/aws4_request, \
             SignedHeaders=host;x-amz-date;x-amz-security-token, Signature={}",
            "0".repeat(64)
        ),
        format!(
            "AWS4-HMAC-SHA256 Credential=AKIAUNKNOWN/{day}/eu-west-1/execute-api/aws4_request, \
             SignedHeaders=host;x-amz-date, Signature={}",
            "0".repeat(64)
        ),
        format!("AWS4-HMAC-SHA256 {AWS_SECRET}"),
    ] {
        let r = http
            .post(format!("{base_b}/prod/@connections/{id}"))
            .header("authorization", authorization)
            .header("x-amz-date", &amz_date)
            .header("x-amz-security-token", SESSION_TOKEN)
            .body("x")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403);
    }

    wait_logged(b.log(), "signature mismatch").await;
    wait_logged(b.log(), "unknown access key").await;

    // A message to a transport function that is down: the client is told, A logs it.
    tests::gateway::send_text(&mut client, "to nowhere").await;
    wait_logged(a.log(), "transport").await;
    wait_logged(a.log(), "backend connected").await;
    wait_logged(a.log(), "backend dial failed").await;

    // Node A killed: B's relay is refused (the log line the token once rode in).
    a.process().kill().await;
    until_status(|| send(&base_b, TOKEN), StatusCode::SERVICE_UNAVAILABLE).await;
    assert_eq!(
        tencent(TOKEN, push.clone()).send().await.unwrap().status(),
        503
    );
    wait_logged(b.log(), "could not relay").await;

    // B cut off from Redis: its store calls fail and its heartbeat says so.
    proxy.cut();
    wait_logged(b.log(), "store heartbeat failed").await;
    let r = send(&base_b, TOKEN).send().await.unwrap();
    assert_eq!(r.status(), 503, "a send while the store is down");
    proxy.restore();

    // Configs refused by `switchboard check`, each holding a secret near its error.
    let mut checked = Vec::new();
    for config in [
        format!(
            "store = \"redis://:{REDIS_PASSWORD}@127.0.0.1:notaport\"\n[sendback]\ntoken = \"{TOKEN}\"\n"
        ),
        format!(
            "store = \"rediss+nope://:{REDIS_PASSWORD}@host\"\n[sendback]\ntoken = \"{TOKEN}\"\n"
        ),
        format!("[sendback]\ntoken = \"{}\"\n", &TOKEN[..10]),
        format!("[sendback]\ntoken = \"{TOKEN}\"\nnot_a_field = \"{AWS_SECRET}\"\n"),
        format!(
            "[sendback]\ntoken = \"{TOKEN}\"\n[[aws.credentials]]\naccess_key_id = \"\"\nsecret_access_key = \"{AWS_SECRET}\"\n"
        ),
    ] {
        checked.extend(check_refuses(&config).await);
    }

    let lines_b = b.log().lines();
    let lines_a = a.log().lines();
    drop(b);
    drop(a);
    let counted = assert_no_secret("node A", &lines_a)
        + assert_no_secret("node B", &lines_b)
        + assert_no_secret("switchboard check", &checked);
    // Trace logging of all that is thousands of lines: a sign the run was observed.
    assert!(counted > 100, "only {counted} log lines");
    redis.stop();
}
