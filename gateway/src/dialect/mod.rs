//! Dialects: how one internal event is encoded for a function and how its reply is read.
//! The gateway's model is the native [`Event`]; a dialect is an encoder of events and a
//! decoder of replies at the edge, so adding one touches one module here.
//!
//! - `native`: Switchboard's own JSON (functions/README.md).
//! - `aws`: AWS API Gateway WebSocket API events in the Lambda proxy shape, route selection
//!   by `$request.body.<field>`, `statusCode` replies.
//! - `tencent`: Tencent API Gateway + SCF `{"websocket": {...}}` events, `errNo` replies.

mod aws;
mod native;
mod tencent;

use wire::event::{Event, RegisterReply};
use tokio_tungstenite::tungstenite::Message;

use crate::config::{Config, Dialect, FunctionsConfig, Target};
use crate::invoke::{CallError, Reply};

/// What an encoder needs to know about a connection beyond the native event.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Facts<'a> {
    /// When it connected (ms since the Unix epoch).
    pub connected_at_ms: u64,
    /// The client's address.
    pub source_ip: &'a str,
    /// The client's `User-Agent`.
    pub user_agent: Option<&'a str>,
    /// The `Host` the client asked for.
    pub host: Option<&'a str>,
}

/// The register function's verdict.
#[derive(Debug)]
pub(crate) enum Verdict {
    /// Accepted, with an optional subprotocol and context.
    Accept(RegisterReply),
    /// Refused: the status and body the client's upgrade gets.
    Refuse {
        /// HTTP status (4xx or 5xx).
        status: u16,
        /// A short body.
        body: String,
    },
}

/// What the client sees when transport failed for good.
#[derive(Debug)]
pub(crate) enum FailureAction {
    /// Close the connection with this code and reason (native, tencent).
    Close(u16, &'static str),
    /// Tell the client with this message and keep the connection (aws).
    Notify(Message),
}

/// Encodes `event` for a target of `dialect`. `route_key` is the AWS route (`$connect`,
/// `$default`, a custom key, `$disconnect`).
pub(crate) fn encode(
    dialect: Dialect,
    config: &Config,
    event: &Event,
    facts: Facts<'_>,
    route_key: &str,
) -> Vec<u8> {
    match dialect {
        Dialect::Native => native::encode(event),
        Dialect::Aws => aws::encode(&config.aws, event, facts, route_key),
        Dialect::Tencent => tencent::encode(&config.tencent, event, facts),
    }
}

/// Reads a register reply (any HTTP status).
pub(crate) fn register_verdict(
    dialect: Dialect,
    reply: &Reply,
    offered: &[String],
    max_context_bytes: usize,
) -> Result<Verdict, CallError> {
    let verdict = match dialect {
        Dialect::Native => native::register_verdict(reply)?,
        Dialect::Aws => aws::register_verdict(reply)?,
        Dialect::Tencent => tencent::register_verdict(reply)?,
    };
    if let Verdict::Accept(accept) = &verdict {
        let context_len = serde_json::to_vec(&accept.context).map_or(0, |v| v.len());
        if !accept.context.is_null() && context_len > max_context_bytes {
            return Err(CallError::BadReply(format!(
                "context of {context_len} bytes exceeds functions.max_context_bytes ({max_context_bytes})"
            )));
        }
        if let Some(p) = &accept.subprotocol {
            if !offered.iter().any(|o| o == p) {
                return Err(CallError::BadReply(format!(
                    "subprotocol `{p}` was not offered by the client"
                )));
            }
        }
    }
    Ok(verdict)
}

/// Reads a 2xx transport reply: the message to send back to the client, if any.
pub(crate) fn transport_reply(
    dialect: Dialect,
    two_way: bool,
    reply: &Reply,
) -> Result<Option<Message>, CallError> {
    match dialect {
        Dialect::Native => Ok(two_way.then(|| native::reply_message(reply)).flatten()),
        Dialect::Aws => aws::transport_reply(two_way, reply),
        Dialect::Tencent => Ok(None),
    }
}

/// What the client sees when transport failed after its retries.
pub(crate) fn transport_failure(dialect: Dialect, connection_id: &str) -> FailureAction {
    match dialect {
        Dialect::Aws => FailureAction::Notify(aws::internal_error(connection_id)),
        Dialect::Native | Dialect::Tencent => {
            FailureAction::Close(1011, "transport function failed")
        }
    }
}

/// The route of a client message: the custom route its selected field names, else the
/// `$default` route (`functions.transport`). `None` when there is neither.
pub(crate) fn select_route<'a>(
    functions: &'a FunctionsConfig,
    message: &Message,
) -> Option<(&'a str, &'a Target)> {
    let custom = (!functions.routes.is_empty())
        .then(|| match message {
            Message::Text(text) => {
                let path = route_path(&functions.route_selection_expression)?;
                let value: serde_json::Value = serde_json::from_str(text.as_str()).ok()?;
                let key = path
                    .iter()
                    .try_fold(&value, |v, field| v.get(field))?
                    .as_str()?;
                functions.routes.get_key_value(key)
            }
            _ => None,
        })
        .flatten();
    match custom {
        Some((key, target)) => Some((key.as_str(), target)),
        None => functions
            .transport
            .as_ref()
            .map(|target| ("$default", target)),
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
    use super::*;

    fn functions(routes: &[&str]) -> FunctionsConfig {
        let mut f = FunctionsConfig {
            transport: Some("http://h/default".into()),
            ..FunctionsConfig::default()
        };
        for r in routes {
            f.routes
                .insert((*r).to_owned(), format!("http://h/{r}").into());
        }
        f
    }

    #[test]
    fn routes_by_action_with_default_fallback() {
        let f = functions(&["sendmessage", "join"]);
        let key = |m: Message| select_route(&f, &m).map(|(k, _)| k.to_owned());
        assert_eq!(
            key(Message::text(r#"{"action":"sendmessage","data":1}"#)).as_deref(),
            Some("sendmessage")
        );
        assert_eq!(
            key(Message::text(r#"{"action":"join"}"#)).as_deref(),
            Some("join")
        );
        assert_eq!(
            key(Message::text(r#"{"action":"nope"}"#)).as_deref(),
            Some("$default")
        );
        assert_eq!(key(Message::text("not json")).as_deref(), Some("$default"));
        assert_eq!(
            key(Message::text(r#"{"action":5}"#)).as_deref(),
            Some("$default")
        );
        assert_eq!(key(Message::binary(vec![1u8])).as_deref(), Some("$default"));
        let mut nested = functions(&["x"]);
        nested.route_selection_expression = "$request.body.meta.kind".into();
        assert_eq!(
            select_route(&nested, &Message::text(r#"{"meta":{"kind":"x"}}"#)).map(|(k, _)| k),
            Some("x")
        );
        let none = FunctionsConfig::default();
        assert!(select_route(&none, &Message::text("x")).is_none());
    }

    #[test]
    fn route_expressions() {
        assert_eq!(route_path("$request.body.action"), Some(vec!["action"]));
        assert_eq!(route_path("$request.body.a.b"), Some(vec!["a", "b"]));
        assert_eq!(route_path("$request.body."), None);
        assert_eq!(route_path("action"), None);
    }
}
