//! The files of `deploy/` run for real. The systemd units pass `systemd-analyze verify`
//! (and a broken copy does not); SIGHUP (`systemctl reload`) does not stop a gateway
//! without TLS. Two gateway nodes run from `deploy/node.toml` on one Redis behind nginx
//! with `deploy/nginx/switchboard.conf` or `switchboard-tls.conf` (their marked
//! placeholders replaced by this test's addresses), the chat functions sending through
//! nginx's balanced send-back address or both nodes' URLs; real WebSocket clients chat
//! across the nodes while one node is stopped (SIGTERM) or killed (SIGKILL) in the middle
//! of their traffic: every message of a client connected throughout reaches every other
//! such client exactly once, except a send in flight to the node as it went, of which its
//! sender is told (never silently lost, never doubled; at most two per sender).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::process::Command as StdCommand;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use functions::SendBack;
use futures_util::{Sink, SinkExt, StreamExt};
use tests::gateway::TOKEN;
use tests::nginx::{Nginx, Spot};
use tests::process::{GatewayProcess, Process, TempDir};
use tests::redis::RedisServer;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::process::Command;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::{self, Message};

const WAIT: Duration = Duration::from_secs(20);
const ROOM: &str = "lobby";

// ------------------------------------------------------------------ systemd

/// What `systemd-analyze verify` says of `unit` (the text of a unit file named `name`):
/// `Err` with its output if it fails or warns about anything (it exits 0 on an unknown key
/// or a value it cannot parse, and only warns).
fn verify_unit(analyze: &Path, dir: &Path, name: &str, unit: &str) -> Result<(), String> {
    let path = dir.join(name);
    std::fs::write(&path, unit).unwrap();
    let out = StdCommand::new(analyze)
        .arg("verify")
        .arg(&path)
        .output()
        .expect("running systemd-analyze");
    let said =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    if out.status.success() && said.trim().is_empty() {
        Ok(())
    } else {
        Err(format!("{}: {said}", out.status))
    }
}

/// The exposure score `systemd-analyze security --offline=yes` gives the unit at `path`
/// (0 to 10, lower is safer), or `None` where this systemd cannot score a unit file.
fn exposure(analyze: &Path, path: &Path) -> Option<f64> {
    let out = StdCommand::new(analyze)
        .args(["security", "--offline=yes"])
        .arg(path)
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("Overall exposure level"))?;
    line.split(": ")
        .nth(1)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Whether tools must be there: `SWITCHBOARD_REQUIRE_ALL` or `CI` set (not `0`/`false`).
fn required() -> bool {
    let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false");
    ci || tests::require_all()
}

/// Both units verify once their binaries exist (the ones this test package built); a copy
/// with a misspelt key, a value that does not parse or a missing binary does not.
#[test]
fn systemd_units_verify() {
    let Some(analyze) = tests::find_program(
        "SYSTEMD_ANALYZE",
        "systemd-analyze",
        &["/usr/bin/systemd-analyze"],
    ) else {
        assert!(!required(), "systemd-analyze is missing and CI is set");
        tests::skip_or_fail("systemd-analyze not installed");
        return;
    };
    let dir = TempDir::new();
    let units = [
        (
            "switchboard.service",
            "/usr/local/bin/switchboard",
            crate::switchboard_bin(),
        ),
        (
            "chat-functions.service",
            "/usr/local/bin/chat-functions",
            crate::chat_functions_bin(),
        ),
    ];
    for (name, installed, built) in units {
        let unit = tests::deploy_file(
            &format!("systemd/{name}"),
            &[(installed, built.to_str().unwrap().to_owned())],
        );
        verify_unit(&analyze, dir.path(), name, &unit).unwrap_or_else(|e| panic!("{name}: {e}"));
        for needed in [
            "NoNewPrivileges=yes",
            "ProtectSystem=strict",
            "ProtectHome=yes",
            "PrivateTmp=yes",
            "Restart=on-failure",
            "KillSignal=SIGTERM",
            "EnvironmentFile=/etc/switchboard/",
            "LimitNOFILE=",
            "User=switchboard",
        ] {
            assert!(unit.contains(needed), "{name} lacks {needed}");
        }
        // No secret in the unit: tokens come from the environment file.
        let mut settings = unit.lines().filter(|l| !l.trim_start().starts_with('#'));
        assert!(
            settings.all(|l| !l.contains("TOKEN")),
            "{name} holds a token"
        );
        if let Some(score) = exposure(&analyze, &dir.path().join(name)) {
            assert!(score <= 2.0, "{name}: exposure {score}, was 1.4");
        }

        let broken = [
            unit.replace("NoNewPrivileges=yes", "NoNewPrivileges=maybe"),
            unit.replace("ProtectSystem=strict", "ProtectSytem=strict"),
            unit.replace(built.to_str().unwrap(), "/nonexistent/switchboard"),
        ];
        for (i, broken) in broken.iter().enumerate() {
            assert!(
                verify_unit(&analyze, dir.path(), name, broken).is_err(),
                "{name}: broken copy #{i} verified"
            );
        }
    }
    let gateway = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/systemd/switchboard.service"),
    )
    .unwrap();
    assert!(gateway.contains("ExecReload=/bin/kill -HUP $MAINPID"));
    // The stop timeout covers the drain (node.toml's shutdown.grace is 10s).
    assert!(gateway.contains("TimeoutStopSec=30s"));
}

/// `systemctl reload` sends SIGHUP. A gateway without TLS has nothing to reload, and
/// SIGHUP's default action would end it: it logs it and keeps serving.
#[tokio::test]
async fn sighup_does_not_stop_a_gateway_without_tls() {
    let config = format!(
        "[public]\nlisten = \"127.0.0.1:0\"\n[sendback]\nlisten = \"127.0.0.1:0\"\n\
         token = \"{TOKEN}\"\n"
    );
    let mut gateway = GatewayProcess::start(&crate::switchboard_bin(), &config).await;
    for n in 1..=2 {
        gateway.process().signal("HUP");
        gateway
            .log()
            .nth_line_with(n, &["SIGHUP", "no TLS certificate to reload"], WAIT)
            .await;
    }
    let health = reqwest::get(format!("http://{}/healthz", gateway.public()))
        .await
        .expect("still serving after SIGHUP");
    assert_eq!(health.status(), 200);
    gateway.terminate().await;
}

/// deploy/node.toml checks as installed, its token given as the unit gives it.
#[test]
fn the_node_example_checks_with_its_token_from_the_environment() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut command = StdCommand::new(crate::switchboard_bin());
    command
        .args(["check", "--config", "deploy/node.toml"])
        .current_dir(root);
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("SWITCHBOARD_")) {
        command.env_remove(key);
    }
    let out = command
        .env(
            "SWITCHBOARD_SENDBACK__TOKEN",
            "a-long-token-from-gateway-env",
        )
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

// ------------------------------------------------------------------ the cluster

/// Where the functions send: nginx's balanced send-back address, or every node's own.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Via {
    Nginx,
    BothNodes,
}

/// Which nginx example fronts the nodes.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Front {
    Plain,
    /// nginx terminating TLS.
    Tls,
}

/// One gateway node run from deploy/node.toml.
struct Node {
    name: String,
    public: SocketAddr,
    sendback: SocketAddr,
    process: Option<GatewayProcess>,
}

/// Redis, two nodes, nginx, the chat functions.
struct Cluster {
    _redis: RedisServer,
    nodes: Vec<Node>,
    nginx: Nginx,
    chat: Process,
    /// A client of the send-back API with both nodes' URLs, for the test's own questions.
    sendback: SendBack,
    _files: TempDir,
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// deploy/node.toml with this test's addresses.
fn node_config(node: &Node, redis: &str, prefix: &str, chat: SocketAddr) -> String {
    tests::deploy_file(
        "node.toml",
        &[
            ("node_id = \"gw-1\"", format!("node_id = \"{}\"", node.name)),
            ("redis://redis.internal:6379/0", redis.to_owned()),
            (
                "store_prefix = \"switchboard\"",
                format!("store_prefix = \"{prefix}\""),
            ),
            ("10.0.0.11:8080", node.public.to_string()),
            ("10.0.0.11:9090", node.sendback.to_string()),
            // nginx connects to the nodes from 127.0.0.1.
            ("10.0.0.10/32", "127.0.0.1/32".to_owned()),
            ("change-me-to-a-long-random-string", TOKEN.to_owned()),
            ("http://10.0.0.21:9100/", format!("http://{chat}/")),
        ],
    )
}

/// An example of deploy/nginx with this test's addresses: the public server on
/// `spot.listen`, the send-back server on `spot.more[0]`, with TLS the redirect on
/// `spot.more[1]`.
fn nginx_config(spot: &Spot, front: Front, nodes: &[Node], files: &Path) -> String {
    let mut replacements = vec![
        ("10.0.0.10:9090", spot.more[0].to_string()),
        ("10.0.0.11:8080", nodes[0].public.to_string()),
        ("10.0.0.12:8080", nodes[1].public.to_string()),
        ("10.0.0.11:9090", nodes[0].sendback.to_string()),
        ("10.0.0.12:9090", nodes[1].sendback.to_string()),
    ];
    let file = match front {
        Front::Plain => {
            replacements.push((
                "listen 80 backlog",
                format!("listen {} backlog", spot.listen),
            ));
            "nginx/switchboard.conf"
        }
        Front::Tls => {
            replacements.extend([
                ("listen 443 ssl", format!("listen {} ssl", spot.listen)),
                ("listen 80;", format!("listen {};", spot.more[1])),
                (
                    "/etc/letsencrypt/live/chat.example.com/fullchain.pem",
                    files.join("public.crt").display().to_string(),
                ),
                (
                    "/etc/letsencrypt/live/chat.example.com/privkey.pem",
                    files.join("public.key").display().to_string(),
                ),
            ]);
            "nginx/switchboard-tls.conf"
        }
    };
    spot.http(&tests::deploy_file(file, &replacements))
}

impl Cluster {
    /// Starts everything; with [`Front::Tls`] the certificate and key must be in `files`
    /// as `public.crt` and `public.key`. `None` when a tool is missing (reported).
    async fn start(front: Front, via: Via, files: TempDir) -> Option<Cluster> {
        let redis = tests::redis::require_redis()?;
        let prefix = format!(
            "it-deploy-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        let chat_addr = loopback(tests::redis::free_port().unwrap());
        let mut nodes = Vec::new();
        for name in ["gw-1", "gw-2"] {
            let mut node = Node {
                name: name.to_owned(),
                public: loopback(tests::redis::free_port().unwrap()),
                sendback: loopback(tests::redis::free_port().unwrap()),
                process: None,
            };
            let config = node_config(&node, &redis.url(), &prefix, chat_addr);
            let process = GatewayProcess::start(&crate::switchboard_bin(), &config).await;
            assert_eq!(process.public(), node.public.to_string());
            node.process = Some(process);
            nodes.push(node);
        }
        let more = if front == Front::Tls { 2 } else { 1 };
        let nginx = Nginx::require_ports(&[], more, |spot| {
            nginx_config(spot, front, &nodes, files.path())
        })?;

        let sendback_urls = match via {
            Via::Nginx => format!("http://{}", nginx.more()[0]),
            Via::BothNodes => nodes
                .iter()
                .map(|n| format!("http://{}", n.sendback))
                .collect::<Vec<_>>()
                .join(","),
        };
        let mut cmd = Command::new(crate::chat_functions_bin());
        cmd.args(["--listen", &chat_addr.to_string()])
            .args(["--store", &redis.url(), "--store-prefix", &prefix])
            .env("CHAT_SENDBACK_URL", &sendback_urls)
            .env("CHAT_SENDBACK_TOKEN", TOKEN);
        let chat = Process::spawn(&mut cmd);
        chat.output().line_with(&["listening"], WAIT).await;

        let sendback = SendBack::with_urls(
            nodes.iter().map(|n| format!("http://{}", n.sendback)),
            Some(TOKEN.to_owned()),
        )
        .unwrap();
        Some(Cluster {
            _redis: redis,
            nodes,
            nginx,
            chat,
            sendback,
            _files: files,
        })
    }

    /// A chat client of `ROOM` through nginx's plain public server.
    async fn join(&self, name: &str) -> Chatter {
        let url = format!("ws://{}/chat?room={ROOM}&name={name}", self.nginx.addr());
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .unwrap_or_else(|e| panic!("{name} connects through nginx: {e}"));
        Chatter::new(name, ws)
    }

    /// A chat client of `ROOM` through nginx, from 127.0.0.2.
    async fn join_from_127_0_0_2(&self, name: &str) -> Chatter {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        let tcp = socket.connect(self.nginx.addr()).await.unwrap();
        let url = format!("ws://{}/chat?room={ROOM}&name={name}", self.nginx.addr());
        let (ws, _) = tokio_tungstenite::client_async(url, tcp)
            .await
            .unwrap_or_else(|e| panic!("{name} connects through nginx: {e}"));
        Chatter::new(name, ws)
    }

    /// Where the live members of `ROOM` are, by name, as the send-back API says.
    async fn members(&self) -> BTreeMap<String, Member> {
        let mut members = BTreeMap::new();
        let mut cursor: Option<String> = None;
        loop {
            let page = self
                .sendback
                .group(ROOM, cursor.as_deref(), Some(1000))
                .await
                .expect("the room's members");
            for id in &page.members {
                // A connection of a killed node answers 503 until it is reaped: not live.
                let Ok(info) = self.sendback.get(id).await else {
                    continue;
                };
                let name = info.context["name"].as_str().unwrap_or_default().to_owned();
                members.insert(
                    name,
                    Member {
                        node: info.node,
                        source_ip: info.source_ip,
                    },
                );
            }
            match page.cursor {
                Some(next) => cursor = Some(next),
                None => return members,
            }
        }
    }

    /// Waits until every one of `names` is a live member held by `node`.
    async fn wait_all_on(&self, names: &[String], node: &str) {
        tests::wait::eventually(&format!("{names:?} on {node}"), WAIT, || async {
            let members = self.members().await;
            names
                .iter()
                .all(|n| members.get(n).is_some_and(|m| m.node == node))
        })
        .await;
    }

    fn log(&self) -> String {
        format!(
            "nginx:\n{}\nchat functions:\n{}",
            self.nginx.log(),
            self.chat.output().lines().join("\n")
        )
    }
}

#[derive(Debug)]
struct Member {
    node: String,
    source_ip: String,
}

// ------------------------------------------------------------------ chat clients

type BoxSink = Pin<Box<dyn Sink<Message, Error = tungstenite::Error> + Send>>;

/// What a client got: the chat messages' texts, and how it was closed.
#[derive(Debug, Default)]
struct Inbox {
    texts: Vec<String>,
    /// The chat's `{"type":"error"}` answers: a line the chat could not send.
    errors: Vec<String>,
    /// `Some` once closed: the close code, `None` without a close frame.
    closed: Option<Option<u16>>,
}

/// A chat client: sends through its sink, its reader fills its inbox.
struct Chatter {
    name: String,
    sink: BoxSink,
    inbox: Arc<Mutex<Inbox>>,
}

impl Chatter {
    fn new<S>(name: &str, ws: WebSocketStream<S>) -> Chatter
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (sink, mut stream) = ws.split();
        let inbox = Arc::new(Mutex::new(Inbox::default()));
        let filled = inbox.clone();
        tokio::spawn(async move {
            let closed = loop {
                match stream.next().await {
                    Some(Ok(Message::Text(text))) => {
                        let value: serde_json::Value =
                            serde_json::from_str(text.as_str()).unwrap_or_default();
                        let said = value["text"].as_str().unwrap_or_default().to_owned();
                        if value["type"] == "message" {
                            filled.lock().unwrap().texts.push(said);
                        } else if value["type"] == "error" {
                            let why = value["message"].as_str().unwrap_or_default().to_owned();
                            filled.lock().unwrap().errors.push(why);
                        }
                    }
                    Some(Ok(Message::Close(frame))) => break frame.map(|f| u16::from(f.code)),
                    Some(Ok(_)) => {}
                    None | Some(Err(_)) => break None,
                }
            };
            let mut inbox = filled.lock().unwrap();
            inbox.closed.get_or_insert(closed);
        });
        Chatter {
            name: name.to_owned(),
            sink: Box::pin(sink),
            inbox,
        }
    }

    /// Says `count` numbered lines of round `round`: `<name>:<round>:<n>`.
    async fn say(&mut self, round: u32, count: usize) {
        for n in 0..count {
            let line = format!("{}:{round}:{n}", self.name);
            self.sink
                .send(Message::text(line))
                .await
                .unwrap_or_else(|e| panic!("{} sends: {e}", self.name));
        }
    }

    /// Says line `n` of round `round`.
    async fn say_line(&mut self, round: u32, n: usize) {
        let line = format!("{}:{round}:{n}", self.name);
        self.sink
            .send(Message::text(line))
            .await
            .unwrap_or_else(|e| panic!("{} sends: {e}", self.name));
    }

    fn closed(&self) -> Option<Option<u16>> {
        self.inbox.lock().unwrap().closed
    }
}

/// Waits until each of `listeners` has heard the `count` lines of round `round` of each
/// of `speakers` but itself, then checks each was heard exactly once.
async fn all_heard(listeners: &[&Chatter], speakers: &[&str], round: u32, count: usize, log: &str) {
    let expected = |listener: &Chatter| -> Vec<String> {
        speakers
            .iter()
            .filter(|s| **s != listener.name)
            .flat_map(|s| (0..count).map(move |n| format!("{s}:{round}:{n}")))
            .collect()
    };
    let heard_all = || {
        listeners.iter().all(|l| {
            let inbox = l.inbox.lock().unwrap();
            expected(l).iter().all(|line| inbox.texts.contains(line))
        })
    };
    if !tests::wait::within(WAIT, || std::future::ready(heard_all())).await {
        let missing: Vec<(String, Vec<String>)> = listeners
            .iter()
            .map(|l| {
                let inbox = l.inbox.lock().unwrap();
                let lost = expected(l)
                    .into_iter()
                    .filter(|line| !inbox.texts.contains(line))
                    .collect();
                (l.name.clone(), lost)
            })
            .collect();
        panic!("round {round}: lines not heard: {missing:?}\n{log}");
    }
    for listener in listeners {
        let inbox = listener.inbox.lock().unwrap();
        for line in expected(listener) {
            let times = inbox.texts.iter().filter(|t| **t == line).count();
            assert_eq!(times, 1, "{} heard {line} {times} times", listener.name);
        }
    }
}

/// Round `round`, in which each of `chatters` said `count` lines: waits until every line
/// is accounted for, then checks that none was heard twice, and that each sender was told
/// of every line of its not heard by all the others (an error answer from the chat).
async fn heard_or_told(chatters: &[Chatter], round: u32, count: usize, log: &str) {
    let lines = |speaker: &str| -> Vec<String> {
        (0..count)
            .map(|n| format!("{speaker}:{round}:{n}"))
            .collect()
    };
    // A speaker's lines that some other chatter has not heard.
    let unheard = |speaker: &Chatter| -> Vec<String> {
        lines(&speaker.name)
            .into_iter()
            .filter(|line| {
                chatters
                    .iter()
                    .filter(|l| l.name != speaker.name)
                    .any(|l| !l.inbox.lock().unwrap().texts.contains(line))
            })
            .collect()
    };
    let told = |speaker: &Chatter| speaker.inbox.lock().unwrap().errors.len();
    let accounted = || chatters.iter().all(|c| unheard(c).len() <= told(c));
    if !tests::wait::within(WAIT, || std::future::ready(accounted())).await {
        let missing: Vec<(String, Vec<String>, Vec<String>)> = chatters
            .iter()
            .map(|c| {
                (
                    c.name.clone(),
                    unheard(c),
                    c.inbox.lock().unwrap().errors.clone(),
                )
            })
            .collect();
        panic!(
            "round {round}: lines lost without a word to their sender (name, unheard, told): {missing:?}\n{log}"
        );
    }
    for listener in chatters {
        let inbox = listener.inbox.lock().unwrap();
        for speaker in chatters.iter().filter(|s| s.name != listener.name) {
            for line in lines(&speaker.name) {
                let times = inbox.texts.iter().filter(|t| **t == line).count();
                assert!(times <= 1, "{} heard {line} {times} times", listener.name);
            }
        }
    }
    // Only sends in flight as the node went may fail: one transport event at a time per
    // connection, plus a request on a pooled connection the node's death had not closed
    // yet. Every later one goes to a live node.
    for chatter in chatters {
        assert!(
            told(chatter) <= 2,
            "{} was told {} lines failed: the chat did not go on: {:?}",
            chatter.name,
            told(chatter),
            chatter.inbox.lock().unwrap().errors
        );
    }
    let told: usize = chatters.iter().map(told).sum();
    eprintln!(
        "round {round}: {count} lines each from {} clients, {told} told not delivered",
        chatters.len()
    );
}

// ------------------------------------------------------------------ the scenarios

/// How a node goes.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Loss {
    /// SIGTERM: it drains, closing its clients with 1001.
    Stop,
    /// SIGKILL: its clients' connections just end.
    Kill,
}

/// Six clients through nginx land on both nodes and chat; gw-1 goes (`loss`); its clients
/// reconnect through nginx to gw-2 while the others chat on; then everyone chats. No line
/// of a client connected throughout is lost or doubled, and none of them is closed.
async fn a_node_goes_and_the_chat_goes_on(loss: Loss, via: Via) {
    const LINES: usize = 5;
    let Some(mut cluster) = Cluster::start(Front::Plain, via, TempDir::new()).await else {
        return;
    };
    let mut chatters = Vec::new();
    for i in 0..5 {
        chatters.push(cluster.join(&format!("c{i}")).await);
    }
    chatters.push(cluster.join_from_127_0_0_2("far").await);
    let names: Vec<String> = chatters.iter().map(|c| c.name.clone()).collect();
    let members = cluster.members().await;
    assert_eq!(members.len(), names.len(), "{members:?}");
    let on = |node: &str| -> Vec<String> {
        members
            .iter()
            .filter(|(_, m)| m.node == node)
            .map(|(name, _)| name.clone())
            .collect()
    };
    let (on_first, on_second) = (on("gw-1"), on("gw-2"));
    assert!(
        !on_first.is_empty() && !on_second.is_empty(),
        "nginx spread the clients over both nodes: {members:?}"
    );
    // X-Forwarded-For from nginx, believed because nginx is a trusted proxy.
    assert_eq!(members["far"].source_ip, "127.0.0.2", "{members:?}");
    assert_eq!(members["c0"].source_ip, "127.0.0.1", "{members:?}");

    // Round 1: everyone, across the nodes.
    for chatter in &mut chatters {
        chatter.say(1, LINES).await;
    }
    let everyone: Vec<&str> = names.iter().map(String::as_str).collect();
    let log = cluster.log();
    all_heard(
        &chatters.iter().collect::<Vec<_>>(),
        &everyone,
        1,
        LINES,
        &log,
    )
    .await;

    // Round 2: those on gw-2 keep talking while gw-1 goes and its clients come back
    // through nginx. Every line is either heard by every other client on gw-2 exactly
    // once, or its sender was told it may not have been (a send in flight to the node as
    // it went: never sent twice, never silently lost).
    let (gone, mut stayed): (Vec<Chatter>, Vec<Chatter>) = chatters
        .into_iter()
        .partition(|c| on_first.contains(&c.name));
    let inboxes: Vec<Arc<Mutex<Inbox>>> = stayed.iter().map(|c| c.inbox.clone()).collect();
    let went = std::sync::atomic::AtomicBool::new(false);
    let mut first = cluster.nodes[0].process.take().expect("gw-1 runs");
    let mut back = Vec::new();
    let lose_and_rejoin = async {
        // The node goes once round 2 is flowing.
        tests::wait::eventually("round 2 flows", WAIT, || async {
            inboxes
                .iter()
                .any(|i| i.lock().unwrap().texts.iter().any(|t| t.contains(":2:")))
        })
        .await;
        match loss {
            Loss::Stop => first.terminate().await,
            Loss::Kill => first.process().kill().await,
        }
        went.store(true, std::sync::atomic::Ordering::SeqCst);
        for chatter in &gone {
            tests::wait::eventually(&format!("{} closed", chatter.name), WAIT, || async {
                chatter.closed().is_some()
            })
            .await;
            let expected = match loss {
                Loss::Stop => Some(1001),
                Loss::Kill => None,
            };
            assert_eq!(chatter.closed(), Some(expected), "{}", chatter.name);
        }
        for chatter in &gone {
            back.push(cluster.join(&chatter.name).await);
        }
    };
    let talk = async {
        // A line from each every 20 ms, until 25 more after the node went.
        let mut pace = tokio::time::interval(Duration::from_millis(20));
        let mut after = None;
        let mut n = 0;
        loop {
            pace.tick().await;
            for chatter in &mut stayed {
                chatter.say_line(2, n).await;
            }
            n += 1;
            if after.is_none() && went.load(std::sync::atomic::Ordering::SeqCst) {
                after = Some(n);
            }
            if after.is_some_and(|a| n >= a + 25) || n >= 2000 {
                return n;
            }
        }
    };
    let (_, said) = tokio::join!(lose_and_rejoin, talk);
    let log = cluster.log();
    heard_or_told(&stayed, 2, said, &log).await;
    cluster.wait_all_on(&names, "gw-2").await;

    // Round 3: everyone, all on gw-2 now.
    let mut everybody: Vec<Chatter> = stayed.into_iter().chain(back).collect();
    for chatter in &mut everybody {
        chatter.say(3, LINES).await;
    }
    let log = cluster.log();
    all_heard(
        &everybody.iter().collect::<Vec<_>>(),
        &everyone,
        3,
        LINES,
        &log,
    )
    .await;
    for chatter in &everybody {
        assert_eq!(chatter.closed(), None, "{} was closed", chatter.name);
    }

    drop(everybody);
    let second = cluster.nodes[1].process.take().expect("gw-2 runs");
    second.terminate().await;
    cluster.chat.terminate().await;
}

#[tokio::test]
async fn nginx_balances_the_chat_and_a_stopped_node_loses_nothing() {
    a_node_goes_and_the_chat_goes_on(Loss::Stop, Via::Nginx).await;
}

#[tokio::test]
async fn nginx_balances_the_chat_and_a_killed_node_loses_nothing() {
    a_node_goes_and_the_chat_goes_on(Loss::Kill, Via::BothNodes).await;
}

/// wss:// through nginx terminating TLS (deploy/nginx/switchboard-tls.conf) to plain ws://
/// nodes: two clients, one on each node, chat; plain http is redirected to https.
#[tokio::test]
async fn nginx_terminates_tls_for_the_chat() {
    let files = TempDir::new();
    let ca = crate::tls::Ca::new("deploy test CA");
    ca.leaf("localhost").write(files.path(), "public");
    let Some(cluster) = Cluster::start(Front::Tls, Via::Nginx, files).await else {
        return;
    };
    let mut chatters = Vec::new();
    for name in ["ann", "bob"] {
        let path = format!("/chat?room={ROOM}&name={name}");
        let (ws, _) = tests::tls::connect_wss(cluster.nginx.addr(), &path, &ca.pem())
            .await
            .unwrap_or_else(|e| panic!("{name} connects with wss through nginx: {e}"));
        chatters.push(Chatter::new(name, ws));
    }
    let members = cluster.members().await;
    let nodes: Vec<&str> = members.values().map(|m| m.node.as_str()).collect();
    assert!(
        nodes.contains(&"gw-1") && nodes.contains(&"gw-2"),
        "{members:?}"
    );
    for chatter in &mut chatters {
        chatter.say(1, 3).await;
    }
    let log = cluster.log();
    all_heard(
        &chatters.iter().collect::<Vec<_>>(),
        &["ann", "bob"],
        1,
        3,
        &log,
    )
    .await;

    // Browsers asking for http:// are sent to https://.
    let redirect = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(format!("http://{}/chat", cluster.nginx.more()[1]))
        .header("host", "chat.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(redirect.status(), 301);
    assert_eq!(
        redirect.headers()["location"],
        "https://chat.example.com/chat"
    );
}
