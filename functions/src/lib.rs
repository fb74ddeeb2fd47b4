//! The Switchboard function SDK.
//!
//! The gateway turns WebSocket connections into HTTP calls: it POSTs one JSON [`Event`]
//! (register, transport or cleanup) per call to a function's URL. This crate has:
//! - [`event`] and [`api`]: the wire types of the events and of the send-back API;
//! - [`Handler`] and [`serve`]: implement what the function does per event type, and serve
//!   it over HTTP;
//! - [`SendBack`]: push [`Message`]s to connections (one or many), look them up, close them;
//! - [`Chat`] and [`CHAT_PAGE`]: the example chat functions and their web page.
//!
//! An echo function in a few lines:
//!
//! ```no_run
//! use std::sync::Arc;
//!
//! use functions::{Event, Handler, HandlerError, Message, serve};
//! use tokio_util::sync::CancellationToken;
//!
//! struct Echo;
//!
//! #[async_trait::async_trait]
//! impl Handler for Echo {
//!     async fn transport(
//!         &self,
//!         _event: &Event,
//!         message: Message,
//!     ) -> Result<Option<Message>, HandlerError> {
//!         Ok(Some(message))
//!     }
//! }
//!
//! # async fn run() -> std::io::Result<()> {
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:9100").await?;
//! serve(listener, Arc::new(Echo), CancellationToken::new()).await
//! # }
//! ```

pub mod api;
pub mod chat;
pub mod error;
pub mod event;
pub mod handler;
pub mod message;
pub mod sendback;
pub mod server;

#[cfg(test)]
mod test_api;

pub use chat::{CHAT_PAGE, Chat};
pub use error::{FunctionsError, HandlerError};
pub use event::{DataType, DisconnectReason, Event, EventKind, HandshakeRequest, RegisterReply};
pub use handler::{Handler, Refusal};
pub use message::Message;
pub use sendback::SendBack;
pub use server::{ServeConfig, serve, serve_with};
