//! `auth = "jwt"`: the client presents a JSON Web Token signed with the route's one
//! algorithm (HS256 over a shared secret, RS256 or ES256 with a public key), checked with
//! the `jsonwebtoken` crate. The key is loaded and proved usable when the config is
//! validated. A token is accepted only with a good signature by that key under that
//! algorithm (`alg: none`, another algorithm, a public key used as an HMAC secret: all
//! refused), an `exp` not past, an `nbf` (when present) not ahead, both with the leeway,
//! and, when the route sets them, the `aud` and `iss` it names. Its claims are returned:
//! they are the connection's context.

use std::path::Path;
use std::time::Duration;

use http::header;
use http::request::Parts;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, DecodingKeyKind, Validation};
use rsa::pkcs1::DecodeRsaPublicKey;
use rsa::traits::PublicKeyParts;

use super::api_key::io_reason;
use super::error::{AuthConfigError, AuthFailure};
use super::source::{Section, Source};
use crate::config::passthrough::{JwtAlgorithm, JwtConfig};

const SECTION: Section = Section {
    header: "jwt.header",
    query: "jwt.query",
};

/// The largest leeway: a skew beyond this is a broken clock, and a leeway this large
/// already keeps an expired token usable for that long.
const MAX_LEEWAY: Duration = Duration::from_secs(3600);

/// The shortest HS256 secret: the hash's output, 256 bits (RFC 7518 section 3.2).
const MIN_SECRET_BYTES: usize = 32;

/// The smallest RSA modulus accepted (NIST SP 800-131A).
const MIN_RSA_BITS: usize = 2048;

/// A route's JWT check: the key, the validation and where the token is read.
pub(crate) struct JwtCheck {
    key: DecodingKey,
    /// Boxed: its sets and lists would make every `Authenticator` this large.
    validation: Box<Validation>,
    source: Source,
}

impl std::fmt::Debug for JwtCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtCheck")
            .field("algorithms", &self.validation.algorithms)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl JwtCheck {
    /// Reads and checks the key file, and sets the validation from the route's settings.
    pub(crate) fn load(config: &JwtConfig) -> Result<JwtCheck, AuthConfigError> {
        let source = Source::from_config(
            SECTION,
            config.header.as_deref(),
            config.query.as_deref(),
            Some(header::AUTHORIZATION),
        )?;
        if config.leeway > MAX_LEEWAY {
            return Err(AuthConfigError::new(
                "jwt.leeway",
                format!("must be at most {}", humantime::format_duration(MAX_LEEWAY)),
            ));
        }
        let key = load_key(config.algorithm, &config.key_file)?;

        let algorithm = match config.algorithm {
            JwtAlgorithm::Hs256 => Algorithm::HS256,
            JwtAlgorithm::Rs256 => Algorithm::RS256,
            JwtAlgorithm::Es256 => Algorithm::ES256,
        };
        let mut validation = Validation::new(algorithm);
        validation.leeway = config.leeway.as_secs();
        validation.validate_exp = true;
        validation.validate_nbf = true;
        let mut required = vec!["exp"];
        // The crate checks `aud` and `iss` only when the token has them: a route that
        // names them requires them.
        match &config.audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                required.push("aud");
            }
            // Else a token's `aud` is not this route's business (the crate would refuse
            // every token that has one).
            None => validation.validate_aud = false,
        }
        if let Some(issuer) = &config.issuer {
            validation.set_issuer(&[issuer]);
            required.push("iss");
        }
        validation.set_required_spec_claims(&required);
        Ok(JwtCheck {
            key,
            validation: Box::new(validation),
            source,
        })
    }

    /// The claims of the request's token, if it is valid for this route.
    pub(crate) fn check(&self, parts: &Parts) -> Result<serde_json::Value, AuthFailure> {
        let credential = self.source.read(parts)?;
        let token = std::str::from_utf8(&credential).map_err(|_| AuthFailure::Invalid)?;
        // From a header other than `Authorization`, `Bearer <token>` or the bare token (a
        // token has no space in it).
        let token = match token.split_once(' ') {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => rest.trim(),
            _ => token.trim(),
        };
        let claims = jsonwebtoken::decode::<serde_json::Value>(token, &self.key, &self.validation)
            .map_err(|e| failure(e.kind()))?
            .claims;
        if !claims.is_object() {
            return Err(AuthFailure::Invalid);
        }
        Ok(claims)
    }

    /// Where clients present the token.
    pub(crate) fn source(&self) -> &Source {
        &self.source
    }
}

/// What a token the crate refused means to the client.
fn failure(kind: &ErrorKind) -> AuthFailure {
    match kind {
        ErrorKind::ExpiredSignature => AuthFailure::Expired,
        ErrorKind::ImmatureSignature => AuthFailure::NotYetValid,
        ErrorKind::InvalidAudience => AuthFailure::WrongAudience,
        ErrorKind::InvalidIssuer => AuthFailure::WrongIssuer,
        ErrorKind::MissingRequiredClaim(claim) if claim == "aud" => AuthFailure::WrongAudience,
        ErrorKind::MissingRequiredClaim(claim) if claim == "iss" => AuthFailure::WrongIssuer,
        _ => AuthFailure::Invalid,
    }
}

/// The key of `key_file` for `algorithm`, proved usable. Errors name the file and what is
/// wrong, never its content.
fn load_key(algorithm: JwtAlgorithm, file: &Path) -> Result<DecodingKey, AuthConfigError> {
    let error =
        |why: String| AuthConfigError::new("jwt.key_file", format!("{}: {why}", file.display()));
    let bytes = std::fs::read(file).map_err(|e| error(io_reason(&e)))?;
    match algorithm {
        JwtAlgorithm::Hs256 => {
            let secret = bytes.strip_suffix(b"\n").unwrap_or(&bytes);
            let secret = secret.strip_suffix(b"\r").unwrap_or(secret);
            if secret.starts_with(b"-----BEGIN") {
                return Err(error(
                    "a PEM key, but HS256 takes a shared secret (for a public key, use RS256 or ES256)".into(),
                ));
            }
            if secret.len() < MIN_SECRET_BYTES {
                return Err(error(format!(
                    "an HS256 secret of {} bytes: at least {MIN_SECRET_BYTES} are needed",
                    secret.len()
                )));
            }
            DecodingKey::from_secret(secret).map_err(|_| error("not a usable HS256 secret".into()))
        }
        JwtAlgorithm::Rs256 => {
            public_pem(&bytes).map_err(error)?;
            let key = DecodingKey::from_rsa_pem(&bytes)
                .map_err(|_| error("not an RSA public key in PEM".into()))?;
            // The crate parses an RSA key only when it checks a signature: parse it now,
            // as it will.
            if let DecodingKeyKind::SecretOrDer(der) = key.kind() {
                let parsed = rsa::PublicKey::from_pkcs1_der(der)
                    .map_err(|_| error("not a usable RSA public key".into()))?;
                let bits = parsed.size() * 8;
                if bits < MIN_RSA_BITS {
                    return Err(error(format!(
                        "an RSA key of {bits} bits: at least {MIN_RSA_BITS} are needed"
                    )));
                }
            }
            Ok(key)
        }
        JwtAlgorithm::Es256 => {
            public_pem(&bytes).map_err(error)?;
            let key = DecodingKey::from_ec_pem(&bytes)
                .map_err(|_| error("not an EC public key in PEM".into()))?;
            // Building a verifier parses the point on the curve (a P-384 key fails here).
            jsonwebtoken::crypto::verify("", b"", &key, Algorithm::ES256)
                .map_err(|_| error("not a usable P-256 public key".into()))?;
            Ok(key)
        }
    }
}

/// Refuses a PEM file that holds no public key, saying what it holds instead: only its
/// `-----BEGIN <label>-----` line is looked at, and only the label is named.
fn public_pem(bytes: &[u8]) -> Result<(), String> {
    let text = String::from_utf8_lossy(bytes);
    let label = text
        .lines()
        .find_map(|line| line.trim().strip_prefix("-----BEGIN "))
        .and_then(|rest| rest.strip_suffix("-----"));
    match label {
        None => Err("no PEM section in it (expected `-----BEGIN PUBLIC KEY-----`)".into()),
        Some(label) if label.contains("PRIVATE KEY") => {
            Err("a private key: give the public key (`openssl pkey -in key.pem -pubout`)".into())
        }
        Some("CERTIFICATE") => Err(
            "a certificate: give its public key (`openssl x509 -in cert.pem -pubkey -noout`)"
                .into(),
        ),
        Some(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use jsonwebtoken::{EncodingKey, Header, encode, get_current_timestamp};
    use serde_json::{Value, json};

    use super::*;

    const RSA_PRIVATE: &str = include_str!("../../tests/data/test-only-rsa-private.pem");
    const RSA_PUBLIC: &str = include_str!("../../tests/data/test-only-rsa-public.pem");
    const RSA_PUBLIC_PKCS1: &str = include_str!("../../tests/data/test-only-rsa-public-pkcs1.pem");
    const RSA_1024_PUBLIC: &str = include_str!("../../tests/data/test-only-rsa1024-public.pem");
    const HS_SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    /// Files in a directory of their own, removed on drop.
    struct Dir(PathBuf);

    impl Dir {
        fn new() -> Dir {
            let dir = std::env::temp_dir().join(format!("sb-jwt-{}", uuid::Uuid::new_v4()));
            std::fs::create_dir_all(&dir).unwrap();
            Dir(dir)
        }

        fn file(&self, name: &str, content: &[u8]) -> PathBuf {
            let path = self.0.join(name);
            std::fs::write(&path, content).unwrap();
            path
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn config(algorithm: JwtAlgorithm, key_file: PathBuf) -> JwtConfig {
        JwtConfig {
            algorithm,
            key_file,
            audience: None,
            issuer: None,
            leeway: Duration::ZERO,
            header: None,
            query: None,
        }
    }

    /// An RS256 check of the test key, with `edit` applied to its settings.
    fn rs256(dir: &Dir, edit: impl FnOnce(&mut JwtConfig)) -> JwtCheck {
        let mut config = config(
            JwtAlgorithm::Rs256,
            dir.file("rsa.pem", RSA_PUBLIC.as_bytes()),
        );
        edit(&mut config);
        JwtCheck::load(&config).unwrap()
    }

    fn rsa_token(claims: &Value) -> String {
        let key = EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap();
        encode(&Header::new(Algorithm::RS256), claims, &key).unwrap()
    }

    fn now() -> u64 {
        get_current_timestamp()
    }

    fn bearer(token: &str) -> Parts {
        http::Request::builder()
            .uri("/v1/realtime")
            .header("authorization", format!("Bearer {token}"))
            .body(())
            .unwrap()
            .into_parts()
            .0
    }

    fn unsigned(header: &Value, claims: &Value) -> String {
        let part = |v: &Value| URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap());
        format!("{}.{}.", part(header), part(claims))
    }

    #[test]
    fn a_good_token_gives_its_claims() {
        let dir = Dir::new();
        let check = rs256(&dir, |_| {});
        let claims = json!({"sub": "user-7", "exp": now() + 60, "plan": "pro"});
        assert_eq!(check.check(&bearer(&rsa_token(&claims))), Ok(claims));
    }

    #[test]
    fn a_pkcs1_public_key_serves_as_well() {
        let dir = Dir::new();
        let path = dir.file("rsa1.pem", RSA_PUBLIC_PKCS1.as_bytes());
        let check = JwtCheck::load(&config(JwtAlgorithm::Rs256, path)).unwrap();
        let claims = json!({"exp": now() + 60});
        assert!(check.check(&bearer(&rsa_token(&claims))).is_ok());
    }

    #[test]
    fn time_claims_are_checked_with_the_leeway() {
        let dir = Dir::new();
        let strict = rs256(&dir, |_| {});
        let lenient = rs256(&dir, |c| c.leeway = Duration::from_secs(30));
        let expired = rsa_token(&json!({"exp": now() - 10}));
        let early = rsa_token(&json!({"exp": now() + 600, "nbf": now() + 10}));
        assert_eq!(strict.check(&bearer(&expired)), Err(AuthFailure::Expired));
        assert_eq!(strict.check(&bearer(&early)), Err(AuthFailure::NotYetValid));
        assert!(lenient.check(&bearer(&expired)).is_ok());
        assert!(lenient.check(&bearer(&early)).is_ok());
        let long_expired = rsa_token(&json!({"exp": now() - 300}));
        let far_ahead = rsa_token(&json!({"exp": now() + 600, "nbf": now() + 300}));
        assert_eq!(
            lenient.check(&bearer(&long_expired)),
            Err(AuthFailure::Expired)
        );
        assert_eq!(
            lenient.check(&bearer(&far_ahead)),
            Err(AuthFailure::NotYetValid)
        );
        let started = rsa_token(&json!({"exp": now() + 600, "nbf": now() - 5}));
        assert!(strict.check(&bearer(&started)).is_ok());
    }

    #[test]
    fn exp_is_required() {
        let dir = Dir::new();
        let check = rs256(&dir, |_| {});
        let forever = rsa_token(&json!({"sub": "user-7"}));
        assert_eq!(check.check(&bearer(&forever)), Err(AuthFailure::Invalid));
        let text_exp = rsa_token(&json!({"exp": "tomorrow"}));
        assert_eq!(check.check(&bearer(&text_exp)), Err(AuthFailure::Invalid));
    }

    #[test]
    fn audience_and_issuer_are_checked_when_set() {
        let dir = Dir::new();
        let check = rs256(&dir, |c| {
            c.audience = Some("realtime".into());
            c.issuer = Some("https://auth.example".into());
        });
        let token = |aud: Value, iss: Value| {
            let mut claims = json!({"exp": now() + 60});
            if !aud.is_null() {
                claims["aud"] = aud;
            }
            if !iss.is_null() {
                claims["iss"] = iss;
            }
            bearer(&rsa_token(&claims))
        };
        let iss = || json!("https://auth.example");
        assert!(check.check(&token(json!("realtime"), iss())).is_ok());
        assert!(
            check
                .check(&token(json!(["billing", "realtime"]), iss()))
                .is_ok()
        );
        for aud in [json!("billing"), json!(["billing"]), Value::Null] {
            let failure = check.check(&token(aud.clone(), iss())).unwrap_err();
            assert_eq!(failure, AuthFailure::WrongAudience, "{aud}");
            assert_eq!(failure.status(), http::StatusCode::FORBIDDEN);
        }
        for iss in [json!("https://evil.example"), Value::Null] {
            let failure = check
                .check(&token(json!("realtime"), iss.clone()))
                .unwrap_err();
            assert_eq!(failure, AuthFailure::WrongIssuer, "{iss}");
            assert_eq!(failure.status(), http::StatusCode::FORBIDDEN);
        }
        let number_iss = check.check(&token(json!("realtime"), json!(7)));
        assert!(number_iss.is_err());

        // Unset: a token's own `aud` and `iss` are not this route's business.
        let open = rs256(&dir, |_| {});
        let claims = json!({"exp": now() + 60, "aud": "billing", "iss": "anyone"});
        assert!(open.check(&bearer(&rsa_token(&claims))).is_ok());
    }

    #[test]
    fn a_missing_or_malformed_token_is_401() {
        let dir = Dir::new();
        let check = rs256(&dir, |_| {});
        let none = http::Request::new(()).into_parts().0;
        assert_eq!(check.check(&none), Err(AuthFailure::Missing));
        assert_eq!(
            check.check(&none).unwrap_err().status(),
            http::StatusCode::UNAUTHORIZED
        );
        for garbage in ["x", "a.b.c", "a.b", "....", "eyJhbGciOiJSUzI1NiJ9.e30.AAAA"] {
            assert_eq!(
                check.check(&bearer(garbage)),
                Err(AuthFailure::Invalid),
                "{garbage}"
            );
        }
    }

    #[test]
    fn a_bad_signature_is_refused() {
        let dir = Dir::new();
        let check = rs256(&dir, |_| {});
        let good = rsa_token(&json!({"exp": now() + 60, "sub": "user-7"}));
        // The claims changed under the same signature.
        let (head, rest) = good.split_once('.').unwrap();
        let (_, signature) = rest.split_once('.').unwrap();
        let claims = URL_SAFE_NO_PAD.encode(format!(r#"{{"exp":{},"sub":"admin"}}"#, now() + 60));
        let forged = format!("{head}.{claims}.{signature}");
        assert_eq!(check.check(&bearer(&forged)), Err(AuthFailure::Invalid));
        // Signed by another key.
        let other = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let es = EncodingKey::from_ec_pem(other.serialize_pem().as_bytes()).unwrap();
        let wrong_key = encode(
            &Header::new(Algorithm::ES256),
            &json!({"exp": now() + 60}),
            &es,
        )
        .unwrap();
        assert_eq!(check.check(&bearer(&wrong_key)), Err(AuthFailure::Invalid));
    }

    #[test]
    fn alg_none_is_refused() {
        let dir = Dir::new();
        let check = rs256(&dir, |_| {});
        let claims = json!({"exp": now() + 60});
        for alg in ["none", "None", "NONE"] {
            let token = unsigned(&json!({"alg": alg, "typ": "JWT"}), &claims);
            assert_eq!(
                check.check(&bearer(&token)),
                Err(AuthFailure::Invalid),
                "{alg}"
            );
        }
        let hs = Dir::new();
        let hs_check =
            JwtCheck::load(&config(JwtAlgorithm::Hs256, hs.file("secret", HS_SECRET))).unwrap();
        let token = unsigned(&json!({"alg": "none"}), &claims);
        assert_eq!(hs_check.check(&bearer(&token)), Err(AuthFailure::Invalid));
    }

    #[test]
    fn an_hs256_token_made_with_the_public_key_is_refused() {
        let dir = Dir::new();
        let check = rs256(&dir, |_| {});
        let claims = json!({"exp": now() + 60});
        // The classic confusion: the RSA public key (public) used as the HMAC secret.
        for secret in [RSA_PUBLIC.as_bytes(), RSA_PUBLIC.trim_end().as_bytes()] {
            let key = EncodingKey::from_secret(secret).unwrap();
            let token = encode(&Header::new(Algorithm::HS256), &claims, &key).unwrap();
            assert_eq!(check.check(&bearer(&token)), Err(AuthFailure::Invalid));
        }
        // Another algorithm of the same family is refused as well.
        let key = EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap();
        let rs512 = encode(&Header::new(Algorithm::RS512), &claims, &key).unwrap();
        assert_eq!(check.check(&bearer(&rs512)), Err(AuthFailure::Invalid));
    }

    #[test]
    fn an_unknown_critical_extension_is_refused() {
        let dir = Dir::new();
        let check = rs256(&dir, |_| {});
        let mut header = Header::new(Algorithm::RS256);
        header.crit = Some(vec!["urn:example:must-understand".into()]);
        let key = EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap();
        let token = encode(&header, &json!({"exp": now() + 60}), &key).unwrap();
        assert_eq!(check.check(&bearer(&token)), Err(AuthFailure::Invalid));
    }

    #[test]
    fn hs256_takes_the_secret_file_less_its_newline() {
        let dir = Dir::new();
        let mut with_newline = HS_SECRET.to_vec();
        with_newline.push(b'\n');
        let check = JwtCheck::load(&config(
            JwtAlgorithm::Hs256,
            dir.file("secret", &with_newline),
        ))
        .unwrap();
        let claims = json!({"exp": now() + 60});
        let key = EncodingKey::from_secret(HS_SECRET).unwrap();
        let token = encode(&Header::new(Algorithm::HS256), &claims, &key).unwrap();
        assert_eq!(check.check(&bearer(&token)), Ok(claims.clone()));
        let other = EncodingKey::from_secret(b"0123456789abcdef0123456789abcdeX").unwrap();
        let token = encode(&Header::new(Algorithm::HS256), &claims, &other).unwrap();
        assert_eq!(check.check(&bearer(&token)), Err(AuthFailure::Invalid));
    }

    #[test]
    fn es256_checks_p256_tokens() {
        let dir = Dir::new();
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let path = dir.file("ec.pem", pair.public_key_pem().as_bytes());
        let check = JwtCheck::load(&config(JwtAlgorithm::Es256, path)).unwrap();
        let key = EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap();
        let claims = json!({"exp": now() + 60, "sub": "device-1"});
        let token = encode(&Header::new(Algorithm::ES256), &claims, &key).unwrap();
        assert_eq!(check.check(&bearer(&token)), Ok(claims.clone()));
        // An RS256 token to the ES256 check.
        assert_eq!(
            check.check(&bearer(&rsa_token(&claims))),
            Err(AuthFailure::Invalid)
        );
    }

    #[test]
    fn the_token_comes_from_the_configured_header_or_query() {
        let dir = Dir::new();
        let token = rsa_token(&json!({"exp": now() + 60}));
        let request = |uri: &str, headers: &[(&str, &str)]| {
            let mut builder = http::Request::builder().uri(uri);
            for (name, value) in headers {
                builder = builder.header(*name, *value);
            }
            builder.body(()).unwrap().into_parts().0
        };

        let query = rs256(&dir, |c| c.query = Some("access_token".into()));
        let uri = format!("/v1/realtime?model=m1&access_token={token}");
        assert!(query.check(&request(&uri, &[])).is_ok());
        let in_header = [("authorization", format!("Bearer {token}"))];
        let in_header: Vec<_> = in_header.iter().map(|(k, v)| (*k, v.as_str())).collect();
        assert_eq!(
            query.check(&request("/v1/realtime", &in_header)),
            Err(AuthFailure::Missing)
        );

        let custom = rs256(&dir, |c| c.header = Some("x-token".into()));
        assert!(custom.check(&request("/", &[("x-token", &token)])).is_ok());
        let prefixed = format!("Bearer {token}");
        assert!(
            custom
                .check(&request("/", &[("x-token", &prefixed)]))
                .is_ok()
        );
        assert_eq!(
            custom.check(&request("/", &in_header)),
            Err(AuthFailure::Missing)
        );

        let default = rs256(&dir, |_| {});
        assert!(default.source().is_authorization());
        assert!(default.check(&request("/", &in_header)).is_ok());
        assert_eq!(
            default.check(&request("/", &[("authorization", &token)])),
            Err(AuthFailure::Invalid)
        );
    }

    #[test]
    fn claims_must_be_an_object() {
        let dir = Dir::new();
        let check = rs256(&dir, |_| {});
        let token = rsa_token(&json!([now() + 60]));
        assert_eq!(check.check(&bearer(&token)), Err(AuthFailure::Invalid));
    }

    #[test]
    fn unusable_key_files_are_refused_naming_the_file() {
        let dir = Dir::new();
        let refused = |algorithm, path: PathBuf| {
            let e = JwtCheck::load(&config(algorithm, path.clone())).unwrap_err();
            assert_eq!(e.field, "jwt.key_file");
            let message = e.to_string();
            assert!(message.contains(&path.display().to_string()), "{message}");
            message
        };
        let missing = refused(JwtAlgorithm::Rs256, dir.0.join("absent.pem"));
        assert!(missing.contains("no such file"), "{missing}");
        let not_pem = refused(JwtAlgorithm::Rs256, dir.file("junk.pem", b"s3cret junk\n"));
        assert!(not_pem.contains("no PEM section"), "{not_pem}");
        let bad_body = dir.file(
            "bad.pem",
            b"-----BEGIN PUBLIC KEY-----\nczNjcmV0IGp1bmsK\n-----END PUBLIC KEY-----\n",
        );
        let bad = refused(JwtAlgorithm::Rs256, bad_body.clone());
        assert!(bad.contains("not an RSA public key"), "{bad}");
        assert!(!bad.contains("czNjcmV0"), "{bad}");
        refused(JwtAlgorithm::Es256, bad_body);
        let private = refused(
            JwtAlgorithm::Rs256,
            dir.file("private.pem", RSA_PRIVATE.as_bytes()),
        );
        assert!(private.contains("a private key"), "{private}");
        assert!(!private.contains("MII"), "{private}");
        let small = refused(
            JwtAlgorithm::Rs256,
            dir.file("small.pem", RSA_1024_PUBLIC.as_bytes()),
        );
        assert!(small.contains("1024 bits"), "{small}");
        // The wrong kind of key for the algorithm.
        let ec = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        refused(
            JwtAlgorithm::Rs256,
            dir.file("ec.pem", ec.public_key_pem().as_bytes()),
        );
        refused(
            JwtAlgorithm::Es256,
            dir.file("rsa.pem", RSA_PUBLIC.as_bytes()),
        );
        let p384 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        let p384 = refused(
            JwtAlgorithm::Es256,
            dir.file("p384.pem", p384.public_key_pem().as_bytes()),
        );
        assert!(p384.contains("P-256"), "{p384}");
    }

    #[test]
    fn hs256_secrets_must_be_long_enough_and_not_a_pem_key() {
        let dir = Dir::new();
        let refused = |content: &[u8]| {
            let path = dir.file("secret", content);
            JwtCheck::load(&config(JwtAlgorithm::Hs256, path))
                .unwrap_err()
                .to_string()
        };
        let short = refused(b"s3cret-but-short\n");
        assert!(short.contains("16 bytes: at least 32"), "{short}");
        assert!(!short.contains("s3cret"), "{short}");
        let empty = refused(b"\n");
        assert!(empty.contains("0 bytes"), "{empty}");
        let pem = refused(RSA_PUBLIC.as_bytes());
        assert!(pem.contains("use RS256 or ES256"), "{pem}");
        // 31 bytes and a newline: the newline is not part of the secret.
        let mut almost = HS_SECRET[..31].to_vec();
        almost.push(b'\n');
        assert!(refused(&almost).contains("31 bytes"));
    }

    #[test]
    fn settings_are_checked() {
        let dir = Dir::new();
        let key = dir.file("rsa.pem", RSA_PUBLIC.as_bytes());
        let load = |edit: &dyn Fn(&mut JwtConfig)| {
            let mut c = config(JwtAlgorithm::Rs256, key.clone());
            edit(&mut c);
            JwtCheck::load(&c)
        };
        let both = load(&|c| {
            c.header = Some("authorization".into());
            c.query = Some("access_token".into());
        });
        assert_eq!(both.unwrap_err().field, "jwt.header");
        let leeway = load(&|c| c.leeway = Duration::from_secs(3601)).unwrap_err();
        assert_eq!(leeway.field, "jwt.leeway");
        assert!(load(&|c| c.leeway = Duration::from_secs(3600)).is_ok());
        let bad_header = load(&|c| c.header = Some("bad header".into()));
        assert_eq!(bad_header.unwrap_err().field, "jwt.header");
    }
}
