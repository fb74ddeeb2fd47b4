//! The native dialect: the event as `wire::event::Event` JSON, replies as documented in
//! functions/README.md.

use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use wire::event::{Event, EventKind, RegisterReply};

use crate::dialect::model::Verdict;
use crate::function::invoke::{CallError, Reply, snippet};

/// The event as JSON, written here field by field: byte for byte what
/// `serde_json::to_vec(event)` gives (the field order of [`Event`], its flattened kind last;
/// a unit test compares both), into a buffer sized once. serde's map serializer (the
/// flattened kind makes `Event` a map) escaped every key and grew the buffer several times
/// per event, and there is one transport event per client message.
pub(crate) fn encode(event: &Event) -> Vec<u8> {
    let kind_len = match &event.kind {
        EventKind::Transport { data, .. } => data.len(),
        EventKind::Cleanup { close_reason, .. } => close_reason.len() + 160,
        EventKind::Register { request } => {
            request.path.len()
                + request.query.len()
                + request.source_ip.len()
                + request
                    .headers
                    .iter()
                    .map(|(name, value)| name.len() + value.len() + 8)
                    .sum::<usize>()
                + request
                    .subprotocols
                    .iter()
                    .map(|p| p.len() + 3)
                    .sum::<usize>()
                + 96
        }
    };
    let mut out = Vec::with_capacity(
        160 + event.connection_id.len()
            + event.node.len()
            + event.event_id.len()
            + kind_len
            + if event.context.is_null() { 0 } else { 64 },
    );
    write_event(&mut out, event);
    out
}

/// Writes an event (see [`encode`]).
fn write_event(out: &mut Vec<u8>, event: &Event) {
    out.extend_from_slice(b"{\"connectionId\":");
    json::string(out, &event.connection_id);
    out.extend_from_slice(b",\"seq\":");
    json::value(out, &event.seq);
    out.extend_from_slice(b",\"node\":");
    json::string(out, &event.node);
    out.extend_from_slice(b",\"timestamp\":");
    json::value(out, &event.timestamp);
    if !event.context.is_null() {
        out.extend_from_slice(b",\"context\":");
        json::value(out, &event.context);
    }
    out.extend_from_slice(b",\"eventId\":");
    json::string(out, &event.event_id);
    match &event.kind {
        EventKind::Transport { data_type, data } => {
            out.extend_from_slice(b",\"type\":\"transport\",\"dataType\":");
            json::value(out, data_type);
            out.extend_from_slice(b",\"data\":");
            json::string(out, data);
        }
        EventKind::Cleanup {
            reason,
            close_code,
            close_reason,
            stats,
        } => {
            out.extend_from_slice(b",\"type\":\"cleanup\",\"reason\":");
            json::value(out, reason);
            if let Some(code) = close_code {
                out.extend_from_slice(b",\"closeCode\":");
                json::value(out, code);
            }
            out.extend_from_slice(b",\"closeReason\":");
            json::string(out, close_reason);
            if let Some(stats) = stats {
                out.extend_from_slice(b",\"stats\":");
                json::value(out, stats);
            }
        }
        EventKind::Register { request } => {
            out.extend_from_slice(b",\"type\":\"register\",\"request\":{\"path\":");
            json::string(out, &request.path);
            out.extend_from_slice(b",\"query\":");
            json::string(out, &request.query);
            out.extend_from_slice(b",\"headers\":[");
            for (i, (name, value)) in request.headers.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.push(b'[');
                json::string(out, name);
                out.push(b',');
                json::string(out, value);
                out.push(b']');
            }
            out.extend_from_slice(b"],\"sourceIp\":");
            json::string(out, &request.source_ip);
            out.extend_from_slice(b",\"subprotocols\":[");
            for (i, protocol) in request.subprotocols.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                json::string(out, protocol);
            }
            out.extend_from_slice(b"]}");
        }
    }
    out.push(b'}');
}

/// JSON pieces as serde_json writes them.
mod json {
    use serde::Serialize;

    /// A string as a JSON string: as is between quotes when nothing in it needs escaping
    /// (serde_json escapes `"`, `\\` and the control characters below U+0020, nothing else),
    /// else through serde_json.
    pub(super) fn string(out: &mut Vec<u8>, s: &str) {
        if plain(s.as_bytes()) {
            out.reserve(s.len() + 2);
            out.push(b'"');
            out.extend_from_slice(s.as_bytes());
            out.push(b'"');
        } else {
            value(out, s);
        }
    }

    /// Whether no byte of `bytes` needs escaping: eight bytes at a time, each word tested
    /// for a byte below 0x20, a `"` or a `\\` (the "has a zero byte" test, exact for "is
    /// there one").
    pub(super) fn plain(bytes: &[u8]) -> bool {
        const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
        const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
        let has_zero = |w: u64| w.wrapping_sub(ONES) & !w & HIGH != 0;
        let mut words = bytes.chunks_exact(8);
        for word in &mut words {
            let mut w = [0u8; 8];
            w.copy_from_slice(word);
            let w = u64::from_ne_bytes(w);
            // Below 0x20: `w - 0x20 per byte` borrows into the high bit only for such a
            // byte (the `!w` keeps bytes of 0x80 and above out).
            let control = w.wrapping_sub(ONES * 0x20) & !w & HIGH != 0;
            if control
                || has_zero(w ^ (ONES * u64::from(b'"')))
                || has_zero(w ^ (ONES * u64::from(b'\\')))
            {
                return false;
            }
        }
        words
            .remainder()
            .iter()
            .all(|&b| b >= 0x20 && b != b'"' && b != b'\\')
    }

    /// Any serializable value (numbers, unit enums, small structs) through serde_json.
    pub(super) fn value<T: Serialize + ?Sized>(out: &mut Vec<u8>, v: &T) {
        // Writing to a Vec fails only if the value refuses to serialize; these never do.
        let _ = serde_json::to_writer(&mut *out, v);
    }
}

pub(crate) fn register_verdict(reply: &Reply) -> Result<Verdict, CallError> {
    if !reply.is_success() {
        return refusal(reply.status, snippet(&reply.body));
    }
    if reply.body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Verdict::Accept(RegisterReply::default()));
    }
    serde_json::from_slice(&reply.body)
        .map(Verdict::Accept)
        .map_err(|e| CallError::BadReply(format!("register reply is not a RegisterReply: {e}")))
}

/// A refusal with `status` if it is an error status; any other non-2xx is unusable.
pub(crate) fn refusal(status: u16, body: String) -> Result<Verdict, CallError> {
    if (400..600).contains(&status) {
        Ok(Verdict::Refuse { status, body })
    } else {
        Err(CallError::BadReply(format!(
            "status {status} is neither success nor error"
        )))
    }
}

/// The reply body as a message: binary for `application/octet-stream`, text if UTF-8.
pub(crate) fn reply_message(reply: &Reply) -> Option<Message> {
    if reply.body.is_empty() {
        return None;
    }
    let binary = reply
        .content_type
        .as_deref()
        .is_some_and(|ct| ct.starts_with("application/octet-stream"));
    if binary {
        return Some(Message::Binary(reply.body.clone()));
    }
    // The body's bytes become the frame's, not a copy of them.
    match Utf8Bytes::try_from(reply.body.clone()) {
        Ok(text) => Some(Message::Text(text)),
        Err(_) => Some(Message::Binary(reply.body.clone())),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use wire::event::{
        DataType, DisconnectReason, Event, EventKind, HandshakeRequest, PassthroughStats,
    };

    use super::encode;

    /// Strings that need no escaping, and each kind that does.
    const TEXTS: &[&str] = &[
        "",
        "hello",
        "quote \" inside",
        "back\\slash",
        "new\nline\tand\r\u{0}nul\u{1f}",
        "del \u{7f} stays",
        "ünïcødé ✓ 🎉",
        "</script>",
    ];

    fn event(kind: EventKind, context: serde_json::Value, text: &str) -> Event {
        Event {
            connection_id: "6f1c1d5e-7a0b-4c53-9d0e-2f4b8a1c3e77".into(),
            seq: u64::MAX,
            node: format!("node-{text}"),
            timestamp: 1_765_000_000_123,
            context,
            event_id: format!("id:{text}"),
            kind,
        }
    }

    #[test]
    fn plain_finds_every_byte_that_needs_escaping_wherever_it_is() {
        for len in 0..24 {
            for at in 0..len {
                for b in 0..=255u8 {
                    let mut bytes = vec![b'a'; len];
                    bytes[at] = b;
                    let needs = b < 0x20 || b == b'"' || b == b'\\';
                    assert_eq!(
                        super::json::plain(&bytes),
                        !needs,
                        "{b:#x} at {at} of {len}"
                    );
                }
            }
        }
        assert!(super::json::plain("ünïcødé ✓ 🎉 \u{7f}".as_bytes()));
    }

    #[test]
    fn events_are_what_serde_writes() {
        let contexts = [
            serde_json::Value::Null,
            json!({"room": "a\"b", "n": [1, 2.5, null, true], "nested": {"x": "\n"}}),
            json!("plain"),
            json!(0),
        ];
        let reasons = [
            DisconnectReason::ClientClose,
            DisconnectReason::NodeLost,
            DisconnectReason::UpgradeFailed,
        ];
        let mut checked = 0;
        for text in TEXTS {
            for context in &contexts {
                let mut kinds = vec![
                    EventKind::Transport {
                        data_type: DataType::Text,
                        data: (*text).to_owned(),
                    },
                    EventKind::Transport {
                        data_type: DataType::Binary,
                        data: "AAEC/w==".to_owned(),
                    },
                ];
                for reason in reasons {
                    for close_code in [None, Some(1000), Some(u16::MAX)] {
                        for stats in [
                            None,
                            Some(PassthroughStats {
                                messages_in: 1,
                                messages_out: 2,
                                bytes_in: 3,
                                bytes_out: u64::MAX,
                            }),
                        ] {
                            kinds.push(EventKind::Cleanup {
                                reason,
                                close_code,
                                close_reason: (*text).to_owned(),
                                stats,
                            });
                        }
                    }
                }
                for headers in [
                    vec![],
                    vec![("host".to_owned(), (*text).to_owned())],
                    vec![
                        ("user-agent".to_owned(), "x".to_owned()),
                        ((*text).to_owned(), "two\"".to_owned()),
                    ],
                ] {
                    for subprotocols in [vec![], vec![(*text).to_owned(), "chat".to_owned()]] {
                        kinds.push(EventKind::Register {
                            request: HandshakeRequest {
                                path: format!("/ws/{text}"),
                                query: (*text).to_owned(),
                                headers: headers.clone(),
                                source_ip: "::1".to_owned(),
                                subprotocols,
                            },
                        });
                    }
                }
                for kind in kinds {
                    let event = event(kind, context.clone(), text);
                    let ours = encode(&event);
                    let serde = serde_json::to_vec(&event).expect("serializes");
                    assert_eq!(
                        String::from_utf8_lossy(&ours),
                        String::from_utf8_lossy(&serde),
                        "{event:?}"
                    );
                    let back: Event = serde_json::from_slice(&ours).expect("parses");
                    assert_eq!(back, event);
                    checked += 1;
                }
            }
        }
        assert!(checked > 100);
    }
}
