//! The gateway's typed configuration: a TOML file, then `SWITCHBOARD_*` environment
//! variables, then command-line flags, validated before any port is bound.
//!
//! Every field has a default, so an empty file is a valid (local, development) config once
//! a send-back token or `insecure_no_auth` is given. Durations are written the human way:
//! `"10s"`, `"500ms"`, `"2h"`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::error::ConfigError;

/// The whole gateway configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// This node's name, recorded with every connection it holds. Default: `node-` and a
    /// random suffix, new at each start.
    pub node_id: String,
    /// Where connection records and groups live: `memory` (embedded, the default),
    /// `redis://host:port[/db]` or `redis+cluster://host:port,host:port`.
    pub store: String,
    /// The prefix of every Redis key (several deployments can share one Redis).
    pub store_prefix: String,
    /// How often this node refreshes its liveness key in the store (it expires after
    /// `node_heartbeat_ttl`), retries store removals that failed while the store was down,
    /// and looks for dead nodes to reap.
    #[serde(with = "humantime_serde")]
    pub node_heartbeat: Duration,
    /// How long a heartbeat lives: a node silent for longer is dead to the others. They
    /// answer 503 (retryable) for its connections meanwhile, and then one of them reaps it:
    /// sends a `node_lost` cleanup for each of its connections and removes their records.
    /// Shorter: a dead node's connections are cleaned up sooner; but a node silent for
    /// longer while alive (a paused VM or process, a store outage that it alone sees) is
    /// reaped while its clients are still connected, and closes them when it comes back
    /// (it finds the reaper's mark). A store outage that every node sees reaps no one: a
    /// node reaps only after its own store access has worked for one TTL. Must be greater
    /// than `node_heartbeat` (default: three intervals).
    #[serde(with = "humantime_serde")]
    pub node_heartbeat_ttl: Duration,
    /// How long a send-back request relayed to another node may take: a node slower than
    /// this did not answer (503 for its connection; a group send lists it in
    /// `unreachableNodes`). A group send never waits longer on a silent node.
    #[serde(with = "humantime_serde")]
    pub relay_timeout: Duration,
    /// The listener clients connect to.
    pub public: PublicConfig,
    /// The send-back API listener.
    pub sendback: SendbackConfig,
    /// The functions the gateway calls.
    pub functions: FunctionsConfig,
    /// Limits on connections and messages.
    pub limits: LimitsConfig,
    /// The application-level heartbeat answered by the gateway itself.
    pub heartbeat: HeartbeatConfig,
    /// Graceful shutdown.
    pub shutdown: ShutdownConfig,
    /// The durable cleanup queue and the workers that drain it.
    pub cleanup: CleanupConfig,
    /// Writing this node's state back when a Redis store lost it.
    pub store_resync: StoreResyncConfig,
    /// The `aws` dialect.
    pub aws: AwsConfig,
    /// The `tencent` dialect.
    pub tencent: TencentConfig,
}

/// The public (WebSocket) listener.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PublicConfig {
    /// Address to accept WebSocket clients on.
    pub listen: SocketAddr,
    /// An HTML file served at `GET /` to plain (non-upgrade) requests, e.g. a chat page.
    pub page: Option<PathBuf>,
    /// `wss://`: a second public listener, speaking TLS, beside the plain one (`listen`).
    /// Both serve the same WebSockets, page and `/healthz`.
    pub tls: Option<PublicTlsConfig>,
}

/// The public TLS (`wss://`) listener.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublicTlsConfig {
    /// Address to accept `wss://` clients on. Default `0.0.0.0:8443`.
    #[serde(default = "default_public_tls_listen")]
    pub listen: SocketAddr,
    /// The certificate chain (PEM, leaf first) and its private key (PEM): see [`TlsFiles`].
    #[serde(flatten)]
    pub files: TlsFiles,
}

fn default_public_tls_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 8443))
}

/// A certificate and its key, reloaded when the files change or on SIGHUP.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// The certificate chain, PEM, the server's certificate first.
    pub cert_file: PathBuf,
    /// Its private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
}

/// The send-back API listener.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SendbackConfig {
    /// Address of the send-back API: internal (loopback) by default.
    pub listen: SocketAddr,
    /// The bearer token every send-back request must carry.
    pub token: Option<String>,
    /// Accept send-back requests without a token. For local development only: refused
    /// unless `listen` is a loopback address.
    pub insecure_no_auth: bool,
    /// The largest send-back request body (a single message is further limited by
    /// `limits.max_message_bytes`).
    pub max_body_bytes: usize,
    /// The most connection ids one batch send (`POST /@connections`) may name; a batch
    /// naming more is refused whole with 413 before anything is delivered. Nodes sharing a
    /// store should agree on it: a node relays each other node its part of a batch.
    pub max_batch_ids: usize,
    /// The base URL (`http://host:port`) at which the other gateway nodes sharing the store
    /// reach this node's send-back API, to forward requests for connections this node
    /// holds. Default: `http://` + the bound `listen` address, unless that is a wildcard
    /// (`0.0.0.0`, `::`): then this node's connections are reachable only through it.
    /// `https://` (the default when `tls` is set) when this listener speaks TLS.
    pub advertise: Option<String>,
    /// Serve the send-back API over TLS (https) with this certificate, instead of plain
    /// HTTP. Other nodes relaying to this one then need `https://` in `advertise` and to
    /// trust the certificate (the system's roots or `functions.ca_file`).
    pub tls: Option<TlsFiles>,
}

/// The functions the gateway calls, and how.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FunctionsConfig {
    /// The event format of targets that name none: `native`, `aws` or `tencent`.
    pub dialect: Dialect,
    /// Called on connect (AWS: the `$connect` route); decides whether to accept.
    /// Absent: every connection is accepted.
    pub register: Option<Target>,
    /// Called for each message (AWS: the `$default` route). Absent (and no route matches):
    /// a client message closes the connection with 1003.
    pub transport: Option<Target>,
    /// Called once when a connection ends (AWS: `$disconnect`). Absent: nothing is called.
    pub cleanup: Option<Target>,
    /// AWS-style route selection: a `$request.body.<path>` expression naming a field of a
    /// JSON message whose string value picks a route in `routes`; a message that is not
    /// JSON or matches no route goes to `transport` (`$default`).
    pub route_selection_expression: String,
    /// Custom routes by route key (e.g. `sendmessage`), each a target.
    pub routes: BTreeMap<String, Target>,
    /// How long one function call may take.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Retries of a transport or cleanup call that could not connect, timed out, or got
    /// 500/502/503/504 (register is never retried: the client is waiting).
    pub retries: u32,
    /// Pause before the first retry; doubled for each further one.
    #[serde(with = "humantime_serde")]
    pub retry_backoff: Duration,
    /// The largest reply body read from a function.
    pub max_reply_bytes: usize,
    /// The largest `context` a register reply may return (serialized JSON bytes).
    pub max_context_bytes: usize,
    /// Keep-alive connections kept open per function host (idle ones close after 60 s).
    /// Below the number of calls in flight at busy times, calls keep opening connections.
    pub pool_max_idle_per_host: usize,
    /// A PEM bundle of CA certificates trusted for `https://` functions and relays to
    /// nodes whose `sendback.advertise` is `https://`, besides the system's roots.
    pub ca_file: Option<PathBuf>,
}

/// An event format: how events are encoded for a function and its replies read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dialect {
    /// Switchboard's own events (functions/README.md).
    #[default]
    Native,
    /// AWS API Gateway WebSocket APIs (Lambda proxy events).
    Aws,
    /// Tencent Cloud API Gateway + SCF.
    Tencent,
}

/// A function target: a URL, or a table with the URL, its dialect and (for transport
/// routes) whether its reply body goes back to the client.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum Target {
    /// Just the URL; the dialect is `functions.dialect`.
    Url(String),
    /// All details.
    Full {
        /// The URL.
        url: String,
        /// The dialect; default `functions.dialect`.
        #[serde(default)]
        dialect: Option<Dialect>,
        /// Whether a transport reply body is sent back to the client. Default: yes for
        /// `native`, no for `aws` (a route without a route response) and `tencent`.
        #[serde(default)]
        two_way: Option<bool>,
    },
}

impl Target {
    /// The URL.
    pub fn url(&self) -> &str {
        match self {
            Target::Url(url) | Target::Full { url, .. } => url,
        }
    }

    /// The dialect, given the default.
    pub fn dialect(&self, default: Dialect) -> Dialect {
        match self {
            Target::Full {
                dialect: Some(d), ..
            } => *d,
            _ => default,
        }
    }

    /// Whether a transport reply body goes back to the client.
    pub fn two_way(&self, default: Dialect) -> bool {
        match self {
            Target::Full {
                two_way: Some(two_way),
                ..
            } => *two_way,
            _ => self.dialect(default) == Dialect::Native,
        }
    }
}

impl From<String> for Target {
    fn from(url: String) -> Self {
        Target::Url(url)
    }
}

impl From<&str> for Target {
    fn from(url: &str) -> Self {
        Target::Url(url.to_owned())
    }
}

/// Settings of the `aws` dialect: what its events say about the API, and the keys that
/// may sign management API (`/{stage}/@connections`) requests.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AwsConfig {
    /// The stage (`requestContext.stage`, and the first path segment of the management API).
    pub stage: String,
    /// `requestContext.apiId`.
    pub api_id: String,
    /// `requestContext.domainName`; empty: the client's `Host` header.
    pub domain_name: String,
    /// The region SigV4 signatures must name.
    pub region: String,
    /// Access keys accepted on the management API.
    pub credentials: Vec<AwsCredential>,
    /// Also serve the management API (`/{stage}/@connections/…`) on the public listeners,
    /// as AWS serves it on the WebSocket API's own domain: a handler that builds its
    /// endpoint as `https://{domainName}/{stage}` from the event then reaches it. SigV4
    /// protects it there as on the send-back listener; requests must be signed with
    /// `aws.credentials` (refused at start without any).
    pub management_api_on_public: bool,
}

/// One access key pair.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AwsCredential {
    /// The access key id.
    pub access_key_id: String,
    /// The secret.
    pub secret_access_key: String,
}

impl Default for AwsConfig {
    fn default() -> Self {
        AwsConfig {
            stage: "prod".to_owned(),
            api_id: "switchboard".to_owned(),
            domain_name: String::new(),
            region: "us-east-1".to_owned(),
            credentials: Vec::new(),
            management_api_on_public: false,
        }
    }
}

/// Settings of the `tencent` dialect.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TencentConfig {
    /// `requestContext.serviceName`.
    pub service_name: String,
    /// `requestContext.stage`.
    pub stage: String,
}

impl Default for TencentConfig {
    fn default() -> Self {
        TencentConfig {
            service_name: "switchboard".to_owned(),
            stage: "release".to_owned(),
        }
    }
}

/// Limits on connections and messages.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// The largest message a client may send or be sent; a larger one from a client closes
    /// its connection with 1009.
    pub max_message_bytes: usize,
    /// The most connections this node holds; one more is refused with 503 at upgrade.
    pub max_connections: usize,
    /// The most connections on the public listener that are not (yet) WebSockets: reading
    /// a request head, kept alive between plain requests, or waiting for register. A
    /// connection beyond it gets a 503 `at_capacity` at once, without its request being
    /// read, and is closed. A connection stops counting when it becomes a WebSocket (it then
    /// counts in `max_connections`) or ends, so handshakes cannot crowd out the listener
    /// and open WebSockets never crowd out handshakes.
    pub max_pending_connections: usize,
    /// How long a client has to send a complete request head (request line and headers):
    /// counted from the accept for a connection's first request, from the first byte of
    /// the next request on a keep-alive connection. Bytes arriving do not extend it, so a
    /// client trickling a head (slowloris) is closed after it too.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// How long a keep-alive connection may wait, after a plain request's reply (the page,
    /// `/healthz`, an error), for the first byte of its next request; then the gateway
    /// closes it.
    #[serde(with = "humantime_serde")]
    pub keepalive_timeout: Duration,
    /// A connection from which no message arrives for this long is closed (1001).
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// When nothing has arrived for this long, the gateway sends a ping; when nothing
    /// arrives for another interval, the connection is closed as dead.
    #[serde(with = "humantime_serde")]
    pub ping_interval: Duration,
    /// The longest a connection may last (closed with 1001 after it).
    #[serde(with = "humantime_serde")]
    pub max_duration: Duration,
    /// How long a connection collects messages sent to it through the send-back API
    /// before writing them (all in one flush). 0, the default, writes at once. A few
    /// milliseconds trade that much latency for far fewer writes when clients get bursts
    /// of messages (like Centrifugo's `client_write_delay`). Function replies to a
    /// client's own message are never delayed.
    #[serde(with = "humantime_serde")]
    pub write_delay: Duration,
    /// The longest one write to a client's socket may wait (queued messages, replies,
    /// pings, close frames): a client that takes none of it for this long is dropped
    /// without a close frame and cleaned up (`connection_lost`). It bounds the HTTP replies
    /// before the upgrade too (the page, `/healthz`, errors, the 101). Shutdown and the idle /
    /// duration limits end a waiting write at once, and a close through the send-back API
    /// within 2 s, whatever this is. Shorter frees the slot and the queued memory of a
    /// client that stopped reading sooner; longer spares clients on slow or briefly
    /// stalled networks (a phone changing cells) that would catch up.
    #[serde(with = "humantime_serde")]
    pub write_timeout: Duration,
    /// The most messages queued for one client; a send beyond it gets 429.
    pub outbound_queue_messages: usize,
    /// The most bytes queued for one client; a send beyond it gets 429.
    pub outbound_queue_bytes: usize,
    /// Client messages read ahead while a transport call is in flight; when full, the
    /// gateway stops reading that socket (TCP backpressure).
    pub inbound_queue_messages: usize,
    /// tungstenite's read buffer per connection (bytes): held by every connection, idle or
    /// not. Reads from the socket are 16 KiB each whatever this is (the read-ahead lives
    /// only until tungstenite takes it), so a small buffer costs copies, not syscalls.
    pub read_buffer_bytes: usize,
    /// tungstenite's write buffer per connection (bytes).
    pub write_buffer_bytes: usize,
}

/// The application-level heartbeat: a text message the gateway answers itself.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HeartbeatConfig {
    /// The text a client sends (exact match); empty disables the heartbeat.
    pub request: String,
    /// The text the gateway answers with.
    pub reply: String,
}

/// Graceful shutdown.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownConfig {
    /// How long to wait for connections to close and cleanup calls to finish.
    #[serde(with = "humantime_serde")]
    pub grace: Duration,
}

/// The durable cleanup queue: every ended connection's cleanup is queued in the store and
/// delivered by a bounded pool of workers, retried with exponential backoff and jitter until
/// it is delivered or `max_age` passes. Whichever node drains the queue delivers it (this one
/// after a restart included), so on a shared store a cleanup outlives the node that queued it.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CleanupConfig {
    /// How many cleanup calls (and the store removals after them) this node makes at once.
    pub workers: usize,
    /// How long a cleanup is retried after it was first queued; then it is dropped (logged
    /// at warn with the connection id, and counted) and the connection removed from the store.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    /// The pause after a cleanup's first failed attempt; doubled after each further one.
    #[serde(with = "humantime_serde")]
    pub backoff_initial: Duration,
    /// The longest pause between two attempts (before jitter).
    #[serde(with = "humantime_serde")]
    pub backoff_max: Duration,
    /// How long a node's claim on a cleanup it works on lasts: no other node sends it
    /// meanwhile. If the node dies, the cleanup is due again when the claim lapses. Must
    /// exceed the longest call with its retries (`functions.timeout` × (`retries` + 1)).
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    /// How often an idle node looks in the queue for cleanups due (its own are picked up at
    /// once; this finds retries that became due and those other nodes left).
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
}

/// When a Redis store loses its data (restarted without persistence), every node writes back
/// the records, node-set entries and group memberships of the connections it holds. Group
/// memberships are written by functions straight to the store, so each node keeps a copy of
/// its connections' groups, refreshed by a background sweep (pipelined reads, a few hundred
/// ids per round trip). Not used with the embedded memory store, which cannot lose data apart
/// from the process.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreResyncConfig {
    /// How often this node checks that the store still holds its state (one round trip) and
    /// otherwise sweeps its connections' groups. Shorter: fewer joins lost (a join or leave
    /// newer than the last sweep is not written back if Redis loses its data right then)
    /// and a faster write-back, for one `SMEMBERS` per held connection per sweep.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
}

impl Default for StoreResyncConfig {
    fn default() -> Self {
        StoreResyncConfig {
            interval: Duration::from_secs(5),
        }
    }
}

impl Default for CleanupConfig {
    fn default() -> Self {
        CleanupConfig {
            workers: 16,
            max_age: Duration::from_secs(6 * 60 * 60),
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(5 * 60),
            lease: Duration::from_secs(60),
            poll_interval: Duration::from_secs(1),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            node_id: format!("node-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]),
            store: "memory".to_owned(),
            store_prefix: store::DEFAULT_PREFIX.to_owned(),
            node_heartbeat: Duration::from_secs(5),
            node_heartbeat_ttl: Duration::from_secs(15),
            relay_timeout: Duration::from_secs(2),
            public: PublicConfig::default(),
            sendback: SendbackConfig::default(),
            functions: FunctionsConfig::default(),
            limits: LimitsConfig::default(),
            heartbeat: HeartbeatConfig::default(),
            shutdown: ShutdownConfig::default(),
            cleanup: CleanupConfig::default(),
            store_resync: StoreResyncConfig::default(),
            aws: AwsConfig::default(),
            tencent: TencentConfig::default(),
        }
    }
}

impl Default for PublicConfig {
    fn default() -> Self {
        PublicConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            page: None,
            tls: None,
        }
    }
}

impl Default for SendbackConfig {
    fn default() -> Self {
        SendbackConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 9090)),
            token: None,
            insecure_no_auth: false,
            max_body_bytes: 4 << 20,
            max_batch_ids: 10_000,
            advertise: None,
            tls: None,
        }
    }
}

impl Default for FunctionsConfig {
    fn default() -> Self {
        FunctionsConfig {
            dialect: Dialect::Native,
            register: None,
            transport: None,
            cleanup: None,
            route_selection_expression: "$request.body.action".to_owned(),
            routes: BTreeMap::new(),
            timeout: Duration::from_secs(10),
            retries: 2,
            retry_backoff: Duration::from_millis(100),
            max_reply_bytes: 1 << 20,
            max_context_bytes: 4096,
            pool_max_idle_per_host: 1024,
            ca_file: None,
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_message_bytes: 128 * 1024,
            max_connections: 100_000,
            max_pending_connections: 1024,
            handshake_timeout: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(10 * 60),
            ping_interval: Duration::from_secs(30),
            max_duration: Duration::from_secs(2 * 60 * 60),
            write_delay: Duration::ZERO,
            write_timeout: Duration::from_secs(10),
            outbound_queue_messages: 1024,
            outbound_queue_bytes: 1 << 20,
            inbound_queue_messages: 16,
            read_buffer_bytes: 128,
            write_buffer_bytes: 4096,
        }
    }
}

impl Default for HeartbeatConfig {
    fn default() -> Self {
        HeartbeatConfig {
            request: "ping".to_owned(),
            reply: "pong".to_owned(),
        }
    }
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig {
            grace: Duration::from_secs(10),
        }
    }
}

/// The prefix of environment variables that override the file. Nested fields are joined
/// with `__`: `SWITCHBOARD_SENDBACK__TOKEN`, `SWITCHBOARD_LIMITS__IDLE_TIMEOUT=5m`.
pub const ENV_PREFIX: &str = "SWITCHBOARD_";

/// `SWITCHBOARD_*` variables that are not config fields.
const NOT_CONFIG: &[&str] = &[
    "SWITCHBOARD_CONFIG",
    "SWITCHBOARD_LOG",
    "SWITCHBOARD_REQUIRE_ALL",
];

impl Config {
    /// Loads a config: the TOML file (if any), then the `SWITCHBOARD_*` variables of `env`,
    /// then `overrides` (dotted paths, as command-line flags give them), then validates.
    pub fn load(
        file: Option<&Path>,
        env: &BTreeMap<String, String>,
        overrides: &[(String, String)],
    ) -> Result<Config, ConfigError> {
        let (text, origin) = match file {
            Some(path) => (
                std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })?,
                path.display().to_string(),
            ),
            None => (String::new(), "defaults".to_owned()),
        };
        let mut table: toml::Table =
            text.parse()
                .map_err(|e: toml::de::Error| ConfigError::Invalid {
                    origin: origin.clone(),
                    message: e.to_string(),
                })?;
        for (key, value) in env {
            if NOT_CONFIG.contains(&key.as_str()) {
                continue;
            }
            if let Some(path) = key.strip_prefix(ENV_PREFIX) {
                let path = path.to_ascii_lowercase().replace("__", ".");
                set_path(&mut table, &path, value).map_err(|message| ConfigError::Invalid {
                    origin: format!("environment variable {key}"),
                    message,
                })?;
            }
        }
        for (path, value) in overrides {
            set_path(&mut table, path, value).map_err(|message| ConfigError::Invalid {
                origin: format!("command-line flag for `{path}`"),
                message,
            })?;
        }
        let config: Config =
            Config::deserialize(table).map_err(|e: toml::de::Error| ConfigError::Invalid {
                origin,
                message: e.to_string(),
            })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what types alone cannot; the message names the offending field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |field: &str, message: String| {
            Err(ConfigError::Field {
                field: field.to_owned(),
                message,
            })
        };
        if self.node_id.is_empty()
            || self.node_id.len() > 64
            || !self
                .node_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        {
            return bad(
                "node_id",
                "must be 1-64 characters of letters, digits, `-`, `_`, `.`".into(),
            );
        }
        let f = &self.functions;
        let targets = [
            ("functions.register".to_owned(), f.register.as_ref()),
            ("functions.transport".to_owned(), f.transport.as_ref()),
            ("functions.cleanup".to_owned(), f.cleanup.as_ref()),
        ]
        .into_iter()
        .chain(
            f.routes
                .iter()
                .map(|(key, t)| (format!("functions.routes.{key}"), Some(t))),
        );
        for (field, target) in targets {
            let Some(target) = target else { continue };
            let url = target.url();
            match url::Url::parse(url) {
                Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
                Ok(u) => {
                    return bad(
                        &field,
                        format!("`{url}`: scheme `{}` is not http or https", u.scheme()),
                    );
                }
                Err(e) => return bad(&field, format!("`{url}` is not a URL: {e}")),
            }
        }
        if route_path(&f.route_selection_expression).is_none() {
            return bad(
                "functions.route_selection_expression",
                format!(
                    "`{}`: expected `$request.body.<field>[.<field>…]`",
                    f.route_selection_expression
                ),
            );
        }
        if self.aws.stage.is_empty()
            || self.aws.stage.contains('/')
            || self.aws.stage.starts_with('@')
        {
            return bad("aws.stage", "must be a non-empty path segment".into());
        }
        for (i, c) in self.aws.credentials.iter().enumerate() {
            if c.access_key_id.is_empty() || c.secret_access_key.len() < 16 {
                return bad(
                    &format!("aws.credentials[{i}]"),
                    "needs an access_key_id and a secret_access_key of at least 16 characters"
                        .into(),
                );
            }
        }
        match (&self.sendback.token, self.sendback.insecure_no_auth) {
            (Some(token), _) if token.chars().filter(|c| !c.is_whitespace()).count() < 16 => {
                return bad(
                    "sendback.token",
                    "must hold at least 16 characters that are not spaces (`switchboard token` prints a fresh one)"
                        .into(),
                );
            }
            (None, false) => {
                return bad(
                    "sendback.token",
                    "is required (or set sendback.insecure_no_auth = true for local development)"
                        .into(),
                );
            }
            (None, true) if !self.sendback.listen.ip().is_loopback() => {
                return bad(
                    "sendback.insecure_no_auth",
                    format!(
                        "is allowed only on a loopback address, not {}",
                        self.sendback.listen
                    ),
                );
            }
            _ => {}
        }
        if let Some(advertise) = &self.sendback.advertise {
            match url::Url::parse(advertise) {
                Ok(u)
                    if matches!(u.scheme(), "http" | "https")
                        && u.host().is_some()
                        && u.port_or_known_default().is_some()
                        && u.path() == "/"
                        && u.query().is_none()
                        && u.username().is_empty() => {}
                _ => {
                    return bad(
                        "sendback.advertise",
                        format!(
                            "`{advertise}`: expected `http://host:port` or `https://host:port`"
                        ),
                    );
                }
            }
        }
        if self.public.listen == self.sendback.listen && self.public.listen.port() != 0 {
            return bad("sendback.listen", "must differ from public.listen".into());
        }
        if let Some(tls) = &self.public.tls {
            let port = tls.listen.port();
            if port != 0 && (tls.listen == self.public.listen || tls.listen == self.sendback.listen)
            {
                return bad(
                    "public.tls.listen",
                    "must differ from public.listen and sendback.listen".into(),
                );
            }
        }
        self.validate_tls()?;
        let l = &self.limits;
        let positive = [
            ("limits.max_message_bytes", l.max_message_bytes),
            ("limits.max_connections", l.max_connections),
            ("limits.max_pending_connections", l.max_pending_connections),
            ("limits.outbound_queue_messages", l.outbound_queue_messages),
            ("limits.outbound_queue_bytes", l.outbound_queue_bytes),
            ("limits.inbound_queue_messages", l.inbound_queue_messages),
            ("limits.read_buffer_bytes", l.read_buffer_bytes),
            ("limits.write_buffer_bytes", l.write_buffer_bytes),
            ("functions.max_reply_bytes", self.functions.max_reply_bytes),
            ("sendback.max_body_bytes", self.sendback.max_body_bytes),
            ("sendback.max_batch_ids", self.sendback.max_batch_ids),
        ];
        for (field, value) in positive {
            if value == 0 {
                return bad(field, "must be greater than 0".into());
            }
        }
        if l.max_message_bytes > 64 << 20 {
            return bad("limits.max_message_bytes", "must be at most 64 MiB".into());
        }
        if l.outbound_queue_bytes < l.max_message_bytes {
            return bad(
                "limits.outbound_queue_bytes",
                "must be at least limits.max_message_bytes".into(),
            );
        }
        if l.write_delay > Duration::from_secs(1) {
            return bad("limits.write_delay", "must be at most 1s".into());
        }
        let durations = [
            ("limits.handshake_timeout", l.handshake_timeout),
            ("limits.keepalive_timeout", l.keepalive_timeout),
            ("limits.idle_timeout", l.idle_timeout),
            ("limits.ping_interval", l.ping_interval),
            ("limits.max_duration", l.max_duration),
            ("limits.write_timeout", l.write_timeout),
            ("functions.timeout", self.functions.timeout),
            ("node_heartbeat", self.node_heartbeat),
            ("node_heartbeat_ttl", self.node_heartbeat_ttl),
            ("relay_timeout", self.relay_timeout),
            ("shutdown.grace", self.shutdown.grace),
            ("cleanup.max_age", self.cleanup.max_age),
            ("cleanup.backoff_initial", self.cleanup.backoff_initial),
            ("cleanup.backoff_max", self.cleanup.backoff_max),
            ("cleanup.lease", self.cleanup.lease),
            ("cleanup.poll_interval", self.cleanup.poll_interval),
            ("store_resync.interval", self.store_resync.interval),
        ];
        for (field, value) in durations {
            if value.is_zero() {
                return bad(field, "must be greater than 0".into());
            }
        }
        let c = &self.cleanup;
        if c.workers == 0 || c.workers > 4096 {
            return bad("cleanup.workers", "must be between 1 and 4096".into());
        }
        if c.backoff_max < c.backoff_initial {
            return bad(
                "cleanup.backoff_max",
                "must be at least cleanup.backoff_initial".into(),
            );
        }
        let longest_call = self
            .functions
            .timeout
            .saturating_mul(self.functions.retries.saturating_add(1));
        if c.lease <= longest_call {
            return bad(
                "cleanup.lease",
                "must be longer than functions.timeout × (functions.retries + 1): a claim \
                 must outlast a cleanup call and its retries"
                    .into(),
            );
        }
        if self.node_heartbeat_ttl <= self.node_heartbeat {
            return bad(
                "node_heartbeat_ttl",
                "must be greater than node_heartbeat (a node must beat before it expires)".into(),
            );
        }
        if self.functions.retries > 10 {
            return bad("functions.retries", "must be at most 10".into());
        }
        if !self.heartbeat.request.is_empty() && self.heartbeat.reply.is_empty() {
            return bad(
                "heartbeat.reply",
                "must not be empty when heartbeat.request is set".into(),
            );
        }
        if let Some(page) = &self.public.page {
            if !page.is_file() {
                return bad(
                    "public.page",
                    format!("`{}` is not a readable file", page.display()),
                );
            }
        }
        if let Err(e) = store::check_url(&self.store) {
            return bad("store", e.to_string());
        }
        if self.store_prefix.is_empty() || self.store_prefix.contains(['{', '}']) {
            return bad(
                "store_prefix",
                "must be non-empty and must not contain `{` or `}`".into(),
            );
        }
        Ok(())
    }
}

impl Config {
    /// Loads every certificate, key and CA file the config names, so that a file that
    /// cannot be used stops the gateway (and `switchboard check`) before any port is bound.
    fn validate_tls(&self) -> Result<(), ConfigError> {
        let pairs = [
            ("public.tls", self.public.tls.as_ref().map(|t| &t.files)),
            ("sendback.tls", self.sendback.tls.as_ref()),
        ];
        for (table, files) in pairs {
            let Some(files) = files else { continue };
            if let Err(source) = crate::tls::server::load(&files.cert_file, &files.key_file) {
                let which = if source.file == files.key_file {
                    "key_file"
                } else {
                    "cert_file"
                };
                return Err(ConfigError::Tls {
                    field: format!("{table}.{which}"),
                    source,
                });
            }
        }
        if let Some(ca_file) = &self.functions.ca_file {
            crate::tls::server::load_certs(ca_file).map_err(|source| ConfigError::Tls {
                field: "functions.ca_file".into(),
                source,
            })?;
        }
        if self.aws.management_api_on_public && self.aws.credentials.is_empty() {
            return Err(ConfigError::Field {
                field: "aws.management_api_on_public".into(),
                message: "needs aws.credentials: the management API on the public listener \
                          takes signed requests only"
                    .into(),
            });
        }
        Ok(())
    }
}

/// Sets `a.b.c = value` in a TOML table. The value is read as a TOML value when it parses
/// as one (`5`, `true`, `"x"`), otherwise as a string (`10s`, `http://..`).
fn set_path(table: &mut toml::Table, path: &str, value: &str) -> Result<(), String> {
    let parsed: toml::Value = format!("v = {value}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(value.to_owned()));
    let mut parts: Vec<&str> = path.split('.').collect();
    let Some(last) = parts.pop() else {
        return Err("empty key".into());
    };
    let mut cur = table;
    for part in parts {
        let entry = cur
            .entry(part.to_owned())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        cur = entry
            .as_table_mut()
            .ok_or_else(|| format!("`{part}` is not a table"))?;
    }
    cur.insert(last.to_owned(), parsed);
    Ok(())
}

/// The field path of a `$request.body.a.b` route selection expression.
pub(crate) fn route_path(expression: &str) -> Option<Vec<&str>> {
    let path = expression.strip_prefix("$request.body.")?;
    let fields: Vec<&str> = path.split('.').collect();
    fields.iter().all(|f| !f.is_empty()).then_some(fields)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_expressions() {
        assert_eq!(route_path("$request.body.action"), Some(vec!["action"]));
        assert_eq!(route_path("$request.body.a.b"), Some(vec!["a", "b"]));
        assert_eq!(route_path("$request.body."), None);
        assert_eq!(route_path("action"), None);
    }

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn load_str(text: &str, env_pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let dir = std::env::temp_dir().join(format!("sb-config-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("gateway.toml");
        std::fs::write(&path, text).unwrap();
        let result = Config::load(Some(&path), &env(env_pairs), &[]);
        std::fs::remove_dir_all(&dir).unwrap();
        result
    }

    #[test]
    fn the_example_config_is_valid_and_shows_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/gateway.toml");
        let config = Config::load(Some(&path), &BTreeMap::new(), &[]).expect("deploy/gateway.toml");
        let defaults = Config::default();
        assert_eq!(
            config.limits.read_buffer_bytes,
            defaults.limits.read_buffer_bytes
        );
        assert_eq!(
            config.limits.max_message_bytes,
            defaults.limits.max_message_bytes
        );
        assert_eq!(config.limits.write_timeout, defaults.limits.write_timeout);
        let (l, d) = (&config.limits, &defaults.limits);
        assert_eq!(
            (
                l.max_connections,
                l.max_pending_connections,
                l.handshake_timeout,
                l.keepalive_timeout
            ),
            (
                d.max_connections,
                d.max_pending_connections,
                d.handshake_timeout,
                d.keepalive_timeout
            )
        );
        assert_eq!(config.aws.stage, defaults.aws.stage);
        assert_eq!(config.aws.region, defaults.aws.region);
        assert_eq!(config.tencent.stage, defaults.tencent.stage);
        assert_eq!(
            config.functions.route_selection_expression,
            defaults.functions.route_selection_expression
        );
        let (c, d) = (&config.cleanup, &defaults.cleanup);
        assert_eq!(
            (
                c.workers,
                c.max_age,
                c.backoff_initial,
                c.backoff_max,
                c.lease,
                c.poll_interval
            ),
            (
                d.workers,
                d.max_age,
                d.backoff_initial,
                d.backoff_max,
                d.lease,
                d.poll_interval
            )
        );
        assert_eq!(config.node_heartbeat, defaults.node_heartbeat);
        assert_eq!(config.node_heartbeat_ttl, defaults.node_heartbeat_ttl);
        assert_eq!(config.relay_timeout, defaults.relay_timeout);
        assert_eq!(config.store_resync.interval, defaults.store_resync.interval);
        assert_eq!(
            (
                config.sendback.max_body_bytes,
                config.sendback.max_batch_ids
            ),
            (
                defaults.sendback.max_body_bytes,
                defaults.sendback.max_batch_ids
            )
        );
    }

    #[test]
    fn cleanup_settings_are_checked() {
        let token = "[sendback]\ntoken = \"0123456789abcdef\"\n";
        let field = |extra: &str| match load_str(&format!("{token}{extra}"), &[]) {
            Err(ConfigError::Field { field, .. }) => field,
            other => panic!("{extra}: {other:?}"),
        };
        assert_eq!(field("[cleanup]\nworkers = 0\n"), "cleanup.workers");
        assert_eq!(field("[cleanup]\nmax_age = \"0s\"\n"), "cleanup.max_age");
        assert_eq!(
            field("[store_resync]\ninterval = \"0s\"\n"),
            "store_resync.interval"
        );
        assert_eq!(
            field("[cleanup]\nbackoff_initial = \"10s\"\nbackoff_max = \"1s\"\n"),
            "cleanup.backoff_max"
        );
        // The default call bound: 10 s × (2 retries + 1) = 30 s.
        assert_eq!(field("[cleanup]\nlease = \"30s\"\n"), "cleanup.lease");
        let ok = load_str(
            &format!("{token}[cleanup]\nworkers = 2\nmax_age = \"2s\"\nlease = \"31s\"\n"),
            &[("SWITCHBOARD_CLEANUP__BACKOFF_INITIAL", "50ms")],
        )
        .unwrap();
        assert_eq!(ok.cleanup.workers, 2);
        assert_eq!(ok.cleanup.backoff_initial, Duration::from_millis(50));
    }

    #[test]
    fn the_heartbeat_ttl_must_outlive_the_interval() {
        let token = "[sendback]\ntoken = \"0123456789abcdef\"\n";
        let err = load_str(
            &format!("node_heartbeat = \"1s\"\nnode_heartbeat_ttl = \"1s\"\n{token}"),
            &[],
        )
        .and_then(|c| c.validate().map(|()| c))
        .unwrap_err();
        assert!(err.to_string().contains("node_heartbeat_ttl"), "{err}");
        let ok = load_str(
            &format!("node_heartbeat = \"100ms\"\nnode_heartbeat_ttl = \"500ms\"\nrelay_timeout = \"300ms\"\n{token}"),
            &[],
        )
        .unwrap();
        ok.validate().unwrap();
        assert_eq!(ok.relay_timeout, Duration::from_millis(300));
    }

    #[test]
    fn file_env_and_flags_layer_in_order() {
        let c = load_str(
            "[sendback]\ntoken = \"0123456789abcdef\"\n[limits]\nidle_timeout = \"5m\"\n",
            &[
                ("SWITCHBOARD_LIMITS__IDLE_TIMEOUT", "7s"),
                ("SWITCHBOARD_LIMITS__MAX_CONNECTIONS", "12"),
                ("OTHER", "x"),
            ],
        )
        .unwrap();
        assert_eq!(c.limits.idle_timeout, Duration::from_secs(7));
        assert_eq!(c.limits.max_connections, 12);
        let c = Config::load(
            None,
            &env(&[("SWITCHBOARD_SENDBACK__INSECURE_NO_AUTH", "true")]),
            &[("functions.transport".into(), "http://127.0.0.1:1/t".into())],
        )
        .unwrap();
        assert!(c.sendback.insecure_no_auth);
        assert_eq!(
            c.functions.transport.as_ref().map(Target::url),
            Some("http://127.0.0.1:1/t")
        );
    }

    #[test]
    fn errors_name_the_field() {
        let msg = |text: &str| load_str(text, &[]).unwrap_err().to_string();
        assert!(msg("").contains("sendback.token"), "{}", msg(""));
        assert!(msg("[limits]\nidle_timeout = \"soon\"\n").contains("idle_timeout"));
        assert!(msg("[limits]\nmax_conections = 5\n").contains("max_conections"));
        let m =
            msg("[sendback]\ntoken = \"0123456789abcdef\"\n[functions]\nregister = \"ftp://x/\"\n");
        assert!(m.contains("functions.register"), "{m}");
        load_str(
            "[sendback]\ntoken = \"0123456789abcdef\"\n[functions]\ntransport = \"https://x/\"\n",
            &[],
        )
        .expect("https functions are accepted");
        let m = msg("[sendback]\ninsecure_no_auth = true\nlisten = \"0.0.0.0:9\"\n");
        assert!(m.contains("insecure_no_auth"), "{m}");
        let m = msg("[sendback]\ntoken = \"0123456789abcdef\"\n[limits]\nmax_message_bytes = 0\n");
        assert!(m.contains("limits.max_message_bytes"), "{m}");
        let m = msg("[sendback]\ntoken = \"0123456789abcdef\"\n[limits]\nwrite_timeout = \"0s\"\n");
        assert!(m.contains("limits.write_timeout"), "{m}");
        let m = msg("[sendback]\ntoken = \"0123456789abcdef\"\nmax_batch_ids = 0\n");
        assert!(m.contains("sendback.max_batch_ids"), "{m}");
        let m = msg(
            "[sendback]\ntoken = \"0123456789abcdef\"\n[limits]\nmax_pending_connections = 0\n",
        );
        assert!(m.contains("limits.max_pending_connections"), "{m}");
        let m =
            msg("[sendback]\ntoken = \"0123456789abcdef\"\n[limits]\nkeepalive_timeout = \"0s\"\n");
        assert!(m.contains("limits.keepalive_timeout"), "{m}");
        assert!(msg("this is not toml").contains("gateway.toml"));
        let m = msg("store = \"postgres://x\"\n[sendback]\ntoken = \"0123456789abcdef\"\n");
        assert!(m.contains("`store`"), "{m}");
        let m = msg("store_prefix = \"a{b}\"\n[sendback]\ntoken = \"0123456789abcdef\"\n");
        assert!(m.contains("store_prefix"), "{m}");
        for advertise in [
            "ftp://x:1",
            "http://x:1/path",
            "gateway:9090",
            "http://u@x:1",
        ] {
            let m = msg(&format!(
                "[sendback]\ntoken = \"0123456789abcdef\"\nadvertise = \"{advertise}\"\n"
            ));
            assert!(m.contains("sendback.advertise"), "{advertise}: {m}");
        }
        load_str(
            "[sendback]\ntoken = \"0123456789abcdef\"\nadvertise = \"http://10.0.0.5:9090\"\n",
            &[],
        )
        .expect("a host and port are accepted");
        load_str(
            "[sendback]\ntoken = \"0123456789abcdef\"\nadvertise = \"https://gw-1.internal:9090\"\n",
            &[],
        )
        .expect("https is accepted");
        let m = msg(
            "[sendback]\ntoken = \"0123456789abcdef\"\n[aws]\nmanagement_api_on_public = true\n",
        );
        assert!(m.contains("aws.management_api_on_public"), "{m}");
    }
}
