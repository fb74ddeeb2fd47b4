//! The native dialect: the event as `wire::event::Event` JSON, replies as documented in
//! functions/README.md.

use tokio_tungstenite::tungstenite::Message;
use wire::event::{Event, RegisterReply};

use crate::dialect::model::Verdict;
use crate::function::invoke::{CallError, Reply, snippet};

pub(crate) fn encode(event: &Event) -> Vec<u8> {
    serde_json::to_vec(event).unwrap_or_default()
}

pub(crate) fn register_verdict(reply: &Reply) -> Result<Verdict, CallError> {
    if !reply.is_success() {
        return refusal(reply.status, snippet(&reply.body));
    }
    if reply.body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Verdict::Accept(RegisterReply::default()));
    }
    serde_json::from_slice(&reply.body)
        .map(Verdict::Accept)
        .map_err(|e| CallError::BadReply(format!("register reply is not a RegisterReply: {e}")))
}

/// A refusal with `status` if it is an error status; any other non-2xx is unusable.
pub(crate) fn refusal(status: u16, body: String) -> Result<Verdict, CallError> {
    if (400..600).contains(&status) {
        Ok(Verdict::Refuse { status, body })
    } else {
        Err(CallError::BadReply(format!(
            "status {status} is neither success nor error"
        )))
    }
}

/// The reply body as a message: binary for `application/octet-stream`, text if UTF-8.
pub(crate) fn reply_message(reply: &Reply) -> Option<Message> {
    if reply.body.is_empty() {
        return None;
    }
    let binary = reply
        .content_type
        .as_deref()
        .is_some_and(|ct| ct.starts_with("application/octet-stream"));
    match std::str::from_utf8(&reply.body) {
        Ok(text) if !binary => Some(Message::text(text)),
        _ => Some(Message::Binary(reply.body.clone())),
    }
}
