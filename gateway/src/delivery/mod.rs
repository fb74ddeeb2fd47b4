//! The delivery core: given a parsed and authenticated send-back request, reach the
//! connection wherever it lives (`core`), with each group's members kept between sends
//! (`group_cache`). Every send-back dialect calls it and only maps its outcome.

pub(crate) mod core;
pub(crate) mod group_cache;
