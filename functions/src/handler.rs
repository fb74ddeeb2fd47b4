//! [`Handler`]: what a function implements, one method per event type, each with a default
//! so a function overrides only what it needs; and [`Refusal`], how register says no.

use std::fmt;

use crate::error::HandlerError;
use crate::event::{DisconnectReason, Event, HandshakeRequest, RegisterReply};
use crate::message::Message;

/// The functions behind one URL. [`serve`](crate::serve) calls the method that matches each
/// event's type; the defaults accept every connection, send nothing back and ignore cleanup.
///
/// Each call runs to completion even if the gateway's HTTP request is dropped midway.
#[async_trait::async_trait]
pub trait Handler: Send + Sync + 'static {
    /// A client asks to connect. `Ok` accepts (with an optional subprotocol and the context
    /// every later event carries); a [`Refusal`] refuses the upgrade with its status.
    async fn register(
        &self,
        event: &Event,
        request: &HandshakeRequest,
    ) -> Result<RegisterReply, Refusal> {
        let _ = (event, request);
        Ok(RegisterReply::default())
    }

    /// The client sent a message. `Ok(Some(reply))` sends `reply` back to that client;
    /// `Ok(None)` sends nothing. An error makes the event fail (the gateway may retry it).
    async fn transport(
        &self,
        event: &Event,
        message: Message,
    ) -> Result<Option<Message>, HandlerError> {
        let _ = (event, message);
        Ok(None)
    }

    /// The connection ended. The gateway unregisters it from the store after this returns.
    async fn cleanup(&self, event: &Event, reason: DisconnectReason) -> Result<(), HandlerError> {
        let _ = (event, reason);
        Ok(())
    }
}

/// Register's "no": the HTTP status the client gets instead of the upgrade, and a short
/// message for the body. The status is a 4xx or 5xx; anything else is sent as 403.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// The status, e.g. 403.
    pub status: u16,
    /// A short text for the client.
    pub message: String,
}

impl Refusal {
    /// A refusal with any status.
    pub fn new(status: u16, message: impl Into<String>) -> Self {
        Refusal {
            status,
            message: message.into(),
        }
    }

    /// 400: the handshake request is malformed (bad query parameter, missing header).
    pub fn bad_request(message: impl Into<String>) -> Self {
        Refusal::new(400, message)
    }

    /// 401: the client did not prove who it is.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Refusal::new(401, message)
    }

    /// 403: the client may not connect.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Refusal::new(403, message)
    }

    /// 429: the client connects too often.
    pub fn too_many_requests(message: impl Into<String>) -> Self {
        Refusal::new(429, message)
    }

    /// 500: the function failed.
    pub fn internal(message: impl Into<String>) -> Self {
        Refusal::new(500, message)
    }

    /// 503: something the function needs is down; the client may retry later.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Refusal::new(503, message)
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.status, self.message)
    }
}
