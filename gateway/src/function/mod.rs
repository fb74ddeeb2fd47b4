//! Calls to functions: the invoker (`invoke`: timeout, reply cap, retries, the
//! configured URLs parsed once) over a lean pooled HTTP/1.1 client (`http_client`, also
//! what nodes relay send-back requests with), or over hyper-util's client
//! (`hyper_client`, with the `hyper-client` feature).

pub(crate) mod http_client;
#[cfg(feature = "hyper-client")]
pub(crate) mod hyper_client;
pub(crate) mod invoke;
