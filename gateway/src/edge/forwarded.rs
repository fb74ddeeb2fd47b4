//! The client's real address behind proxies: which peers are trusted
//! (`public.trusted_proxies`) and the address headers they add (`public.real_ip_header`:
//! `X-Forwarded-For`, or RFC 7239's `Forwarded`). The address found here is the
//! connection's source address everywhere (`sourceIp` in events, the connection's record
//! and info).
//!
//! A header is honoured only when the connection comes from a trusted proxy (its TCP peer,
//! or the address of its PROXY protocol header, `edge::proxy_protocol`). Its list is then
//! walked from the right, the hop nearest the gateway, as nginx's `real_ip_recursive on`
//! does: each trusted address is passed over, and the first one that is not trusted is the
//! client. Whatever a client writes into the header itself lies to the left of what its
//! proxies append, so it cannot pass for another address. An entry that is not an address
//! (`unknown`, an obfuscated `_id`, garbage) ends the walk: the client is then the last
//! trusted hop, since nothing right of it vouches for what lies beyond. A `Forwarded`
//! header that does not parse is ignored whole (the peer's address stands).

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use http::HeaderMap;
use http::header::{FORWARDED, HeaderValue};
use ipnet::IpNet;

use crate::config::{PublicConfig, RealIpHeader};

/// How the public listener finds a client's address.
#[derive(Debug, Clone, Default)]
pub(crate) struct RealIp {
    /// `public.proxy_protocol`: every connection starts with a PROXY protocol header.
    pub proxy_protocol: bool,
    /// `public.trusted_proxies`.
    trusted: Vec<IpNet>,
    /// `public.real_ip_header`.
    header: RealIpHeader,
}

/// Where a connection on the public listener comes from.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Remote {
    /// The TCP peer.
    pub peer: SocketAddr,
    /// The address the connection is from: its PROXY protocol header's, else the peer's.
    pub ip: IpAddr,
}

impl fmt::Display for Remote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.ip == self.peer.ip() {
            write!(f, "{}", self.peer)
        } else {
            write!(f, "{} via {}", self.ip, self.peer)
        }
    }
}

/// One hop of a forwarding header, client side first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hop {
    /// An address.
    Addr(IpAddr),
    /// `unknown`, an obfuscated identifier, or something that is not an address.
    Unknown,
}

impl RealIp {
    /// From the public listener's config.
    pub fn new(public: &PublicConfig) -> Self {
        RealIp {
            proxy_protocol: public.proxy_protocol,
            trusted: public.trusted_proxies.clone(),
            header: public.real_ip_header,
        }
    }

    /// Whether `ip` is a trusted proxy (an IPv4 address mapped into IPv6, as a dual-stack
    /// listener sees IPv4 peers, counts as the IPv4 address).
    pub fn trusts(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.trusted.iter().any(|net| net.contains(&ip))
    }

    /// The client's address for a request that arrived from `from` (the TCP peer, or the
    /// PROXY protocol header's source): `from` itself unless it is trusted and the
    /// configured header says more.
    pub fn client_ip(&self, from: IpAddr, headers: &HeaderMap) -> IpAddr {
        let hops = match self.header {
            RealIpHeader::None => return from,
            _ if !self.trusts(from) => return from,
            RealIpHeader::XForwardedFor => x_forwarded_for(
                headers
                    .get_all("x-forwarded-for")
                    .iter()
                    .map(HeaderValue::as_bytes),
            ),
            RealIpHeader::Forwarded => {
                match forwarded(headers.get_all(FORWARDED).iter().map(HeaderValue::as_bytes)) {
                    Some(hops) => hops,
                    None => return from,
                }
            }
        };
        rightmost_untrusted(from, &hops, |ip| self.trusts(ip))
    }
}

/// Walks `hops` right to left from `from` (trusted, or the walk does not start): the first
/// address that is not trusted, else the last trusted one before an entry that is not an
/// address or the list's start.
pub fn rightmost_untrusted(from: IpAddr, hops: &[Hop], trusted: impl Fn(IpAddr) -> bool) -> IpAddr {
    let mut client = from;
    for hop in hops.iter().rev() {
        if !trusted(client) {
            break;
        }
        match hop {
            Hop::Addr(ip) => client = *ip,
            Hop::Unknown => break,
        }
    }
    client
}

/// The hops of `X-Forwarded-For` header values, in order (several headers make one
/// list): comma-separated addresses, each an IPv4 or IPv6 address, maybe with a port
/// (`192.0.2.1:4711`, `[2001:db8::1]:4711`) or in brackets; empty entries skipped.
pub fn x_forwarded_for<'a>(values: impl IntoIterator<Item = &'a [u8]>) -> Vec<Hop> {
    values
        .into_iter()
        .flat_map(|value| value.split(|b| *b == b','))
        .map(|entry| entry.trim_ascii())
        .filter(|entry| !entry.is_empty())
        .map(|entry| match node(entry) {
            Some(ip) => Hop::Addr(ip),
            None => Hop::Unknown,
        })
        .collect()
}

/// An address, with or without a port or brackets; `None` for anything else.
fn node(text: &[u8]) -> Option<IpAddr> {
    let text = std::str::from_utf8(text).ok()?;
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Some(addr.ip());
    }
    let bracketed = text.strip_prefix('[')?.strip_suffix(']')?;
    bracketed.parse::<std::net::Ipv6Addr>().ok().map(IpAddr::V6)
}

/// The hops of `Forwarded` header values (RFC 7239), one per forwarded element, each its
/// `for=` node (`for=192.0.2.60`, `for="[2001:db8:cafe::17]:4711"`); an element without
/// one, or whose node is `unknown` or obfuscated, is [`Hop::Unknown`]. `None` if a value
/// does not parse (an unterminated quoted string, a parameter without `=`, `for` twice in
/// one element). Parameter names are case-insensitive; a value may also be left unquoted
/// where the RFC wants quotes (`for=[2001:db8::1]`, `for=192.0.2.1:80`).
pub fn forwarded<'a>(values: impl IntoIterator<Item = &'a [u8]>) -> Option<Vec<Hop>> {
    let mut hops = Vec::new();
    for value in values {
        forwarded_value(value, &mut hops)?;
    }
    Some(hops)
}

fn forwarded_value(value: &[u8], hops: &mut Vec<Hop>) -> Option<()> {
    // The current element: whether it has any pair, and its `for` node if any.
    let mut element: Option<Option<Hop>> = None;
    let mut i = 0;
    let end_element = |element: &mut Option<Option<Hop>>, hops: &mut Vec<Hop>| {
        if let Some(node) = element.take() {
            hops.push(node.unwrap_or(Hop::Unknown));
        }
    };
    loop {
        while value.get(i).is_some_and(|b| *b == b' ' || *b == b'\t') {
            i += 1;
        }
        let Some(&byte) = value.get(i) else {
            end_element(&mut element, hops);
            return Some(());
        };
        match byte {
            b',' => {
                end_element(&mut element, hops);
                i += 1;
                continue;
            }
            b';' => {
                i += 1;
                continue;
            }
            _ => {}
        }
        let name_len = value[i..].iter().take_while(|b| is_tchar(**b)).count();
        if name_len == 0 || value.get(i + name_len) != Some(&b'=') {
            return None;
        }
        let name = &value[i..i + name_len];
        i += name_len + 1;
        let text = if value.get(i) == Some(&b'"') {
            let (text, len) = quoted(&value[i..])?;
            i += len;
            text
        } else {
            let len = value[i..]
                .iter()
                .take_while(|b| !matches!(b, b';' | b',' | b' ' | b'\t' | b'"'))
                .count();
            if len == 0 {
                return None;
            }
            let text = value[i..i + len].to_vec();
            i += len;
            text
        };
        let current = element.get_or_insert(None);
        if name.eq_ignore_ascii_case(b"for") {
            if current.is_some() {
                return None;
            }
            *current = Some(node(&text).map_or(Hop::Unknown, Hop::Addr));
        }
    }
}

/// A quoted string at the start of `bytes`: its text (escapes undone) and its length with
/// the quotes; `None` if it does not end.
fn quoted(bytes: &[u8]) -> Option<(Vec<u8>, usize)> {
    let mut text = Vec::new();
    let mut i = 1;
    loop {
        match *bytes.get(i)? {
            b'"' => return Some((text, i + 1)),
            b'\\' => {
                text.push(*bytes.get(i + 1)?);
                i += 2;
            }
            byte => {
                text.push(byte);
                i += 1;
            }
        }
    }
}

/// RFC 9110's `tchar`: what a token (a parameter name) is made of.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn xff(values: &[&str]) -> Vec<Hop> {
        x_forwarded_for(values.iter().map(|v| v.as_bytes()))
    }

    fn fwd(values: &[&str]) -> Option<Vec<Hop>> {
        forwarded(values.iter().map(|v| v.as_bytes()))
    }

    fn addr(text: &str) -> Hop {
        Hop::Addr(ip(text))
    }

    #[test]
    fn x_forwarded_for_lists() {
        assert_eq!(
            xff(&["192.0.2.1,198.51.100.2 ,  203.0.113.3"]),
            [addr("192.0.2.1"), addr("198.51.100.2"), addr("203.0.113.3")]
        );
        assert_eq!(
            xff(&["192.0.2.1", "198.51.100.2, 10.0.0.1"]),
            [addr("192.0.2.1"), addr("198.51.100.2"), addr("10.0.0.1")],
            "several headers are one list, in order"
        );
        assert_eq!(
            xff(&["2001:db8::1, [2001:db8::2], [2001:db8::3]:4711, 192.0.2.1:80"]),
            [
                addr("2001:db8::1"),
                addr("2001:db8::2"),
                addr("2001:db8::3"),
                addr("192.0.2.1")
            ]
        );
        assert_eq!(
            xff(&[", 192.0.2.1,,\t"]),
            [addr("192.0.2.1")],
            "empty entries"
        );
        assert_eq!(
            xff(&["unknown, 192.0.2.300, _x, 192.0.2.1"]),
            [Hop::Unknown, Hop::Unknown, Hop::Unknown, addr("192.0.2.1")]
        );
        assert_eq!(xff(&[]), []);
    }

    #[test]
    fn forwarded_elements() {
        assert_eq!(
            fwd(&["for=192.0.2.60;proto=http;by=203.0.113.43"]),
            Some(vec![addr("192.0.2.60")])
        );
        assert_eq!(
            fwd(&[
                r#"For="[2001:db8:cafe::17]:4711""#,
                "for=192.0.2.43, for=198.51.100.17"
            ]),
            Some(vec![
                addr("2001:db8:cafe::17"),
                addr("192.0.2.43"),
                addr("198.51.100.17")
            ])
        );
        assert_eq!(
            fwd(&[r#"for=unknown, for="_hidden", for=_SEVKISEK, proto=https, for="192.0.2.1""#]),
            Some(vec![
                Hop::Unknown,
                Hop::Unknown,
                Hop::Unknown,
                Hop::Unknown,
                addr("192.0.2.1")
            ]),
            "obfuscated, unknown and missing nodes are hops of unknown address"
        );
        assert_eq!(
            fwd(&[r#"by="a,b";for="192.0.2.1:80" ; proto=https"#]),
            Some(vec![addr("192.0.2.1")]),
            "a comma inside quotes does not end the element"
        );
        assert_eq!(
            fwd(&[r#"for="\[2001:db8::1\]""#]),
            Some(vec![addr("2001:db8::1")]),
            "escapes"
        );
        assert_eq!(
            fwd(&["for=[2001:db8::1]:80, for=192.0.2.1:80"]),
            Some(vec![addr("2001:db8::1"), addr("192.0.2.1")]),
            "unquoted where quotes are due"
        );
        assert_eq!(fwd(&[" , ,"]), Some(vec![]));
        for bad in [
            r#"for="192.0.2.1"#,
            "for",
            "for=",
            "=192.0.2.1",
            "for=192.0.2.1;for=192.0.2.2",
            "for = 192.0.2.1",
        ] {
            assert_eq!(fwd(&["for=192.0.2.9", bad]), None, "{bad}");
        }
    }

    fn real_ip(header: RealIpHeader, trusted: &[&str]) -> RealIp {
        RealIp {
            proxy_protocol: false,
            trusted: trusted.iter().map(|t| t.parse().unwrap()).collect(),
            header,
        }
    }

    fn headers(name: &str, values: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for value in values {
            map.append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        map
    }

    #[test]
    fn the_rightmost_untrusted_address_is_the_client() {
        let x = real_ip(
            RealIpHeader::XForwardedFor,
            &["127.0.0.1/32", "10.0.0.0/8", "::1/128"],
        );
        let client = |from: &str, values: &[&str]| {
            x.client_ip(ip(from), &headers("x-forwarded-for", values))
                .to_string()
        };
        // A client's own entries lie left of what the proxies append.
        assert_eq!(client("127.0.0.1", &["6.6.6.6, 192.0.2.7"]), "192.0.2.7");
        assert_eq!(
            client("127.0.0.1", &["6.6.6.6, 192.0.2.7, 10.1.2.3, 10.0.0.9"]),
            "192.0.2.7",
            "trusted hops are passed over"
        );
        assert_eq!(client("127.0.0.1", &["6.6.6.6", "192.0.2.7"]), "192.0.2.7");
        assert_eq!(
            client("::1", &["2001:db8::7"]),
            "2001:db8::7",
            "IPv6 peer and client"
        );
        assert_eq!(
            client("::ffff:127.0.0.1", &["192.0.2.7"]),
            "192.0.2.7",
            "a mapped IPv4 peer is the IPv4 address"
        );
        // An untrusted peer's headers say nothing.
        assert_eq!(client("192.0.2.50", &["10.0.0.1, 6.6.6.6"]), "192.0.2.50");
        // No header, an empty one, only trusted hops.
        assert_eq!(client("127.0.0.1", &[]), "127.0.0.1");
        assert_eq!(client("127.0.0.1", &[""]), "127.0.0.1");
        assert_eq!(client("127.0.0.1", &["10.0.0.7, 10.0.0.8"]), "10.0.0.7");
        // Not an address: the walk ends at the last trusted hop.
        assert_eq!(
            client("127.0.0.1", &["6.6.6.6, unknown, 10.0.0.8"]),
            "10.0.0.8"
        );
        assert_eq!(client("127.0.0.1", &["6.6.6.6, garbage"]), "127.0.0.1");

        let none = real_ip(RealIpHeader::None, &["127.0.0.1/32"]);
        assert_eq!(
            none.client_ip(ip("127.0.0.1"), &headers("x-forwarded-for", &["192.0.2.7"])),
            ip("127.0.0.1"),
            "no header configured, none honoured"
        );
    }

    #[test]
    fn forwarded_from_trusted_proxies() {
        let f = real_ip(RealIpHeader::Forwarded, &["127.0.0.0/8"]);
        let client = |values: &[&str]| {
            f.client_ip(ip("127.0.0.1"), &headers("forwarded", values))
                .to_string()
        };
        assert_eq!(
            client(&[r#"for=6.6.6.6, for="[2001:db8::1]:4711";proto=https"#]),
            "2001:db8::1"
        );
        assert_eq!(
            client(&["for=6.6.6.6", "for=192.0.2.7;by=127.0.0.1", "for=127.0.0.2"]),
            "192.0.2.7"
        );
        assert_eq!(client(&["for=6.6.6.6, for=_hidden"]), "127.0.0.1");
        assert_eq!(
            client(&[r#"for=6.6.6.6, for="192.0.2.7"#]),
            "127.0.0.1",
            "a header that does not parse is ignored"
        );
        assert_eq!(
            f.client_ip(ip("127.0.0.1"), &headers("x-forwarded-for", &["192.0.2.7"])),
            ip("127.0.0.1"),
            "only the configured header counts"
        );
    }
}
