//! Calls to functions: one HTTP POST of a JSON event per call, over pooled keep-alive
//! connections, with a timeout, a cap on the reply size, and bounded retries for the
//! failures that retrying can fix.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tracing::{debug, warn};

use crate::config::FunctionsConfig;
use crate::error::GatewayError;

/// A function's reply: any status, its content type, and the body (at most
/// `functions.max_reply_bytes`).
#[derive(Debug)]
pub struct Reply {
    /// The HTTP status.
    pub status: u16,
    /// The `Content-Type` header, if any.
    pub content_type: Option<String>,
    /// The body.
    pub body: Bytes,
}

impl Reply {
    /// Whether the status is 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// Why a call produced no usable reply. The function (upstream) is at fault in every case.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// No connection could be made, or it broke before a reply.
    #[error("function unreachable: {0}")]
    Unreachable(String),
    /// No complete reply within `functions.timeout`.
    #[error("function timed out after {0:?}")]
    Timeout(Duration),
    /// The reply body is larger than `functions.max_reply_bytes`.
    #[error("function reply larger than {0} bytes")]
    TooLarge(usize),
    /// The function answered with a status that counts as failure.
    #[error("function answered {status}: {body}")]
    Status {
        /// The status.
        status: u16,
        /// The start of the body, for the log.
        body: String,
    },
    /// The reply cannot be used (wrong JSON, unknown subprotocol, context too large).
    #[error("unusable function reply: {0}")]
    BadReply(String),
}

impl CallError {
    /// Whether a retry may succeed without the function changing: nothing reached it,
    /// it timed out, or a proxy in front of it said it is unavailable.
    pub fn is_retryable(&self) -> bool {
        match self {
            CallError::Unreachable(_) | CallError::Timeout(_) => true,
            CallError::Status { status, .. } => matches!(status, 500 | 502 | 503 | 504),
            CallError::TooLarge(_) | CallError::BadReply(_) => false,
        }
    }

    /// The status a refused upgrade gets for this failure: 504 for a timeout, 502 else.
    pub fn upgrade_status(&self) -> u16 {
        match self {
            CallError::Timeout(_) => 504,
            _ => 502,
        }
    }
}

/// One encoded event, ready to POST (cloning the body is cheap, for retries).
#[derive(Debug)]
pub struct Call<'a> {
    /// `register`, `transport` or `cleanup` (the `X-Switchboard-Event` header).
    pub event: &'static str,
    /// The connection (the `X-Switchboard-Connection-Id` header).
    pub connection_id: &'a str,
    /// The encoded event.
    pub body: Bytes,
}

/// The HTTP client for all functions.
#[derive(Debug, Clone)]
pub struct Invoker {
    client: reqwest::Client,
    timeout: Duration,
    retries: u32,
    retry_backoff: Duration,
    max_reply_bytes: usize,
    /// The configured function URLs, parsed once: parsing (with IDNA) on every call was
    /// a measurable share of the gateway's CPU per message.
    urls: Arc<HashMap<String, reqwest::Url>>,
}

impl Invoker {
    /// Builds the client from the functions config.
    pub fn new(config: &FunctionsConfig) -> Result<Self, GatewayError> {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(config.pool_max_idle_per_host)
            .pool_idle_timeout(Duration::from_secs(60))
            .tcp_nodelay(true)
            .connect_timeout(config.timeout)
            .timeout(config.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| GatewayError::Client(e.to_string()))?;
        let targets = [&config.register, &config.transport, &config.cleanup]
            .into_iter()
            .flatten()
            .chain(config.routes.values());
        let urls = targets
            .filter_map(|t| Some((t.url().to_owned(), reqwest::Url::parse(t.url()).ok()?)))
            .collect();
        Ok(Invoker {
            client,
            urls: Arc::new(urls),
            timeout: config.timeout,
            retries: config.retries,
            retry_backoff: config.retry_backoff,
            max_reply_bytes: config.max_reply_bytes,
        })
    }

    /// One call, no retry. Any HTTP status is a reply; the caller judges it.
    pub async fn call_once(&self, url: &str, call: &Call<'_>) -> Result<Reply, CallError> {
        let request = match self.urls.get(url) {
            Some(parsed) => self.client.post(parsed.clone()),
            None => self.client.post(url),
        };
        let response = request
            .header(http::header::CONTENT_TYPE, "application/json")
            .header("x-switchboard-event", call.event)
            .header("x-switchboard-connection-id", call.connection_id)
            .body(call.body.clone())
            .send()
            .await
            .map_err(|e| self.classify(e))?;
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        if response
            .content_length()
            .is_some_and(|len| len > self.max_reply_bytes as u64)
        {
            return Err(CallError::TooLarge(self.max_reply_bytes));
        }
        let mut response = response;
        let mut body = BytesMut::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| self.classify(e))? {
            if body.len() + chunk.len() > self.max_reply_bytes {
                return Err(CallError::TooLarge(self.max_reply_bytes));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Reply {
            status,
            content_type,
            body: body.freeze(),
        })
    }

    /// A call that must end in a 2xx reply, retried (with doubling backoff) while the
    /// failure is retryable and retries remain. Non-2xx replies are errors.
    pub async fn call_with_retries(&self, url: &str, call: &Call<'_>) -> Result<Reply, CallError> {
        let mut attempt = 0;
        let mut backoff = self.retry_backoff;
        loop {
            let err = match self.call_once(url, call).await {
                Ok(reply) if reply.is_success() => return Ok(reply),
                Ok(reply) => CallError::Status {
                    status: reply.status,
                    body: snippet(&reply.body),
                },
                Err(e) => e,
            };
            if attempt >= self.retries || !err.is_retryable() {
                return Err(err);
            }
            attempt += 1;
            debug!(cause = %err, attempt, event = call.event, "retrying function call");
            tokio::time::sleep(backoff).await;
            backoff = backoff.saturating_mul(2);
        }
    }

    fn classify(&self, e: reqwest::Error) -> CallError {
        if e.is_timeout() {
            CallError::Timeout(self.timeout)
        } else {
            let mut msg = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                msg.push_str(": ");
                msg.push_str(&s.to_string());
                source = s.source();
            }
            if e.is_decode() || e.is_body() {
                warn!(cause = %msg, "function reply broke off");
            }
            CallError::Unreachable(msg)
        }
    }
}

/// The start of a body as text, for logs and error messages.
pub fn snippet(body: &[u8]) -> String {
    const MAX: usize = 200;
    let text = String::from_utf8_lossy(&body[..body.len().min(MAX)]);
    let mut out: String = text.chars().filter(|c| !c.is_control()).collect();
    if body.len() > MAX {
        out.push('…');
    }
    out
}
