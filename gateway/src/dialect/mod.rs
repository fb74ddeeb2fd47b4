//! Dialects: how one internal event is encoded for a function and how its reply is read.
//! The gateway's model is the native [`Event`]; a dialect is an encoder of events and a
//! decoder of replies at the edge, so adding one touches one folder here:
//! its events and replies (`events.rs`) and its send-back side.
//!
//! - `native`: Switchboard's own JSON (functions/README.md).
//! - `aws`: AWS API Gateway WebSocket API events in the Lambda proxy shape, route selection
//!   by `$request.body.<field>`, `statusCode` replies.
//! - `tencent`: Tencent API Gateway + SCF `{"websocket": {...}}` events, `errNo` replies.

pub(crate) mod aws;
pub(crate) mod model;
pub(crate) mod native;
pub(crate) mod tencent;

use tokio_tungstenite::tungstenite::Message;
use wire::codes;
use wire::event::Event;

use crate::config::{Config, Dialect, FunctionsConfig, Target, route_path};
use crate::dialect::aws::events as aws_events;
use crate::dialect::model::{Facts, FailureAction, Verdict};
use crate::dialect::native::events as native_events;
use crate::dialect::tencent::events as tencent_events;
use crate::function::invoke::{CallError, Reply};

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
        Dialect::Native => native_events::encode(event),
        Dialect::Aws => aws_events::encode(&config.aws, event, facts, route_key),
        Dialect::Tencent => tencent_events::encode(&config.tencent, event, facts),
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
        Dialect::Native => native_events::register_verdict(reply)?,
        Dialect::Aws => aws_events::register_verdict(reply)?,
        Dialect::Tencent => tencent_events::register_verdict(reply)?,
    };
    if let Verdict::Accept(accept) = &verdict {
        let context_len = serde_json::to_vec(&accept.context).map_or(0, |v| v.len());
        if !accept.context.is_null() && context_len > max_context_bytes {
            return Err(CallError::BadReply(format!(
                "context of {context_len} bytes exceeds functions.max_context_bytes ({max_context_bytes})"
            )));
        }
        if let Some(p) = &accept.subprotocol
            && !offered.iter().any(|o| o == p)
        {
            return Err(CallError::BadReply(format!(
                "subprotocol `{p}` was not offered by the client"
            )));
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
        Dialect::Native => Ok(two_way
            .then(|| native_events::reply_message(reply))
            .flatten()),
        Dialect::Aws => aws_events::transport_reply(two_way, reply),
        Dialect::Tencent => Ok(None),
    }
}

/// What the client sees when transport failed after its retries.
pub(crate) fn transport_failure(dialect: Dialect, connection_id: &str) -> FailureAction {
    match dialect {
        Dialect::Aws => FailureAction::Notify(aws_events::internal_error(connection_id)),
        Dialect::Native | Dialect::Tencent => {
            FailureAction::Close(codes::CLOSE_INTERNAL_ERROR, "transport function failed")
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
}
