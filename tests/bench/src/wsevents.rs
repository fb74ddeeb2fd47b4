//! Pushpin's WebSocket-over-HTTP event format (`Content-Type: application/websocket-events`).
//!
//! Each event is its name, optionally a space and the content length in hexadecimal, CRLF,
//! and when a length is given the content and another CRLF:
//!
//! ```text
//! OPEN\r\n
//! TEXT 5\r\nhello\r\n
//! CLOSE 2\r\n<u16 big-endian close code>\r\n
//! ```
//!
//! Events with content are `TEXT`, `BINARY` and `CLOSE`; `OPEN`, `PING`, `PONG` and
//! `DISCONNECT` have none. A request or response body is several events concatenated.
//! With the `grip` WebSocket extension accepted (the OPEN reply's
//! `Sec-WebSocket-Extensions: grip; message-prefix=""`), a TEXT starting with `c:` is a
//! control message to Pushpin, e.g. `c:{"type":"subscribe","channel":"room"}`.

use bytes::Bytes;

/// The content type of WebSocket-over-HTTP bodies.
pub const CONTENT_TYPE: &str = "application/websocket-events";

/// The extension header value of an OPEN reply that enables GRIP control messages and
/// passes every other message to the client as is (no `m:` prefix).
pub const GRIP_EXTENSION: &str = "grip; message-prefix=\"\"";

/// One event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WsEvent {
    /// Connection opened (request) or accepted (reply).
    Open,
    /// A text message.
    Text(Bytes),
    /// A binary message.
    Binary(Bytes),
    /// A ping.
    Ping,
    /// A pong.
    Pong,
    /// A close, with its code when one was given.
    Close(Option<u16>),
    /// The connection ended uncleanly.
    Disconnect,
}

impl WsEvent {
    /// A GRIP control message subscribing the connection to `channel`.
    pub fn subscribe(channel: &str) -> WsEvent {
        let json = serde_json::json!({"type": "subscribe", "channel": channel});
        WsEvent::Text(Bytes::from(format!("c:{json}")))
    }
}

/// Parses a body of concatenated events.
pub fn decode(body: &[u8]) -> Result<Vec<WsEvent>, String> {
    let mut events = Vec::new();
    let mut rest = body;
    while !rest.is_empty() {
        let eol = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("event line without CRLF")?;
        let line = std::str::from_utf8(&rest[..eol]).map_err(|_| "event line not UTF-8")?;
        rest = &rest[eol + 2..];
        let (name, len) = match line.split_once(' ') {
            Some((name, hex)) => (
                name,
                Some(usize::from_str_radix(hex, 16).map_err(|_| format!("bad length {hex:?}"))?),
            ),
            None => (line, None),
        };
        let content = match len {
            None => Bytes::new(),
            Some(n) => {
                if rest.len() < n + 2 || &rest[n..n + 2] != b"\r\n" {
                    return Err(format!("{name} content of {n} bytes is truncated"));
                }
                let c = Bytes::copy_from_slice(&rest[..n]);
                rest = &rest[n + 2..];
                c
            }
        };
        events.push(match name {
            "OPEN" => WsEvent::Open,
            "TEXT" => WsEvent::Text(content),
            "BINARY" => WsEvent::Binary(content),
            "PING" => WsEvent::Ping,
            "PONG" => WsEvent::Pong,
            "CLOSE" => WsEvent::Close(
                (content.len() >= 2).then(|| u16::from_be_bytes([content[0], content[1]])),
            ),
            "DISCONNECT" => WsEvent::Disconnect,
            other => return Err(format!("unknown event {other:?}")),
        });
    }
    Ok(events)
}

/// Encodes `events` as one body.
pub fn encode(events: &[WsEvent]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut with = |name: &str, content: &[u8]| {
        out.extend_from_slice(format!("{name} {:X}\r\n", content.len()).as_bytes());
        out.extend_from_slice(content);
        out.extend_from_slice(b"\r\n");
    };
    for e in events {
        match e {
            WsEvent::Open => with("OPEN", b""),
            WsEvent::Text(c) => with("TEXT", c),
            WsEvent::Binary(c) => with("BINARY", c),
            WsEvent::Ping => with("PING", b""),
            WsEvent::Pong => with("PONG", b""),
            WsEvent::Close(code) => with("CLOSE", &code.map(u16::to_be_bytes).unwrap_or_default()),
            WsEvent::Disconnect => with("DISCONNECT", b""),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_the_documented_examples() {
        assert_eq!(decode(b"OPEN\r\n").unwrap(), vec![WsEvent::Open]);
        assert_eq!(decode(b"OPEN 0\r\n\r\n").unwrap(), vec![WsEvent::Open]);
        assert_eq!(
            decode(b"TEXT 5\r\nhello\r\nTEXT 1C\r\nhere is another nice message\r\n").unwrap(),
            vec![
                WsEvent::Text(Bytes::from_static(b"hello")),
                WsEvent::Text(Bytes::from_static(b"here is another nice message"))
            ]
        );
        assert_eq!(
            decode(b"CLOSE 2\r\n\x03\xe8\r\nDISCONNECT\r\n").unwrap(),
            vec![WsEvent::Close(Some(1000)), WsEvent::Disconnect]
        );
        assert_eq!(decode(b"").unwrap(), vec![]);
    }

    #[test]
    fn rejects_malformed_bodies() {
        assert!(decode(b"TEXT 5\r\nhel").is_err());
        assert!(decode(b"TEXT zz\r\n").is_err());
        assert!(decode(b"OPEN").is_err());
        assert!(decode(b"HELLO\r\n").is_err());
    }

    #[test]
    fn encode_round_trips() {
        let events = vec![
            WsEvent::Open,
            WsEvent::subscribe("room"),
            WsEvent::Text(Bytes::from_static(b"\r\nodd\r\n")),
            WsEvent::Binary(Bytes::from_static(&[0, 1, 2])),
            WsEvent::Close(Some(1001)),
        ];
        assert_eq!(decode(&encode(&events)).unwrap(), events);
        assert_eq!(
            encode(&[WsEvent::subscribe("room")]),
            b"TEXT 27\r\nc:{\"channel\":\"room\",\"type\":\"subscribe\"}\r\n"
        );
    }
}
