//! What nodes sharing a store do for each other: this node's heartbeat and the retry of
//! store removals that failed (`liveness`), the relay of send-back requests to the
//! node holding a connection (`relay`), the durable cleanup queue drained by bounded
//! workers (`cleanup`), and the cleanup after dead nodes and this node's fencing when it
//! was reaped (`reaper`), the write-back of this node's state when the store lost it
//! (`resync`), and whether this node should be sent new clients (`readiness`).

pub(crate) mod cleanup;
pub(crate) mod liveness;
pub(crate) mod readiness;
pub(crate) mod reaper;
pub(crate) mod relay;
pub(crate) mod resync;
