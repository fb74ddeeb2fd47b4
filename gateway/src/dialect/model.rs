//! The dialect-neutral results the encoders and decoders share: what an encoder needs to
//! know about a connection, the register verdict, what the client sees when transport
//! fails. Admission and the socket task speak these, never a platform's JSON.

use tokio_tungstenite::tungstenite::Message;
use wire::event::RegisterReply;

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
