//! The send-back listener: routes each request to its dialect's adapter
//! (`dialect::{native, aws, tencent}`), which parses and authenticates it and calls the
//! delivery core.

pub(crate) mod serve;
