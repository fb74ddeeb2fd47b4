//! The credential settings of a `[[passthrough]]` route: `[passthrough.api_key]` and
//! `[passthrough.jwt]`. Only their shape lives here; `crate::auth` loads them (reads the
//! key files, checks the keys) when the config is validated, before any port is bound.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// `auth = "api_key"`: the client presents one of a list of keys.
#[derive(Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    /// The request header the key is read from (`x-api-key`; `authorization` takes
    /// `Bearer <key>`). Exactly one of `header` and `query`.
    pub header: Option<String>,
    /// The query parameter the key is read from (percent-decoded). Exactly one of
    /// `header` and `query`.
    pub query: Option<String>,
    /// The accepted keys. Secret: never logged or shown.
    #[serde(default)]
    pub keys: Vec<String>,
    /// A file of accepted keys, one per line (blank lines and `#` comments skipped),
    /// added to `keys`.
    pub keys_file: Option<PathBuf>,
}

impl fmt::Debug for ApiKeyConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKeyConfig")
            .field("header", &self.header)
            .field("query", &self.query)
            .field("keys", &format_args!("[{} redacted]", self.keys.len()))
            .field("keys_file", &self.keys_file)
            .finish()
    }
}

/// `auth = "jwt"`: the client presents a JSON Web Token signed by a key the gateway knows.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    /// The one algorithm tokens may be signed with; a token naming another is refused.
    pub algorithm: JwtAlgorithm,
    /// HS256: the shared secret's file (its raw bytes, one trailing newline trimmed, at
    /// least 32 bytes). RS256, ES256: the PEM public key (`-----BEGIN PUBLIC KEY-----`).
    pub key_file: PathBuf,
    /// The `aud` a token must carry (one of its values). Unset: not checked.
    pub audience: Option<String>,
    /// The `iss` a token must carry. Unset: not checked.
    pub issuer: Option<String>,
    /// The clock skew allowed on `exp` and `nbf` (at most 1 hour).
    #[serde(with = "super::duration", default = "default_leeway")]
    pub leeway: Duration,
    /// The request header the token is read from, as `Bearer <token>` (default:
    /// `authorization` when `query` is unset).
    pub header: Option<String>,
    /// The query parameter the token is read from instead of a header.
    pub query: Option<String>,
}

/// 30 s of clock skew between the token's issuer and the gateway.
fn default_leeway() -> Duration {
    Duration::from_secs(30)
}

/// A JWT signature algorithm the gateway accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum JwtAlgorithm {
    /// HMAC with SHA-256 over a shared secret.
    Hs256,
    /// RSASSA-PKCS1-v1_5 with SHA-256 (an RSA public key of at least 2048 bits).
    Rs256,
    /// ECDSA on P-256 with SHA-256.
    Es256,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sections_read_as_documented() {
        let jwt: JwtConfig = toml::from_str(
            r#"
            algorithm = "RS256"
            key_file = "/etc/switchboard/jwt-public.pem"
            audience = "realtime"
            issuer = "https://auth.example"
            header = "authorization"
            "#,
        )
        .unwrap();
        assert_eq!(jwt.algorithm, JwtAlgorithm::Rs256);
        assert_eq!(jwt.leeway, Duration::from_secs(30));
        let leeway: JwtConfig =
            toml::from_str("algorithm = \"ES256\"\nkey_file = \"k\"\nleeway = \"5s\"\n").unwrap();
        assert_eq!(leeway.leeway, Duration::from_secs(5));
        for refused in [
            "algorithm = \"rs256\"\nkey_file = \"k\"\n",
            "algorithm = \"RS512\"\nkey_file = \"k\"\n",
            "algorithm = \"none\"\nkey_file = \"k\"\n",
            "key_file = \"k\"\n",
            "algorithm = \"HS256\"\nkey_file = \"k\"\nsecret = \"x\"\n",
        ] {
            assert!(toml::from_str::<JwtConfig>(refused).is_err(), "{refused}");
        }

        let keys: ApiKeyConfig =
            toml::from_str("header = \"x-api-key\"\nkeys = [\"k1\", \"k2\"]\n").unwrap();
        assert_eq!(keys.keys, ["k1", "k2"]);
        assert!(toml::from_str::<ApiKeyConfig>("key = \"k1\"\n").is_err());
    }

    #[test]
    fn debug_shows_no_key() {
        let keys = ApiKeyConfig {
            keys: vec!["s3cret-one".into(), "s3cret-two".into()],
            ..ApiKeyConfig::default()
        };
        let shown = format!("{keys:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("[2 redacted]"), "{shown}");
    }
}
