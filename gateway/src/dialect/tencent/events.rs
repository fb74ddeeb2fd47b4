//! The `tencent` dialect: Tencent Cloud API Gateway + SCF events (`{"websocket": {...}}`
//! with `secConnectionID`, actions `connecting`, `data recv`, `closing`) and `errNo`
//! register replies. Transport replies are ignored but for their status.
//!
//! The register event is the documented one (`requestContext` and `websocket`, the
//! subprotocol and extension fields only when the client sent them), plus what API
//! Gateway's HTTP integration events carry at the top level and register functions use for
//! authentication: `headers` (lower-case names to values, repeated headers joined with
//! `,`), `queryString` (a value per key; an array when the key repeats; `true` for a key
//! without `=`, as in the `scf-go-lib` `APIGatewayQueryString`), `path` and `httpMethod`.
//!
//! Every event carries the stable event id as `websocket.eventId` (and the register event
//! also as `requestContext.requestId`): not at the top level, because Tencent's handlers
//! tell register from the rest by the presence of `requestContext`.

use serde_json::{Map, Value, json};
use wire::event::{DataType, Event, EventKind, RegisterReply, query_pairs};

use crate::config::TencentConfig;
use crate::dialect::model::{Facts, Verdict};
use crate::dialect::native::events as native;
use crate::function::invoke::{CallError, Reply, snippet};

pub(crate) fn encode(config: &TencentConfig, event: &Event, facts: Facts<'_>) -> Vec<u8> {
    let id = &event.connection_id;
    let body = match &event.kind {
        EventKind::Register { request } => {
            let mut websocket = Map::new();
            websocket.insert("action".into(), json!("connecting"));
            websocket.insert("secConnectionID".into(), json!(id));
            websocket.insert("eventId".into(), json!(event.event_id));
            if !request.subprotocols.is_empty() {
                websocket.insert(
                    "secWebSocketProtocol".into(),
                    json!(request.subprotocols.join(",")),
                );
            }
            let extensions: Vec<&str> = request
                .headers
                .iter()
                .filter(|(k, _)| k.eq_ignore_ascii_case("sec-websocket-extensions"))
                .map(|(_, v)| v.as_str())
                .collect();
            if !extensions.is_empty() {
                websocket.insert("secWebSocketExtensions".into(), json!(extensions.join(",")));
            }
            json!({
                "requestContext": {
                    "serviceName": config.service_name,
                    "path": request.path,
                    "httpMethod": "GET",
                    "requestId": event.event_id,
                    "identity": {},
                    "sourceIp": facts.source_ip,
                    "stage": config.stage,
                    "websocketEnable": true,
                },
                "headers": headers(&request.headers),
                "queryString": query_string(&request.query),
                "path": request.path,
                "httpMethod": "GET",
                "websocket": websocket,
            })
        }
        EventKind::Transport { data_type, data } => json!({
            "websocket": {
                "action": "data recv",
                "secConnectionID": id,
                "eventId": event.event_id,
                "dataType": if *data_type == DataType::Binary { "binary" } else { "text" },
                "data": data,
            }
        }),
        EventKind::Cleanup { .. } => json!({
            "websocket": {"action": "closing", "secConnectionID": id, "eventId": event.event_id}
        }),
    };
    serde_json::to_vec(&body).unwrap_or_default()
}

/// Header pairs as one object: names as given (lower-case), a repeated header's values
/// joined with `,` in order.
fn headers(pairs: &[(String, String)]) -> Map<String, Value> {
    let mut out = Map::new();
    for (name, value) in pairs {
        match out.get_mut(name) {
            Some(Value::String(joined)) => {
                joined.push(',');
                joined.push_str(value);
            }
            _ => {
                out.insert(name.clone(), json!(value));
            }
        }
    }
    out
}

/// The query as API Gateway's `queryString`: each key to its (percent-decoded) value, an
/// array of values when the key repeats, `true` for a bare key (`?debug`).
fn query_string(query: &str) -> Map<String, Value> {
    let mut out = Map::new();
    for part in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = match query_pairs(part).next() {
            Some((key, value)) if part.contains('=') => (key, json!(value)),
            Some((key, _)) => (key, json!(true)),
            None => continue,
        };
        match out.get_mut(&key) {
            Some(Value::Array(values)) => values.push(value),
            Some(first) => {
                let first = first.take();
                out.insert(key, json!([first, value]));
            }
            None => {
                out.insert(key, value);
            }
        }
    }
    out
}

/// The subprotocol a register reply picks. The reply should name one, but Tencent's own
/// register sample echoes the event's `secWebSocketProtocol`, i.e. the client's whole
/// comma-separated offer: a list picks its first entry (the client's preference).
fn picked_subprotocol(value: &str) -> Option<String> {
    value
        .split(',')
        .map(str::trim)
        .find(|p| !p.is_empty())
        .map(str::to_owned)
}

/// `errNo` 0 accepts; any other `errNo` refuses with 403 (the `errMsg`, cut at 200 bytes,
/// as body); a non-200 status refuses with that status (502 if it is not an error status);
/// no JSON, or no integer `errNo`, is unusable (502). `websocket.secWebSocketProtocol`
/// picks the subprotocol.
pub(crate) fn register_verdict(reply: &Reply) -> Result<Verdict, CallError> {
    if reply.status != 200 {
        let status = if (400..600).contains(&reply.status) {
            reply.status
        } else {
            502
        };
        return native::refusal(status, snippet(&reply.body));
    }
    let value: Value = serde_json::from_slice(&reply.body)
        .map_err(|e| CallError::BadReply(format!("register reply is not JSON: {e}")))?;
    let err_no = value
        .get("errNo")
        .and_then(Value::as_i64)
        .ok_or_else(|| CallError::BadReply("register reply has no integer errNo".into()))?;
    if err_no != 0 {
        let message = value
            .get("errMsg")
            .and_then(Value::as_str)
            .filter(|m| !m.is_empty())
            .map_or_else(
                || format!("refused (errNo {err_no})"),
                |m| snippet(m.as_bytes()),
            );
        return Ok(Verdict::Refuse {
            status: 403,
            body: message,
        });
    }
    let subprotocol = value
        .pointer("/websocket/secWebSocketProtocol")
        .and_then(Value::as_str)
        .and_then(picked_subprotocol);
    Ok(Verdict::Accept(RegisterReply {
        subprotocol,
        context: Value::Null,
        headers: Default::default(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use wire::event::{DisconnectReason, HandshakeRequest};

    fn reply(status: u16, body: &str) -> Reply {
        Reply {
            status,
            content_type: None,
            body: body.to_owned().into(),
        }
    }

    fn accepted(body: &str) -> Option<String> {
        match register_verdict(&reply(200, body)).unwrap() {
            Verdict::Accept(r) => r.subprotocol,
            other => panic!("{other:?}"),
        }
    }

    fn refusal(status: u16, body: &str) -> (u16, String) {
        match register_verdict(&reply(status, body)).unwrap() {
            Verdict::Refuse { status, body } => (status, body),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn register_replies() {
        assert_eq!(
            accepted(
                r#"{"errNo":0,"errMsg":"ok","websocket":{"action":"connecting","secConnectionID":"x","secWebSocketProtocol":"chat"}}"#
            )
            .as_deref(),
            Some("chat")
        );
        assert_eq!(accepted(r#"{"errNo":0,"errMsg":"ok"}"#), None);
        assert_eq!(
            accepted(r#"{"errNo":0,"websocket":{"secWebSocketProtocol":""}}"#),
            None
        );
        assert_eq!(
            refusal(200, r#"{"errNo":1,"errMsg":"denied"}"#),
            (403, "denied".into())
        );
        assert_eq!(
            refusal(200, r#"{"errNo":-1}"#),
            (403, "refused (errNo -1)".into())
        );
        let long = format!(r#"{{"errNo":7,"errMsg":"{}"}}"#, "x".repeat(500));
        assert!(refusal(200, &long).1.len() < 210);
        assert_eq!(refusal(500, "boom"), (500, "boom".into()));
        assert_eq!(refusal(401, ""), (401, String::new()));
        // A 2xx other than 200, or a redirect, is not Tencent's success.
        assert_eq!(refusal(204, "").0, 502);
        assert_eq!(refusal(302, "").0, 502);
    }

    #[test]
    fn unusable_register_replies() {
        for body in [
            "nope",
            "",
            "[0]",
            "null",
            r#"{"errMsg":"ok"}"#,
            r#"{"errNo":"0"}"#,
            r#"{"errNo":0.5}"#,
        ] {
            let err = register_verdict(&reply(200, body)).unwrap_err();
            assert!(matches!(err, CallError::BadReply(_)), "{body}: {err}");
        }
        let err = register_verdict(&reply(200, "nope"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("register reply is not JSON"), "{err}");
        let err = register_verdict(&reply(200, "{}")).unwrap_err().to_string();
        assert!(err.contains("no integer errNo"), "{err}");
    }

    #[test]
    fn a_reply_echoing_the_offer_picks_its_first_entry() {
        // Tencent's register sample copies the event's secWebSocketProtocol into its reply.
        assert_eq!(
            accepted(r#"{"errNo":0,"websocket":{"secWebSocketProtocol":"chat,binary"}}"#)
                .as_deref(),
            Some("chat")
        );
        assert_eq!(
            accepted(r#"{"errNo":0,"websocket":{"secWebSocketProtocol":" , binary, chat"}}"#)
                .as_deref(),
            Some("binary")
        );
    }

    fn facts() -> Facts<'static> {
        Facts {
            connected_at_ms: 0,
            source_ip: "10.0.2.14",
            user_agent: None,
            host: None,
        }
    }

    fn encoded(kind: EventKind) -> Value {
        let event = Event {
            connection_id: "c1".into(),
            seq: 1,
            node: "n".into(),
            timestamp: 0,
            context: Value::Null,
            event_id: kind.event_id("c1", 1),
            kind,
        };
        serde_json::from_slice(&encode(&TencentConfig::default(), &event, facts())).unwrap()
    }

    fn handshake(headers: &[(&str, &str)], query: &str, subprotocols: &[&str]) -> EventKind {
        EventKind::Register {
            request: HandshakeRequest {
                path: "/chat".into(),
                query: query.into(),
                headers: headers
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
                source_ip: "10.0.2.14".into(),
                subprotocols: subprotocols.iter().map(|p| (*p).to_owned()).collect(),
            },
        }
    }

    #[test]
    fn register_event() {
        let v = encoded(handshake(
            &[
                ("host", "example.com"),
                ("sec-websocket-protocol", "chat, binary"),
                ("sec-websocket-extensions", "permessage-deflate"),
                ("x-multi", "a"),
                ("x-multi", "b"),
            ],
            "token=t%20k&room=a&room=b&debug&empty=",
            &["chat", "binary"],
        ));
        let rc = &v["requestContext"];
        assert_eq!(rc["serviceName"], "switchboard");
        assert_eq!(rc["stage"], "release");
        assert_eq!(rc["path"], "/chat");
        assert_eq!(rc["httpMethod"], "GET");
        assert_eq!(rc["sourceIp"], "10.0.2.14");
        assert_eq!(rc["websocketEnable"], true);
        assert_eq!(rc["requestId"], "c1:register");
        assert_eq!(rc["identity"], json!({}));
        assert_eq!(
            v["websocket"],
            json!({
                "action": "connecting",
                "secConnectionID": "c1",
                "eventId": "c1:register",
                "secWebSocketProtocol": "chat,binary",
                "secWebSocketExtensions": "permessage-deflate",
            })
        );
        assert_eq!(v["headers"]["host"], "example.com");
        assert_eq!(v["headers"]["x-multi"], "a,b");
        assert_eq!(
            v["queryString"],
            json!({"token": "t k", "room": ["a", "b"], "debug": true, "empty": ""})
        );
        assert_eq!(v["path"], "/chat");
        assert_eq!(v["httpMethod"], "GET");

        // Without a subprotocol or extension offer the fields are absent, not empty.
        let v = encoded(handshake(&[("host", "h")], "", &[]));
        assert_eq!(
            v["websocket"],
            json!({"action": "connecting", "secConnectionID": "c1", "eventId": "c1:register"})
        );
        assert_eq!(v["queryString"], json!({}));
    }

    #[test]
    fn transport_and_cleanup_events() {
        assert_eq!(
            encoded(EventKind::Transport {
                data_type: DataType::Text,
                data: "xxx".into(),
            }),
            json!({"websocket":{"action":"data recv","secConnectionID":"c1","eventId":"c1:1","dataType":"text","data":"xxx"}})
        );
        assert_eq!(
            encoded(EventKind::Transport {
                data_type: DataType::Binary,
                data: "AAH/".into(),
            }),
            json!({"websocket":{"action":"data recv","secConnectionID":"c1","eventId":"c1:1","dataType":"binary","data":"AAH/"}})
        );
        assert_eq!(
            encoded(EventKind::Cleanup {
                reason: DisconnectReason::ClientClose,
                close_code: Some(1000),
                close_reason: String::new(),
                stats: None,
            }),
            json!({"websocket":{"action":"closing","secConnectionID":"c1","eventId":"c1:cleanup"}})
        );
    }
}
