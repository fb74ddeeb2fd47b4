//! `bench-floor`: the floors the gateway is measured against, in one process on four
//! ports, announced on stdout as `{"ws":…,"http":…,"fanout_ws":…,"fanout_http":…}`.
//!
//! - `ws`: a bare tokio-tungstenite echo server with the gateway's 4 KiB buffers: no
//!   function, no store. The limit for echo, idle memory and churn.
//! - `http`: a bare hyper HTTP/1.1 echo server: the HTTP round trip the gateway adds per
//!   message.
//! - `fanout_ws` + `fanout_http`: a raw fan-out server. It holds every WebSocket it
//!   accepts; `POST /publish` on the HTTP port writes the body to all of them (one
//!   broadcast channel, one writer task per socket) and answers with the count.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use clap::Parser;
use futures_util::{SinkExt as _, StreamExt as _};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use super::client::ws_config;

/// `bench-floor` flags.
#[derive(Parser, Debug)]
#[command(
    name = "bench-floor",
    about = "Bare floors: tokio-tungstenite echo, hyper echo, raw fan-out"
)]
pub struct Args {
    /// The IP address every listener binds (port 0: free ports).
    #[arg(long, default_value = "127.0.0.1")]
    pub ip: std::net::IpAddr,
}

/// The ports `bench-floor` announces.
#[derive(Clone, Copy, Debug, serde::Serialize, serde::Deserialize)]
pub struct FloorPorts {
    /// WebSocket echo.
    pub ws: u16,
    /// HTTP echo.
    pub http: u16,
    /// Fan-out: WebSocket members.
    pub fanout_ws: u16,
    /// Fan-out: `POST /publish`.
    pub fanout_http: u16,
}

/// Accepts on `listener` forever, handing each stream to `serve` in its own task (also
/// `bench-backend`'s loop, [`crate::backend`]).
pub async fn accept_each<F, Fut>(listener: TcpListener, serve: F)
where
    F: Fn(TcpStream) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                tokio::spawn(serve(stream));
            }
            Err(e) => {
                eprintln!("bench-floor: accept failed: {e}");
                // Out of descriptors: back off instead of spinning (pacing, not sync).
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
    }
}

/// One echo WebSocket: every text or binary message goes straight back.
pub async fn ws_echo(stream: TcpStream) {
    let Ok(mut ws) = tokio_tungstenite::accept_async_with_config(stream, Some(ws_config())).await
    else {
        return;
    };
    // After a close frame, reading on flushes tungstenite's queued close reply and ends
    // the stream.
    while let Some(Ok(msg)) = ws.next().await {
        if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
            return;
        }
    }
}

/// One fan-out member: writes every published message; reads only to see the close.
async fn fanout_member(stream: TcpStream, mut rx: broadcast::Receiver<Utf8Bytes>) {
    let Ok(ws) = tokio_tungstenite::accept_async_with_config(stream, Some(ws_config())).await
    else {
        return;
    };
    let (mut sink, mut stream) = ws.split();
    loop {
        tokio::select! {
            msg = rx.recv() => match msg {
                Ok(text) => {
                    if sink.send(Message::Text(text)).await.is_err() {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return,
            },
            incoming = stream.next() => match incoming {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                    let _ = sink.close().await;
                    return;
                }
                Some(Ok(_)) => {}
            },
        }
    }
}

async fn body_of(req: Request<Incoming>) -> Option<Bytes> {
    req.into_body().collect().await.ok().map(|b| b.to_bytes())
}

fn http_reply(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r
}

/// Serves one HTTP/1.1 keep-alive connection with `answer`.
async fn serve_http<F, Fut>(stream: TcpStream, answer: F)
where
    F: Fn(Request<Incoming>) -> Fut + Send + Clone + 'static,
    Fut: std::future::Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let service = service_fn(move |req| {
        let answer = answer.clone();
        async move { Ok::<_, Infallible>(answer(req).await) }
    });
    let _ = http1::Builder::new()
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

async fn bind(ip: std::net::IpAddr) -> anyhow::Result<(TcpListener, u16)> {
    let listener = TcpListener::bind(SocketAddr::new(ip, 0)).await?;
    let port = listener.local_addr()?.port();
    Ok((listener, port))
}

/// `bench-floor`'s main.
pub async fn main(args: Args) -> anyhow::Result<()> {
    let (ws, ws_port) = bind(args.ip).await?;
    let (http, http_port) = bind(args.ip).await?;
    let (fan_ws, fan_ws_port) = bind(args.ip).await?;
    let (fan_http, fan_http_port) = bind(args.ip).await?;
    let ports = FloorPorts {
        ws: ws_port,
        http: http_port,
        fanout_ws: fan_ws_port,
        fanout_http: fan_http_port,
    };
    println!("{}", serde_json::to_string(&ports)?);

    // Room for a burst of publishes ahead of the slowest member.
    let (tx, _) = broadcast::channel::<Utf8Bytes>(1024);
    let tx_members = tx.clone();
    tokio::spawn(accept_each(ws, ws_echo));
    tokio::spawn(accept_each(http, |stream| {
        serve_http(stream, |req| async move {
            match body_of(req).await {
                Some(body) => http_reply(StatusCode::OK, body),
                None => http_reply(StatusCode::BAD_REQUEST, ""),
            }
        })
    }));
    tokio::spawn(accept_each(fan_ws, move |stream| {
        fanout_member(stream, tx_members.subscribe())
    }));
    accept_each(fan_http, move |stream| {
        let tx = tx.clone();
        serve_http(stream, move |req| {
            let tx = tx.clone();
            async move {
                let Some(body) = body_of(req).await else {
                    return http_reply(StatusCode::BAD_REQUEST, "");
                };
                let Ok(text) = Utf8Bytes::try_from(body) else {
                    return http_reply(StatusCode::BAD_REQUEST, "not UTF-8");
                };
                let sent = tx.send(text).unwrap_or(0);
                http_reply(StatusCode::OK, format!("{{\"delivered\":{sent}}}"))
            }
        })
    })
    .await;
    Ok(())
}
