//! The Lambda and SCF stand-ins (`tests/handlers/{aws,tencent}/runtime.py`, and
//! `tests/handlers/aws-node/runtime.js` for Node.js) serve the user's modules: a module on
//! `PYTHONPATH` (`NODE_PATH`) named like one of the example handlers beside the runtime
//! (`onconnect`, `register`, …) is the one that runs.

use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};

/// Starts `runtime.py module` of `platform` with `PYTHONPATH` holding a user module of that
/// name (`source`), POSTs `{}` to `path` and returns the reply body.
async fn serve_user_module(
    platform: &str,
    module: &str,
    source: &str,
    path: &str,
) -> Option<String> {
    let python = tests::python::find_python3("import json", "python3 is not installed")?;
    let dir = std::env::temp_dir().join(format!("sb-user-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(format!("{module}.py")), source).unwrap();
    let mut child = tests::python::command(
        &python,
        platform,
        &[("PYTHONPATH", dir.to_string_lossy().into_owned())],
    )
    .args(["runtime.py", module, "--port", "0"])
    .stdout(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .expect("the runtime printed its port")
        .unwrap()
        .unwrap();
    // `listening on 127.0.0.1:<port>` (aws) or the bare port (tencent).
    let port: u16 = first.rsplit(':').next().unwrap().trim().parse().unwrap();
    let body = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}{path}"))
        .body("{}")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    child.kill().await.ok();
    std::fs::remove_dir_all(&dir).ok();
    Some(body)
}

#[tokio::test]
async fn the_aws_runtime_serves_the_users_onconnect_not_the_example() {
    let source = "def lambda_handler(event, context):\n    return {'statusCode': 200, 'body': 'the user module'}\n";
    if let Some(body) = serve_user_module("aws", "onconnect", source, "/onconnect").await {
        assert!(body.contains("the user module"), "{body}");
    }
}

#[tokio::test]
async fn the_tencent_runtime_serves_the_users_register_not_the_example() {
    let source =
        "def main_handler(event, context):\n    return {'errNo': 0, 'errMsg': 'the user module'}\n";
    if let Some(body) = serve_user_module("tencent", "register", source, "/").await {
        assert!(body.contains("the user module"), "{body}");
    }
}

/// The Node.js stand-in (`tests/handlers/aws-node/runtime.js`) serves a user module on
/// `NODE_PATH` named like one of the sample's (`onconnect`), not the sample's.
#[tokio::test]
async fn the_aws_node_runtime_serves_the_users_onconnect_not_the_samples() {
    let Some(node) = tests::node::find_node() else {
        return;
    };
    let dir = tests::process::TempDir::new();
    std::fs::write(
        dir.path().join("onconnect.js"),
        "exports.handler = async () => ({ statusCode: 200, body: 'the user module' });\n",
    )
    .unwrap();
    let runtime =
        tests::node::LambdaRuntime::start(&node, "handlers", &["onconnect"], &[dir.path()], &[])
            .await;
    let body = reqwest::Client::new()
        .post(runtime.url("onconnect"))
        .body("{}")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(body.contains("the user module"), "{body}");
    runtime.terminate().await;
}
