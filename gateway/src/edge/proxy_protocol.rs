//! The PROXY protocol (HAProxy's "PROXY protocol" spec, versions 1 and 2): the header a
//! load balancer writes at the very start of a TCP connection to say whose connection it
//! forwards. With `public.proxy_protocol` on, every connection on the public listener must
//! start with one, from `public.trusted_proxies` only: a connection from elsewhere is closed.
//!
//! [`parse`] is pure, over the bytes received so far: a whole header ([`Parsed::Complete`]),
//! not enough bytes yet ([`Parsed::Partial`]) or not a header ([`Parsed::Invalid`]). It
//! reads version 1 (`PROXY TCP4 1.2.3.4 5.6.7.8 1111 2222\r\n`, `TCP6`, `UNKNOWN`; at most
//! [`V1_MAX`] bytes) and version 2 (the 12-byte signature, `LOCAL` and `PROXY` commands,
//! addresses of IPv4 or IPv6, TLVs skipped; 16 bytes plus the length it announces).
//! `read_header` reads one header off a socket and not one byte more: what follows (the
//! request, or a TLS handshake) stays in the socket for whoever reads next.
//! `connection_ip` is what the public listener calls first on each connection: the
//! trust check, the header read within the handshake timeout, and the address.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::debug;

use crate::edge::forwarded::RealIp;
use crate::stop::Stop;

/// The longest version 1 header, `\r\n` included (the spec's bound).
pub const V1_MAX: usize = 107;
/// How a version 1 header starts.
const V1_PREFIX: &[u8] = b"PROXY ";
/// How a version 2 header starts.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// A version 2 header's fixed part: the signature, version and command, family and
/// protocol, and the length of the rest.
const V2_FIXED: usize = 16;

/// What the bytes at the start of a connection hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parsed {
    /// A whole header of `len` bytes. `source` is the client's address; `None` when the
    /// header names none (v1 `UNKNOWN`, v2 `LOCAL`, a v2 family other than IPv4 or IPv6):
    /// then the connection's own peer address stands.
    Complete {
        /// The client's address, if the header gives one.
        source: Option<SocketAddr>,
        /// The header's length in bytes.
        len: usize,
    },
    /// The bytes so far are the start of a header: more are needed.
    Partial,
    /// Not a PROXY protocol header (the reason, for the log).
    Invalid(&'static str),
}

/// Parses the PROXY protocol header at the start of `buf` (which may hold more after it).
pub fn parse(buf: &[u8]) -> Parsed {
    match buf.first() {
        None => Parsed::Partial,
        Some(b'\r') => parse_v2(buf),
        Some(b'P') => parse_v1(buf),
        Some(_) => Parsed::Invalid("not a PROXY protocol header"),
    }
}

fn parse_v1(buf: &[u8]) -> Parsed {
    let prefix = buf.len().min(V1_PREFIX.len());
    if buf[..prefix] != V1_PREFIX[..prefix] {
        return Parsed::Invalid("not a PROXY protocol header");
    }
    let window = &buf[..buf.len().min(V1_MAX)];
    let Some(lf) = window.iter().position(|b| *b == b'\n') else {
        return if buf.len() >= V1_MAX {
            Parsed::Invalid("a version 1 header longer than 107 bytes")
        } else {
            Parsed::Partial
        };
    };
    if lf < V1_PREFIX.len() + 1 || buf[lf - 1] != b'\r' {
        return Parsed::Invalid("a version 1 header not ended by CRLF");
    }
    let len = lf + 1;
    let Ok(line) = std::str::from_utf8(&buf[V1_PREFIX.len()..lf - 1]) else {
        return Parsed::Invalid("a version 1 header that is not text");
    };
    let fields: Vec<&str> = line.split(' ').collect();
    let source = match fields.as_slice() {
        // The rest of an UNKNOWN line is to be ignored.
        ["UNKNOWN", ..] => None,
        ["TCP4", src, dst, sport, dport] => {
            let (Ok(src), Ok(_), Some(sport), Some(_)) = (
                src.parse::<Ipv4Addr>(),
                dst.parse::<Ipv4Addr>(),
                port(sport),
                port(dport),
            ) else {
                return Parsed::Invalid("a malformed TCP4 line");
            };
            Some(SocketAddr::new(IpAddr::V4(src), sport))
        }
        ["TCP6", src, dst, sport, dport] => {
            let (Ok(src), Ok(_), Some(sport), Some(_)) = (
                src.parse::<Ipv6Addr>(),
                dst.parse::<Ipv6Addr>(),
                port(sport),
                port(dport),
            ) else {
                return Parsed::Invalid("a malformed TCP6 line");
            };
            Some(SocketAddr::new(IpAddr::V6(src), sport))
        }
        _ => return Parsed::Invalid("a version 1 header of an unknown form"),
    };
    Parsed::Complete { source, len }
}

/// A port of a version 1 line: 1 to 5 decimal digits, at most 65535.
fn port(text: &str) -> Option<u16> {
    if text.is_empty() || text.len() > 5 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

fn parse_v2(buf: &[u8]) -> Parsed {
    let signature = buf.len().min(V2_SIGNATURE.len());
    if buf[..signature] != V2_SIGNATURE[..signature] {
        return Parsed::Invalid("not a PROXY protocol header");
    }
    // Checked as soon as they arrive: a wrong byte need not wait for the rest.
    let command = buf.get(12).map(|ver_cmd| (ver_cmd >> 4, ver_cmd & 0x0f));
    let local = match command {
        None => false,
        Some((2, 0)) => true,
        Some((2, 1)) => false,
        Some((2, _)) => return Parsed::Invalid("a version 2 header with an unknown command"),
        Some(_) => return Parsed::Invalid("a PROXY protocol header of an unknown version"),
    };
    // The address family (UNSPEC, INET, INET6, UNIX) and the transport (UNSPEC, STREAM,
    // DGRAM).
    let family = match buf.get(13).map(|fam| (fam >> 4, fam & 0x0f)) {
        None => 0,
        Some((family @ 0..=3, 0..=2)) => family,
        Some(_) => return Parsed::Invalid("a version 2 header with an unknown family"),
    };
    if buf.len() < V2_FIXED {
        return Parsed::Partial;
    }
    let len = V2_FIXED + usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    if buf.len() < len {
        return Parsed::Partial;
    }
    // The addresses, then TLVs, which are skipped.
    let block = &buf[V2_FIXED..len];
    if local {
        // A connection the balancer makes for itself (a health check): its own address.
        return Parsed::Complete { source: None, len };
    }
    let source = match family {
        1 => {
            let Some(addresses) = block.get(..12) else {
                return Parsed::Invalid("a version 2 header too short for IPv4 addresses");
            };
            let ip = Ipv4Addr::new(addresses[0], addresses[1], addresses[2], addresses[3]);
            let port = u16::from_be_bytes([addresses[8], addresses[9]]);
            Some(SocketAddr::new(IpAddr::V4(ip), port))
        }
        2 => {
            let Some(addresses) = block.get(..36) else {
                return Parsed::Invalid("a version 2 header too short for IPv6 addresses");
            };
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&addresses[..16]);
            let port = u16::from_be_bytes([addresses[32], addresses[33]]);
            Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(octets)), port))
        }
        // UNSPEC or a UNIX socket: no address the gateway can use.
        _ => None,
    };
    Parsed::Complete { source, len }
}

/// The address a new connection on the public listener is from: with
/// `public.proxy_protocol`, its PROXY protocol header's (whole by `deadline`; a header
/// naming no address leaves the peer's), else its peer's. `None`: the connection is to be
/// closed (a peer that is not trusted, no valid header in time, or shutdown); the reason is
/// logged at debug.
pub(crate) async fn connection_ip(
    real_ip: &RealIp,
    stop: &Stop,
    stream: &mut TcpStream,
    peer: SocketAddr,
    deadline: Instant,
) -> Option<IpAddr> {
    if !real_ip.proxy_protocol {
        return Some(peer.ip());
    }
    if !real_ip.trusts(peer.ip()) {
        debug!(
            %peer,
            "closing connection: public.proxy_protocol is on and the peer is not in \
             public.trusted_proxies"
        );
        return None;
    }
    // Boxed: its buffers are not kept in the connection's task once it is read.
    let header = Box::pin(read_header(stream));
    let read = tokio::select! {
        _ = stop.cancelled() => return None,
        read = tokio::time::timeout_at(deadline, header) => read,
    };
    match read {
        Ok(Ok(source)) => Some(source.map_or(peer.ip(), |source| source.ip())),
        Ok(Err(e)) => {
            debug!(%peer, cause = %e, "closing connection: no valid PROXY protocol header");
            None
        }
        Err(_) => {
            debug!(
                %peer,
                "closing connection: no PROXY protocol header within limits.handshake_timeout"
            );
            None
        }
    }
}

/// Why a connection has no usable PROXY protocol header.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HeaderError {
    /// The client closed before a whole header arrived.
    #[error("closed before a whole PROXY protocol header")]
    Closed,
    /// The bytes are not a header.
    #[error("invalid PROXY protocol header: {0}")]
    Invalid(&'static str),
    /// The socket failed.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Reads the PROXY protocol header at the start of `stream`: the client's address, if it
/// names one. Exactly the header's bytes are taken from the socket: each read takes only
/// bytes seen first with a peek to belong to the header (all of them while the header is
/// incomplete, since it goes on past them). Not bounded in time: the caller bounds it.
pub(crate) async fn read_header(stream: &mut TcpStream) -> Result<Option<SocketAddr>, HeaderError> {
    // The header's bytes taken so far, then the ones peeked after them.
    let mut seen: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 256];
    loop {
        let taken = seen.len();
        let peeked = stream.peek(&mut chunk).await?;
        if peeked == 0 {
            return Err(HeaderError::Closed);
        }
        seen.extend_from_slice(&chunk[..peeked]);
        match parse(&seen) {
            Parsed::Complete { source, len } => {
                stream.read_exact(&mut chunk[..len - taken]).await?;
                return Ok(source);
            }
            Parsed::Partial => {
                stream.read_exact(&mut chunk[..peeked]).await?;
            }
            Parsed::Invalid(why) => return Err(HeaderError::Invalid(why)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete(buf: &[u8]) -> (Option<SocketAddr>, usize) {
        match parse(buf) {
            Parsed::Complete { source, len } => (source, len),
            other => panic!("{other:?} for {buf:?}"),
        }
    }

    fn invalid(buf: &[u8]) -> bool {
        matches!(parse(buf), Parsed::Invalid(_))
    }

    /// Every proper prefix of a whole header is `Partial`.
    fn prefixes_are_partial(header: &[u8]) {
        for end in 0..header.len() {
            assert_eq!(
                parse(&header[..end]),
                Parsed::Partial,
                "{:?}",
                &header[..end]
            );
        }
    }

    #[test]
    fn v1_tcp4_tcp6_and_unknown() {
        let line = b"PROXY TCP4 192.0.2.7 198.51.100.1 56324 443\r\nGET / HTTP/1.1\r\n";
        let (source, len) = complete(line);
        assert_eq!(source, Some("192.0.2.7:56324".parse().unwrap()));
        assert_eq!(&line[len..], b"GET / HTTP/1.1\r\n");
        prefixes_are_partial(&line[..len]);

        let line = b"PROXY TCP6 2001:db8::1 2001:db8::2 4711 80\r\n";
        assert_eq!(
            complete(line),
            (Some("[2001:db8::1]:4711".parse().unwrap()), line.len())
        );
        assert_eq!(complete(b"PROXY UNKNOWN\r\n"), (None, 15));
        let line = b"PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n";
        assert_eq!(complete(line), (None, line.len()));
    }

    #[test]
    fn v1_of_the_longest_length_and_one_more() {
        // The spec's worst case: 107 bytes.
        let v6 = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
        let longest = format!("PROXY UNKNOWN {v6} {v6} 65535 65535\r\n");
        assert_eq!(longest.len(), V1_MAX);
        assert_eq!(complete(longest.as_bytes()), (None, V1_MAX));
        let tcp6 = format!("PROXY TCP6 {v6} {v6} 65535 65535\r\n");
        assert_eq!(
            complete(tcp6.as_bytes()),
            (
                Some(SocketAddr::from((Ipv6Addr::from([0xffff; 8]), 65535))),
                104
            )
        );
        let mut unended = b"PROXY UNKNOWN ".to_vec();
        unended.resize(V1_MAX - 1, b'x');
        assert_eq!(parse(&unended), Parsed::Partial);
        unended.push(b'x');
        assert!(invalid(&unended), "107 bytes and no end");
        unended.extend_from_slice(b"\r\n");
        assert!(invalid(&unended), "an end past 107 bytes");
    }

    #[test]
    fn v1_malformed() {
        for line in [
            &b"PROXY TCP4 192.0.2.7 198.51.100.1 56324\r\n"[..],
            b"PROXY TCP4 192.0.2.7 198.51.100.1 56324 443 9\r\n",
            b"PROXY TCP4 192.0.2.7  198.51.100.1 56324 443\r\n",
            b"PROXY TCP4 2001:db8::1 198.51.100.1 56324 443\r\n",
            b"PROXY TCP6 192.0.2.7 2001:db8::2 56324 443\r\n",
            b"PROXY TCP4 192.0.2.300 198.51.100.1 56324 443\r\n",
            b"PROXY TCP4 192.0.2.7 198.51.100.1 65536 443\r\n",
            b"PROXY TCP4 192.0.2.7 198.51.100.1 +80 443\r\n",
            b"PROXY TCP4 192.0.2.7 198.51.100.1 -1 443\r\n",
            b"PROXY UDP4 192.0.2.7 198.51.100.1 56324 443\r\n",
            b"PROXY tcp4 192.0.2.7 198.51.100.1 56324 443\r\n",
            b"PROXY TCP4 192.0.2.7 198.51.100.1 56324 443\n",
            b"PROXY TCP4 192.0.2.7 198.51.100.1 56324 443\r\r\n",
            b"PROXY \r\n",
            b"PROXY\r\n",
            b"PROXY TCP4 \xff.0.2.7 198.51.100.1 56324 443\r\n",
            b"PROXX TCP4",
            b"GET / HTTP/1.1\r\n\r\n",
            b"\x16\x03\x01\x02\x00",
            b"P\r\n",
        ] {
            assert!(invalid(line), "{:?}", String::from_utf8_lossy(line));
        }
    }

    /// A version 2 header: command, family byte, address block and TLVs.
    fn v2(command: u8, family: u8, block: &[u8]) -> Vec<u8> {
        let mut header = V2_SIGNATURE.to_vec();
        header.push(0x20 | command);
        header.push(family);
        header.extend_from_slice(&u16::try_from(block.len()).unwrap().to_be_bytes());
        header.extend_from_slice(block);
        header
    }

    #[test]
    fn v2_ipv4_with_tlvs_and_what_follows() {
        let mut block = vec![203, 0, 113, 9, 10, 0, 0, 1];
        block.extend_from_slice(&40000u16.to_be_bytes());
        block.extend_from_slice(&443u16.to_be_bytes());
        // TLVs: an ALPN and a NOOP, skipped.
        block.extend_from_slice(&[0x01, 0, 2, b'h', b'2', 0x04, 0, 3, 0, 0, 0]);
        let header = v2(1, 0x11, &block);
        prefixes_are_partial(&header);
        let mut buf = header.clone();
        buf.extend_from_slice(b"GET /");
        assert_eq!(
            complete(&buf),
            (Some("203.0.113.9:40000".parse().unwrap()), header.len())
        );
    }

    #[test]
    fn v2_ipv6_local_unspec_and_unix() {
        let mut block = "2001:db8::17"
            .parse::<Ipv6Addr>()
            .unwrap()
            .octets()
            .to_vec();
        block.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
        block.extend_from_slice(&4711u16.to_be_bytes());
        block.extend_from_slice(&80u16.to_be_bytes());
        let header = v2(1, 0x21, &block);
        assert_eq!(
            complete(&header),
            (Some("[2001:db8::17]:4711".parse().unwrap()), 52)
        );
        // LOCAL: the balancer's own connection, addresses (if any) ignored.
        assert_eq!(complete(&v2(0, 0x00, &[])), (None, 16));
        assert_eq!(complete(&v2(0, 0x21, &block)), (None, 52));
        // UNSPEC and UNIX families: no usable address.
        assert_eq!(complete(&v2(1, 0x00, &[])), (None, 16));
        assert_eq!(complete(&v2(1, 0x31, &[0; 216])), (None, 232));
    }

    #[test]
    fn v2_of_the_longest_length() {
        let mut block = vec![192, 0, 2, 1, 192, 0, 2, 2, 0, 1, 0, 2];
        block.resize(usize::from(u16::MAX), 0);
        let header = v2(1, 0x11, &block);
        assert_eq!(
            parse(&header[..header.len() - 1]),
            Parsed::Partial,
            "16 + 65535 bytes are read"
        );
        assert_eq!(complete(&header).1, 16 + 65535);
    }

    #[test]
    fn v2_malformed() {
        let ipv4 = [192, 0, 2, 1, 192, 0, 2, 2, 0, 1, 0, 2];
        let mut wrong_version = v2(1, 0x11, &ipv4);
        wrong_version[12] = 0x11;
        let mut wrong_signature = v2(1, 0x11, &ipv4);
        wrong_signature[5] = b'x';
        for (what, header) in [
            ("an unknown command", v2(2, 0x11, &ipv4)),
            ("an unknown family", v2(1, 0x41, &ipv4)),
            ("an unknown transport", v2(1, 0x13, &ipv4)),
            ("version 1 in the binary form", wrong_version),
            ("a wrong signature", wrong_signature),
            ("a block too short for IPv4", v2(1, 0x11, &ipv4[..11])),
            ("a block too short for IPv6", v2(1, 0x21, &[0; 35])),
        ] {
            assert!(invalid(&header), "{what}");
        }
        // A wrong byte is refused before the rest arrives.
        assert!(invalid(&v2(7, 0x11, &ipv4)[..13]));
        assert!(invalid(&v2(1, 0x51, &ipv4)[..14]));
        assert!(invalid(b"\r\n\r\nGET"));
        assert_eq!(parse(b"\r\n\r\n\0"), Parsed::Partial);
    }
}
