//! The Tencent API Gateway + SCF dialect: `{"websocket": …}` events and `errNo` replies
//! (`events`), and the Tencent-style send-back URL (`sendback`).

pub(crate) mod events;
pub(crate) mod sendback;
