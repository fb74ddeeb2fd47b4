//! The public edge: the public listener's own small HTTP/1.1 server (`serve`), the
//! RFC 6455 handshake checks (`handshake`), connection slots (`slots`) and the register
//! decision (`admit`). What it admits becomes a socket task (`socket::task`).

pub(crate) mod admit;
pub(crate) mod handshake;
pub(crate) mod serve;
pub(crate) mod slots;
