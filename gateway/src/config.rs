//! The gateway's typed configuration: a TOML file, then `SWITCHBOARD_*` environment
//! variables, then command-line flags, validated before any port is bound.
//!
//! Every field has a default, so an empty file is a valid (local, development) config once
//! a send-back token or `insecure_no_auth` is given. Durations are written the human way:
//! `"10s"`, `"500ms"`, `"2h"`. `layers` sets the variables and flags over the file, each
//! value typed by its field.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::error::ConfigError;

mod duration;
mod layers;
pub mod passthrough;

pub use passthrough::{
    ApiKeyConfig, JwtAlgorithm, JwtConfig, PassthroughAuth, PassthroughRoute, path_matches,
};

use layers::Layer;

/// The whole gateway configuration.
#[derive(Clone, Debug, Deserialize, Serialize)]
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
    #[serde(with = "duration")]
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
    #[serde(with = "duration")]
    pub node_heartbeat_ttl: Duration,
    /// How long a send-back request relayed to another node may take: a node slower than
    /// this did not answer (503 for its connection; a group send lists it in
    /// `unreachableNodes`). A group send never waits longer on a silent node.
    #[serde(with = "duration")]
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
    /// The gateway's own log.
    pub log: LogConfig,
    /// The `aws` dialect.
    pub aws: AwsConfig,
    /// The `tencent` dialect.
    pub tencent: TencentConfig,
    /// Prometheus metrics (`GET /metrics`).
    pub metrics: MetricsConfig,
    /// `[[passthrough]]`: WebSocket routes whose frames go to a backend service as they are.
    #[serde(rename = "passthrough", skip_serializing_if = "Vec::is_empty")]
    pub passthrough: Vec<PassthroughRoute>,
}

/// Where `GET /metrics` (the Prometheus text format) is served.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// A listener of its own for `/metrics` (e.g. `0.0.0.0:9100`, for a scraper on another
    /// host), serving nothing else. Absent: `/metrics` is on the send-back listener,
    /// without the token (as `/healthz` is; that listener is internal). Metrics carry no
    /// secret and no connection id or group name.
    pub listen: Option<SocketAddr>,
}

/// The public (WebSocket) listener.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct PublicConfig {
    /// Address to accept WebSocket clients on.
    pub listen: SocketAddr,
    /// An HTML file served at `GET /` to plain (non-upgrade) requests, e.g. a chat page.
    pub page: Option<PathBuf>,
    /// Every connection starts with a PROXY protocol header (HAProxy's, version 1 or 2),
    /// as a TCP load balancer in front of the gateway writes it (HAProxy `send-proxy`,
    /// nginx `proxy_protocol on`, AWS NLB): the client's address is the header's. Only
    /// from `trusted_proxies`: a connection from another address is closed at once, and
    /// so is one whose header is missing or malformed (within
    /// `limits.handshake_timeout`, which the header counts against).
    pub proxy_protocol: bool,
    /// The proxies and load balancers in front of the gateway, as CIDRs (`10.0.0.0/8`,
    /// `127.0.0.1/32`, `::1/128`): the only peers whose PROXY protocol header and
    /// `real_ip_header` are believed.
    #[serde(deserialize_with = "cidrs")]
    pub trusted_proxies: Vec<IpNet>,
    /// The request header that names the client when the connection comes from a trusted
    /// proxy: `none` (the default: no header is believed), `x-forwarded-for`, or
    /// `forwarded` (RFC 7239, its `for=`). Its list is read from the right: the first
    /// address that is not in `trusted_proxies` is the client's (nginx's
    /// `real_ip_recursive on`), so a client cannot pass for another by sending the header
    /// itself.
    pub real_ip_header: RealIpHeader,
    /// `wss://`: a second public listener, speaking TLS, beside the plain one (`listen`).
    /// Both serve the same WebSockets, page and `/healthz`.
    pub tls: Option<PublicTlsConfig>,
}

/// A list of CIDRs, each refused with a message that says what a CIDR looks like.
fn cidrs<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Vec<IpNet>, D::Error> {
    Vec::<String>::deserialize(deserializer)?
        .iter()
        .map(|text| {
            text.parse().map_err(|_| {
                serde::de::Error::custom(format!(
                    "`{text}` is not a CIDR (an address and a prefix length: 10.0.0.0/8, \
                     192.0.2.7/32, 2001:db8::/32)"
                ))
            })
        })
        .collect()
}

/// Which request header names the client behind trusted proxies (`public.real_ip_header`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RealIpHeader {
    /// None: the peer's address (or the PROXY protocol header's) is the client's.
    #[default]
    None,
    /// `X-Forwarded-For: client, proxy1, proxy2`.
    XForwardedFor,
    /// `Forwarded: for=client, for=proxy1` (RFC 7239).
    Forwarded,
}

/// The public TLS (`wss://`) listener.
#[derive(Clone, Debug, Deserialize, Serialize)]
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
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// The certificate chain, PEM, the server's certificate first.
    pub cert_file: PathBuf,
    /// Its private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
}

/// The send-back API listener.
#[derive(Clone, Debug, Deserialize, Serialize)]
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
#[derive(Clone, Debug, Deserialize, Serialize)]
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
    #[serde(with = "duration")]
    pub timeout: Duration,
    /// Retries of a transport or cleanup call that could not connect, timed out, or got
    /// 500/502/503/504 (register is never retried: the client is waiting).
    pub retries: u32,
    /// Pause before the first retry; doubled for each further one.
    #[serde(with = "duration")]
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
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
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
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum Target {
    /// Just the URL; the dialect is `functions.dialect`.
    Url(String),
    /// All details.
    Full {
        /// The URL.
        url: String,
        /// The dialect; default `functions.dialect`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        dialect: Option<Dialect>,
        /// Whether a transport reply body is sent back to the client. Default: yes for
        /// `native`, no for `aws` (a route without a route response) and `tencent`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
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
#[derive(Clone, Debug, Deserialize, Serialize)]
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
#[derive(Clone, Debug, Deserialize, Serialize)]
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
#[derive(Clone, Debug, Deserialize, Serialize)]
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
#[derive(Clone, Debug, Deserialize, Serialize)]
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
    #[serde(with = "duration")]
    pub handshake_timeout: Duration,
    /// How long a keep-alive connection may wait, after a plain request's reply (the page,
    /// `/healthz`, an error), for the first byte of its next request; then the gateway
    /// closes it.
    #[serde(with = "duration")]
    pub keepalive_timeout: Duration,
    /// A connection from which no message arrives for this long is closed (1001).
    #[serde(with = "duration")]
    pub idle_timeout: Duration,
    /// When nothing has arrived for this long, the gateway sends a ping; when nothing
    /// arrives for another interval, the connection is closed as dead.
    #[serde(with = "duration")]
    pub ping_interval: Duration,
    /// The longest a connection may last (closed with 1001 after it).
    #[serde(with = "duration")]
    pub max_duration: Duration,
    /// How long a connection collects messages sent to it through the send-back API
    /// before writing them (all in one flush). 0, the default, writes at once. A few
    /// milliseconds trade that much latency for far fewer writes when clients get bursts
    /// of messages (like Centrifugo's `client_write_delay`). Function replies to a
    /// client's own message are never delayed.
    #[serde(with = "duration")]
    pub write_delay: Duration,
    /// The longest one write to a client's socket may wait (queued messages, replies,
    /// pings, close frames): a client that takes none of it for this long is dropped
    /// without a close frame and cleaned up (`connection_lost`). It bounds the HTTP replies
    /// before the upgrade too (the page, `/healthz`, errors, the 101). Shutdown and the idle /
    /// duration limits end a waiting write at once, and a close through the send-back API
    /// within 2 s, whatever this is. Shorter frees the slot and the queued memory of a
    /// client that stopped reading sooner; longer spares clients on slow or briefly
    /// stalled networks (a phone changing cells) that would catch up.
    #[serde(with = "duration")]
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
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct HeartbeatConfig {
    /// The text a client sends (exact match); empty disables the heartbeat.
    pub request: String,
    /// The text the gateway answers with.
    pub reply: String,
}

/// Graceful shutdown.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownConfig {
    /// How long to wait for connections to close and cleanup calls to finish.
    #[serde(with = "duration")]
    pub grace: Duration,
}

/// The durable cleanup queue: every ended connection's cleanup is queued in the store and
/// delivered by a bounded pool of workers, retried with exponential backoff and jitter until
/// it is delivered or `max_age` passes. Whichever node drains the queue delivers it (this one
/// after a restart included), so on a shared store a cleanup outlives the node that queued it.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct CleanupConfig {
    /// How many cleanup calls (and the store removals after them) this node makes at once.
    pub workers: usize,
    /// How long a cleanup is retried after it was first queued; then it is dropped (logged
    /// at warn with the connection id, and counted) and the connection removed from the store.
    #[serde(with = "duration")]
    pub max_age: Duration,
    /// The pause after a cleanup's first failed attempt; doubled after each further one.
    #[serde(with = "duration")]
    pub backoff_initial: Duration,
    /// The longest pause between two attempts (before jitter).
    #[serde(with = "duration")]
    pub backoff_max: Duration,
    /// How long a node's claim on a cleanup it works on lasts: no other node sends it
    /// meanwhile. If the node dies, the cleanup is due again when the claim lapses. Must
    /// exceed the longest call with its retries (`functions.timeout` × (`retries` + 1)).
    #[serde(with = "duration")]
    pub lease: Duration,
    /// How often an idle node looks in the queue for cleanups due (its own are picked up at
    /// once; this finds retries that became due and those other nodes left).
    #[serde(with = "duration")]
    pub poll_interval: Duration,
}

/// When a Redis store loses its data (restarted without persistence), every node writes back
/// the records, node-set entries and group memberships of the connections it holds. Group
/// memberships are written by functions straight to the store, so each node keeps a copy of
/// its connections' groups, refreshed by a background sweep (pipelined reads, a few hundred
/// ids per round trip). Not used with the embedded memory store, which cannot lose data apart
/// from the process.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreResyncConfig {
    /// How often this node checks that the store still holds its state (one round trip) and
    /// otherwise sweeps its connections' groups. Shorter: fewer joins lost (a join or leave
    /// newer than the last sweep is not written back if Redis loses its data right then)
    /// and a faster write-back, for one `SMEMBERS` per held connection per sweep.
    #[serde(with = "duration")]
    pub interval: Duration,
}

/// The gateway's own log, on stderr. What it logs is `SWITCHBOARD_LOG` (a `tracing` filter:
/// `info`, the default, or `debug`, or `info,gateway::sendback=debug`), not a config field:
/// it applies before the config is read.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `text` (a line for people, the default) or `json` (one JSON object per line, for a
    /// log collector).
    pub format: LogFormat,
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `fields` (`message` among them),
    /// `target`, and the spans it happened in.
    Json,
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
            log: LogConfig::default(),
            aws: AwsConfig::default(),
            tencent: TencentConfig::default(),
            metrics: MetricsConfig::default(),
            passthrough: Vec::new(),
        }
    }
}

impl Default for PublicConfig {
    fn default() -> Self {
        PublicConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            page: None,
            proxy_protocol: false,
            trusted_proxies: Vec::new(),
            real_ip_header: RealIpHeader::None,
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

/// A config with every field set: the defaults, and the fields that are `None` (or empty)
/// by default set to a value of their type. Serialized, it has a value of each field's type,
/// which types the environment variables and flags; a test checks that it misses no field.
fn with_every_field() -> Config {
    let mut config = Config::default();
    config.public.page = Some(PathBuf::from("page.html"));
    config.public.trusted_proxies = vec![IpNet::default()];
    config.sendback.token = Some(String::new());
    config.sendback.advertise = Some(String::new());
    let files = TlsFiles {
        cert_file: PathBuf::new(),
        key_file: PathBuf::new(),
    };
    config.public.tls = Some(PublicTlsConfig {
        listen: default_public_tls_listen(),
        files: files.clone(),
    });
    config.sendback.tls = Some(files);
    config.functions.ca_file = Some(PathBuf::new());
    config.metrics.listen = Some(SocketAddr::from(([127, 0, 0, 1], 9100)));
    let target = Target::Full {
        url: String::new(),
        dialect: Some(Dialect::Native),
        two_way: Some(true),
    };
    config.functions.register = Some(target.clone());
    config.functions.transport = Some(target.clone());
    config.functions.cleanup = Some(target);
    config.aws.credentials = vec![AwsCredential {
        access_key_id: String::new(),
        secret_access_key: String::new(),
    }];
    config.passthrough = vec![passthrough::with_every_field()];
    config
}

/// Every field with a value of its type (see [`with_every_field`]).
fn field_types() -> toml::Table {
    // Serializing plain data cannot fail; if it did, every value would be taken as TOML
    // when it looks like a table or an array and as a string otherwise.
    toml::Table::try_from(with_every_field()).unwrap_or_default()
}

impl Config {
    /// Loads a config: the TOML file (if any), then the `SWITCHBOARD_*` variables of `env`,
    /// then `overrides` (dotted paths and raw values, as command-line flags give them),
    /// then validates. A variable's or flag's value is typed by its field (a string field
    /// takes it as it is); an error names the variable or flag it came from.
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
        Config::from_str_with_env(&text, &origin, env, overrides)
    }

    /// [`Config::load`] from TOML text already read; `origin` (the file's path) names it
    /// in error messages.
    pub fn from_str_with_env(
        text: &str,
        origin: &str,
        env: &BTreeMap<String, String>,
        overrides: &[(String, String)],
    ) -> Result<Config, ConfigError> {
        let origin = origin.to_owned();
        let mut table: toml::Table =
            text.parse()
                .map_err(|e: toml::de::Error| ConfigError::Invalid {
                    origin: origin.clone(),
                    message: e.to_string(),
                })?;
        let env_layers = env
            .iter()
            .filter(|(key, _)| !NOT_CONFIG.contains(&key.as_str()))
            .filter_map(|(key, value)| {
                let path = key.strip_prefix(ENV_PREFIX)?;
                Some(Layer {
                    path: path.to_ascii_lowercase().replace("__", "."),
                    value: value.clone(),
                    origin: format!("environment variable {key}"),
                })
            });
        let flag_layers = overrides.iter().map(|(path, value)| Layer {
            path: path.clone(),
            value: value.clone(),
            origin: format!("command-line flag for `{path}`"),
        });
        let layers: Vec<Layer> = env_layers.chain(flag_layers).collect();
        layers::apply(&mut table, &field_types(), &layers)?;
        let config: Config = Config::deserialize(table)
            .map_err(|e: toml::de::Error| layers::blame(&e, &layers, &origin))?;
        config.validate().map_err(|err| match err {
            ConfigError::Field {
                field,
                message,
                origin: None,
            } => ConfigError::Field {
                origin: layers::origin_of(&field, &layers).map(str::to_owned),
                field,
                message,
            },
            other => other,
        })?;
        Ok(config)
    }

    /// Checks what types alone cannot; the message names the offending field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |field: &str, message: String| {
            Err(ConfigError::Field {
                field: field.to_owned(),
                message,
                origin: None,
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
        let public = &self.public;
        if public.trusted_proxies.is_empty() {
            if public.proxy_protocol {
                return bad(
                    "public.trusted_proxies",
                    "is empty, so with public.proxy_protocol every connection would be \
                     refused: list the load balancers that send the PROXY header"
                        .into(),
                );
            }
            if public.real_ip_header != RealIpHeader::None {
                return bad(
                    "public.trusted_proxies",
                    "is empty, so public.real_ip_header would never be believed: list the \
                     proxies that set it"
                        .into(),
                );
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
        if let Some(listen) = self.metrics.listen {
            let taken = [
                Some(self.public.listen),
                Some(self.sendback.listen),
                self.public.tls.as_ref().map(|t| t.listen),
            ];
            if listen.port() != 0 && taken.contains(&Some(listen)) {
                return bad(
                    "metrics.listen",
                    "must differ from public.listen, public.tls.listen and sendback.listen".into(),
                );
            }
        }
        self.validate_tls()?;
        passthrough::validate(&self.passthrough, self.functions.register.is_some())?;
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
        if let Some(page) = &self.public.page
            && !page.is_file()
        {
            return bad(
                "public.page",
                format!("`{}` is not a readable file", page.display()),
            );
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
                origin: None,
                message: "needs aws.credentials: the management API on the public listener \
                          takes signed requests only"
                    .into(),
            });
        }
        Ok(())
    }
}

/// The field path of a `$request.body.a.b` route selection expression.
pub(crate) fn route_path(expression: &str) -> Option<Vec<&str>> {
    let path = expression.strip_prefix("$request.body.")?;
    let fields: Vec<&str> = path.split('.').collect();
    fields.iter().all(|f| !f.is_empty()).then_some(fields)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

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
        assert_eq!(config.store_prefix, defaults.store_prefix);
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

    const TOKEN_TOML: &str = "[sendback]\ntoken = \"0123456789abcdef\"\n";

    #[test]
    fn environment_values_are_typed_by_their_field() {
        // A token of digits is a string, not an integer.
        let c = load_str("", &[("SWITCHBOARD_SENDBACK__TOKEN", "1234567890123456")]).unwrap();
        assert_eq!(c.sendback.token.as_deref(), Some("1234567890123456"));
        // So is a node id of digits, and a quoted value keeps its quotes.
        let c = load_str(
            TOKEN_TOML,
            &[
                ("SWITCHBOARD_NODE_ID", "123"),
                ("SWITCHBOARD_HEARTBEAT__REPLY", "\"pong\""),
            ],
        )
        .unwrap();
        assert_eq!(c.node_id, "123");
        assert_eq!(c.heartbeat.reply, "\"pong\"");
        for (raw, want) in [("true", true), ("false", false)] {
            let c = load_str(
                "",
                &[
                    ("SWITCHBOARD_SENDBACK__INSECURE_NO_AUTH", raw),
                    ("SWITCHBOARD_SENDBACK__TOKEN", "0123456789abcdef"),
                ],
            )
            .unwrap();
            assert_eq!(c.sendback.insecure_no_auth, want, "{raw}");
        }
        // Tables, arrays and targets still take TOML.
        let c = load_str(
            TOKEN_TOML,
            &[
                (
                    "SWITCHBOARD_FUNCTIONS__TRANSPORT",
                    "{ url = \"http://127.0.0.1:1/t\", dialect = \"aws\" }",
                ),
                (
                    "SWITCHBOARD_AWS__CREDENTIALS",
                    "[{ access_key_id = \"AKID\", secret_access_key = \"0123456789abcdef\" }]",
                ),
                (
                    "SWITCHBOARD_FUNCTIONS__ROUTES__SENDMESSAGE",
                    "http://127.0.0.1:1/s",
                ),
            ],
        )
        .unwrap();
        let transport = c.functions.transport.unwrap();
        assert_eq!(
            (transport.url(), transport.dialect(Dialect::Native)),
            ("http://127.0.0.1:1/t", Dialect::Aws)
        );
        assert_eq!(c.aws.credentials[0].access_key_id, "AKID");
        assert_eq!(
            c.functions.routes["sendmessage"].url(),
            "http://127.0.0.1:1/s"
        );
        // A field of a target table set alone has its own type.
        let c = load_str(
            &format!("{TOKEN_TOML}[functions.transport]\nurl = \"http://127.0.0.1:1/t\"\n"),
            &[("SWITCHBOARD_FUNCTIONS__TRANSPORT__TWO_WAY", "false")],
        )
        .unwrap();
        assert!(!c.functions.transport.unwrap().two_way(Dialect::Native));
    }

    #[test]
    fn bad_environment_values_name_the_variable_not_the_file() {
        let msg = |pairs: &[(&str, &str)]| load_str(TOKEN_TOML, pairs).unwrap_err().to_string();
        let m = msg(&[("SWITCHBOARD_LIMITS__MAX_CONNECTIONS", "lots")]);
        assert!(
            m.contains("environment variable SWITCHBOARD_LIMITS__MAX_CONNECTIONS")
                && m.contains("expects an integer, got \"lots\"")
                && !m.contains("gateway.toml"),
            "{m}"
        );
        let m = msg(&[("SWITCHBOARD_SENDBACK__INSECURE_NO_AUTH", "yes")]);
        assert!(m.contains("SWITCHBOARD_SENDBACK__INSECURE_NO_AUTH"), "{m}");
        for var in ["SWITCHBOARD_NOPE__X", "SWITCHBOARD_LIMITS__NOPE"] {
            let m = msg(&[(var, "1")]);
            assert!(
                m.contains(&format!("environment variable {var}")) && m.contains("unknown field"),
                "{m}"
            );
        }
        // Values that fail only when deserialized (a duration, an address) too.
        let m = msg(&[("SWITCHBOARD_LIMITS__IDLE_TIMEOUT", "soon")]);
        assert!(
            m.contains("SWITCHBOARD_LIMITS__IDLE_TIMEOUT") && !m.contains("gateway.toml"),
            "{m}"
        );
        let m = Config::load(None, &env(&[]), &[("public.listen".into(), "nope".into())])
            .unwrap_err()
            .to_string();
        assert!(m.contains("command-line flag for `public.listen`"), "{m}");
        // A value that validation refuses names where it came from.
        let m = load_str("", &[("SWITCHBOARD_SENDBACK__TOKEN", "s3cr3t")])
            .unwrap_err()
            .to_string();
        assert!(
            m.contains("`sendback.token`")
                && m.contains("environment variable SWITCHBOARD_SENDBACK__TOKEN"),
            "{m}"
        );
        // A broken file is still the file's fault.
        let m = load_str("[limits]\nmax_connections = \"lots\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(m.contains("gateway.toml"), "{m}");
    }

    #[test]
    fn secrets_are_never_shown_in_errors() {
        let secret = "12345678901234567";
        let errors = [
            load_str(&format!("[sendback]\ntoken = {secret}\n"), &[]),
            load_str("", &[("SWITCHBOARD_SENDBACK__TOKEN", &secret[..9])]),
            load_str(
                TOKEN_TOML,
                &[(
                    "SWITCHBOARD_AWS__CREDENTIALS",
                    &format!("[{{ access_key_id = \"A\", secret_access_key = {secret} }}]"),
                )],
            ),
            load_str(
                TOKEN_TOML,
                &[(
                    "SWITCHBOARD_AWS__CREDENTIALS",
                    &format!("[{{ access_key_id = \"A\", secret_access_key = \"{secret} }}]"),
                )],
            ),
            load_str(TOKEN_TOML, &[("SWITCHBOARD_AWS__CREDENTIALS", secret)]),
        ];
        for result in errors {
            let m = result.unwrap_err().to_string();
            assert!(!m.contains(&secret[..9]), "{m}");
        }
    }

    /// The field names serde lists when it meets an unknown field in the table at `path`
    /// (`None` if that table is not a struct: a map, a target).
    fn serde_field_names(path: &str, array: bool) -> Option<BTreeSet<String>> {
        let mut probe = toml::Table::new();
        probe.insert("__probe".into(), toml::Value::Integer(0));
        let mut value = toml::Value::Table(probe);
        if array {
            value = toml::Value::Array(vec![value]);
        }
        let mut table = toml::Table::new();
        if path.is_empty() {
            table = value.as_table().cloned()?;
        } else {
            layers_set(&mut table, path, value);
        }
        let err = Config::deserialize(table).err()?;
        let expected = err
            .message()
            .strip_prefix("unknown field `__probe`, expected ")?;
        Some(
            expected
                .split('`')
                .skip(1)
                .step_by(2)
                .map(str::to_owned)
                .collect(),
        )
    }

    fn layers_set(table: &mut toml::Table, path: &str, value: toml::Value) {
        let mut cur = table;
        let mut parts: Vec<&str> = path.split('.').collect();
        let last = parts.pop().unwrap();
        for part in parts {
            cur = cur
                .entry(part)
                .or_insert_with(|| toml::Value::Table(toml::Table::new()))
                .as_table_mut()
                .unwrap();
        }
        cur.insert(last.into(), value);
    }

    #[test]
    fn the_field_types_miss_no_field() {
        // Every struct's fields as serde knows them (Option fields included) must be in
        // `with_every_field`, or a new field that is None by default would go untyped.
        fn walk(path: &str, table: &toml::Table, array: bool, checked: &mut Vec<String>) {
            if let Some(names) = serde_field_names(path, array) {
                let have: BTreeSet<String> = table.keys().cloned().collect();
                assert_eq!(have, names, "fields of `{path}` in with_every_field()");
                checked.push(path.to_owned());
            }
            for (key, value) in table {
                let sub = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                match value {
                    toml::Value::Table(t) => walk(&sub, t, false, checked),
                    toml::Value::Array(items) => {
                        if let Some(toml::Value::Table(t)) = items.first() {
                            walk(&sub, t, true, checked);
                        }
                    }
                    _ => {}
                }
            }
        }
        let mut checked = Vec::new();
        walk("", &field_types(), false, &mut checked);
        for path in ["", "sendback", "functions", "limits", "aws.credentials"] {
            assert!(
                checked.iter().any(|c| c == path),
                "`{path}` unchecked: {checked:?}"
            );
        }
    }

    /// The dotted paths of every field: the leaves of `with_every_field`.
    fn field_paths() -> Vec<String> {
        fn walk(path: &str, table: &toml::Table, out: &mut Vec<String>) {
            for (key, value) in table {
                let sub = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                match value {
                    toml::Value::Table(t) if !t.is_empty() => walk(&sub, t, out),
                    toml::Value::Array(items) => match items.first() {
                        Some(toml::Value::Table(t)) => walk(&sub, t, out),
                        _ => out.push(sub),
                    },
                    _ => out.push(sub),
                }
            }
        }
        let mut out = Vec::new();
        walk("", &field_types(), &mut out);
        out
    }

    /// What a TOML file documents: `section.key` of each key line, set or commented out
    /// (`# key = …`), and each table header, set or commented out (`# [table]`).
    fn documented(text: &str) -> (BTreeSet<String>, BTreeSet<String>) {
        let (mut keys, mut tables) = (BTreeSet::new(), BTreeSet::new());
        // A commented-out header holds the commented-out keys after it, until a real one.
        let (mut section, mut commented_section) = (String::new(), String::new());
        for line in text.lines() {
            let trimmed = line.trim();
            let commented = trimmed.starts_with('#');
            let body = trimmed.trim_start_matches(['#', ' ']).trim();
            if let Some(header) = body
                .strip_prefix('[')
                .and_then(|h| h.strip_suffix(']'))
                .map(|h| h.trim_matches(['[', ']']).trim().to_owned())
                .filter(|h| !h.contains([' ', '=', '"']))
            {
                if !commented {
                    section = header.clone();
                }
                commented_section = header.clone();
                tables.insert(header);
                continue;
            }
            let Some((key, _)) = body.split_once('=') else {
                continue;
            };
            let key = key.trim();
            if key.is_empty() || !key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                continue;
            }
            let section = if commented {
                &commented_section
            } else {
                &section
            };
            keys.insert(if section.is_empty() {
                key.to_owned()
            } else {
                format!("{section}.{key}")
            });
        }
        (keys, tables)
    }

    /// The fields `text` does not document. A field counts when its key is in its table,
    /// when it is a table whose header is there, or when a table holding it is set inline
    /// (`register = "…"` documents `functions.register.url`).
    fn undocumented(text: &str) -> Vec<String> {
        let (keys, tables) = documented(text);
        field_paths()
            .into_iter()
            .filter(|path| {
                let mut prefix = String::new();
                for part in path.split('.') {
                    if !prefix.is_empty() {
                        prefix.push('.');
                    }
                    prefix.push_str(part);
                    if keys.contains(&prefix) {
                        return false;
                    }
                }
                !tables.contains(path)
            })
            .collect()
    }

    #[test]
    fn the_example_config_documents_every_field() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/gateway.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let missing = undocumented(&text);
        assert!(
            missing.is_empty(),
            "deploy/gateway.toml says it lists every setting, but lacks: {missing:?} \
             (add each as `key = default` or `# key = example` in its table)"
        );
        // The check itself finds a field that is missing, set or commented out.
        assert_eq!(
            undocumented(&text.replace("\nstore_prefix =", "\n#store_prefix =")),
            Vec::<String>::new()
        );
        assert_eq!(
            undocumented(&text.replace("write_timeout =", "write_timeoutx =")),
            vec!["limits.write_timeout".to_owned()]
        );
        assert!(undocumented("").contains(&"aws.credentials.secret_access_key".to_owned()));
    }

    #[test]
    fn the_log_format_is_text_or_json_from_the_file_or_the_environment() {
        assert_eq!(
            load_str(TOKEN_TOML, &[]).unwrap().log.format,
            LogFormat::Text
        );
        let json = format!("{TOKEN_TOML}[log]\nformat = \"json\"\n");
        assert_eq!(load_str(&json, &[]).unwrap().log.format, LogFormat::Json);
        let from_env = load_str(TOKEN_TOML, &[("SWITCHBOARD_LOG__FORMAT", "json")]).unwrap();
        assert_eq!(from_env.log.format, LogFormat::Json);
        let m = load_str(TOKEN_TOML, &[("SWITCHBOARD_LOG__FORMAT", "xml")])
            .unwrap_err()
            .to_string();
        assert!(
            m.contains("SWITCHBOARD_LOG__FORMAT") && m.contains("xml"),
            "{m}"
        );
        // The filter is not a config field.
        load_str(TOKEN_TOML, &[("SWITCHBOARD_LOG", "debug")]).unwrap();
    }

    #[test]
    fn durations_past_a_hundred_years_are_refused_naming_the_field() {
        // `Instant + 500000000000y` overflows: found by the config fuzz target's report,
        // it passed `switchboard check` and then panicked every connection's task.
        let m = load_str(
            &format!("{TOKEN_TOML}[limits]\nhandshake_timeout = \"500000000000y\"\n"),
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(
            m.contains("limits.handshake_timeout") && m.contains("at most 100years"),
            "{m}"
        );
        let m = load_str(TOKEN_TOML, &[("SWITCHBOARD_CLEANUP__MAX_AGE", "101y")])
            .unwrap_err()
            .to_string();
        assert!(m.contains("SWITCHBOARD_CLEANUP__MAX_AGE"), "{m}");
        let c = load_str(TOKEN_TOML, &[("SWITCHBOARD_CLEANUP__MAX_AGE", "100y")]).unwrap();
        assert_eq!(c.cleanup.max_age, duration::MAX);
    }

    #[test]
    fn deep_env_and_flag_paths_are_refused_not_a_stack_overflow() {
        // A path is built as nested tables, dropped recursively: found by the config fuzz
        // target (tests/fuzz/corpus/config/regression-deep-env-path).
        let deep = vec!["A"; 40_000].join("__");
        let key = format!("SWITCHBOARD_{deep}");
        let err = Config::from_str_with_env("", "test", &env(&[(key.as_str(), "1")]), &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("environment variable"), "{err}");
        let flag = vec!["a"; 40_000].join(".");
        let err = Config::from_str_with_env("", "test", &env(&[]), &[(flag, "1".into())])
            .unwrap_err()
            .to_string();
        assert!(err.contains("command-line flag"), "{err}");
        // The deepest real path still works.
        let ok = Config::from_str_with_env(
            "[sendback]\ntoken = \"0123456789abcdef\"\n",
            "test",
            &env(&[(
                "SWITCHBOARD_FUNCTIONS__ROUTES__JOIN__URL",
                "http://127.0.0.1:9/join",
            )]),
            &[],
        )
        .unwrap();
        assert_eq!(ok.functions.routes["join"].url(), "http://127.0.0.1:9/join");
    }

    #[test]
    fn the_client_address_settings_are_typed_and_checked() {
        let c = load_str(
            &format!(
                "{TOKEN_TOML}[public]\nproxy_protocol = true\nreal_ip_header = \"x-forwarded-for\"\n\
                 trusted_proxies = [\"127.0.0.1/32\", \"10.0.0.0/8\", \"::1/128\"]\n"
            ),
            &[],
        )
        .unwrap();
        assert!(c.public.proxy_protocol);
        assert_eq!(c.public.real_ip_header, RealIpHeader::XForwardedFor);
        let nets: Vec<String> = c
            .public
            .trusted_proxies
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(nets, ["127.0.0.1/32", "10.0.0.0/8", "::1/128"]);
        // From the environment: a list in TOML, a header name as it is.
        let c = load_str(
            TOKEN_TOML,
            &[
                ("SWITCHBOARD_PUBLIC__TRUSTED_PROXIES", "[\"192.0.2.0/24\"]"),
                ("SWITCHBOARD_PUBLIC__REAL_IP_HEADER", "forwarded"),
            ],
        )
        .unwrap();
        assert_eq!(c.public.trusted_proxies[0].to_string(), "192.0.2.0/24");
        assert_eq!(c.public.real_ip_header, RealIpHeader::Forwarded);

        let msg = |text: &str| {
            load_str(&format!("{TOKEN_TOML}[public]\n{text}\n"), &[])
                .unwrap_err()
                .to_string()
        };
        for bad in [
            "\"10.0.0.0/33\"",
            "\"10.0.0.300/8\"",
            "\"10.0.0.1\"",
            "\"nope\"",
        ] {
            let m = msg(&format!("trusted_proxies = [\"127.0.0.1/32\", {bad}]"));
            assert!(
                m.contains("public.trusted_proxies")
                    && m.contains(&format!("{bad} is not a CIDR").replace('"', "`")),
                "{bad}: {m}"
            );
        }
        let m = load_str(
            TOKEN_TOML,
            &[("SWITCHBOARD_PUBLIC__TRUSTED_PROXIES", "[\"10.0.0.0/33\"]")],
        )
        .unwrap_err()
        .to_string();
        assert!(m.contains("SWITCHBOARD_PUBLIC__TRUSTED_PROXIES"), "{m}");
        let m = msg("real_ip_header = \"x-real-ip\"");
        assert!(m.contains("public.real_ip_header"), "{m}");
        // Nothing to trust: every connection would be refused, or no header believed.
        let m = msg("proxy_protocol = true");
        assert!(
            m.contains("public.trusted_proxies") && m.contains("proxy_protocol"),
            "{m}"
        );
        let m = msg("real_ip_header = \"forwarded\"");
        assert!(
            m.contains("public.trusted_proxies") && m.contains("real_ip_header"),
            "{m}"
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

    #[test]
    fn the_metrics_listener_is_typed_layered_and_checked() {
        let c = load_str(TOKEN_TOML, &[]).unwrap();
        assert_eq!(
            c.metrics.listen, None,
            "on the send-back listener by default"
        );
        let c = load_str(
            TOKEN_TOML,
            &[("SWITCHBOARD_METRICS__LISTEN", "0.0.0.0:9100")],
        )
        .unwrap();
        assert_eq!(
            c.metrics.listen,
            Some(SocketAddr::from(([0, 0, 0, 0], 9100)))
        );
        let c = load_str(
            &format!("{TOKEN_TOML}[metrics]\nlisten = \"127.0.0.1:9101\"\n"),
            &[],
        )
        .unwrap();
        assert_eq!(
            c.metrics.listen,
            Some(SocketAddr::from(([127, 0, 0, 1], 9101)))
        );
        let m = load_str(TOKEN_TOML, &[("SWITCHBOARD_METRICS__LISTEN", "everywhere")])
            .unwrap_err()
            .to_string();
        assert!(m.contains("SWITCHBOARD_METRICS__LISTEN"), "{m}");
        let m = load_str(
            &format!("{TOKEN_TOML}[metrics]\nlisten = \"127.0.0.1:9090\"\n"),
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(
            m.contains("metrics.listen") && m.contains("sendback.listen"),
            "{m}"
        );
    }
}
