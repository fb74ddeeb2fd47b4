//! `auth = "api_key"`: the client presents one of the route's keys, from `keys` and
//! `keys_file`. Only SHA-256 digests of the keys are kept, and a presented key is compared
//! with every one of them in constant time (`subtle`), with no early exit: neither the
//! time nor the outcome tells which key matched, or how long a key is.

use std::fmt;
use std::path::Path;

use http::request::Parts;
use sha2::{Digest, Sha256};
use subtle::{Choice, ConstantTimeEq};

use super::error::{AuthConfigError, AuthFailure};
use super::source::{Section, Source};
use crate::config::passthrough::ApiKeyConfig;

const SECTION: Section = Section {
    header: "api_key.header",
    query: "api_key.query",
};

/// A route's accepted API keys and where clients present one.
pub(crate) struct ApiKeys {
    digests: Vec<[u8; 32]>,
    source: Source,
}

impl fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKeys")
            .field("keys", &self.digests.len())
            .field("source", &self.source)
            .finish()
    }
}

impl ApiKeys {
    /// The keys of `keys` and `keys_file` (one per line, trimmed; blank lines and lines
    /// starting with `#` skipped). An error when there is none, when a key in `keys` is
    /// blank, when the file cannot be read, or unless exactly one of `header` and `query`
    /// is set.
    pub(crate) fn load(config: &ApiKeyConfig) -> Result<ApiKeys, AuthConfigError> {
        let source = Source::from_config(
            SECTION,
            config.header.as_deref(),
            config.query.as_deref(),
            None,
        )?;
        let mut digests = Vec::new();
        for key in &config.keys {
            let key = key.trim();
            if key.is_empty() {
                return Err(AuthConfigError::new("api_key.keys", "holds a blank key"));
            }
            digests.push(digest(key.as_bytes()));
        }
        if let Some(file) = &config.keys_file {
            digests.extend(read_keys_file(file)?.iter().map(|k| digest(k.as_bytes())));
        }
        if digests.is_empty() {
            let message = if config.keys_file.is_some() {
                "holds no key, and neither does `api_key.keys_file`"
            } else {
                "holds no key (give `api_key.keys` or `api_key.keys_file`)"
            };
            return Err(AuthConfigError::new("api_key.keys", message));
        }
        Ok(ApiKeys { digests, source })
    }

    /// Whether the request carries one of the keys.
    pub(crate) fn check(&self, parts: &Parts) -> Result<(), AuthFailure> {
        let given = digest(&self.source.read(parts)?);
        let mut matched = Choice::from(0);
        for key in &self.digests {
            matched |= key.as_slice().ct_eq(given.as_slice());
        }
        if bool::from(matched) {
            Ok(())
        } else {
            Err(AuthFailure::Invalid)
        }
    }

    /// Where clients present the key.
    pub(crate) fn source(&self) -> &Source {
        &self.source
    }
}

fn digest(key: &[u8]) -> [u8; 32] {
    Sha256::digest(key).into()
}

/// The keys of a keys file. Its errors name the file, never a line of it.
fn read_keys_file(file: &Path) -> Result<Vec<String>, AuthConfigError> {
    let text = std::fs::read(file).map_err(|e| {
        AuthConfigError::new(
            "api_key.keys_file",
            format!("{}: {}", file.display(), io_reason(&e)),
        )
    })?;
    let text = String::from_utf8(text).map_err(|_| {
        AuthConfigError::new(
            "api_key.keys_file",
            format!("{}: not UTF-8 text", file.display()),
        )
    })?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(str::to_owned)
        .collect())
}

/// Why a file could not be read, without anything of its content.
pub(crate) fn io_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such file".into(),
        _ => format!("cannot read it: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn parts(uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut builder = http::Request::builder().uri(uri);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).unwrap().into_parts().0
    }

    fn header_config(keys: &[&str]) -> ApiKeyConfig {
        ApiKeyConfig {
            header: Some("x-api-key".into()),
            keys: keys.iter().map(|k| k.to_string()).collect(),
            ..ApiKeyConfig::default()
        }
    }

    /// A file in a directory of its own, removed on drop.
    struct TempFile(PathBuf);

    impl TempFile {
        fn new(text: &str) -> TempFile {
            let dir = std::env::temp_dir().join(format!("sb-auth-{}", uuid::Uuid::new_v4()));
            std::fs::create_dir_all(&dir).unwrap();
            let path = dir.join("api-keys");
            std::fs::write(&path, text).unwrap();
            TempFile(path)
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            if let Some(dir) = self.0.parent() {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
    }

    #[test]
    fn a_key_from_the_header_is_checked_against_every_key() {
        let keys = ApiKeys::load(&header_config(&["first-key", "k2", "the-last-key"])).unwrap();
        for key in ["first-key", "k2", "the-last-key"] {
            assert_eq!(
                keys.check(&parts("/", &[("x-api-key", key)])),
                Ok(()),
                "{key}"
            );
        }
        for wrong in ["k", "k22", "first-keyX", "FIRST-KEY", "the-last-ke"] {
            assert_eq!(
                keys.check(&parts("/", &[("x-api-key", wrong)])),
                Err(AuthFailure::Invalid),
                "{wrong}"
            );
        }
        assert_eq!(keys.check(&parts("/", &[])), Err(AuthFailure::Missing));
        assert_eq!(
            keys.check(&parts("/?x-api-key=k2", &[("authorization", "Bearer k2")])),
            Err(AuthFailure::Missing)
        );
    }

    #[test]
    fn a_key_in_authorization_is_a_bearer_credential() {
        let config = ApiKeyConfig {
            header: Some("Authorization".into()),
            ..header_config(&["k1"])
        };
        let keys = ApiKeys::load(&config).unwrap();
        assert_eq!(
            keys.check(&parts("/", &[("authorization", "Bearer k1")])),
            Ok(())
        );
        assert_eq!(
            keys.check(&parts("/", &[("authorization", "k1")])),
            Err(AuthFailure::Invalid)
        );
        assert!(keys.source().is_authorization());
    }

    #[test]
    fn a_key_from_the_query_is_percent_decoded() {
        let config = ApiKeyConfig {
            header: None,
            query: Some("api_key".into()),
            ..header_config(&["k+1/2"])
        };
        let keys = ApiKeys::load(&config).unwrap();
        assert_eq!(keys.check(&parts("/v1?api_key=k%2B1%2F2", &[])), Ok(()));
        assert_eq!(
            keys.check(&parts("/v1?api_key=k1", &[])),
            Err(AuthFailure::Invalid)
        );
        assert_eq!(keys.check(&parts("/v1", &[])), Err(AuthFailure::Missing));
    }

    #[test]
    fn keys_come_from_the_file_too() {
        let file =
            TempFile::new("# production\n  file-key-1  \n\n# old:\n#revoked-key\nfile-key-2\n");
        let config = ApiKeyConfig {
            keys_file: Some(file.0.clone()),
            ..header_config(&["inline-key"])
        };
        let keys = ApiKeys::load(&config).unwrap();
        for key in ["inline-key", "file-key-1", "file-key-2"] {
            assert_eq!(
                keys.check(&parts("/", &[("x-api-key", key)])),
                Ok(()),
                "{key}"
            );
        }
        for refused in [
            "#revoked-key",
            "revoked-key",
            "# production",
            "  file-key-1  ",
        ] {
            assert_eq!(
                keys.check(&parts("/", &[("x-api-key", refused)])),
                Err(AuthFailure::Invalid),
                "{refused}"
            );
        }
        let only_file = ApiKeyConfig {
            keys_file: Some(file.0.clone()),
            ..header_config(&[])
        };
        assert!(ApiKeys::load(&only_file).is_ok());
    }

    #[test]
    fn unusable_settings_are_refused_by_field_without_a_key() {
        let none = ApiKeys::load(&header_config(&[])).unwrap_err();
        assert_eq!(none.field, "api_key.keys");
        let comments = TempFile::new("# nothing yet\n\n");
        let empty_file = ApiKeyConfig {
            keys_file: Some(comments.0.clone()),
            ..header_config(&[])
        };
        assert_eq!(
            ApiKeys::load(&empty_file).unwrap_err().field,
            "api_key.keys"
        );
        let blank = ApiKeys::load(&header_config(&["k1", " "])).unwrap_err();
        assert_eq!(blank.field, "api_key.keys");

        let missing = PathBuf::from("/nonexistent/switchboard/api-keys");
        let e = ApiKeys::load(&ApiKeyConfig {
            keys_file: Some(missing),
            ..header_config(&["k1"])
        })
        .unwrap_err();
        assert_eq!(e.field, "api_key.keys_file");
        assert!(
            e.to_string()
                .contains("/nonexistent/switchboard/api-keys: no such file"),
            "{e}"
        );

        let both = ApiKeyConfig {
            query: Some("api_key".into()),
            ..header_config(&["k1"])
        };
        assert_eq!(ApiKeys::load(&both).unwrap_err().field, "api_key.header");
        let neither = ApiKeyConfig {
            header: None,
            ..header_config(&["k1"])
        };
        assert_eq!(ApiKeys::load(&neither).unwrap_err().field, "api_key.header");
    }

    #[test]
    fn keys_are_never_shown() {
        let config = header_config(&["s3cret-key"]);
        let keys = ApiKeys::load(&config).unwrap();
        assert!(!format!("{config:?}").contains("s3cret"), "{config:?}");
        assert!(!format!("{keys:?}").contains("s3cret"), "{keys:?}");
        let file = TempFile::new("s3cret-line\n");
        let bad_utf8 = TempFile::new("");
        std::fs::write(&bad_utf8.0, b"s3cret\xff\n").unwrap();
        let e = ApiKeys::load(&ApiKeyConfig {
            keys_file: Some(bad_utf8.0.clone()),
            ..header_config(&[])
        })
        .unwrap_err();
        assert!(!e.to_string().contains("s3cret"), "{e}");
        drop(file);
    }
}
