//! AWS Lambda handlers written in Node.js, served by `tests/handlers/aws-node/runtime.js`:
//! AWS's simple WebSocket chat sample (`simple-chat/`: onconnect, ondisconnect,
//! sendmessage on the AWS SDK v3) behind the real gateway in the `aws` dialect, its
//! connection table in a real Redis and its PostToConnection calls signed by the SDK and
//! verified by the gateway, also over TLS with the endpoint built from the event as on AWS;
//! and the adapter itself: CommonJS and ES modules, async and callback handlers, the Lambda
//! context, and handlers that throw.
//!
//! Tests skip loudly without `node` (or, for the sample, without its npm packages, which
//! tests/run.sh installs with `npm ci`, or redis-server), and fail under
//! `SWITCHBOARD_REQUIRE_ALL`.

use std::net::SocketAddr;
use std::path::Path;

use gateway::config::Target;
use serde_json::{Value, json};
use tests::gateway::{TestGateway, next_json, next_message, send_text, test_config};
use tests::node::{LambdaRuntime, aws_node_dir, find_node, require_packages};
use tests::process::TempDir;
use tests::redis::require_redis;
use tests::tls::connect_wss;

use crate::dialect_aws::{ACCESS_KEY, REGION, SECRET_KEY, WAIT, aws, members, text, wait_members};

/// A stale connection id in the table, shaped like AWS's (its `=` must survive signing).
const STALE_ID: &str = "R0oXAdfD0kwCH6w=";

/// The environment Lambda gives a function: region and a key pair, here `secret`.
fn lambda_env(secret: &str) -> Vec<(&'static str, String)> {
    vec![
        ("AWS_REGION", REGION.to_owned()),
        ("AWS_ACCESS_KEY_ID", ACCESS_KEY.to_owned()),
        ("AWS_SECRET_ACCESS_KEY", secret.to_owned()),
    ]
}

/// Writes `files` (name, source) into `dir`.
fn write_files(dir: &Path, files: &[(&str, &str)]) {
    for (name, source) in files {
        std::fs::write(dir.join(name), source).unwrap();
    }
}

/// POSTs `event` to `url`: the reply's status and JSON body.
async fn post_event(url: &str, event: &Value) -> (u16, Value) {
    let reply = reqwest::Client::new()
        .post(url)
        .json(event)
        .send()
        .await
        .unwrap();
    let status = reply.status().as_u16();
    (status, reply.json().await.unwrap())
}

/// The sender's view of a failed integration: AWS's message, for this connection.
async fn expect_internal_error<S>(client: &mut tokio_tungstenite::WebSocketStream<S>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let error = next_json(client).await;
    assert_eq!(error["message"], "Internal server error", "{error}");
}

/// AWS's sample chat, unchanged but for its table (a Redis set) and its endpoint (an
/// environment variable): both clients get what one sends; a stale id is dropped on the
/// SDK's GoneException; a key the gateway does not know reaches nobody; each $disconnect
/// removes its id from the set.
#[tokio::test]
async fn aws_simple_chat_sample_on_node() {
    let Some(node) = find_node() else { return };
    let sample = aws_node_dir().join("simple-chat");
    if !require_packages(
        &sample,
        &["redis", "@aws-sdk/client-apigatewaymanagementapi"],
    ) {
        return;
    }
    let Some(redis) = require_redis() else { return };
    let table = format!(
        "connections-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );

    // The handlers need the management endpoint and the gateway the handlers' URLs: reserve
    // the send-back port, start the handlers, then bind the gateway there (again on a new
    // port if another process took it meanwhile). `forged` serves the same sendmessage
    // signing with a secret the gateway does not accept.
    let (gw, runtime, _forged) = {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let sendback_port = tests::redis::free_port().unwrap();
            let endpoint = format!("http://127.0.0.1:{sendback_port}/prod");
            let common = [
                ("REDIS_URL", redis.url()),
                ("TABLE_NAME", table.clone()),
                ("APIGW_ENDPOINT", endpoint),
            ];
            let mut env = lambda_env(SECRET_KEY);
            env.extend(common.clone());
            let runtime = LambdaRuntime::start(
                &node,
                "simple-chat",
                &["onconnect", "ondisconnect", "sendmessage"],
                &[],
                &env,
            )
            .await;
            let mut env = lambda_env("not-the-secret-the-gateway-knows");
            env.extend(common);
            let forged = LambdaRuntime::start(&node, "forged", &["sendmessage"], &[], &env).await;

            let mut config = test_config();
            aws(&mut config);
            config.sendback.listen = SocketAddr::from(([127, 0, 0, 1], sendback_port));
            config.functions.register = Some(runtime.url("onconnect").into());
            config.functions.cleanup = Some(runtime.url("ondisconnect").into());
            let routes = &mut config.functions.routes;
            routes.insert("sendmessage".into(), runtime.url("sendmessage").into());
            routes.insert("forged".into(), forged.url("sendmessage").into());
            assert!(!config.sendback.insecure_no_auth && !config.aws.credentials.is_empty());
            match gateway::Gateway::bind(config, gateway::Options::default()).await {
                Ok(gateway) => {
                    let store = gateway.store();
                    break (TestGateway::run(gateway, store), runtime, forged);
                }
                Err(e) if attempt < 5 => eprintln!("retrying on another port: {e}"),
                Err(e) => panic!("gateway binds: {e}"),
            }
        }
    };

    // onconnect stored each connection id before the upgrade completed.
    let mut a = gw.connect("/").await;
    let a_id = members(&redis, &table).pop().expect("a's id in the table");
    let mut b = gw.connect("/").await;
    let ids = members(&redis, &table);
    assert_eq!(ids.len(), 2, "{ids:?}");
    let b_id = ids.into_iter().find(|id| *id != a_id).unwrap();

    // sendmessage posts to every connection in the table through the SDK.
    send_text(&mut a, r#"{"action":"sendmessage","data":"hello"}"#).await;
    for client in [&mut a, &mut b] {
        assert_eq!(text(next_message(client).await), "hello");
    }

    // A stale id: the SDK gets 410 (GoneException) for it and the handler deletes it.
    redis.command(&["SADD", &table, STALE_ID]).unwrap();
    send_text(&mut b, r#"{"action":"sendmessage","data":"second"}"#).await;
    for client in [&mut a, &mut b] {
        assert_eq!(text(next_message(client).await), "second");
    }
    wait_members(&redis, &table, "the stale id to be deleted", |ids| {
        !ids.iter().any(|id| id == STALE_ID)
    })
    .await;
    runtime
        .output()
        .line_with(&["Found stale connection, deleting", STALE_ID], WAIT)
        .await;

    // Signed with a key pair the gateway does not accept: every post is refused (403), the
    // handler fails, the sender is told, and nobody receives the message.
    send_text(&mut a, r#"{"action":"forged","data":"forged"}"#).await;
    expect_internal_error(&mut a).await;
    send_text(&mut a, r#"{"action":"sendmessage","data":"after"}"#).await;
    for client in [&mut a, &mut b] {
        assert_eq!(text(next_message(client).await), "after");
    }

    // ondisconnect removes exactly the id of the client that left.
    a.close(None).await.unwrap();
    wait_members(&redis, &table, "only b's id left", |ids| {
        ids == [b_id.clone()]
    })
    .await;
    send_text(&mut b, r#"{"action":"sendmessage","data":"alone"}"#).await;
    assert_eq!(text(next_message(&mut b).await), "alone");

    b.close(None).await.unwrap();
    wait_members(&redis, &table, "an empty table", |ids| ids.is_empty()).await;
    gw.shutdown().await;
    runtime.terminate().await;
}

/// AWS's sample chat against a gateway serving `wss://` (`[public.tls]`, a certificate
/// from a private CA) with the management API on its public listeners: `APIGW_ENDPOINT` is
/// not set, so `sendmessage` builds `https://${domainName}/${stage}` from the event exactly
/// as on AWS, and the only trust setting is `NODE_EXTRA_CA_CERTS` naming the CA. Both wss
/// clients get what one sends. The same handler without the CA cannot post: the sender is
/// told, and nobody receives the message.
#[tokio::test]
async fn aws_simple_chat_sample_on_node_over_tls_with_the_endpoint_from_the_event() {
    let Some(node) = find_node() else { return };
    let sample = aws_node_dir().join("simple-chat");
    if !require_packages(
        &sample,
        &["redis", "@aws-sdk/client-apigatewaymanagementapi"],
    ) {
        return;
    }
    let Some(redis) = require_redis() else { return };
    let table = format!(
        "connections-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let dir = TempDir::new();
    let ca = crate::tls::Ca::new("Switchboard AWS sample CA");
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let (cert, key) = ca.leaf("gateway").write(dir.path(), "gw");

    // No APIGW_ENDPOINT in either environment; `untrusting` lacks the CA.
    let common = [("REDIS_URL", redis.url()), ("TABLE_NAME", table.clone())];
    let mut env = lambda_env(SECRET_KEY);
    env.extend(common.clone());
    let mut trusting = env.clone();
    trusting.push(("NODE_EXTRA_CA_CERTS", ca_file.display().to_string()));
    let runtime = LambdaRuntime::start(
        &node,
        "simple-chat",
        &["onconnect", "ondisconnect", "sendmessage"],
        &[],
        &trusting,
    )
    .await;
    let untrusting = LambdaRuntime::start(&node, "untrusting", &["sendmessage"], &[], &env).await;
    let urls = [
        runtime.url("onconnect"),
        runtime.url("ondisconnect"),
        runtime.url("sendmessage"),
        untrusting.url("sendmessage"),
    ];
    let gw = TestGateway::start(move |c| {
        aws(c);
        let [connect, disconnect, sendmessage, untrusted] = urls;
        c.functions.register = Some(connect.into());
        c.functions.cleanup = Some(disconnect.into());
        c.functions
            .routes
            .insert("sendmessage".into(), sendmessage.into());
        c.functions
            .routes
            .insert("untrusting".into(), untrusted.into());
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
    let tls = gw.public_tls.expect("a TLS listener");

    // Clients of wss://localhost:<port>/, checking the certificate against the CA: each
    // event's domainName is `localhost:<port>`, the sample's endpoint
    // https://localhost:<port>/prod.
    let (mut a, _) = connect_wss(tls, "/", &ca.pem()).await.expect("a over wss");
    let (mut b, _) = connect_wss(tls, "/", &ca.pem()).await.expect("b over wss");
    let ids = members(&redis, &table);
    assert_eq!(ids.len(), 2, "{ids:?}");

    send_text(&mut a, r#"{"action":"sendmessage","data":"hello"}"#).await;
    for client in [&mut a, &mut b] {
        assert_eq!(text(next_message(client).await), "hello");
    }

    // Without NODE_EXTRA_CA_CERTS the SDK refuses the gateway's certificate.
    send_text(&mut a, r#"{"action":"untrusting","data":"unseen"}"#).await;
    expect_internal_error(&mut a).await;
    send_text(&mut b, r#"{"action":"sendmessage","data":"after"}"#).await;
    for client in [&mut a, &mut b] {
        assert_eq!(text(next_message(client).await), "after");
    }

    a.close(None).await.unwrap();
    b.close(None).await.unwrap();
    wait_members(&redis, &table, "an empty table", |ids| ids.is_empty()).await;
    gw.shutdown().await;
    runtime.terminate().await;
    untrusting.terminate().await;
}

/// What each style of handler answers: its style, and what the Lambda context told it.
fn reply_source(style: &str) -> String {
    format!(
        "{{ statusCode: 200, body: JSON.stringify({{ style: '{style}', \
         functionName: context.functionName, awsRequestId: context.awsRequestId, \
         remaining: context.getRemainingTimeInMillis() }}) }}"
    )
}

/// CommonJS (`.js` without a package type, `.cjs`) and ES modules (`.mjs`, `.js` under
/// `"type": "module"`), async and callback style: each answers, with the Lambda context's
/// function name, request id (the event's) and remaining time.
#[tokio::test]
async fn commonjs_and_esm_handlers_async_and_callback() {
    let Some(node) = find_node() else { return };
    let (plain, typed) = (TempDir::new(), TempDir::new());
    let async_cjs = format!(
        "exports.handler = async (event, context) => ({});\n",
        reply_source("commonjs async")
    );
    let callback_cjs = format!(
        "exports.handler = (event, context, callback) => {{\n  \
         setTimeout(() => callback(null, {}), 10);\n}};\n",
        reply_source("commonjs callback")
    );
    let async_esm = format!(
        "export const handler = async (event, context) => {{\n  \
         await new Promise((resolve) => setTimeout(resolve, 10));\n  return {};\n}};\n",
        reply_source("esm async")
    );
    let callback_esm = format!(
        "export const handler = (event, context, callback) => {{\n  \
         setImmediate(() => callback(null, {}));\n}};\n",
        reply_source("esm callback")
    );
    let typed_esm = format!(
        "export const handler = async (event, context) => ({});\n",
        reply_source("esm package type")
    );
    write_files(
        plain.path(),
        &[
            ("async_cjs.js", &async_cjs),
            ("callback_cjs.cjs", &callback_cjs),
            ("async_esm.mjs", &async_esm),
            ("callback_esm.mjs", &callback_esm),
        ],
    );
    write_files(
        typed.path(),
        &[
            ("package.json", r#"{"type": "module"}"#),
            ("typed_esm.js", &typed_esm),
        ],
    );
    let modules = [
        ("async_cjs", "commonjs async"),
        ("callback_cjs", "commonjs callback"),
        ("async_esm", "esm async"),
        ("callback_esm", "esm callback"),
        ("typed_esm", "esm package type"),
    ];
    let names: Vec<&str> = modules.iter().map(|(m, _)| *m).collect();
    let runtime = LambdaRuntime::start(
        &node,
        "handlers",
        &names,
        &[plain.path(), typed.path()],
        &[],
    )
    .await;

    for (module, style) in modules {
        let request_id = format!("request-{module}");
        let event = json!({"requestContext": {"requestId": request_id}});
        let (status, reply) = post_event(&runtime.url(module), &event).await;
        assert_eq!(status, 200, "{module}: {reply}");
        assert_eq!(reply["statusCode"], 200, "{module}: {reply}");
        let body: Value = serde_json::from_str(reply["body"].as_str().unwrap()).unwrap();
        assert_eq!(body["style"], style, "{body}");
        assert_eq!(body["functionName"], module, "{body}");
        assert_eq!(body["awsRequestId"], request_id.as_str(), "{body}");
        let remaining = body["remaining"].as_u64().unwrap();
        assert!((20_000..=30_000).contains(&remaining), "{body}");
    }
    runtime.terminate().await;
}

/// A handler that throws, rejects, calls back with an error or throws where no promise
/// catches it is answered with 500
/// `{"errorMessage", "errorType"}`, which the gateway treats as a failed call: `$connect`
/// refuses the upgrade, a route tells the sender "Internal server error" and the
/// connection stays.
#[tokio::test]
async fn a_failing_node_handler_is_a_failed_call() {
    let Some(node) = find_node() else { return };
    let dir = TempDir::new();
    write_files(
        dir.path(),
        &[
            // Callback style, throwing before it calls back when asked to.
            (
                "connect.js",
                "exports.handler = (event, context, callback) => {\n  \
                 if ((event.queryStringParameters || {}).fail) throw new Error('no entry');\n  \
                 callback(null, { statusCode: 200 });\n};\n",
            ),
            (
                "echo.mjs",
                "export const handler = async (event) =>\n  \
                 ({ statusCode: 200, body: 'echo: ' + JSON.parse(event.body).data });\n",
            ),
            (
                "throws.mjs",
                "export const handler = async () => { throw new TypeError('boom'); };\n",
            ),
            (
                "uncaught.js",
                "exports.handler = (event, context, callback) => {\n  \
                 setTimeout(() => { throw new Error('thrown in a timer'); }, 5);\n};\n",
            ),
            (
                "callsback.cjs",
                "exports.handler = (event, context, callback) =>\n  \
                 setImmediate(() => callback(new Error('called back with an error')));\n",
            ),
        ],
    );
    let runtime = LambdaRuntime::start(
        &node,
        "handlers",
        &["connect", "echo", "throws", "callsback", "uncaught"],
        &[dir.path()],
        &[],
    )
    .await;

    // The adapter's answer, as Lambda reports an unhandled error.
    let (status, reply) = post_event(&runtime.url("throws"), &json!({})).await;
    assert_eq!(status, 500, "{reply}");
    assert_eq!(reply["errorMessage"], "boom", "{reply}");
    assert_eq!(reply["errorType"], "TypeError", "{reply}");
    let (status, reply) = post_event(&runtime.url("callsback"), &json!({})).await;
    assert_eq!(status, 500, "{reply}");
    assert_eq!(
        reply["errorMessage"], "called back with an error",
        "{reply}"
    );
    // An error no promise catches fails the invocation; the adapter goes on serving.
    let (status, reply) = post_event(&runtime.url("uncaught"), &json!({})).await;
    assert_eq!(status, 500, "{reply}");
    assert_eq!(reply["errorMessage"], "thrown in a timer", "{reply}");

    let urls = [
        runtime.url("connect"),
        runtime.url("echo"),
        runtime.url("throws"),
        runtime.url("callsback"),
    ];
    let gw = TestGateway::start(move |c| {
        aws(c);
        let [connect, echo, throws, callsback] = urls;
        c.functions.register = Some(connect.into());
        c.functions.routes.insert(
            "echo".into(),
            Target::Full {
                url: echo,
                dialect: None,
                two_way: Some(true),
            },
        );
        c.functions.routes.insert("throws".into(), throws.into());
        c.functions
            .routes
            .insert("callsback".into(), callsback.into());
    })
    .await;

    // $connect throwing refuses the upgrade with the adapter's status.
    assert_eq!(gw.try_connect("/?fail=1").await.err(), Some(500));

    let mut client = gw.connect("/").await;
    send_text(&mut client, r#"{"action":"echo","data":"one"}"#).await;
    assert_eq!(text(next_message(&mut client).await), "echo: one");
    send_text(&mut client, r#"{"action":"throws"}"#).await;
    expect_internal_error(&mut client).await;
    send_text(&mut client, r#"{"action":"callsback"}"#).await;
    expect_internal_error(&mut client).await;
    send_text(&mut client, r#"{"action":"echo","data":"two"}"#).await;
    assert_eq!(text(next_message(&mut client).await), "echo: two");

    client.close(None).await.unwrap();
    gw.shutdown().await;
    runtime.terminate().await;
}
