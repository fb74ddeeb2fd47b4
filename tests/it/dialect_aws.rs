//! The `aws` dialect end to end: handlers written for AWS API Gateway WebSocket APIs run
//! unchanged. A chat room on the AWS sample's Python handlers (tests/handlers/aws) with
//! their connection table in a real Redis; route selection; `$connect` replies (refusal,
//! subprotocol, authorizer context); two-way and failing routes; the `@connections`
//! management API driven by the real AWS SDK (boto3) with SigV4, also over https (on the
//! send-back listener, and on the public TLS listener where a handler that builds its
//! endpoint from `domainName` finds it); and broken `$connect` replies against the real
//! binary, with the log checked.
//!
//! Tests needing Python with boto3 (Debian's `python3-boto3`, installed by tests/run.sh)
//! or redis-server skip loudly when they are missing, and fail under
//! `SWITCHBOARD_REQUIRE_ALL`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, SystemTime};

use futures_util::SinkExt;
use gateway::config::{AwsCredential, Dialect, Target};
use serde_json::{Value, json};
use tests::gateway::{
    Client, TestGateway, expect_close, next_json, next_message, send_text, test_config,
};
use tests::process::{GatewayProcess, Process};
use tests::recorder::{Recorded, RecordingFunction};
use tests::redis::{RedisServer, Resp, require_redis};
use tests::scripted::Scripted;
use tokio::process::Command;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// The key pair the gateway accepts on the management API in these tests.
pub(crate) const ACCESS_KEY: &str = "AKIASWITCHBOARDTEST1";
pub(crate) const SECRET_KEY: &str = "switchboard/test+secret/0123456789abcdefghij";
/// Not the default (us-east-1), so a signature for the wrong region would show.
pub(crate) const REGION: &str = "eu-west-1";
pub(crate) const WAIT: Duration = Duration::from_secs(15);

// ------------------------------------------------------------------ function

/// Waits for the first event of `event_type` for connection `id` (any id if `None`).
async fn wait_event(rec: &RecordingFunction, event_type: &str, id: Option<&str>) -> Value {
    rec.wait_event(&format!("a {event_type} event"), WAIT, |e| {
        e["requestContext"]["eventType"] == event_type
            && id.is_none_or(|id| e["requestContext"]["connectionId"] == id)
    })
    .await
}

/// A Lambda proxy result with status 200 and no body.
fn ok_result() -> Scripted {
    Scripted::json(json!({"statusCode": 200}))
}

/// The aws dialect with the test key pair.
pub(crate) fn aws(c: &mut gateway::Config) {
    c.functions.dialect = Dialect::Aws;
    c.aws.region = REGION.to_owned();
    c.aws.credentials = vec![AwsCredential {
        access_key_id: ACCESS_KEY.to_owned(),
        secret_access_key: SECRET_KEY.to_owned(),
    }];
}

pub(crate) fn text(message: Option<Message>) -> String {
    match message {
        Some(Message::Text(t)) => t.as_str().to_owned(),
        other => panic!("expected a text message, got {other:?}"),
    }
}

// ------------------------------------------------------------------ python

/// The Python interpreter that has the AWS SDK (Debian's `python3-boto3`).
fn python_with_boto3() -> Option<PathBuf> {
    tests::python::find_python3(
        "import boto3",
        "python3 with boto3 (the AWS SDK; apt-get install python3-boto3)",
    )
}

/// A Python process with the environment a Lambda function gets (keys, region), nothing
/// from the machine's AWS configuration (its CA bundle included), and `extra_env` over all
/// of it.
fn python_command(python: &Path, extra_env: &[(&str, String)]) -> Command {
    let mut cmd = tests::python::command(python, "aws", &[]);
    cmd.env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .env("AWS_REGION", REGION)
        .env("AWS_DEFAULT_REGION", REGION)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null");
    for var in [
        "AWS_PROFILE",
        "AWS_SESSION_TOKEN",
        "AWS_ENDPOINT_URL",
        "AWS_CA_BUNDLE",
    ] {
        cmd.env_remove(var);
    }
    cmd.envs(extra_env.iter().map(|(k, v)| (k, v)));
    cmd
}

/// `runtime.py` serving handler modules; each at `http://addr/<module>`. What handlers
/// print (e.g. "Found stale connection") shows with the test's output.
struct Runtime {
    _process: Process,
    addr: String,
}

impl Runtime {
    async fn start(python: &Path, modules: &[&str], env: &[(&str, String)]) -> Runtime {
        let mut cmd = python_command(python, env);
        cmd.arg("runtime.py").args(modules);
        let process = Process::spawn_echoing_stdout(&mut cmd, "handlers");
        let line = process.output().first_line(Duration::from_secs(30)).await;
        let addr = line
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line from runtime.py: {line}"))
            .to_owned();
        Runtime {
            _process: process,
            addr,
        }
    }

    fn url(&self, module: &str) -> String {
        format!("http://{}/{module}", self.addr)
    }
}

/// Runs `manage.py` (the AWS SDK against the management API) and returns its JSON line.
async fn sdk(python: &Path, endpoint: &str, args: &[&str]) -> Value {
    sdk_env(python, endpoint, args, &[]).await
}

/// [`sdk`] with `env` added to the process's environment.
async fn sdk_env(python: &Path, endpoint: &str, args: &[&str], env: &[(&str, String)]) -> Value {
    let mut cmd = python_command(python, env);
    cmd.arg("manage.py")
        .arg(endpoint)
        .args(args)
        .stdin(Stdio::null());
    let output = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("manage.py finishes within 60 s")
        .expect("run manage.py");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "manage.py {args:?} failed: {}\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("manage.py printed no JSON ({e}): {stdout}"))
}

/// Asserts the SDK raised `exception` for a reply with `status`.
fn assert_sdk_error(result: &Value, exception: &str, status: u16) {
    assert_eq!(result["ok"], false, "{result}");
    assert_eq!(result["exception"], exception, "{result}");
    assert_eq!(result["code"], exception, "{result}");
    assert_eq!(result["status"], status, "{result}");
}

// ------------------------------------------------------------------ redis

pub(crate) fn members(redis: &RedisServer, key: &str) -> Vec<String> {
    match redis.command(&["SMEMBERS", key]) {
        Ok(Resp::Array(Some(items))) => {
            let mut ids: Vec<String> = items
                .into_iter()
                .filter_map(|r| match r {
                    Resp::Bulk(Some(b)) => Some(String::from_utf8_lossy(&b).into_owned()),
                    _ => None,
                })
                .collect();
            ids.sort();
            ids
        }
        other => panic!("SMEMBERS {key}: {other:?}"),
    }
}

pub(crate) async fn wait_members(
    redis: &RedisServer,
    key: &str,
    what: &str,
    want: impl Fn(&[String]) -> bool,
) {
    tests::wait::eventually(what, WAIT, || {
        let ok = want(&members(redis, key));
        async move { ok }
    })
    .await;
}

// ------------------------------------------------------------------ tests

/// The AWS sample chat (onconnect / ondisconnect / sendmessage / $default), unchanged but
/// for its table (a Redis set) and endpoint (an environment variable), behind the gateway.
#[tokio::test]
async fn chat_room_on_the_aws_sample_handlers() {
    let Some(python) = python_with_boto3() else {
        return;
    };
    let Some(redis) = require_redis() else {
        return;
    };
    let table = format!(
        "connections-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );

    // The handlers need the management endpoint and the gateway the handlers' URLs: reserve
    // the send-back port, start the handlers, then bind the gateway there (again on a new
    // port if another process took it meanwhile).
    let (gw, _runtime) = {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let sendback_port = tests::redis::free_port().unwrap();
            let endpoint = format!("http://127.0.0.1:{sendback_port}/prod");
            let runtime = Runtime::start(
                &python,
                &["onconnect", "ondisconnect", "sendmessage", "default"],
                &[
                    ("REDIS_URL", redis.url()),
                    ("TABLE_NAME", table.clone()),
                    ("APIGW_ENDPOINT", endpoint),
                ],
            )
            .await;
            let mut config = test_config();
            aws(&mut config);
            config.sendback.listen = SocketAddr::from(([127, 0, 0, 1], sendback_port));
            config.functions.register = Some(runtime.url("onconnect").into());
            config.functions.cleanup = Some(runtime.url("ondisconnect").into());
            config.functions.transport = Some(runtime.url("default").into());
            config
                .functions
                .routes
                .insert("sendmessage".into(), runtime.url("sendmessage").into());
            match gateway::Gateway::bind(config, gateway::Options::default()).await {
                Ok(gateway) => {
                    let store = gateway.store();
                    break (TestGateway::run(gateway, store), runtime);
                }
                Err(e) if attempt < 5 => eprintln!("retrying on another port: {e}"),
                Err(e) => panic!("gateway binds: {e}"),
            }
        }
    };

    // $connect stored each connection id before the upgrade completed.
    let mut a = gw.connect("/").await;
    let mut b = gw.connect("/").await;
    let mut c = gw.connect("/").await;
    assert_eq!(members(&redis, &table).len(), 3);

    // sendmessage posts to every connection in the table, through the SDK.
    send_text(&mut a, r#"{"action":"sendmessage","data":"hi all"}"#).await;
    for client in [&mut a, &mut b, &mut c] {
        assert_eq!(text(next_message(client).await), "hi all");
    }

    // A stale id (an AWS-style one, with `=`): the SDK raises GoneException for it and the
    // handler deletes it.
    let stale = "R0oXAdfD0kwCH6w=";
    redis.command(&["SADD", &table, stale]).unwrap();
    send_text(&mut b, r#"{"action":"sendmessage","data":"second"}"#).await;
    for client in [&mut a, &mut b, &mut c] {
        assert_eq!(text(next_message(client).await), "second");
    }
    wait_members(&redis, &table, "the stale id to be deleted", |ids| {
        !ids.iter().any(|id| id == stale)
    })
    .await;

    // $disconnect removes the id.
    c.close(None).await.unwrap();
    wait_members(&redis, &table, "two connections left", |ids| ids.len() == 2).await;
    send_text(&mut a, r#"{"action":"sendmessage","data":"third"}"#).await;
    for client in [&mut a, &mut b] {
        assert_eq!(text(next_message(client).await), "third");
    }

    // Anything else goes to $default, which answers with GetConnection's view of the sender.
    send_text(&mut a, "hello?").await;
    let reply = text(next_message(&mut a).await);
    assert!(reply.starts_with("Use the sendmessage route"), "{reply}");
    assert!(reply.contains("127.0.0.1"), "{reply}");

    a.close(None).await.unwrap();
    b.close(None).await.unwrap();
    wait_members(&redis, &table, "an empty table", |ids| ids.is_empty()).await;
    gw.shutdown().await;
}

/// `$request.body.action` picks the route; anything else goes to `$default`.
#[tokio::test]
async fn messages_reach_the_route_their_action_names() {
    let rec = RecordingFunction::start(|_, _| ok_result()).await;
    let urls = [
        rec.url("connect"),
        rec.url("default"),
        rec.url("disconnect"),
        rec.url("sendmessage"),
        rec.url("join"),
    ];
    let gw = TestGateway::start(move |c| {
        aws(c);
        let [connect, default, disconnect, send, join] = urls;
        c.functions.register = Some(connect.into());
        c.functions.transport = Some(default.into());
        c.functions.cleanup = Some(disconnect.into());
        c.functions.routes.insert("sendmessage".into(), send.into());
        c.functions.routes.insert("join".into(), join.into());
    })
    .await;
    let mut client = gw.connect("/").await;
    let sent = [
        r#"{"action":"sendmessage","data":"hi"}"#,
        r#"{"action":"join","room":"r1"}"#,
        r#"{"action":"nosuchroute"}"#,
        "not json at all",
        r#"{"action":5}"#,
    ];
    for m in sent {
        send_text(&mut client, m).await;
    }
    client.send(Message::binary(vec![0u8, 1, 2])).await.unwrap();
    let is_message = |e: &Value| e["requestContext"]["eventType"] == "MESSAGE";
    let events = rec
        .wait_until("six MESSAGE events", WAIT, |events| {
            events.iter().filter(|r| is_message(&r.event)).count() == 6
        })
        .await;
    let got: Vec<(String, String, String, bool)> = events
        .iter()
        .filter(|r| is_message(&r.event))
        .map(|Recorded { path, event: e }| {
            (
                path.clone(),
                e["requestContext"]["routeKey"].as_str().unwrap().to_owned(),
                e["body"].as_str().unwrap().to_owned(),
                e["isBase64Encoded"].as_bool().unwrap(),
            )
        })
        .collect();
    let want = |path: &str, route: &str, body: &str, b64: bool| {
        (path.to_owned(), route.to_owned(), body.to_owned(), b64)
    };
    assert_eq!(
        got,
        vec![
            want("/sendmessage", "sendmessage", sent[0], false),
            want("/join", "join", sent[1], false),
            want("/default", "$default", sent[2], false),
            want("/default", "$default", sent[3], false),
            want("/default", "$default", sent[4], false),
            want("/default", "$default", "AAEC", true),
        ]
    );
    for e in events.iter().map(|r| &r.event).filter(|e| is_message(e)) {
        let rc = &e["requestContext"];
        assert!(rc["messageId"].is_string(), "{e}");
        assert_eq!(rc["messageDirection"], "IN");
        assert_eq!(rc["stage"], "prod");
    }
    // A close frame without a status: AWS's 1005.
    client.close(None).await.unwrap();
    let id = events[0].event["requestContext"]["connectionId"]
        .as_str()
        .unwrap()
        .to_owned();
    let disconnect = wait_event(&rec, "DISCONNECT", Some(&id)).await;
    assert_eq!(disconnect["requestContext"]["routeKey"], "$disconnect");
    assert_eq!(disconnect["requestContext"]["disconnectStatusCode"], 1005);
    assert!(
        rec.recorded()
            .iter()
            .any(|r| r.path == "/disconnect" && r.event == disconnect)
    );
    gw.shutdown().await;
}

/// `$connect` decides with `statusCode`, picks the subprotocol with its headers and hands
/// `context` to later events as `requestContext.authorizer`; a two-way route's body goes
/// back; a failing route tells the client and keeps it connected.
#[tokio::test]
async fn connect_replies_routes_and_failures() {
    let rec = RecordingFunction::start(|path, e| {
        let rc = &e["requestContext"];
        match (path, rc["eventType"].as_str().unwrap_or_default()) {
            ("/connect", _) => match e["queryStringParameters"]["token"].as_str() {
                Some("good") => Scripted::json(json!({
                    "statusCode": 200,
                    "headers": {"Sec-WebSocket-Protocol": "v2"},
                    "context": {"principalId": "user-1", "role": "admin"},
                })),
                _ => Scripted::json(json!({"statusCode": 401, "body": "bad token"})),
            },
            ("/echo", _) => {
                let body: Value = serde_json::from_str(e["body"].as_str().unwrap()).unwrap();
                Scripted::json(
                    json!({"statusCode": 200, "body": format!("echo: {}", body["data"])}),
                )
            }
            ("/quiet", _) => {
                Scripted::json(json!({"statusCode": 200, "body": "not for the client"}))
            }
            ("/fail", _) => {
                Scripted::json(json!({"errorMessage": "boom", "errorType": "Exception"}))
                    .with_status(500)
            }
            _ => ok_result(),
        }
    })
    .await;
    let urls = [
        rec.url("connect"),
        rec.url("disconnect"),
        rec.url("echo"),
        rec.url("quiet"),
        rec.url("fail"),
    ];
    let gw = TestGateway::start(move |c| {
        aws(c);
        let [connect, disconnect, echo, quiet, fail] = urls;
        c.functions.register = Some(connect.into());
        c.functions.cleanup = Some(disconnect.into());
        c.functions.routes.insert(
            "echo".into(),
            Target::Full {
                url: echo,
                dialect: None,
                two_way: Some(true),
            },
        );
        c.functions.routes.insert("quiet".into(), quiet.into());
        c.functions.routes.insert("fail".into(), fail.into());
    })
    .await;

    // A non-2xx statusCode refuses the upgrade with that status.
    assert_eq!(gw.try_connect("/?token=bad").await.err(), Some(401));

    let mut request = gw.ws_url("/chat?token=good").into_client_request().unwrap();
    let headers = request.headers_mut();
    headers.insert("sec-websocket-protocol", "v1, v2".parse().unwrap());
    headers.insert("user-agent", "aws-dialect-test/1".parse().unwrap());
    let (mut client, response) = tokio_tungstenite::connect_async(request).await.unwrap();
    assert_eq!(response.headers()["sec-websocket-protocol"], "v2");

    let connect = rec
        .wait_event("the accepted CONNECT", WAIT, |e| {
            e["queryStringParameters"]["token"] == "good"
        })
        .await;
    let rc = &connect["requestContext"];
    assert_eq!(rc["routeKey"], "$connect");
    assert_eq!(rc["eventType"], "CONNECT");
    assert_eq!(rc["messageId"], Value::Null);
    assert_eq!(rc["identity"]["sourceIp"], "127.0.0.1");
    assert_eq!(rc["identity"]["userAgent"], "aws-dialect-test/1");
    // The Host's port is kept: it is not the scheme's default.
    assert_eq!(rc["domainName"], gw.public.to_string());
    assert!(rc["connectedAt"].is_u64() && rc["requestTimeEpoch"].is_u64());
    assert_eq!(connect["headers"]["Sec-WebSocket-Protocol"], "v1, v2");
    assert_eq!(connect["headers"]["User-Agent"], "aws-dialect-test/1");
    assert_eq!(
        connect["multiValueQueryStringParameters"]["token"],
        json!(["good"])
    );
    assert!(rc.get("authorizer").is_none());
    let id = rc["connectionId"].as_str().unwrap().to_owned();

    // A one-way route's body is not sent; a two-way route's is, in order after it.
    send_text(&mut client, r#"{"action":"quiet"}"#).await;
    send_text(&mut client, r#"{"action":"echo","data":"one"}"#).await;
    assert_eq!(text(next_message(&mut client).await), r#"echo: "one""#);

    // A failing integration: AWS's message to the client, and the connection stays.
    send_text(&mut client, r#"{"action":"fail"}"#).await;
    let error = next_json(&mut client).await;
    assert_eq!(error["message"], "Internal server error");
    assert_eq!(error["connectionId"], id.as_str());
    assert!(error["requestId"].is_string());
    send_text(&mut client, r#"{"action":"echo","data":"two"}"#).await;
    assert_eq!(text(next_message(&mut client).await), r#"echo: "two""#);

    client
        .close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "bye".into(),
        }))
        .await
        .unwrap();
    let disconnect = wait_event(&rec, "DISCONNECT", Some(&id)).await;
    let authorizer = json!({"principalId": "user-1", "role": "admin"});
    assert_eq!(disconnect["requestContext"]["authorizer"], authorizer);
    assert_eq!(disconnect["requestContext"]["disconnectStatusCode"], 1000);
    assert_eq!(disconnect["requestContext"]["disconnectReason"], "bye");
    let events = rec.events();
    let messages: Vec<&Value> = events
        .iter()
        .filter(|e| e["requestContext"]["eventType"] == "MESSAGE")
        .collect();
    assert!(messages.len() >= 4, "{messages:#?}");
    for m in messages {
        assert_eq!(m["requestContext"]["authorizer"], authorizer, "{m}");
    }
    gw.shutdown().await;
}

/// The management API through the real AWS SDK: post (text, binary, the size limit), get,
/// delete, GoneException, LimitExceededException, and ForbiddenException for bad or
/// missing signatures.
#[tokio::test]
async fn management_api_through_the_aws_sdk() {
    let Some(python) = python_with_boto3() else {
        return;
    };
    let rec = RecordingFunction::start(|_, _| ok_result()).await;
    let (connect, disconnect) = (rec.url("connect"), rec.url("disconnect"));
    let gw = TestGateway::start(move |c| {
        aws(c);
        c.functions.register = Some(connect.into());
        c.functions.cleanup = Some(disconnect.into());
        c.limits.outbound_queue_messages = 4;
        c.limits.outbound_queue_bytes = 256 * 1024;
    })
    .await;
    let endpoint = format!("{}/prod", gw.sendback_url());
    let started = SystemTime::now() - Duration::from_secs(1);

    let mut request = gw.ws_url("/").into_client_request().unwrap();
    request
        .headers_mut()
        .insert("user-agent", "aws-sdk-test-client/1".parse().unwrap());
    let (mut client, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    let id = wait_event(&rec, "CONNECT", None).await["requestContext"]["connectionId"]
        .as_str()
        .unwrap()
        .to_owned();

    // PostToConnection: UTF-8 as a text frame, other bytes as a binary frame.
    let r = sdk(&python, &endpoint, &["post", &id, "--data", "hello"]).await;
    assert_eq!(
        (r["ok"].as_bool(), r["status"].as_u64()),
        (Some(true), Some(200)),
        "{r}"
    );
    assert!(r["requestId"].is_string(), "{r}");
    assert_eq!(text(next_message(&mut client).await), "hello");
    let r = sdk(&python, &endpoint, &["post", &id, "--hex", "fffe00"]).await;
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(
        next_message(&mut client).await,
        Some(Message::binary(vec![0xffu8, 0xfe, 0x00]))
    );
    // Exactly the limit passes; one byte more is PayloadTooLargeException.
    let r = sdk(&python, &endpoint, &["post", &id, "--size", "131072"]).await;
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(text(next_message(&mut client).await).len(), 131_072);
    let r = sdk(&python, &endpoint, &["post", &id, "--size", "131073"]).await;
    assert_sdk_error(&r, "PayloadTooLargeException", 413);

    // GetConnection: ISO 8601 times (parsed by the SDK) and the client's identity.
    send_text(&mut client, "ping").await; // activity, answered by the gateway itself
    assert_eq!(text(next_message(&mut client).await), "pong");
    let r = sdk(&python, &endpoint, &["get", &id]).await;
    assert_eq!(
        (r["ok"].as_bool(), r["status"].as_u64()),
        (Some(true), Some(200)),
        "{r}"
    );
    assert_eq!(
        r["identity"],
        json!({"SourceIp": "127.0.0.1", "UserAgent": "aws-sdk-test-client/1"})
    );
    let time = |field: &str| {
        let iso = r[field].as_str().unwrap().replace("+00:00", "Z");
        humantime::parse_rfc3339(&iso).unwrap_or_else(|e| panic!("{field} {iso}: {e}"))
    };
    let (connected_at, last_active_at) = (time("connectedAt"), time("lastActiveAt"));
    assert!(
        started <= connected_at && connected_at <= SystemTime::now(),
        "{r}"
    );
    assert!(connected_at <= last_active_at, "{r}");

    // Signatures: a wrong secret, an unknown key, none at all.
    let r = sdk(
        &python,
        &endpoint,
        &[
            "post",
            &id,
            "--data",
            "x",
            "--access-key",
            ACCESS_KEY,
            "--secret",
            "wrong-secret-0123456789",
        ],
    )
    .await;
    assert_sdk_error(&r, "ForbiddenException", 403);
    assert!(
        r["message"]
            .as_str()
            .unwrap()
            .contains("signature we calculated does not match"),
        "{r}"
    );
    let r = sdk(
        &python,
        &endpoint,
        &[
            "get",
            &id,
            "--access-key",
            "AKIAUNKNOWN",
            "--secret",
            SECRET_KEY,
        ],
    )
    .await;
    assert_sdk_error(&r, "ForbiddenException", 403);
    let r = sdk(&python, &endpoint, &["delete", &id, "--unsigned"]).await;
    assert_sdk_error(&r, "ForbiddenException", 403);
    assert_eq!(r["message"], "Missing Authentication Token", "{r}");
    // What the SDK read it from: the x-amzn-ErrorType header and a {"message"} body.
    let raw = reqwest::Client::new()
        .post(format!("{endpoint}/@connections/{id}"))
        .body("unsigned")
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), 403);
    assert_eq!(raw.headers()["x-amzn-errortype"], "ForbiddenException");
    assert!(raw.headers().contains_key("x-amzn-requestid"));
    let body: Value = raw.json().await.unwrap();
    assert_eq!(body, json!({"message": "Missing Authentication Token"}));

    // A client that does not read: LimitExceededException once its queue is full; it stays.
    let _slow = gw.connect("/").await;
    let slow_id = rec
        .wait_until("the second CONNECT", WAIT, |events| {
            events
                .iter()
                .filter(|r| r.event["requestContext"]["eventType"] == "CONNECT")
                .count()
                == 2
        })
        .await
        .into_iter()
        .map(|r| r.event)
        .filter(|e| e["requestContext"]["eventType"] == "CONNECT")
        .map(|e| {
            e["requestContext"]["connectionId"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .find(|c| c != &id)
        .unwrap();
    let r = sdk(
        &python,
        &endpoint,
        &["flood", &slow_id, "--size", "65536", "--max", "2000"],
    )
    .await;
    assert_sdk_error(&r, "LimitExceededException", 429);
    assert!(r["sent"].as_u64().unwrap() > 0, "{r}");
    let r = sdk(&python, &endpoint, &["get", &slow_id]).await;
    assert_eq!(r["ok"], true, "{r}");

    // DeleteConnection: 204, the client sees the close, $disconnect follows.
    let r = sdk(&python, &endpoint, &["delete", &id]).await;
    assert_eq!(
        (r["ok"].as_bool(), r["status"].as_u64()),
        (Some(true), Some(204)),
        "{r}"
    );
    let frame = expect_close(&mut client).await.expect("a close frame");
    assert_eq!(u16::from(frame.code), 1000);
    let gone = wait_event(&rec, "DISCONNECT", Some(&id)).await;
    assert_eq!(gone["requestContext"]["disconnectStatusCode"], 1000);

    // Gone: the deleted connection, an id that never existed, an AWS-style id (its `=`
    // percent-encoded by the SDK, so also a check of how the path is signed).
    for op in ["post", "get", "delete"] {
        let mut args = vec![op, id.as_str()];
        if op == "post" {
            args.extend(["--data", "late"]);
        }
        let r = sdk(&python, &endpoint, &args).await;
        assert_sdk_error(&r, "GoneException", 410);
    }
    let never = uuid::Uuid::new_v4().to_string();
    for other in [never.as_str(), "R0oXAdfD0kwCH6w="] {
        let r = sdk(&python, &endpoint, &["post", other, "--data", "x"]).await;
        assert_sdk_error(&r, "GoneException", 410);
    }
    gw.shutdown().await;
}

/// The management API on a node that does not hold the connection: the AWS SDK's signed
/// requests are relayed to the node that does, where the signature still verifies, and its
/// answers (error types included) come back as they were.
#[tokio::test]
async fn management_api_reaches_a_connection_on_another_node() {
    let Some(python) = python_with_boto3() else {
        return;
    };
    let rec = RecordingFunction::start(|_, _| ok_result()).await;
    let store: store::SharedStore = std::sync::Arc::new(store::MemoryStore::new());
    let node = |name: &'static str| {
        let (connect, disconnect) = (rec.url("connect"), rec.url("disconnect"));
        let options = gateway::Options {
            store: Some(store.clone()),
            ..gateway::Options::default()
        };
        TestGateway::start_with(
            move |c| {
                aws(c);
                c.node_id = name.to_owned();
                c.functions.register = Some(connect.into());
                c.functions.cleanup = Some(disconnect.into());
                c.limits.outbound_queue_messages = 4;
                c.limits.outbound_queue_bytes = 256 * 1024;
            },
            options,
        )
    };
    let (a, b) = (node("node-a").await, node("node-b").await);
    let mut client = a.connect("/").await;
    let id = wait_event(&rec, "CONNECT", None).await["requestContext"]["connectionId"]
        .as_str()
        .unwrap()
        .to_owned();
    let via_b = format!("{}/prod", b.sendback_url());

    let r = sdk(&python, &via_b, &["post", &id, "--data", "relayed"]).await;
    assert_eq!(
        (r["ok"].as_bool(), r["status"].as_u64()),
        (Some(true), Some(200)),
        "{r}"
    );
    assert_eq!(text(next_message(&mut client).await), "relayed");
    let r = sdk(&python, &via_b, &["get", &id]).await;
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["identity"]["SourceIp"], "127.0.0.1", "{r}");
    // A wrong secret is refused by the node that received it, before any relay.
    let r = sdk(
        &python,
        &via_b,
        &[
            "post",
            &id,
            "--data",
            "x",
            "--access-key",
            ACCESS_KEY,
            "--secret",
            "wrong/secret/0123456789abcdefghij",
        ],
    )
    .await;
    assert_sdk_error(&r, "ForbiddenException", 403);
    // An error type decided on the holding node comes back: its client is not reading.
    let r = sdk(
        &python,
        &via_b,
        &["flood", &id, "--size", "65536", "--max", "2000"],
    )
    .await;
    assert_sdk_error(&r, "LimitExceededException", 429);
    let r = sdk(&python, &via_b, &["delete", &id]).await;
    assert_eq!(r["status"], 204, "{r}");
    let frame = expect_close(&mut client).await.expect("a close frame");
    assert_eq!(u16::from(frame.code), 1000);
    wait_event(&rec, "DISCONNECT", Some(&id)).await;
    let r = sdk(&python, &via_b, &["post", &id, "--data", "late"]).await;
    assert_sdk_error(&r, "GoneException", 410);
    a.shutdown().await;
    b.shutdown().await;
}

/// Broken `$connect` replies, against the real binary: each refuses that upgrade with 502
/// and says why in the log; the gateway keeps serving everyone else.
#[tokio::test]
async fn broken_connect_replies_are_502_with_a_clear_log() {
    let rec = RecordingFunction::start(|_, e| {
        match e["queryStringParameters"]["case"]
            .as_str()
            .unwrap_or("fine")
        {
            "garbage" => Scripted::json_text("this is not json"),
            "shape" => Scripted::json_text(r#"{"statusCode":"x"}"#),
            "array" => Scripted::json_text("[200]"),
            "huge" => Scripted::json(json!({"statusCode": 200, "body": "x".repeat(100 * 1024)})),
            _ => ok_result(),
        }
    })
    .await;
    let config = format!(
        "[public]\nlisten = \"127.0.0.1:0\"\n[sendback]\nlisten = \"127.0.0.1:0\"\n\
         token = \"{}\"\n[functions]\ndialect = \"aws\"\nregister = \"{}\"\n\
         max_reply_bytes = 65536\n",
        tests::gateway::TOKEN,
        rec.url("connect")
    );
    let gateway = GatewayProcess::start(&crate::switchboard_bin(), &config).await;
    let public = gateway.public();
    let try_connect = |case: &str| {
        let url = format!("ws://{public}/?case={case}");
        async move {
            match tokio_tungstenite::connect_async(url).await {
                Ok((client, _)) => Ok(client),
                Err(tokio_tungstenite::tungstenite::Error::Http(r)) => Err(r.status().as_u16()),
                Err(e) => panic!("connect failed without an HTTP status: {e}"),
            }
        }
    };

    let mut bystander: Client = try_connect("fine").await.expect("a fine connect");
    for (case, why) in [
        ("garbage", "is not a Lambda proxy result"),
        ("shape", r#"statusCode "x" is not an HTTP status"#),
        ("array", "is not a Lambda proxy result"),
        ("huge", "function reply larger than 65536 bytes"),
    ] {
        assert_eq!(try_connect(case).await.err(), Some(502), "case {case}");
        let line = gateway.log().line_with(&[why], WAIT).await;
        assert!(line.contains("register function failed"), "{line}");
    }
    // Everyone else is still served.
    send_text(&mut bystander, "ping").await;
    assert_eq!(text(next_message(&mut bystander).await), "pong");
    assert!(try_connect("fine").await.is_ok());

    gateway.terminate().await;
}

// ------------------------------------------------------------------ https

/// boto3 reaches the management API on the send-back listener over TLS, verifying its
/// certificate against the test CA given as `verify=` or in `AWS_CA_BUNDLE`; without the
/// CA it refuses the endpoint.
#[tokio::test]
async fn management_api_over_https_on_the_sendback_listener() {
    let Some(python) = python_with_boto3() else {
        return;
    };
    let dir = tests::process::TempDir::new();
    let ca = crate::tls::Ca::new("CA");
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let (cert, key) = ca.leaf("sendback").write(dir.path(), "sb");
    let rec = RecordingFunction::start(|_, _| ok_result()).await;
    let connect = rec.url("connect");
    let gw = TestGateway::start(move |c| {
        aws(c);
        c.functions.register = Some(connect.into());
        c.sendback.tls = Some(gateway::config::TlsFiles {
            cert_file: cert,
            key_file: key,
        });
    })
    .await;
    let mut client = gw.connect("/").await;
    let id = wait_event(&rec, "CONNECT", None).await["requestContext"]["connectionId"]
        .as_str()
        .unwrap()
        .to_owned();
    let endpoint = format!("https://127.0.0.1:{}/prod", gw.sendback.port());
    let verify = ca_file.to_str().unwrap();
    let r = sdk(
        &python,
        &endpoint,
        &["post", &id, "--data", "over https", "--verify", verify],
    )
    .await;
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(text(next_message(&mut client).await), "over https");
    let r = sdk(&python, &endpoint, &["get", &id, "--verify", verify]).await;
    assert_eq!(r["identity"]["SourceIp"], "127.0.0.1", "{r}");
    // The same CA from the environment, as a handler deployed unchanged is given it.
    let r = sdk_env(
        &python,
        &endpoint,
        &["post", &id, "--data", "trusted through AWS_CA_BUNDLE"],
        &[("AWS_CA_BUNDLE", verify.to_owned())],
    )
    .await;
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(
        text(next_message(&mut client).await),
        "trusted through AWS_CA_BUNDLE"
    );

    // Without the CA: boto3 will not talk to it (the system's roots do not know it).
    let mut cmd = python_command(&python, &[]);
    cmd.arg("manage.py")
        .args([endpoint.as_str(), "get", &id])
        .stdin(Stdio::null());
    let output = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .unwrap()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && stderr.contains("CERTIFICATE_VERIFY_FAILED"),
        "{stderr}"
    );
    gw.shutdown().await;
}

/// The AWS sample's `$default` handler builds its endpoint as
/// `https://{domainName}/{stage}` from the event. With the management API on the public
/// TLS listener, that URL (the Host's port kept in `domainName`) reaches it: the handler's
/// GetConnection and PostToConnection work and the client gets the handler's answer.
#[tokio::test]
async fn a_handler_building_its_endpoint_from_domain_name_reaches_the_public_tls_listener() {
    let Some(python) = python_with_boto3() else {
        return;
    };
    let dir = tests::process::TempDir::new();
    let ca = crate::tls::Ca::new("CA");
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let (cert, key) = ca.leaf("gateway").write(dir.path(), "gw");
    // No APIGW_ENDPOINT: the handler takes the endpoint from the event, as on AWS; boto3
    // trusts the test CA through AWS_CA_BUNDLE (what `verify=` reads from the environment).
    let runtime = Runtime::start(
        &python,
        &["default"],
        &[("AWS_CA_BUNDLE", ca_file.to_str().unwrap().to_owned())],
    )
    .await;
    let default = runtime.url("default");
    let gw = TestGateway::start(move |c| {
        aws(c);
        c.functions.transport = Some(default.into());
        c.aws.management_api_on_public = true;
        c.public.tls = Some(gateway::config::PublicTlsConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            files: gateway::config::TlsFiles {
                cert_file: cert,
                key_file: key,
            },
        });
    })
    .await;
    let tls = gw.public_tls.unwrap();
    let (mut client, _) = tests::tls::connect_wss(tls, "/", &ca.pem()).await.unwrap();
    send_text(&mut client, "hello").await;
    let answer = text(next_message(&mut client).await);
    assert!(
        answer.starts_with("Use the sendmessage route") && answer.contains("127.0.0.1"),
        "{answer}"
    );

    // The same route answers signed requests only, and on the plain listener too.
    let endpoint = format!("https://localhost:{}/prod", tls.port());
    let r = sdk(
        &python,
        &endpoint,
        &[
            "get",
            "nope",
            "--unsigned",
            "--verify",
            ca_file.to_str().unwrap(),
        ],
    )
    .await;
    assert_sdk_error(&r, "ForbiddenException", 403);
    // A body over limits.max_message_bytes is refused from its Content-Length.
    let verify = ca_file.to_str().unwrap();
    let r = sdk(
        &python,
        &endpoint,
        &["post", "nope", "--size", "131073", "--verify", verify],
    )
    .await;
    assert_sdk_error(&r, "PayloadTooLargeException", 413);
    let r = sdk(
        &python,
        &format!("http://{}/prod", gw.public),
        &["get", "nope"],
    )
    .await;
    assert_sdk_error(&r, "GoneException", 410);
    gw.shutdown().await;
}
