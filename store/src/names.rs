//! The names both backends accept: connection ids, group names, node names, key prefixes.
//!
//! One rule for every backend, so that what works on the embedded store works on Redis:
//! a name must not be empty and must not contain `{` or `}`. The Redis backend builds
//! hash-tagged keys (`prefix:conn:{id}`) from these names; braces inside a name would move
//! the hash tag (and an empty tag `{}` makes Redis hash the whole key), so keys that one
//! atomic step touches could land in different Redis Cluster slots.

use crate::StoreError;

/// Checks a connection id.
pub(crate) fn id(name: &str) -> Result<(), StoreError> {
    check("connection id", name)
}

/// Checks a group name.
pub(crate) fn group(name: &str) -> Result<(), StoreError> {
    check("group name", name)
}

/// Checks a gateway node name.
pub(crate) fn node(name: &str) -> Result<(), StoreError> {
    check("node name", name)
}

/// Checks a key prefix.
pub(crate) fn prefix(name: &str) -> Result<(), StoreError> {
    check("key prefix", name)
}

fn check(what: &'static str, name: &str) -> Result<(), StoreError> {
    let reason = if name.is_empty() {
        "must not be empty"
    } else if name.contains(['{', '}']) {
        "must not contain `{` or `}`"
    } else {
        return Ok(());
    };
    Err(StoreError::InvalidName {
        what,
        name: name.to_owned(),
        reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_names_and_refuses_empty_or_braced_ones() {
        assert!(id("c-1").is_ok());
        assert!(group("room:lobby ünïcode").is_ok());
        for bad in ["", "{", "}", "a{b", "a}b", "{x}"] {
            let err = group(bad).unwrap_err();
            assert!(
                matches!(
                    err,
                    StoreError::InvalidName {
                        what: "group name",
                        ..
                    }
                ),
                "{bad:?}: {err}"
            );
        }
        assert_eq!(
            node("").unwrap_err().to_string(),
            "invalid node name ``: must not be empty"
        );
        assert!(prefix("sb{").is_err());
    }
}
