//! Passthrough routes (`[[passthrough]]`): WebSocket connections whose frames go to a
//! backend WebSocket service as they are. `route` matches a request to a route and builds
//! the backend's upgrade request, `dial` connects to the backend before the client's 101,
//! `pump` is the backend half the client's socket task drives.

pub(crate) mod dial;
pub(crate) mod pump;
pub(crate) mod route;
