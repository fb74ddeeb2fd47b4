//! The Switchboard function SDK.
//!
//! The gateway turns WebSocket connections into HTTP calls: it POSTs one JSON [`Event`]
//! (register, transport or cleanup) per call to a function's URL. This crate has:
//! - [`event`] and [`api`]: the wire types of the events and of the send-back API, and
//!   [`codes`]: the close codes the gateway sends and the send-back API's error codes;
//! - [`Handler`] and [`serve`]: implement what the function does per event type, and serve
//!   it over HTTP;
//! - [`SendBack`]: push [`Message`]s to connections (one, many, or a whole group in one
//!   request), look them up, close them, join and leave groups;
//! - the shared store, re-exported as [`store`] (with [`SharedStore`], [`Store`],
//!   [`StoreError`] and [`ConnectionRecord`] at the top): the connection registry and the
//!   groups (rooms) the gateway also uses. [`open_store`] opens it from the same URL and key
//!   prefix as the gateway's `store` and `store_prefix` settings, so a function writes
//!   `store.join(room, id)` without touching Redis.
//!
//! The example chat functions, written with this crate, are the `chat` package
//! (`functions/chat`).
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
//!
//! Rooms through the store, and one send-back request per broadcast:
//!
//! ```no_run
//! use functions::{FunctionsError, Message, SendBack, open_store};
//!
//! # async fn run(id: &str) -> Result<(), FunctionsError> {
//! // The same URL and prefix as the gateway's `store` and `store_prefix`.
//! let store = open_store("redis://127.0.0.1:6379", functions::store::DEFAULT_PREFIX).await?;
//! let sendback = SendBack::new("http://127.0.0.1:9090", Some("the-token".into()))?;
//! store.join("lobby", id).await?;
//! let online = store.count("lobby").await?;
//! sendback
//!     .send_to_group("lobby", &Message::text(format!("{online} online")), &[id])
//!     .await?;
//! # Ok(())
//! # }
//! ```

pub mod error;
mod failover;
pub mod handler;
/// The wire contract (the `wire` crate): events, send-back bodies, close and error codes.
pub use wire::{api, codes, event};
pub mod message;
pub mod sendback;
pub mod server;

#[cfg(any(test, feature = "test-support"))]
#[doc(hidden)]
pub mod test_api;

pub use error::{FunctionsError, HandlerError};
pub use event::{DataType, DisconnectReason, Event, EventKind, HandshakeRequest, RegisterReply};
pub use handler::{Handler, Refusal};
pub use message::Message;
pub use sendback::SendBack;
pub use server::{ServeConfig, serve, serve_with};
/// The store crate: the connection registry and groups shared with the gateway.
pub use store;
pub use store::{ConnectionRecord, SharedStore, Store, StoreError};

/// Opens the store `url` names, with `prefix` starting every Redis key: `memory` (a new
/// embedded store, useful only when the gateway runs in the same process and shares it),
/// `redis://host[:port][/db]` or `redis+cluster://host:port,host:port`. Use the gateway's
/// `store` and `store_prefix` settings, so both see the same connections and groups.
///
/// A Redis that cannot be reached is [`FunctionsError::Store`] with
/// [`StoreError::Unavailable`] naming its address
/// ([`FunctionsError::is_unavailable`]).
pub async fn open_store(url: &str, prefix: &str) -> Result<SharedStore, FunctionsError> {
    Ok(store::open(url, prefix).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn open_store_opens_memory_and_reports_bad_or_unreachable_urls() {
        let store = open_store("memory", store::DEFAULT_PREFIX).await.unwrap();
        assert_eq!(store.count("lobby").await.unwrap(), 0);

        let err = open_store("postgres://x", store::DEFAULT_PREFIX)
            .await
            .unwrap_err();
        assert!(
            matches!(err, FunctionsError::Store(StoreError::InvalidUrl { .. })),
            "{err:?}"
        );

        // A port nothing listens on: bound, then released.
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let err = open_store(&format!("redis://127.0.0.1:{port}"), "test")
            .await
            .unwrap_err();
        assert!(err.is_unavailable(), "{err:?}");
        assert!(
            err.to_string().contains(&format!("127.0.0.1:{port}")),
            "{err}"
        );
    }
}
