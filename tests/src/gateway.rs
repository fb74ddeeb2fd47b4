//! Starts a real gateway for a test: in this process on port 0 ([`TestGateway`]), or as
//! the real `switchboard` binary (see `it/main.rs`) for signal and config tests.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use gateway::{Config, Gateway, Options};
use store::SharedStore;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// A WebSocket client of the gateway.
pub type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The token tests use for the send-back API.
pub const TOKEN: &str = "test-token-0123456789";

/// A gateway running in this process.
#[derive(Debug)]
pub struct TestGateway {
    /// Where clients connect.
    pub public: SocketAddr,
    /// The `wss://` listener, when `public.tls` is set.
    pub public_tls: Option<SocketAddr>,
    /// The send-back API.
    pub sendback: SocketAddr,
    /// The metrics listener, when `metrics.listen` is set (else `/metrics` is on `sendback`).
    pub metrics: Option<SocketAddr>,
    /// The store it uses.
    pub store: SharedStore,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// A config for tests: both listeners on 127.0.0.1:0, the test token, short timeouts.
pub fn test_config() -> Config {
    let mut config = Config::default();
    config.public.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    config.sendback.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    config.sendback.token = Some(TOKEN.to_owned());
    config.functions.timeout = Duration::from_secs(5);
    config.functions.retry_backoff = Duration::from_millis(20);
    config.shutdown.grace = Duration::from_secs(5);
    config
}

/// Points register, transport and cleanup at one function URL.
pub fn route_all(config: &mut Config, url: &str) {
    config.functions.register = Some(url.into());
    config.functions.transport = Some(url.into());
    config.functions.cleanup = Some(url.into());
}

/// A send-back request with the test token.
pub fn sendback_request(method: reqwest::Method, url: impl AsRef<str>) -> reqwest::RequestBuilder {
    reqwest::Client::new()
        .request(method, url.as_ref())
        .bearer_auth(TOKEN)
}

/// `POST {base}/@connections/{id}` with `body`.
pub async fn post_to_connection(
    base: &str,
    id: &str,
    body: impl Into<reqwest::Body>,
) -> reqwest::Response {
    sendback_request(reqwest::Method::POST, format!("{base}/@connections/{id}"))
        .body(body)
        .send()
        .await
        .expect("send-back request")
}

/// `GET {base}/@connections/{id}`: what the gateway knows of the connection.
pub async fn connection_info(base: &str, id: &str) -> functions::api::ConnectionInfo {
    sendback_request(reqwest::Method::GET, format!("{base}/@connections/{id}"))
        .send()
        .await
        .expect("connection info request")
        .json()
        .await
        .expect("connection info")
}

/// `POST {base}/@groups/{group_and_query}` with `text`; asserts 200 and returns the result.
pub async fn group_send(
    base: &str,
    group_and_query: &str,
    text: &str,
) -> functions::api::GroupSendResult {
    let r = sendback_request(
        reqwest::Method::POST,
        format!("{base}/@groups/{group_and_query}"),
    )
    .body(text.to_owned())
    .send()
    .await
    .expect("group send");
    assert_eq!(r.status(), 200, "group send to {group_and_query}");
    r.json().await.expect("a group send result")
}

/// How many members `GET {base}/@groups/{group}` reports.
pub async fn group_count(base: &str, group: &str) -> u64 {
    let info: functions::api::GroupInfo =
        sendback_request(reqwest::Method::GET, format!("{base}/@groups/{group}"))
            .send()
            .await
            .expect("group info")
            .json()
            .await
            .expect("a group info");
    info.count
}

impl TestGateway {
    /// Starts a gateway with [`test_config`] changed by `configure`, on a new embedded store.
    pub async fn start(configure: impl FnOnce(&mut Config)) -> Self {
        Self::start_with(configure, Options::default()).await
    }

    /// Starts a gateway with explicit options (a shared store, a page).
    pub async fn start_with(configure: impl FnOnce(&mut Config), mut options: Options) -> Self {
        let mut config = test_config();
        configure(&mut config);
        let store = options
            .store
            .get_or_insert_with(|| Arc::new(store::MemoryStore::new()))
            .clone();
        let gateway = Gateway::bind(config, options).await.expect("gateway binds");
        Self::run(gateway, store)
    }

    /// Starts a gateway on `redis` under a fresh key prefix, beating every 100 ms with a
    /// TTL of 600 ms, so that it notices its store going and coming within a second.
    pub async fn on_redis(redis: &crate::redis::RedisServer) -> Self {
        let prefix = format!("gw-{}", uuid::Uuid::new_v4().simple());
        let store = store::open(&redis.url(), &prefix)
            .await
            .expect("the store opens");
        let options = Options {
            store: Some(store),
            ..Default::default()
        };
        Self::start_with(
            |c| {
                c.node_heartbeat = Duration::from_millis(100);
                c.node_heartbeat_ttl = Duration::from_millis(600);
            },
            options,
        )
        .await
    }

    /// Runs an already bound gateway.
    pub fn run(gateway: Gateway, store: SharedStore) -> Self {
        let (stop, stopped) = oneshot::channel::<()>();
        let public = gateway.public_addr();
        let public_tls = gateway.public_tls_addr();
        let sendback = gateway.sendback_addr();
        let metrics = gateway.metrics_addr();
        let task = tokio::spawn(async move {
            gateway
                .run(async {
                    let _ = stopped.await;
                })
                .await
                .expect("gateway runs");
        });
        TestGateway {
            public,
            public_tls,
            sendback,
            metrics,
            store,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// `ws://public/{path_and_query}`.
    pub fn ws_url(&self, path_and_query: &str) -> String {
        format!(
            "ws://{}/{}",
            self.public,
            path_and_query.trim_start_matches('/')
        )
    }

    /// The send-back API base URL.
    pub fn sendback_url(&self) -> String {
        format!("http://{}", self.sendback)
    }

    /// Where `GET /metrics` is served: the metrics listener, else the send-back API.
    pub fn metrics_url(&self) -> String {
        format!("http://{}/metrics", self.metrics.unwrap_or(self.sendback))
    }

    /// A connected client (panics if the upgrade is refused).
    pub async fn connect(&self, path_and_query: &str) -> Client {
        let (client, _) = tokio_tungstenite::connect_async(self.ws_url(path_and_query))
            .await
            .expect("client connects");
        client
    }

    /// Tries to connect; on refusal returns the HTTP status.
    pub async fn try_connect(&self, path_and_query: &str) -> Result<Client, u16> {
        match tokio_tungstenite::connect_async(self.ws_url(path_and_query)).await {
            Ok((client, _)) => Ok(client),
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                Err(response.status().as_u16())
            }
            Err(e) => panic!("connect failed without an HTTP status: {e}"),
        }
    }

    /// Shuts the gateway down gracefully and waits for it.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(20), task)
                .await
                .expect("gateway stops within 20 s")
                .expect("gateway task");
        }
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// The next text or binary message (pings and pongs skipped), or `None` when the
/// connection closes. Panics after 10 s.
pub async fn next_message<S: AsyncRead + AsyncWrite + Unpin>(
    client: &mut WebSocketStream<S>,
) -> Option<Message> {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match client.next().await {
                Some(Ok(m @ (Message::Text(_) | Message::Binary(_)))) => return Some(m),
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
                Some(Ok(_)) => continue,
            }
        }
    })
    .await
    .expect("a message within 10 s")
}

/// The next text message parsed as JSON.
pub async fn next_json<S: AsyncRead + AsyncWrite + Unpin>(
    client: &mut WebSocketStream<S>,
) -> serde_json::Value {
    match next_message(client).await {
        Some(Message::Text(text)) => {
            serde_json::from_str(text.as_str()).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
        }
        other => panic!("expected a text message, got {other:?}"),
    }
}

/// Reads until the server's close frame; returns it (`None` if the connection ended
/// without one). Panics after 10 s.
pub async fn expect_close<S: AsyncRead + AsyncWrite + Unpin>(
    client: &mut WebSocketStream<S>,
) -> Option<CloseFrame> {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match client.next().await {
                Some(Ok(Message::Close(frame))) => return frame,
                Some(Ok(_)) => continue,
                None | Some(Err(_)) => return None,
            }
        }
    })
    .await
    .expect("the connection closes within 10 s")
}

/// Sends a text message.
pub async fn send_text<S: AsyncRead + AsyncWrite + Unpin>(
    client: &mut WebSocketStream<S>,
    text: &str,
) {
    client.send(Message::text(text)).await.expect("send");
}
