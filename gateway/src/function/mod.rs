//! Calls to functions: the invoker (`invoke`: timeout, reply cap, retries, the
//! configured URLs parsed once) over a lean pooled HTTP/1.1 client (`http_client`, also
//! what nodes relay send-back requests with).

pub(crate) mod http_client;
pub(crate) mod invoke;
