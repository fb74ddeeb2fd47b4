//! The one-command demo: the gateway, the example chat functions (on their own HTTP
//! listener, called over real loopback HTTP) and the chat page, sharing one embedded
//! store. `chat-demo`, then open the printed address in two tabs.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use functions::{FunctionsError, SendBack};
use gateway::{Config, Gateway, GatewayError, Options};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{CHAT_PAGE, Chat};

/// Why the demo could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The gateway could not start or failed while running.
    #[error(transparent)]
    Gateway(#[from] GatewayError),
    /// The chat functions' listener could not be bound.
    #[error("cannot listen for the chat functions on 127.0.0.1: {0}")]
    FunctionsListener(#[source] std::io::Error),
    /// The chat functions' send-back client could not be built.
    #[error("send-back client: {0}")]
    SendBack(#[from] FunctionsError),
}

/// Flags of `chat-demo`.
#[derive(clap::Args, Debug, Clone)]
pub struct DemoArgs {
    /// Where the chat page and WebSocket endpoint listen.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
}

/// A running demo's addresses.
#[derive(Debug, Clone)]
pub struct DemoAddrs {
    /// The chat page and WebSocket endpoint.
    pub public: SocketAddr,
    /// The send-back API.
    pub sendback: SocketAddr,
    /// The chat functions.
    pub functions: SocketAddr,
}

/// Builds the demo's gateway and starts its chat functions; the caller runs the gateway.
pub async fn start(
    listen: SocketAddr,
    functions_shutdown: CancellationToken,
) -> Result<(Gateway, DemoAddrs, tokio::task::JoinHandle<()>), DemoError> {
    let store: functions::SharedStore = Arc::new(functions::store::MemoryStore::new());
    let token = uuid::Uuid::new_v4().simple().to_string();
    let functions_listener = TcpListener::bind(("127.0.0.1", 0))
        .await
        .map_err(DemoError::FunctionsListener)?;
    let functions_addr = functions_listener
        .local_addr()
        .map_err(DemoError::FunctionsListener)?;
    let mut config = Config::default();
    config.public.listen = listen;
    config.sendback.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    config.sendback.token = Some(token.clone());
    let base = format!("http://{functions_addr}");
    config.functions.register = Some(format!("{base}/register").into());
    config.functions.transport = Some(format!("{base}/transport").into());
    config.functions.cleanup = Some(format!("{base}/cleanup").into());
    let gateway = Gateway::bind(
        config,
        Options {
            store: Some(store.clone()),
            page: Some(Bytes::from_static(CHAT_PAGE.as_bytes())),
        },
    )
    .await?;
    let sendback = SendBack::new(&format!("http://{}", gateway.sendback_addr()), Some(token))?;
    let chat = Arc::new(Chat::new(store, sendback));
    let functions_task = tokio::spawn(async move {
        if let Err(e) = functions::serve(functions_listener, chat, functions_shutdown).await {
            tracing::error!(cause = %e, "chat functions stopped");
        }
    });
    let addrs = DemoAddrs {
        public: gateway.public_addr(),
        sendback: gateway.sendback_addr(),
        functions: functions_addr,
    };
    Ok((gateway, addrs, functions_task))
}

/// Runs the demo until `shutdown` completes.
pub async fn run(args: DemoArgs, shutdown: impl Future<Output = ()>) -> Result<(), DemoError> {
    let functions_shutdown = CancellationToken::new();
    let (gateway, addrs, functions_task) = start(args.listen, functions_shutdown.clone()).await?;
    println!();
    println!("  Switchboard demo: chat through the gateway on the embedded store.");
    println!(
        "  Open http://{}/ in two browser tabs and chat.",
        addrs.public
    );
    println!(
        "  (Room and name: http://{}/?room=lobby&name=alice)",
        addrs.public
    );
    println!(
        "  Send-back API: http://{}  Chat functions: http://{}",
        addrs.sendback, addrs.functions
    );
    println!("  Ctrl-C stops it.");
    println!();
    let result = gateway.run(shutdown).await;
    functions_shutdown.cancel();
    let _ = functions_task.await;
    Ok(result?)
}
