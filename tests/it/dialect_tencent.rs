//! The `tencent` dialect end to end: handlers written for Tencent API Gateway + SCF run
//! unchanged. The seed chat (tests/handlers/tencent: register / transport / cleanup in
//! Python, served by a tiny SCF-like runtime) with its connection ids in a real Redis and
//! its pushes through the Tencent-style send-back URL; register replies (`errNo`,
//! subprotocol, refusal, timeout); the event shapes; a failing transport; the send-back URL
//! and its error shape; broken register replies against the real binary, with the log
//! checked.
//!
//! Tests needing python3 or redis-server skip loudly when they are missing, and fail under
//! `SWITCHBOARD_REQUIRE_ALL` (tests/run.sh installs both).

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use futures_util::SinkExt;
use gateway::config::Dialect;
use serde_json::{Value, json};
use tests::gateway::{
    Client, TOKEN, TestGateway, expect_close, next_message, send_text, test_config,
};
use tests::process::{GatewayProcess, Process};
use tests::recorder::RecordingFunction;
use tests::redis::{RedisServer, Resp, require_redis};
use tests::scripted::Scripted;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const WAIT: Duration = Duration::from_secs(15);

// ------------------------------------------------------------------ function

/// The path of the recording function: register, transport and cleanup all point at it.
const FUNCTION_PATH: &str = "scf";

/// Waits for the first event with `websocket.action == action` matching `pred`.
async fn wait_event(rec: &RecordingFunction, action: &str, pred: impl Fn(&Value) -> bool) -> Value {
    rec.wait_event(&format!("a `{action}` event"), WAIT, |e| {
        e["websocket"]["action"] == action && pred(e)
    })
    .await
}

/// Events of one action for one connection.
fn events_of(rec: &RecordingFunction, action: &str, id: &str) -> Vec<Value> {
    rec.events()
        .into_iter()
        .filter(|e| e["websocket"]["action"] == action && id_of(e) == id)
        .collect()
}

fn id_of(event: &Value) -> &str {
    event["websocket"]["secConnectionID"]
        .as_str()
        .unwrap_or_default()
}

fn ok() -> Scripted {
    Scripted::json(json!({"errNo": 0, "errMsg": "ok"}))
}

fn tencent(c: &mut gateway::Config) {
    c.functions.dialect = Dialect::Tencent;
}

fn text(message: Option<Message>) -> String {
    match message {
        Some(Message::Text(t)) => t.as_str().to_owned(),
        other => panic!("expected a text message, got {other:?}"),
    }
}

/// Opens a WebSocket with optional extra headers; on refusal returns the status and body.
async fn open(
    url: &str,
    headers: &[(&str, &str)],
) -> Result<(Client, Option<String>), (u16, String)> {
    let mut request = url.into_client_request().unwrap();
    for (name, value) in headers {
        request.headers_mut().insert(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok((client, response)) => {
            let protocol = response
                .headers()
                .get("sec-websocket-protocol")
                .map(|v| v.to_str().unwrap().to_owned());
            Ok((client, protocol))
        }
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => Err((
            response.status().as_u16(),
            String::from_utf8_lossy(response.body().as_deref().unwrap_or_default()).into_owned(),
        )),
        Err(e) => panic!("connect failed without an HTTP status: {e}"),
    }
}

// ------------------------------------------------------------------ python

/// `python3`, 3.7 or later. The handlers use the standard library only.
fn python3() -> Option<PathBuf> {
    tests::python::find_python3(
        "import sys; sys.exit(sys.version_info < (3, 7))",
        "python3 (3.7 or later) not installed",
    )
}

/// `runtime.py` serving one handler module, killed when dropped. What the handler prints is
/// kept (and echoed to the test's output).
struct Runtime {
    process: Process,
    url: String,
}

impl Runtime {
    async fn start(python: &Path, module: &'static str, env: &[(&str, String)]) -> Runtime {
        let mut cmd = tests::python::command(python, "tencent", env);
        cmd.arg("runtime.py").arg(module);
        let process = Process::spawn_echoing_stdout(&mut cmd, module);
        let first = process.output().first_line(WAIT).await;
        let port: u16 = first
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("runtime.py's first line is not a port: {first}"));
        Runtime {
            process,
            url: format!("http://127.0.0.1:{port}/"),
        }
    }

    /// Waits for a printed line containing every one of `needles`.
    async fn wait_line(&self, needles: &[&str]) -> String {
        self.process.output().line_with(needles, WAIT).await
    }
}

// ------------------------------------------------------------------ redis

fn members(redis: &RedisServer, key: &str) -> BTreeSet<String> {
    match redis.command(&["SMEMBERS", key]) {
        Ok(Resp::Array(Some(items))) => items
            .into_iter()
            .filter_map(|r| match r {
                Resp::Bulk(Some(b)) => Some(String::from_utf8_lossy(&b).into_owned()),
                _ => None,
            })
            .collect(),
        other => panic!("SMEMBERS {key}: {other:?}"),
    }
}

async fn wait_members(redis: &RedisServer, key: &str, want: &BTreeSet<String>) {
    tests::wait::eventually(&format!("{key} to hold {want:?}"), WAIT, || {
        let ok = &members(redis, key) == want;
        async move { ok }
    })
    .await;
}

/// The one member of `key` not in `known`.
fn newcomer(redis: &RedisServer, key: &str, known: &BTreeSet<String>) -> String {
    let now = members(redis, key);
    let new: Vec<&String> = now.difference(known).collect();
    assert_eq!(
        new.len(),
        1,
        "expected one new id in {now:?} beside {known:?}"
    );
    new[0].clone()
}

// ------------------------------------------------------------------ tests

/// The seed chat functions, written for SCF, behind the gateway: every message reaches
/// everyone else with the online count appended, one send-back POST per id; cleanup's
/// `closing` for a connection that is already gone gets 410 and changes nothing; no id is
/// left in Redis at the end.
#[tokio::test]
async fn seed_chat_on_the_tencent_handlers() {
    let Some(python) = python3() else {
        return;
    };
    let Some(redis) = require_redis() else {
        return;
    };
    let key = format!(
        "chat:connections:{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );

    // The handlers need the send-back URL and the gateway the handlers' URLs: reserve the
    // send-back port, start the handlers, then bind the gateway there (on a new port if
    // another process took it meanwhile).
    let (gw, _register, transport, cleanup) = {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let port = tests::redis::free_port().unwrap();
            let env = [
                ("REDIS_URL", redis.url()),
                ("CONNECTIONS_KEY", key.clone()),
                (
                    "SENDBACK_URL",
                    format!("http://127.0.0.1:{port}/@tencent/{TOKEN}"),
                ),
            ];
            let (register, transport, cleanup) = tokio::join!(
                Runtime::start(&python, "register", &env),
                Runtime::start(&python, "transport", &env),
                Runtime::start(&python, "cleanup", &env),
            );
            let mut config = test_config();
            tencent(&mut config);
            config.sendback.listen = SocketAddr::from(([127, 0, 0, 1], port));
            config.functions.register = Some(register.url.clone().into());
            config.functions.transport = Some(transport.url.clone().into());
            config.functions.cleanup = Some(cleanup.url.clone().into());
            match gateway::Gateway::bind(config, gateway::Options::default()).await {
                Ok(gateway) => {
                    let store = gateway.store();
                    break (
                        TestGateway::run(gateway, store),
                        register,
                        transport,
                        cleanup,
                    );
                }
                Err(e) if attempt < 5 => eprintln!("retrying on another port: {e}"),
                Err(e) => panic!("gateway binds: {e}"),
            }
        }
    };

    // Register stores each id before the upgrade completes.
    let mut known = BTreeSet::new();
    let mut a = gw.connect("/").await;
    let a_id = newcomer(&redis, &key, &known);
    known.insert(a_id.clone());
    let mut b = gw.connect("/").await;
    let b_id = newcomer(&redis, &key, &known);
    known.insert(b_id.clone());
    // The sample register echoes the offered subprotocols; the client gets its first.
    let (mut c, protocol) = open(
        &gw.ws_url("/"),
        &[("sec-websocket-protocol", "chat, binary")],
    )
    .await
    .expect("c connects");
    assert_eq!(protocol.as_deref(), Some("chat"));
    let c_id = newcomer(&redis, &key, &known);
    known.insert(c_id.clone());

    // a's two messages reach b and c in order; a's transport calls run one at a time, so
    // once "two" arrived everything the first call sent is queued.
    send_text(&mut a, "one").await;
    send_text(&mut a, "two").await;
    for client in [&mut b, &mut c] {
        assert_eq!(
            text(next_message(client).await),
            "one(===Online people:3===)"
        );
        assert_eq!(
            text(next_message(client).await),
            "two(===Online people:3===)"
        );
    }
    // So a's next message is b's, not its own; likewise for b and c.
    send_text(&mut b, "three").await;
    for client in [&mut a, &mut c] {
        assert_eq!(
            text(next_message(client).await),
            "three(===Online people:3===)"
        );
    }
    send_text(&mut c, "four").await;
    for client in [&mut a, &mut b] {
        assert_eq!(
            text(next_message(client).await),
            "four(===Online people:3===)"
        );
    }
    // Binary: base64 in the event, forwarded as `dataType: binary`, a binary frame again.
    a.send(Message::binary(vec![0u8, 1, 2, 255])).await.unwrap();
    for client in [&mut b, &mut c] {
        assert_eq!(
            next_message(client).await,
            Some(Message::binary(vec![0u8, 1, 2, 255]))
        );
    }

    // A stale id in storage: its push gets 410, everyone else still gets the message.
    let stale = uuid::Uuid::new_v4().to_string();
    redis.command(&["SADD", &key, &stale]).unwrap();
    send_text(&mut b, "five").await;
    for client in [&mut a, &mut c] {
        assert_eq!(
            text(next_message(client).await),
            "five(===Online people:4===)"
        );
    }
    let line = transport
        .wait_line(&[&format!("send to {stale} failed: 410"), "'errNo': 410"])
        .await;
    assert!(line.contains("'errMsg'"), "{line}");
    redis.command(&["SREM", &key, &stale]).unwrap();

    // c leaves: cleanup's `closing` finds it gone (410), and the id is deleted.
    c.close(None).await.unwrap();
    known.remove(&c_id);
    wait_members(&redis, &key, &known).await;
    let line = cleanup
        .wait_line(&[&format!("closing {c_id}: 410"), r#""errNo":410"#])
        .await;
    assert!(line.contains(r#""errMsg":"#), "{line}");
    send_text(&mut a, "six").await;
    assert_eq!(
        text(next_message(&mut b).await),
        "six(===Online people:2===)"
    );

    // Everyone leaves: nothing stays in Redis.
    a.close(None).await.unwrap();
    b.close(None).await.unwrap();
    wait_members(&redis, &key, &BTreeSet::new()).await;
    for id in [&a_id, &b_id] {
        cleanup.wait_line(&[&format!("closing {id}: 410")]).await;
    }

    // The gateway still serves.
    let mut d = gw.connect("/").await;
    send_text(&mut d, "ping").await;
    assert_eq!(text(next_message(&mut d).await), "pong");
    d.close(None).await.unwrap();
    wait_members(&redis, &key, &BTreeSet::new()).await;
    gw.shutdown().await;
}

/// `errNo` decides the upgrade, the reply picks the subprotocol, a non-200 status or a
/// timeout refuses; the events have the documented shapes; a transport function answering
/// 500 closes the client with 1011 and cleanup follows once.
#[tokio::test]
async fn register_replies_event_shapes_and_a_failing_transport() {
    let rec = RecordingFunction::start(|_, e| {
        let ws = &e["websocket"];
        match ws["action"].as_str().unwrap_or_default() {
            "connecting" => match e["queryString"]["case"].as_str().unwrap_or_default() {
                "refuse" => {
                    Scripted::json(json!({"errNo": 4001, "errMsg": "no entry without a ticket"}))
                }
                "status" => Scripted::json_text("bad token").with_status(401),
                "pick" => Scripted::json(json!({
                    "errNo": 0,
                    "errMsg": "ok",
                    "websocket": {
                        "action": "connecting",
                        "secConnectionID": ws["secConnectionID"],
                        "secWebSocketProtocol": "binary",
                    },
                })),
                "unoffered" => Scripted::json(json!({
                    "errNo": 0,
                    "websocket": {"secWebSocketProtocol": "v9"},
                })),
                "slow" => ok().after(Duration::from_secs(5)),
                // As Tencent's register sample does: echo the offer (a list) back.
                _ => match ws.get("secWebSocketProtocol") {
                    Some(offer) => Scripted::json(json!({
                        "errNo": 0,
                        "errMsg": "ok",
                        "websocket": {
                            "action": "connecting",
                            "secConnectionID": ws["secConnectionID"],
                            "secWebSocketProtocol": offer,
                        },
                    })),
                    None => ok(),
                },
            },
            "data recv" if ws["data"] == "fail" => {
                Scripted::json(json!({"errorCode": -1, "errorMessage": "boom"})).with_status(500)
            }
            _ => ok(),
        }
    })
    .await;
    let url = rec.url(FUNCTION_PATH);
    let gw = TestGateway::start(move |c| {
        tencent(c);
        tests::gateway::route_all(c, &url);
        c.tencent.service_name = "chatsvc".into();
        c.tencent.stage = "prod".into();
        c.functions.timeout = Duration::from_secs(1);
        c.functions.retries = 1;
    })
    .await;

    // Refusals: errNo ≠ 0 is 403 with errMsg as the body; a non-200 status is that status;
    // no reply in time is 504; a subprotocol the client did not offer is 502.
    let refused = |case: &str| {
        let url = gw.ws_url(&format!("/chat?case={case}"));
        async move { open(&url, &[]).await.expect_err("refused") }
    };
    assert_eq!(
        refused("refuse").await,
        (403, "no entry without a ticket".to_owned())
    );
    assert_eq!(refused("status").await, (401, "bad token".to_owned()));
    assert_eq!(refused("slow").await.0, 504);
    assert_eq!(refused("unoffered").await.0, 502);

    // The reply picks one of the offered subprotocols.
    let offer = [("sec-websocket-protocol", "chat, binary")];
    let (mut picked, protocol) = open(&gw.ws_url("/chat?case=pick"), &offer).await.unwrap();
    assert_eq!(protocol.as_deref(), Some("binary"));
    picked.close(None).await.unwrap();

    // The register event: requestContext and websocket as documented, with headers and the
    // query for authentication.
    let (mut client, protocol) = open(
        &gw.ws_url("/chat?case=fine&room=a&room=b&debug"),
        &[
            ("sec-websocket-protocol", "chat, binary"),
            ("user-agent", "tencent-dialect-test/1"),
            ("x-tenant", "acme"),
        ],
    )
    .await
    .unwrap();
    assert_eq!(
        protocol.as_deref(),
        Some("chat"),
        "the echoed offer picks its first"
    );
    let register = wait_event(&rec, "connecting", |e| e["queryString"]["case"] == "fine").await;
    let id = id_of(&register).to_owned();
    assert!(uuid::Uuid::parse_str(&id).is_ok(), "{register}");
    let rc = &register["requestContext"];
    assert_eq!(rc["serviceName"], "chatsvc");
    assert_eq!(rc["stage"], "prod");
    assert_eq!(rc["path"], "/chat");
    assert_eq!(rc["httpMethod"], "GET");
    assert_eq!(rc["sourceIp"], "127.0.0.1");
    assert_eq!(rc["websocketEnable"], true);
    assert_eq!(rc["requestId"], format!("{id}:register"), "{register}");
    assert_eq!(
        register["websocket"],
        json!({"action": "connecting", "secConnectionID": id, "eventId": format!("{id}:register"), "secWebSocketProtocol": "chat,binary"})
    );
    assert_eq!(register["headers"]["user-agent"], "tencent-dialect-test/1");
    assert_eq!(register["headers"]["x-tenant"], "acme");
    assert_eq!(
        register["queryString"],
        json!({"case": "fine", "room": ["a", "b"], "debug": true})
    );

    // Transport: text as is, binary as base64 with dataType "binary", in order.
    send_text(&mut client, "hello").await;
    client
        .send(Message::binary(vec![0u8, 1, 254, 255]))
        .await
        .unwrap();
    let recv = rec
        .wait_until("two data recv events", WAIT, |events| {
            events
                .iter()
                .filter(|r| r.event["websocket"]["action"] == "data recv" && id_of(&r.event) == id)
                .count()
                == 2
        })
        .await;
    let recv: Vec<&Value> = recv
        .iter()
        .map(|r| &r.event)
        .filter(|e| e["websocket"]["action"] == "data recv")
        .collect();
    assert_eq!(
        *recv[0],
        json!({"websocket": {"action": "data recv", "secConnectionID": id, "eventId": format!("{id}:1"), "dataType": "text", "data": "hello"}})
    );
    assert_eq!(
        *recv[1],
        json!({"websocket": {"action": "data recv", "secConnectionID": id, "eventId": format!("{id}:2"), "dataType": "binary", "data": BASE64.encode([0u8, 1, 254, 255])}})
    );

    // A transport function answering 500 (after the retry) closes the client with 1011.
    send_text(&mut client, "fail").await;
    let frame = expect_close(&mut client).await.expect("a close frame");
    assert_eq!(u16::from(frame.code), 1011);
    assert_eq!(frame.reason.as_str(), "transport function failed");
    let closing = wait_event(&rec, "closing", |e| id_of(e) == id).await;
    assert_eq!(
        closing,
        json!({"websocket": {"action": "closing", "secConnectionID": id, "eventId": format!("{id}:cleanup")}})
    );

    gw.shutdown().await;
    // After shutdown (every cleanup sent): exactly one cleanup for it, the failing message
    // tried twice (once and one retry), and no cleanup for a refused connection.
    assert_eq!(events_of(&rec, "closing", &id).len(), 1);
    let tries = events_of(&rec, "data recv", &id)
        .into_iter()
        .filter(|e| e["websocket"]["data"] == "fail")
        .count();
    assert_eq!(tries, 2);
    let accepted: BTreeSet<String> = rec
        .events()
        .iter()
        .filter(|e| {
            e["websocket"]["action"] == "connecting"
                && matches!(e["queryString"]["case"].as_str(), Some("pick" | "fine"))
        })
        .map(|e| id_of(e).to_owned())
        .collect();
    let cleaned: BTreeSet<String> = rec
        .events()
        .iter()
        .filter(|e| e["websocket"]["action"] == "closing")
        .map(|e| id_of(e).to_owned())
        .collect();
    assert_eq!(cleaned, accepted);
}

/// POSTs `body` to a Tencent send-back URL; returns the status and the JSON body, after
/// checking the error shape: `{"errNo", "errMsg"}` with errNo 0 for 200, else the status.
async fn push(url: &str, bearer: Option<&str>, body: impl Into<reqwest::Body>) -> (u16, Value) {
    let mut request = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .body(body);
    if let Some(token) = bearer {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    assert_eq!(
        response.headers()["content-type"],
        "application/json",
        "{url}"
    );
    let value: Value = response.json().await.unwrap();
    check_shape(status, &value);
    (status, value)
}

fn check_shape(status: u16, value: &Value) {
    let fields: BTreeSet<&str> = value
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {value}"))
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(fields, BTreeSet::from(["errNo", "errMsg"]), "{value}");
    let want = if status == 200 { 0 } else { u64::from(status) };
    assert_eq!(
        value["errNo"].as_u64(),
        Some(want),
        "status {status}: {value}"
    );
    assert!(
        value["errMsg"].as_str().is_some_and(|m| !m.is_empty()),
        "{value}"
    );
}

fn data_send(id: &str, data_type: &str, data: &str) -> String {
    json!({"websocket": {"action": "data send", "secConnectionID": id, "dataType": data_type, "data": data}})
        .to_string()
}

/// The send-back URL: `data send` (text, binary), `closing`, the token in the path or as a
/// bearer, and every error in the `{"errNo", "errMsg"}` shape with errNo = the status.
#[tokio::test]
async fn the_sendback_url_answers_in_tencent_shape() {
    let rec = RecordingFunction::start(|_, _| ok()).await;
    let url = rec.url(FUNCTION_PATH);
    let gw = TestGateway::start(move |c| {
        tencent(c);
        tests::gateway::route_all(c, &url);
        c.limits.max_message_bytes = 1024;
        c.sendback.max_body_bytes = 16 * 1024;
    })
    .await;
    let base = format!("{}/@tencent", gw.sendback_url());
    let with_token = format!("{base}/{TOKEN}");
    let mut client = gw.connect("/").await;
    let id = id_of(&wait_event(&rec, "connecting", |_| true).await).to_owned();

    // data send: text, text by default, binary from base64.
    let ok_body = json!({"errNo": 0, "errMsg": "ok"});
    let r = push(&with_token, None, data_send(&id, "text", "hello")).await;
    assert_eq!(r, (200, ok_body.clone()));
    assert_eq!(text(next_message(&mut client).await), "hello");
    let no_type =
        json!({"websocket": {"action": "data send", "secConnectionID": id, "data": "plain"}});
    assert_eq!(push(&with_token, None, no_type.to_string()).await.0, 200);
    assert_eq!(text(next_message(&mut client).await), "plain");
    let r = push(&with_token, None, data_send(&id, "binary", "AAH/")).await;
    assert_eq!(r.0, 200);
    assert_eq!(
        next_message(&mut client).await,
        Some(Message::binary(vec![0u8, 1, 255]))
    );
    // The token as a bearer instead, or percent-encoded in the path.
    let r = push(&base, Some(TOKEN), data_send(&id, "text", "bearer")).await;
    assert_eq!(r.0, 200);
    assert_eq!(text(next_message(&mut client).await), "bearer");
    let encoded = format!("{base}/{}", TOKEN.replace('-', "%2D"));
    let r = push(&encoded, None, data_send(&id, "text", "encoded")).await;
    assert_eq!(r.0, 200);
    assert_eq!(text(next_message(&mut client).await), "encoded");
    // Exactly the message limit passes.
    let r = push(&with_token, None, data_send(&id, "text", &"x".repeat(1024))).await;
    assert_eq!(r.0, 200);
    assert_eq!(text(next_message(&mut client).await).len(), 1024);

    // Wrong or missing token: 401.
    let hello = data_send(&id, "text", "no");
    let wrong = format!("{base}/wrong-token-0123456789");
    assert_eq!(push(&wrong, None, hello.clone()).await.0, 401);
    assert_eq!(push(&base, None, hello.clone()).await.0, 401);
    assert_eq!(
        push(&base, Some("wrong-token-0123456789"), hello.clone())
            .await
            .0,
        401
    );
    assert_eq!(
        push(&wrong, Some("also-wrong-0123456789"), hello.clone())
            .await
            .0,
        401
    );

    // Malformed requests: 400, with what is wrong.
    let bad = [
        ("{".to_owned(), "expected"),
        (json!({"action": "data send"}).to_string(), "websocket"),
        (
            json!({"websocket": {"action": "data send", "data": "x"}}).to_string(),
            "secConnectionID",
        ),
        (
            json!({"websocket": {"action": "data sned", "secConnectionID": id, "data": "x"}})
                .to_string(),
            "unknown action `data sned`",
        ),
        (data_send(&id, "json", "x"), "unknown dataType `json`"),
        (data_send(&id, "binary", "not base64!"), "base64"),
        (
            json!({"websocket": {"action": "data send", "secConnectionID": id}}).to_string(),
            "without `data`",
        ),
        (
            json!({"websocket": {"action": "data send", "secConnectionID": id, "data": {"a": 1}}})
                .to_string(),
            "expected",
        ),
    ];
    for (body, why) in bad {
        let (status, value) = push(&with_token, None, body.clone()).await;
        assert_eq!(status, 400, "{body}: {value}");
        let message = value["errMsg"].as_str().unwrap();
        assert!(message.contains(why), "{body}: {message}");
    }

    // Too large: a message over limits.max_message_bytes, a body over max_body_bytes.
    let (status, value) = push(&with_token, None, data_send(&id, "text", &"x".repeat(1025))).await;
    assert_eq!(status, 413, "{value}");
    let huge = data_send(&id, "text", &"x".repeat(20 * 1024));
    assert_eq!(push(&with_token, None, huge).await.0, 413);

    // Only POST.
    let response = reqwest::get(&with_token).await.unwrap();
    assert_eq!(response.status(), 405);
    assert_eq!(response.headers()["allow"], "POST");
    check_shape(405, &response.json().await.unwrap());

    // Gone: an id that never existed, one that is not even an id.
    let never = uuid::Uuid::new_v4().to_string();
    for other in [never.as_str(), "xawexasdfewezdfsdfeasdfffa=="] {
        let (status, value) = push(&with_token, None, data_send(other, "text", "x")).await;
        assert_eq!(status, 410, "{value}");
    }
    // Nothing of the refused pushes reached the client.
    send_text(&mut client, "ping").await;
    assert_eq!(text(next_message(&mut client).await), "pong");

    // closing: the client gets a normal close and cleanup follows; then the id is gone.
    let closing = json!({"websocket": {"action": "closing", "secConnectionID": id}}).to_string();
    assert_eq!(
        push(&with_token, None, closing.clone()).await,
        (200, ok_body)
    );
    let frame = expect_close(&mut client).await.expect("a close frame");
    assert_eq!(u16::from(frame.code), 1000);
    wait_event(&rec, "closing", |e| id_of(e) == id).await;
    let (status, value) = push(&with_token, None, closing).await;
    assert_eq!(status, 410, "{value}");
    assert_eq!(value["errNo"], 410);
    let (status, _) = push(&with_token, None, data_send(&id, "text", "late")).await;
    assert_eq!(status, 410);

    gw.shutdown().await;
    assert_eq!(events_of(&rec, "closing", &id).len(), 1);
}

/// Register replies the dialect cannot use, against the real binary: each refuses that
/// upgrade with 502 and says why in the log; the gateway keeps serving everyone else.
#[tokio::test]
async fn broken_register_replies_are_502_with_a_clear_log() {
    let rec = RecordingFunction::start(|_, e| {
        if e["websocket"]["action"] != "connecting" {
            return ok();
        }
        let raw = Scripted::json_text;
        match e["queryString"]["case"].as_str().unwrap_or("fine") {
            "garbage" => raw("this is not json"),
            "empty" => raw(""),
            "no-errno" => raw(r#"{"errMsg":"ok"}"#),
            "string-errno" => raw(r#"{"errNo":"0","errMsg":"ok"}"#),
            "array" => raw("[0]"),
            "huge" => Scripted::json(json!({"errNo": 0, "errMsg": "x".repeat(100 * 1024)})),
            "unoffered" => {
                Scripted::json(json!({"errNo": 0, "websocket": {"secWebSocketProtocol": "v9"}}))
            }
            _ => ok(),
        }
    })
    .await;
    let config = format!(
        "[public]\nlisten = \"127.0.0.1:0\"\n[sendback]\nlisten = \"127.0.0.1:0\"\n\
         token = \"{TOKEN}\"\n[functions]\ndialect = \"tencent\"\nregister = \"{}\"\n\
         max_reply_bytes = 65536\n",
        rec.url(FUNCTION_PATH)
    );
    let gateway = GatewayProcess::start(&crate::switchboard_bin(), &config).await;
    let public = gateway.public();
    let ws_url = |case: &str| format!("ws://{public}/?case={case}");

    let (mut bystander, _) = open(&ws_url("fine"), &[]).await.expect("a fine connect");
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (case, why) in [
        ("garbage", "register reply is not JSON"),
        ("empty", "register reply is not JSON"),
        ("no-errno", "register reply has no integer errNo"),
        ("string-errno", "register reply has no integer errNo"),
        ("array", "register reply has no integer errNo"),
        ("huge", "function reply larger than 65536 bytes"),
        (
            "unoffered",
            "subprotocol `v9` was not offered by the client",
        ),
    ] {
        let (status, _) = open(&ws_url(case), &[]).await.expect_err("refused");
        assert_eq!(status, 502, "case {case}");
        let n = seen.entry(why).or_default();
        *n += 1;
        let line = gateway.log().nth_line_with(*n, &[why], WAIT).await;
        assert!(line.contains("register function failed"), "{line}");
    }
    // Everyone else is still served.
    send_text(&mut bystander, "ping").await;
    assert_eq!(text(next_message(&mut bystander).await), "pong");
    let (mut late, _) = open(&ws_url("fine"), &[]).await.expect("a later connect");
    send_text(&mut late, "ping").await;
    assert_eq!(text(next_message(&mut late).await), "pong");

    gateway.terminate().await;
}
