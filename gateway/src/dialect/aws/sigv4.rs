//! AWS Signature Version 4 verification (`Authorization: AWS4-HMAC-SHA256 …` headers), as
//! AWS services other than S3 check it: the management API (`management`) accepts a
//! request only when it was signed with one of `aws.credentials`.
//!
//! The server recomputes what the client signed, from the request as it arrived:
//!
//! ```text
//! CanonicalRequest = Method \n CanonicalURI \n CanonicalQuery \n
//!                    CanonicalHeaders \n SignedHeaders \n PayloadHash
//! StringToSign     = "AWS4-HMAC-SHA256" \n X-Amz-Date \n Date/Region/Service/aws4_request \n
//!                    hex(SHA256(CanonicalRequest))
//! SigningKey       = HMAC(HMAC(HMAC(HMAC("AWS4" + secret, Date), Region), Service), "aws4_request")
//! Signature        = hex(HMAC(SigningKey, StringToSign))
//! ```
//!
//! - CanonicalURI: the path exactly as sent (still percent-encoded), with `.`/`..` and empty
//!   segments removed, then URI-encoded once more (every byte but `A-Za-z0-9-_.~` and `/`):
//!   non-S3 services sign the path encoded twice, so botocore's
//!   `/prod/@connections/R0oXAdfD0kwCH6w%3D` is signed as
//!   `/prod/%40connections/R0oXAdfD0kwCH6w%253D`.
//! - CanonicalQuery: each `name=value` pair percent-decoded, re-encoded (unreserved bytes
//!   kept), sorted by name then value, joined with `&`.
//! - CanonicalHeaders: for each name in the client's `SignedHeaders` list, `name:values`
//!   with every value trimmed and inner whitespace runs collapsed to one space, repeated
//!   headers joined with `,`. `host` and `x-amz-date` must be among them.
//! - PayloadHash: `x-amz-content-sha256` when sent (it must then be the body's hash;
//!   `UNSIGNED-PAYLOAD` and streaming forms are refused), else hex(SHA256(body)).
//!
//! The credential scope must name the configured region, the service and the date of
//! `x-amz-date`, which must be within five minutes of the gateway's clock. Signatures are
//! compared in constant time.

use std::fmt;
use std::time::{Duration, SystemTime};

use hmac::{Hmac, KeyInit, Mac};
use http::HeaderMap;
use sha2::{Digest, Sha256};

use crate::config::AwsCredential;
use crate::request::constant_time_eq;

/// The only algorithm SigV4 defines.
pub(crate) const ALGORITHM: &str = "AWS4-HMAC-SHA256";

/// How far `x-amz-date` may be from the gateway's clock, as on AWS.
pub(crate) const MAX_CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);

/// The service name management API requests are signed for.
pub(crate) const EXECUTE_API: &str = "execute-api";

/// The parts of a request a signature covers, as they arrived.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SignedRequest<'a> {
    /// `GET`, `POST`, …
    pub method: &'a str,
    /// The path as sent (percent-encoded), without the query.
    pub path: &'a str,
    /// The query as sent, without `?` (empty when none).
    pub query: &'a str,
    /// Every header.
    pub headers: &'a HeaderMap,
    /// The whole body.
    pub body: &'a [u8],
}

/// The fields of an `Authorization: AWS4-HMAC-SHA256 …` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Authorization {
    /// The access key id of the credential.
    pub access_key_id: String,
    /// `YYYYMMDD` of the credential scope.
    pub date: String,
    /// The region of the credential scope.
    pub region: String,
    /// The service of the credential scope.
    pub service: String,
    /// The signed header names, lower-case, in the order given.
    pub signed_headers: Vec<String>,
    /// The hex signature.
    pub signature: String,
}

/// Why a request's signature was not accepted. `Display` gives AWS's wording.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Rejection {
    /// No `Authorization` header.
    Missing,
    /// An `Authorization` header, or a header it needs, that cannot be read.
    Malformed(String),
    /// An access key id that is not in `aws.credentials`.
    UnknownAccessKey(String),
    /// A credential scope for another region, service or date.
    WrongScope(String),
    /// `x-amz-date` too far from the gateway's clock.
    Expired {
        /// The request's `x-amz-date`.
        amz_date: String,
        /// The gateway's clock in the same format.
        now: String,
    },
    /// `x-amz-content-sha256` that is not the body's hash, or a form not supported.
    Payload(String),
    /// The signature does not match.
    Mismatch {
        /// The canonical request the gateway computed.
        canonical_request: String,
        /// The string to sign the gateway computed.
        string_to_sign: String,
    },
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejection::Missing => f.write_str("Missing Authentication Token"),
            Rejection::Malformed(why) => write!(f, "Authorization header is malformed: {why}"),
            Rejection::UnknownAccessKey(_) => {
                f.write_str("The security token included in the request is invalid.")
            }
            Rejection::WrongScope(why) => write!(f, "Credential should be scoped to {why}"),
            Rejection::Expired { amz_date, now } => write!(
                f,
                "Signature expired: {amz_date} is not within 5 minutes of the server time {now}"
            ),
            Rejection::Payload(why) => f.write_str(why),
            Rejection::Mismatch {
                canonical_request,
                string_to_sign,
            } => write!(
                f,
                "The request signature we calculated does not match the signature you provided. \
                 Check your AWS Secret Access Key and signing method. Consult the service \
                 documentation for details.\n\nThe Canonical String for this request should have \
                 been\n'{canonical_request}'\n\nThe String-to-Sign should have been\n'{string_to_sign}'\n"
            ),
        }
    }
}

/// Checks signatures against a set of access keys, for one region and service.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Verifier<'a> {
    /// The region signatures must name.
    pub region: &'a str,
    /// The service signatures must name.
    pub service: &'a str,
    /// The accepted access keys.
    pub credentials: &'a [AwsCredential],
}

impl<'a> Verifier<'a> {
    /// The cheap part of the check, before the body is read: the request carries a
    /// well-formed `Authorization` header for a known access key. Returns that header.
    pub fn precheck(&self, headers: &HeaderMap) -> Result<Authorization, Rejection> {
        let value = headers
            .get(http::header::AUTHORIZATION)
            .ok_or(Rejection::Missing)?;
        let value = value
            .to_str()
            .map_err(|_| Rejection::Malformed("not ASCII".into()))?;
        let auth = parse_authorization(value)?;
        self.secret(&auth.access_key_id)?;
        Ok(auth)
    }

    /// Verifies the request's signature at time `now`; returns the access key id it was
    /// signed with.
    pub fn verify(&self, req: &SignedRequest<'_>, now: SystemTime) -> Result<String, Rejection> {
        let auth = self.precheck(req.headers)?;
        let secret = self.secret(&auth.access_key_id)?;
        for required in ["host", "x-amz-date"] {
            if !auth.signed_headers.iter().any(|h| h == required) {
                return Err(Rejection::Malformed(format!(
                    "SignedHeaders must include `{required}`"
                )));
            }
        }
        let amz_date = header_text(req.headers, "x-amz-date")
            .ok_or_else(|| Rejection::Malformed("no X-Amz-Date header".into()))?;
        let signed_at = parse_amz_date(&amz_date).ok_or_else(|| {
            Rejection::Malformed(format!("X-Amz-Date `{amz_date}` is not YYYYMMDDTHHMMSSZ"))
        })?;
        let skew = now
            .duration_since(signed_at)
            .unwrap_or_else(|e| e.duration());
        if skew > MAX_CLOCK_SKEW {
            return Err(Rejection::Expired {
                amz_date,
                now: format_amz_date(now),
            });
        }
        let expected_scope = (&amz_date[..8], self.region, self.service);
        if (
            auth.date.as_str(),
            auth.region.as_str(),
            auth.service.as_str(),
        ) != expected_scope
        {
            return Err(Rejection::WrongScope(format!(
                "{}/{}/{}/aws4_request, not {}/{}/{}/aws4_request",
                expected_scope.0,
                expected_scope.1,
                expected_scope.2,
                auth.date,
                auth.region,
                auth.service
            )));
        }
        let payload_hash = payload_hash(req)?;
        let canonical_request = canonical_request(req, &auth.signed_headers, &payload_hash)?;
        let scope = format!(
            "{}/{}/{}/aws4_request",
            auth.date, auth.region, auth.service
        );
        let string_to_sign = string_to_sign(&amz_date, &scope, &canonical_request);
        let key = signing_key(secret, &auth.date, &auth.region, &auth.service);
        let expected = hex(&hmac_sha256(&key, string_to_sign.as_bytes()));
        if constant_time_eq(expected.as_bytes(), auth.signature.as_bytes()) {
            Ok(auth.access_key_id)
        } else {
            Err(Rejection::Mismatch {
                canonical_request,
                string_to_sign,
            })
        }
    }

    fn secret(&self, access_key_id: &str) -> Result<&'a str, Rejection> {
        self.credentials
            .iter()
            .find(|c| constant_time_eq(c.access_key_id.as_bytes(), access_key_id.as_bytes()))
            .map(|c| c.secret_access_key.as_str())
            .ok_or_else(|| Rejection::UnknownAccessKey(access_key_id.to_owned()))
    }
}

/// Parses `AWS4-HMAC-SHA256 Credential=AKID/20150830/us-east-1/service/aws4_request,
/// SignedHeaders=host;x-amz-date, Signature=…`.
pub(crate) fn parse_authorization(value: &str) -> Result<Authorization, Rejection> {
    let malformed = |why: &str| Rejection::Malformed(why.to_owned());
    let rest = value
        .strip_prefix(ALGORITHM)
        .filter(|r| r.starts_with(' '))
        .ok_or_else(|| malformed("expected `AWS4-HMAC-SHA256 Credential=…`"))?;
    let (mut credential, mut signed, mut signature) = (None, None, None);
    for part in rest.split(',') {
        let part = part.trim();
        let Some((name, value)) = part.split_once('=') else {
            // Not quoted: what a client sends here may be a secret put in the wrong place.
            return Err(malformed("each field must be name=value"));
        };
        let slot = match name {
            "Credential" => &mut credential,
            "SignedHeaders" => &mut signed,
            "Signature" => &mut signature,
            _ => {
                return Err(malformed(
                    "fields must be Credential, SignedHeaders and Signature",
                ));
            }
        };
        if slot.replace(value).is_some() {
            return Err(malformed(&format!("`{name}` given twice")));
        }
    }
    let credential = credential.ok_or_else(|| malformed("no Credential"))?;
    let signed = signed.ok_or_else(|| malformed("no SignedHeaders"))?;
    let signature = signature.ok_or_else(|| malformed("no Signature"))?;
    let fields: Vec<&str> = credential.split('/').collect();
    let [access_key_id, date, region, service, "aws4_request"] = fields.as_slice() else {
        return Err(malformed(
            "Credential must be <access key>/<date>/<region>/<service>/aws4_request",
        ));
    };
    if access_key_id.is_empty()
        || date.len() != 8
        || !date.bytes().all(|b| b.is_ascii_digit())
        || region.is_empty()
        || service.is_empty()
    {
        return Err(malformed(
            "Credential must be <access key>/<date>/<region>/<service>/aws4_request",
        ));
    }
    let signed_headers: Vec<String> = signed.split(';').map(str::to_owned).collect();
    if signed_headers
        .iter()
        .any(|h| h.is_empty() || h.bytes().any(|b| b.is_ascii_uppercase()))
    {
        return Err(malformed(
            "SignedHeaders must be lower-case names separated by `;`",
        ));
    }
    if signature.len() != 64 || !signature.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(malformed("Signature must be 64 hex digits"));
    }
    Ok(Authorization {
        access_key_id: (*access_key_id).to_owned(),
        date: (*date).to_owned(),
        region: (*region).to_owned(),
        service: (*service).to_owned(),
        signed_headers,
        signature: signature.to_owned(),
    })
}

/// The canonical request (see the module docs).
pub(crate) fn canonical_request(
    req: &SignedRequest<'_>,
    signed_headers: &[String],
    payload_hash: &str,
) -> Result<String, Rejection> {
    let mut out = String::with_capacity(256);
    out.push_str(req.method);
    out.push('\n');
    out.push_str(&canonical_uri(req.path));
    out.push('\n');
    out.push_str(&canonical_query(req.query));
    out.push('\n');
    for name in signed_headers {
        let mut values = req.headers.get_all(name.as_str()).iter().peekable();
        if values.peek().is_none() {
            return Err(Rejection::Malformed(format!(
                "signed header `{name}` is not in the request"
            )));
        }
        out.push_str(name);
        out.push(':');
        let joined: Vec<String> = values
            .map(|v| trim_all(&String::from_utf8_lossy(v.as_bytes())))
            .collect();
        out.push_str(&joined.join(","));
        out.push('\n');
    }
    out.push('\n');
    out.push_str(&signed_headers.join(";"));
    out.push('\n');
    out.push_str(payload_hash);
    Ok(out)
}

/// The string to sign for a canonical request.
pub(crate) fn string_to_sign(amz_date: &str, scope: &str, canonical_request: &str) -> String {
    format!(
        "{ALGORITHM}\n{amz_date}\n{scope}\n{}",
        sha256_hex(canonical_request.as_bytes())
    )
}

/// The signing key of a secret for one day, region and service.
pub(crate) fn signing_key(secret: &str, date: &str, region: &str, service: &str) -> [u8; 32] {
    let k_date = hmac_sha256(format!("AWS4{secret}").as_bytes(), date.as_bytes());
    let k_region = hmac_sha256(&k_date, region.as_bytes());
    let k_service = hmac_sha256(&k_region, service.as_bytes());
    hmac_sha256(&k_service, b"aws4_request")
}

/// The path as signed: dot and empty segments removed, then URI-encoded (once more).
pub(crate) fn canonical_uri(path: &str) -> String {
    let segments: Vec<&str> = path.split('/').fold(Vec::new(), |mut out, segment| {
        match segment {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
        out
    });
    let mut normalized = String::from("/");
    normalized.push_str(&segments.join("/"));
    if path.ends_with('/') && !segments.is_empty() {
        normalized.push('/');
    }
    uri_encode(normalized.as_bytes(), true)
}

/// The query as signed: pairs decoded, re-encoded, sorted.
pub(crate) fn canonical_query(query: &str) -> String {
    let mut pairs: Vec<(String, String)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let encode = |s: &str| {
                let decoded: Vec<u8> = percent_encoding::percent_decode_str(s).collect();
                uri_encode(&decoded, false)
            };
            (encode(name), encode(value))
        })
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// `x-amz-content-sha256` when given (checked against the body), else the body's hash.
fn payload_hash(req: &SignedRequest<'_>) -> Result<String, Rejection> {
    let actual = sha256_hex(req.body);
    match header_text(req.headers, "x-amz-content-sha256") {
        None => Ok(actual),
        Some(given) if given.len() == 64 && given.bytes().all(|b| b.is_ascii_hexdigit()) => {
            if given.eq_ignore_ascii_case(&actual) {
                Ok(given)
            } else {
                Err(Rejection::Payload(
                    "The provided 'x-amz-content-sha256' header does not match what was computed."
                        .into(),
                ))
            }
        }
        Some(other) => Err(Rejection::Payload(format!(
            "x-amz-content-sha256 `{other}` is not supported: sign the payload"
        ))),
    }
}

/// A header's value as text (the first one), if present and readable.
fn header_text(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_owned())
}

/// `Trimall`: surrounding whitespace removed, inner runs collapsed to one space.
fn trim_all(value: &str) -> String {
    value.split_ascii_whitespace().collect::<Vec<_>>().join(" ")
}

/// Percent-encodes every byte but `A-Za-z0-9-_.~` (and `/` when `keep_slash`), upper-case hex.
fn uri_encode(bytes: &[u8], keep_slash: bool) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else if b == b'/' && keep_slash {
            out.push('/');
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Parses `YYYYMMDDTHHMMSSZ`.
pub(crate) fn parse_amz_date(value: &str) -> Option<SystemTime> {
    let b = value.as_bytes();
    let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' || !digits(0..8) || !digits(9..15) {
        return None;
    }
    let rfc3339 = format!(
        "{}-{}-{}T{}:{}:{}Z",
        &value[0..4],
        &value[4..6],
        &value[6..8],
        &value[9..11],
        &value[11..13],
        &value[13..15]
    );
    humantime::parse_rfc3339(&rfc3339).ok()
}

/// Formats a time as `YYYYMMDDTHHMMSSZ`.
pub(crate) fn format_amz_date(time: SystemTime) -> String {
    humantime::format_rfc3339_seconds(time)
        .to_string()
        .replace(['-', ':'], "")
}

fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(message);
    mac.finalize().into_bytes().into()
}

/// Lower-case hex of SHA-256.
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Signs a request the way an SDK does (tests and fuzzing only): returns the
/// `Authorization` value.
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) fn sign(
    req: &SignedRequest<'_>,
    access_key_id: &str,
    secret: &str,
    region: &str,
    service: &str,
    signed_headers: &[&str],
) -> String {
    let amz_date = header_text(req.headers, "x-amz-date").expect("x-amz-date");
    let date = &amz_date[..8];
    let signed: Vec<String> = signed_headers.iter().map(|h| (*h).to_owned()).collect();
    let payload = payload_hash(req).expect("payload hash");
    let canonical = canonical_request(req, &signed, &payload).expect("canonical request");
    let scope = format!("{date}/{region}/{service}/aws4_request");
    let sts = string_to_sign(&amz_date, &scope, &canonical);
    let signature = hex(&hmac_sha256(
        &signing_key(secret, date, region, service),
        sts.as_bytes(),
    ));
    format!(
        "{ALGORITHM} Credential={access_key_id}/{scope}, SignedHeaders={}, Signature={signature}",
        signed.join(";")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    /// The key pair of AWS's published SigV4 test suite.
    const AKID: &str = "AKIDEXAMPLE";
    const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
    /// `20150830T123600Z`, the suite's time.
    const SUITE_TIME: u64 = 1_440_938_160;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(
                http::header::HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        map
    }

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn credentials() -> Vec<AwsCredential> {
        vec![
            AwsCredential {
                access_key_id: "OTHERKEY".into(),
                secret_access_key: "another-secret-of-some-length".into(),
            },
            AwsCredential {
                access_key_id: AKID.into(),
                secret_access_key: SECRET.into(),
            },
        ]
    }

    /// Signs with the suite's credentials and scope, then checks that the signature is the
    /// published one and that the verifier accepts it.
    fn check_vector(
        method: &str,
        path: &str,
        query: &str,
        pairs: &[(&str, &str)],
        body: &[u8],
        signed: &[&str],
        expected_signature: &str,
    ) {
        let map = headers(pairs);
        let req = SignedRequest {
            method,
            path,
            query,
            headers: &map,
            body,
        };
        let authorization = sign(&req, AKID, SECRET, "us-east-1", "service", signed);
        assert!(
            authorization.ends_with(&format!("Signature={expected_signature}")),
            "{method} {path}?{query}: {authorization}"
        );
        let mut with_auth = map.clone();
        with_auth.insert(
            http::header::AUTHORIZATION,
            HeaderValue::from_str(&authorization).unwrap(),
        );
        let creds = credentials();
        let verifier = Verifier {
            region: "us-east-1",
            service: "service",
            credentials: &creds,
        };
        let req = SignedRequest {
            headers: &with_auth,
            ..req
        };
        assert_eq!(verifier.verify(&req, at(SUITE_TIME)), Ok(AKID.to_owned()));
    }

    const BASE: [(&str, &str); 2] = [
        ("Host", "example.amazonaws.com"),
        ("X-Amz-Date", "20150830T123600Z"),
    ];
    const HOST_DATE: [&str; 2] = ["host", "x-amz-date"];

    /// Vectors of AWS's SigV4 test suite (`get-vanilla` and friends: credentials
    /// AKIDEXAMPLE, scope 20150830/us-east-1/service), each signature also reproduced
    /// with botocore's `SigV4Auth`.
    #[test]
    fn aws_test_suite_vectors() {
        check_vector(
            "GET",
            "/",
            "",
            &BASE,
            b"",
            &HOST_DATE,
            "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
        );
        // get-vanilla-query-order-key-case: pairs are sorted.
        check_vector(
            "GET",
            "/",
            "Param2=value2&Param1=value1",
            &BASE,
            b"",
            &HOST_DATE,
            "b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500",
        );
        // get-utf8: the raw path `/ሴ` is signed as `/%E1%88%B4`.
        check_vector(
            "GET",
            "/\u{1234}",
            "",
            &BASE,
            b"",
            &HOST_DATE,
            "8318018e0b0f223aa2bbf98705b62bb787dc9c0e678f255a891fd03141be5d85",
        );
        // post-vanilla.
        check_vector(
            "POST",
            "/",
            "",
            &BASE,
            b"",
            &HOST_DATE,
            "5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b",
        );
        // get-header-value-trim: values trimmed, inner spaces collapsed.
        let mut trim = BASE.to_vec();
        trim.extend([("My-Header1", " value1"), ("My-Header2", " \"a   b   c\"")]);
        check_vector(
            "GET",
            "/",
            "",
            &trim,
            b"",
            &["host", "my-header1", "my-header2", "x-amz-date"],
            "acc3ed3afb60bb290fc8d2dd0098b9911fcaa05412b367055dee359757a9c736",
        );
        // post-x-www-form-urlencoded: a signed body with x-amz-content-sha256.
        let body_hash = sha256_hex(b"Param1=value1");
        assert_eq!(
            body_hash,
            "9095672bbd1f56dfc5b65f3e153adc8731a4a654192329106275f4c7b24d0b6e"
        );
        let mut post = BASE.to_vec();
        post.extend([
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("Content-Length", "13"),
            ("X-Amz-Content-SHA256", body_hash.as_str()),
        ]);
        check_vector(
            "POST",
            "/",
            "",
            &post,
            b"Param1=value1",
            &[
                "content-length",
                "content-type",
                "host",
                "x-amz-content-sha256",
                "x-amz-date",
            ],
            "d3875051da38690788ef43de4db0d8f280229d82040bfac253562e56c3f20e0b",
        );
    }

    /// A PostToConnection request exactly as botocore 1.43 sent it (captured before it
    /// left; signature computed by botocore, not by this code).
    fn botocore_post() -> (HeaderMap, &'static str, &'static [u8]) {
        let map = headers(&[
            ("Host", "127.0.0.1:9090"),
            (
                "User-Agent",
                "Boto3/1.43.11 md/Botocore#1.43.11 ua/2.1 os/linux",
            ),
            ("X-Amz-Date", "20260501T120000Z"),
            (
                "Authorization",
                "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20260501/eu-west-1/execute-api/aws4_request, \
                 SignedHeaders=host;x-amz-date, \
                 Signature=380975f819ed97a33024c9fd9af2308013a02ae3810333e22e8951c09713ffd1",
            ),
            (
                "amz-sdk-invocation-id",
                "8362c6e5-e639-495a-92fa-da8b1583db02",
            ),
            ("amz-sdk-request", "attempt=1"),
            ("Content-Length", "5"),
        ]);
        (map, "/prod/@connections/R0oXAdfD0kwCH6w%3D", b"hello")
    }

    /// 2026-05-01T12:00:00Z.
    const BOTOCORE_TIME: u64 = 1_777_636_800;

    #[test]
    fn accepts_a_request_signed_by_botocore() {
        let (map, path, body) = botocore_post();
        let creds = credentials();
        let verifier = Verifier {
            region: "eu-west-1",
            service: EXECUTE_API,
            credentials: &creds,
        };
        let req = SignedRequest {
            method: "POST",
            path,
            query: "",
            headers: &map,
            body,
        };
        assert_eq!(
            verifier.verify(&req, at(BOTOCORE_TIME + 299)),
            Ok(AKID.to_owned())
        );
        // The `@` and the already encoded `%3D` are encoded (again) in the canonical URI.
        assert_eq!(
            canonical_uri(path),
            "/prod/%40connections/R0oXAdfD0kwCH6w%253D"
        );

        // Anything changed is refused.
        let tampered = SignedRequest {
            body: b"hellO",
            ..req
        };
        assert!(matches!(
            verifier.verify(&tampered, at(BOTOCORE_TIME)),
            Err(Rejection::Mismatch { .. })
        ));
        let other_id = SignedRequest {
            path: "/prod/@connections/R0oXAdfD0kwCH6w%3E",
            ..req
        };
        assert!(matches!(
            verifier.verify(&other_id, at(BOTOCORE_TIME)),
            Err(Rejection::Mismatch { .. })
        ));
        let get = SignedRequest {
            method: "GET",
            ..req
        };
        assert!(matches!(
            verifier.verify(&get, at(BOTOCORE_TIME)),
            Err(Rejection::Mismatch { .. })
        ));
        // Too old, too new.
        assert!(matches!(
            verifier.verify(&req, at(BOTOCORE_TIME + 301)),
            Err(Rejection::Expired { .. })
        ));
        assert!(matches!(
            verifier.verify(&req, at(BOTOCORE_TIME - 301)),
            Err(Rejection::Expired { .. })
        ));
        // Another region or service.
        let elsewhere = Verifier {
            region: "us-east-1",
            ..verifier
        };
        assert!(matches!(
            elsewhere.verify(&req, at(BOTOCORE_TIME)),
            Err(Rejection::WrongScope(_))
        ));
        // The right key id with another secret.
        let wrong_secret = vec![AwsCredential {
            access_key_id: AKID.into(),
            secret_access_key: "not-the-secret-at-all".into(),
        }];
        let verifier_wrong = Verifier {
            credentials: &wrong_secret,
            ..verifier
        };
        let err = verifier_wrong.verify(&req, at(BOTOCORE_TIME)).unwrap_err();
        assert!(
            err.to_string()
                .contains("/prod/%40connections/R0oXAdfD0kwCH6w%253D"),
            "{err}"
        );
        // An unknown key id.
        let none = Verifier {
            credentials: &[],
            ..verifier
        };
        assert_eq!(
            none.verify(&req, at(BOTOCORE_TIME)),
            Err(Rejection::UnknownAccessKey(AKID.into()))
        );
        // No Authorization at all.
        let mut unsigned = map.clone();
        unsigned.remove(http::header::AUTHORIZATION);
        let req_unsigned = SignedRequest {
            headers: &unsigned,
            ..req
        };
        assert_eq!(
            verifier.verify(&req_unsigned, at(BOTOCORE_TIME)),
            Err(Rejection::Missing)
        );
    }

    #[test]
    fn payload_hash_header_must_match_the_body() {
        let mut map = headers(&BASE);
        map.insert(
            "x-amz-content-sha256",
            HeaderValue::from_str(&sha256_hex(b"other")).unwrap(),
        );
        let req = SignedRequest {
            method: "POST",
            path: "/",
            query: "",
            headers: &map,
            body: b"body",
        };
        assert!(matches!(payload_hash(&req), Err(Rejection::Payload(_))));
        map.insert(
            "x-amz-content-sha256",
            HeaderValue::from_static("UNSIGNED-PAYLOAD"),
        );
        let req = SignedRequest {
            method: "POST",
            path: "/",
            query: "",
            headers: &map,
            body: b"body",
        };
        assert!(matches!(payload_hash(&req), Err(Rejection::Payload(_))));
    }

    #[test]
    fn authorization_header_parsing() {
        let a = parse_authorization(
            "AWS4-HMAC-SHA256 Credential=AK/20150830/us-east-1/execute-api/aws4_request,SignedHeaders=host;x-amz-date,Signature=0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        )
        .unwrap();
        assert_eq!(a.access_key_id, "AK");
        assert_eq!(a.service, "execute-api");
        assert_eq!(a.signed_headers, ["host", "x-amz-date"]);
        for bad in [
            "Bearer x",
            "AWS4-HMAC-SHA256",
            "AWS4-HMAC-SHA256 Credential=AK/20150830/us-east-1/x/aws4_request, SignedHeaders=host",
            "AWS4-HMAC-SHA256 Credential=AK/2015/us-east-1/x/aws4_request, SignedHeaders=host, Signature=00",
            "AWS4-HMAC-SHA256 Credential=AK/20150830/us-east-1/x/aws4_request, SignedHeaders=Host, Signature=0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        ] {
            assert!(
                matches!(parse_authorization(bad), Err(Rejection::Malformed(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn canonical_forms() {
        assert_eq!(canonical_uri(""), "/");
        assert_eq!(canonical_uri("//example//"), "/example/");
        assert_eq!(canonical_uri("/a/./b/../c"), "/a/c");
        assert_eq!(canonical_uri("/example space/"), "/example%20space/");
        assert_eq!(
            canonical_query("b=2&a=%7e&a=1&c&=x&d=a%20b+c"),
            "=x&a=1&a=~&b=2&c=&d=a%20b%2Bc"
        );
        assert_eq!(trim_all("  a   b \t c  "), "a b c");
        assert_eq!(parse_amz_date("20150830T123600Z"), Some(at(SUITE_TIME)));
        assert_eq!(format_amz_date(at(SUITE_TIME)), "20150830T123600Z");
        assert_eq!(parse_amz_date("2015-08-30T12:36:00Z"), None);
        assert_eq!(parse_amz_date("20151330T123600Z"), None);
    }

    #[test]
    fn signing_key_derivation() {
        // The example key derivation in AWS's SigV4 documentation (iam, 20120215).
        assert_eq!(
            hex(&signing_key(
                "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
                "20120215",
                "us-east-1",
                "iam"
            )),
            "f4780e2d9f65fa895f9c67b32ce1baf0b0d8a43505a000a1a9e090d414db404d"
        );
    }
}
