//! Test support: a real HTTP server on `127.0.0.1:0` standing in for the gateway's
//! send-back API. It records every request and answers with what a test's responder says.
//!
//! Built for this crate's tests and, with the `test-support` feature, for the tests of
//! crates written with it (the example chat's); not part of the SDK's API.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderMap, Method, Response, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// One request the test API received.
#[derive(Clone, Debug)]
pub struct Recorded {
    /// The method.
    pub method: Method,
    /// The path and query.
    pub uri: Uri,
    /// The headers.
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
}

impl Recorded {
    /// A header's value as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// A running test API.
pub struct TestApi {
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    requests: Arc<Mutex<Vec<Recorded>>>,
}

impl TestApi {
    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }
}

/// Starts a test API answering each request with `respond(request)`. It runs until the
/// test's runtime ends.
pub async fn start<F>(respond: F) -> TestApi
where
    F: Fn(&Recorded) -> Response<Full<Bytes>> + Send + Sync + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let requests = Arc::new(Mutex::new(Vec::new()));
    let respond = Arc::new(respond);
    let recorded = Arc::clone(&requests);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (respond, recorded) = (Arc::clone(&respond), Arc::clone(&recorded));
            let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let (respond, recorded) = (Arc::clone(&respond), Arc::clone(&recorded));
                async move {
                    let (parts, body) = req.into_parts();
                    let request = Recorded {
                        method: parts.method,
                        uri: parts.uri,
                        headers: parts.headers,
                        body: body.collect().await.unwrap().to_bytes(),
                    };
                    let reply = respond(&request);
                    recorded.lock().unwrap().push(request);
                    Ok::<_, Infallible>(reply)
                }
            });
            tokio::spawn(async move {
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    TestApi { base, requests }
}

/// A JSON reply.
pub fn json(status: StatusCode, body: &impl serde::Serialize) -> Response<Full<Bytes>> {
    let mut reply = Response::new(Full::new(Bytes::from(serde_json::to_vec(body).unwrap())));
    *reply.status_mut() = status;
    reply.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    reply
}

/// A reply without a body.
pub fn empty(status: StatusCode) -> Response<Full<Bytes>> {
    let mut reply = Response::new(Full::new(Bytes::new()));
    *reply.status_mut() = status;
    reply
}
