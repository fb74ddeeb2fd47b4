//! TLS: the server side of the public and send-back listeners (`server`, a certificate
//! reloaded from its files), the client side of https functions and relays (`client`), and
//! the stream that is either plain TCP or TLS over it (`stream`).

pub(crate) mod client;
pub(crate) mod server;
pub(crate) mod stream;
