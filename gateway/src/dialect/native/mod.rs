//! Switchboard's own dialect: its JSON events and replies (`events`) and the native
//! send-back API (`sendback`).

pub(crate) mod events;
pub(crate) mod sendback;
