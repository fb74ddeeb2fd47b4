//! The AWS API Gateway dialect: Lambda proxy events and `statusCode` replies (`events`),
//! and the `@connections` management API (`management`) with SigV4 verification (`sigv4`).

pub(crate) mod events;
pub(crate) mod management;
pub(crate) mod sigv4;
