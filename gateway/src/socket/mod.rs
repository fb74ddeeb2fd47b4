//! One WebSocket connection once it is admitted: its task (`task`: reads, transport
//! calls, writes, timers, cleanup), its outbound queue (`outbox`), the socket under
//! tungstenite (`sockio`), and the node's map of live connections (`registry`).

pub(crate) mod outbox;
pub(crate) mod registry;
pub(crate) mod sockio;
pub(crate) mod task;
