//! What nodes sharing a store do for each other: this node's heartbeat and the retry of
//! store removals that failed (`liveness`), and the relay of send-back requests to the
//! node holding a connection (`relay`), and the durable cleanup queue drained by bounded
//! workers (`cleanup`).

pub(crate) mod cleanup;
pub(crate) mod liveness;
pub(crate) mod relay;
