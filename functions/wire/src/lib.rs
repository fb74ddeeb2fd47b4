//! The wire contract between the gateway and functions: the events the gateway POSTs
//! ([`event`]), what a function may reply, the send-back API's bodies ([`api`]), and the
//! close codes the gateway sends and the error codes it answers with ([`codes`]).
//! Both the gateway and the function SDK use these types; this crate depends on serde
//! (and percent-decoding for query strings) alone, so neither side drags in the other's
//! dependencies.

pub mod api;
pub mod codes;
pub mod event;
