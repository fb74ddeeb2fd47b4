//! Calls to functions: one HTTP POST of a JSON event per call, over pooled keep-alive
//! connections ([`crate::function::http_client`]), with a timeout, a cap on the reply size, and
//! bounded retries for the failures that retrying can fix. Every attempt is counted
//! (`switchboard_function_calls_total`, its duration, and the retries).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rustls::ClientConfig;
use tracing::{debug, warn};

use crate::config::{Dialect, FunctionsConfig};
use crate::error::GatewayError;
use crate::function::http_client::{Endpoint, HttpClient, HttpError};
use crate::metrics::registry::{CallOutcome, FunctionEvent, Metrics};
use crate::stop::Stop;

/// How long an idle keep-alive connection to a function is kept.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

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
    pub event: FunctionEvent,
    /// The dialect it is encoded in (for the metrics).
    pub dialect: Dialect,
    /// The connection (the `X-Switchboard-Connection-Id` header).
    pub connection_id: &'a str,
    /// The encoded event.
    pub body: Bytes,
}

/// The HTTP client for all functions.
#[derive(Debug, Clone)]
pub struct Invoker {
    client: Arc<HttpClient>,
    timeout: Duration,
    retries: u32,
    retry_backoff: Duration,
    max_reply_bytes: usize,
    /// The configured function URLs, parsed once.
    endpoints: Arc<HashMap<String, Arc<Endpoint>>>,
    metrics: Arc<Metrics>,
}

impl Invoker {
    /// Builds the client from the functions config; `https://` functions are called with
    /// `tls`, and every call is counted in `metrics`.
    pub fn new(
        config: &FunctionsConfig,
        tls: Arc<ClientConfig>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, GatewayError> {
        let client = HttpClient::new(config.pool_max_idle_per_host, POOL_IDLE_TIMEOUT, tls);
        let targets = [&config.register, &config.transport, &config.cleanup]
            .into_iter()
            .flatten()
            .chain(config.routes.values());
        let mut endpoints = HashMap::new();
        for target in targets {
            let endpoint = client
                .endpoint(target.url())
                .map_err(|_| GatewayError::FunctionUrl(target.url().to_owned()))?;
            endpoints.insert(target.url().to_owned(), Arc::new(endpoint));
        }
        Ok(Invoker {
            client: Arc::new(client),
            endpoints: Arc::new(endpoints),
            timeout: config.timeout,
            retries: config.retries,
            retry_backoff: config.retry_backoff,
            max_reply_bytes: config.max_reply_bytes,
            metrics,
        })
    }

    /// Closes idle connections to functions that no call needs (beyond a few kept warm)
    /// until `stop`: see [`HttpClient::sweep_every`].
    pub async fn sweep_idle_connections(self, stop: Arc<Stop>) {
        self.client.sweep_every(stop).await;
    }

    /// One call, no retry. Any HTTP status is a reply; the caller judges it.
    pub async fn call_once(&self, url: &str, call: &Call<'_>) -> Result<Reply, CallError> {
        let started = Instant::now();
        let result = self.attempt(url, call).await;
        let outcome = match &result {
            Ok(reply) => match reply.status {
                200..=299 => CallOutcome::Ok,
                400..=499 => CallOutcome::Status4xx,
                500..=599 => CallOutcome::Status5xx,
                _ => CallOutcome::StatusOther,
            },
            Err(CallError::Timeout(_)) => CallOutcome::Timeout,
            Err(CallError::TooLarge(_)) => CallOutcome::TooLarge,
            Err(_) => CallOutcome::Unreachable,
        };
        self.metrics
            .function_call(call.event, call.dialect, outcome, started.elapsed());
        result
    }

    /// [`Invoker::call_once`], uncounted.
    async fn attempt(&self, url: &str, call: &Call<'_>) -> Result<Reply, CallError> {
        let endpoint = match self.endpoints.get(url) {
            Some(endpoint) => endpoint.clone(),
            None => Arc::new(
                self.client
                    .endpoint(url)
                    .map_err(|e| CallError::Unreachable(e.to_string()))?,
            ),
        };
        let headers = [
            ("content-type", "application/json"),
            ("x-switchboard-event", call.event.as_str()),
            ("x-switchboard-connection-id", call.connection_id),
        ];
        let exchange = endpoint.post(&headers, &call.body, self.max_reply_bytes);
        match tokio::time::timeout(self.timeout, exchange).await {
            Err(_) => Err(CallError::Timeout(self.timeout)),
            Ok(Err(HttpError::TooLarge(cap))) => Err(CallError::TooLarge(cap)),
            Ok(Err(e)) => {
                if e.is_partial_reply() {
                    warn!(cause = %e, "function reply broke off");
                }
                Err(CallError::Unreachable(e.to_string()))
            }
            Ok(Ok(reply)) => Ok(Reply {
                status: reply.status,
                content_type: reply.content_type,
                body: reply.body,
            }),
        }
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
            self.metrics.function_retry(call.event);
            debug!(cause = %err, attempt, event = call.event.as_str(), "retrying function call");
            tokio::time::sleep(backoff).await;
            backoff = backoff.saturating_mul(2);
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
