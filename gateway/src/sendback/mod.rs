//! The send-back listener: routes each request to its dialect's adapter
//! (`dialect::{native, aws, tencent}`), which parses and authenticates it and calls the
//! delivery core. `route` names what each request is for, for its span and log line.

pub(crate) mod route;
pub(crate) mod serve;
