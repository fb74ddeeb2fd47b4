//! Where a route reads its clients' credential: a request header (`Authorization` takes
//! `Bearer <credential>`) or a query parameter (percent-decoded as every query of the
//! gateway, `wire::event::query_pairs`). Also what a passthrough needs to leave the
//! credential out of what it forwards.

use http::header::{self, HeaderName};
use http::request::Parts;

use super::error::{AuthConfigError, AuthFailure};

/// Where the credential is read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Source {
    /// A request header (lowercase).
    Header(HeaderName),
    /// A query parameter.
    Query(String),
}

impl Source {
    /// The source `header` or `query` name (exactly one of them; `default` when neither
    /// is set and the kind has one). `section` names the settings in errors (`api_key`).
    pub(crate) fn from_config(
        section: Section,
        header: Option<&str>,
        query: Option<&str>,
        default: Option<HeaderName>,
    ) -> Result<Source, AuthConfigError> {
        match (header, query) {
            (Some(_), Some(_)) => Err(AuthConfigError::new(
                section.header,
                format!(
                    "and `{}` are both set: the credential is read from one place",
                    section.query
                ),
            )),
            (None, None) => default.map(Source::Header).ok_or_else(|| {
                AuthConfigError::new(
                    section.header,
                    format!(
                        "or `{}` must say where the credential is read",
                        section.query
                    ),
                )
            }),
            (Some(name), None) => HeaderName::from_bytes(name.trim().as_bytes())
                .map(Source::Header)
                .map_err(|_| AuthConfigError::new(section.header, "is not a valid header name")),
            (None, Some(name)) if name.trim().is_empty() => {
                Err(AuthConfigError::new(section.query, "is empty"))
            }
            (None, Some(name)) => Ok(Source::Query(name.trim().to_owned())),
        }
    }

    /// Whether the credential is a bearer token of the `Authorization` header (its
    /// refusals carry `WWW-Authenticate: Bearer`).
    pub(crate) fn is_authorization(&self) -> bool {
        matches!(self, Source::Header(name) if name == header::AUTHORIZATION)
    }

    /// The header that carries the credential, if it is a header.
    pub(crate) fn header(&self) -> Option<&HeaderName> {
        match self {
            Source::Header(name) => Some(name),
            Source::Query(_) => None,
        }
    }

    /// The credential the request carries: the header's value (after `Bearer ` for
    /// `Authorization`) or the query parameter's (the first of that name). Missing when
    /// absent or empty; Invalid when `Authorization` names another scheme.
    pub(crate) fn read(&self, parts: &Parts) -> Result<Vec<u8>, AuthFailure> {
        let credential = match self {
            Source::Header(name) => {
                let Some(value) = parts.headers.get(name) else {
                    return Err(AuthFailure::Missing);
                };
                let value = value.as_bytes();
                if self.is_authorization() {
                    bearer(value)?.to_vec()
                } else {
                    value.to_vec()
                }
            }
            Source::Query(name) => parts
                .uri
                .query()
                .and_then(|q| wire::event::query_pairs(q).find(|(k, _)| k == name))
                .map(|(_, v)| v.into_bytes())
                .unwrap_or_default(),
        };
        if credential.is_empty() {
            return Err(AuthFailure::Missing);
        }
        Ok(credential)
    }

    /// `query` without the credential's parameter (every pair named as it is, as sent),
    /// for a backend that should not see the gateway's credential. Unchanged when the
    /// credential is in a header.
    pub(crate) fn strip_query(&self, query: &str) -> String {
        let Source::Query(name) = self else {
            return query.to_owned();
        };
        query
            .split('&')
            .filter(|pair| {
                !pair.is_empty() && !wire::event::query_pairs(pair).any(|(k, _)| &k == name)
            })
            .collect::<Vec<_>>()
            .join("&")
    }
}

/// The field names of one kind's settings, for errors.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Section {
    pub header: &'static str,
    pub query: &'static str,
}

/// The credentials of `Bearer <credentials>` (the scheme matched without regard to case,
/// RFC 7235 section 2.1; spaces around the credentials dropped).
fn bearer(value: &[u8]) -> Result<&[u8], AuthFailure> {
    let value = value.trim_ascii();
    if value.is_empty() || value.eq_ignore_ascii_case(b"bearer") {
        return Err(AuthFailure::Missing);
    }
    match value.iter().position(|&b| b == b' ') {
        Some(at) if value[..at].eq_ignore_ascii_case(b"bearer") => Ok(value[at..].trim_ascii()),
        _ => Err(AuthFailure::Invalid),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECTION: Section = Section {
        header: "api_key.header",
        query: "api_key.query",
    };

    fn parts(uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut builder = http::Request::builder().uri(uri);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).unwrap().into_parts().0
    }

    #[test]
    fn one_place_exactly() {
        let both = Source::from_config(SECTION, Some("x-api-key"), Some("key"), None);
        assert_eq!(both.unwrap_err().field, "api_key.header");
        let neither = Source::from_config(SECTION, None, None, None).unwrap_err();
        assert!(neither.message.contains("api_key.query"), "{neither}");
        let default = Source::from_config(SECTION, None, None, Some(header::AUTHORIZATION));
        assert_eq!(default.unwrap(), Source::Header(header::AUTHORIZATION));
        let bad = Source::from_config(SECTION, Some("x api key"), None, None).unwrap_err();
        assert_eq!(bad.field, "api_key.header");
        let empty = Source::from_config(SECTION, None, Some(" "), None).unwrap_err();
        assert_eq!(empty.field, "api_key.query");
        let upper = Source::from_config(SECTION, Some("X-Api-Key"), None, None).unwrap();
        assert_eq!(upper.header().unwrap(), "x-api-key");
    }

    #[test]
    fn authorization_takes_a_bearer_credential() {
        let source = Source::Header(header::AUTHORIZATION);
        for value in ["Bearer k1", "bearer k1", "BEARER   k1 "] {
            assert_eq!(
                source
                    .read(&parts("/", &[("authorization", value)]))
                    .unwrap(),
                b"k1"
            );
        }
        assert_eq!(source.read(&parts("/", &[])), Err(AuthFailure::Missing));
        assert_eq!(
            source.read(&parts("/", &[("authorization", "")])),
            Err(AuthFailure::Missing)
        );
        assert_eq!(
            source.read(&parts("/", &[("authorization", "Bearer ")])),
            Err(AuthFailure::Missing)
        );
        for value in ["Basic azE6", "k1", "Bearerk1"] {
            assert_eq!(
                source.read(&parts("/", &[("authorization", value)])),
                Err(AuthFailure::Invalid),
                "{value}"
            );
        }
        assert!(source.is_authorization());
    }

    #[test]
    fn another_header_is_taken_as_it_is() {
        let source = Source::Header(HeaderName::from_static("x-api-key"));
        let read = source
            .read(&parts("/", &[("x-api-key", "Bearer k1")]))
            .unwrap();
        assert_eq!(read, b"Bearer k1");
        assert_eq!(
            source.read(&parts("/?x-api-key=k1", &[])),
            Err(AuthFailure::Missing)
        );
        assert!(!source.is_authorization());
    }

    #[test]
    fn the_query_parameter_is_percent_decoded() {
        let source = Source::Query("api_key".into());
        let read = |uri| source.read(&parts(uri, &[]));
        assert_eq!(read("/v1?api_key=k%2B1%2F2&x=1").unwrap(), b"k+1/2");
        assert_eq!(read("/v1?x=1&api_key=a&api_key=b").unwrap(), b"a");
        assert_eq!(read("/v1?x=1"), Err(AuthFailure::Missing));
        assert_eq!(read("/v1?api_key="), Err(AuthFailure::Missing));
        assert_eq!(read("/v1"), Err(AuthFailure::Missing));
        assert_eq!(
            source.read(&parts("/v1", &[("api_key", "k1")])),
            Err(AuthFailure::Missing)
        );
    }

    #[test]
    fn the_credential_can_be_left_out_of_the_forwarded_query() {
        let source = Source::Query("access_token".into());
        assert_eq!(
            source.strip_query("model=m1&access_token=t&access%5Ftoken=u&voice=a%20b"),
            "model=m1&voice=a%20b"
        );
        assert_eq!(source.strip_query("access_token=t"), "");
        let header = Source::Header(header::AUTHORIZATION);
        assert_eq!(header.strip_query("access_token=t"), "access_token=t");
    }
}
