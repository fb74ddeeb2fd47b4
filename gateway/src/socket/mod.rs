//! One WebSocket connection once it is admitted: its task (`task`: reads, transport
//! calls, writes, timers, cleanup), its outbound bytes in order (`outbox`), the send-back
//! API's messages encoded once as frames (`frame`), the socket under tungstenite
//! (`sockio`), and the node's map of live connections (`registry`).

pub(crate) mod frame;
pub(crate) mod outbox;
pub(crate) mod registry;
pub(crate) mod sockio;
pub(crate) mod task;
