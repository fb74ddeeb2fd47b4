//! Prometheus metrics: what a node holds, how its functions, send-back API, relays and
//! store behave, and the process figures, served at `GET /metrics`.

pub(crate) mod histogram;
mod process;
pub(crate) mod registry;
pub(crate) mod serve;
pub(crate) mod store;
