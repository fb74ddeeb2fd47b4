//! Durations in the config: humantime text (`10s`, `5m`, `6h`), at most [`MAX`]. A longer
//! one passes for a number but overflows the clock arithmetic (`Instant + duration`) where
//! it is used: `limits.handshake_timeout = "500000000000y"` made every connection's task
//! panic. Used as `#[serde(with = "duration")]`.

use std::time::Duration;

use serde::de::Error as _;
use serde::{Deserializer, Serializer};

/// The longest duration a setting may have: 100 years (humantime's years of 365.25 days).
pub(super) const MAX: Duration = Duration::from_secs(100 * 31_557_600);

pub(super) fn serialize<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    humantime_serde::serialize(value, serializer)
}

pub(super) fn deserialize<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Duration, D::Error> {
    let value: Duration = humantime_serde::deserialize(deserializer)?;
    if value > MAX {
        return Err(D::Error::custom(format!(
            "a duration of at most {}",
            humantime::format_duration(MAX)
        )));
    }
    Ok(value)
}
