//! The public edge: the public listener's own small HTTP/1.1 server (`serve`), the
//! client's address behind proxies (`proxy_protocol`, `forwarded`), the RFC 6455 handshake
//! checks (`handshake`), connection slots (`slots`) and the register decision (`admit`).
//! What it admits becomes a socket task (`socket::task`).

pub(crate) mod admit;
pub(crate) mod forwarded;
pub(crate) mod handshake;
pub(crate) mod proxy_protocol;
pub(crate) mod serve;
pub(crate) mod slots;
