//! The `aws` dialect: AWS API Gateway WebSocket API events in the Lambda proxy shape
//! (`requestContext` with routeKey, eventType, connectionId, …), `statusCode` replies, and
//! the `{"message": "Internal server error"}` a client gets when its route's integration
//! fails.

use std::collections::BTreeMap;
use wire::codes;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Map, Value, json};
use tokio_tungstenite::tungstenite::Message;
use wire::event::{DataType, DisconnectReason, Event, EventKind, RegisterReply, query_pairs};

use crate::clock;
use crate::config::AwsConfig;
use crate::dialect::model::{Facts, Verdict};
use crate::dialect::native::events as native;
use crate::function::invoke::{CallError, Reply, snippet};

pub(crate) fn encode(
    config: &AwsConfig,
    event: &Event,
    facts: Facts<'_>,
    route_key: &str,
) -> Vec<u8> {
    // The stable event id (the same on every retry, and for a cleanup from every node) is
    // the request id: what a handler logs and dedupes by on AWS.
    let request_id = event.event_id.as_str();
    let mut context = json!({
        "routeKey": route_key,
        "messageId": Value::Null,
        "extendedRequestId": request_id,
        "requestId": request_id,
        "requestTime": clock::aws_request_time(event.timestamp),
        "requestTimeEpoch": event.timestamp,
        "messageDirection": "IN",
        "stage": config.stage,
        "connectedAt": facts.connected_at_ms,
        "identity": {"sourceIp": facts.source_ip, "userAgent": facts.user_agent},
        "domainName": domain_name(config, facts),
        "connectionId": event.connection_id,
        "apiId": config.api_id,
    });
    if let Some(authorizer) = authorizer(&event.context) {
        context["authorizer"] = authorizer;
    }
    let mut out = Map::new();
    match &event.kind {
        EventKind::Register { request } => {
            context["eventType"] = json!("CONNECT");
            let mut headers = Map::new();
            let mut multi: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for (name, value) in &request.headers {
                let name = title_case(name);
                headers.insert(name.clone(), json!(value));
                multi.entry(name).or_default().push(value.clone());
            }
            headers.insert("X-Forwarded-For".into(), json!(request.source_ip));
            multi.insert("X-Forwarded-For".into(), vec![request.source_ip.clone()]);
            out.insert("headers".into(), Value::Object(headers));
            out.insert("multiValueHeaders".into(), json!(multi));
            let mut query = Map::new();
            let mut multi_query: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for (k, v) in query_pairs(&request.query) {
                query.insert(k.clone(), json!(v));
                multi_query.entry(k).or_default().push(v);
            }
            if !query.is_empty() {
                out.insert("queryStringParameters".into(), Value::Object(query));
                out.insert("multiValueQueryStringParameters".into(), json!(multi_query));
            }
        }
        EventKind::Transport { data_type, data } => {
            context["eventType"] = json!("MESSAGE");
            context["messageId"] = json!(event.event_id);
            out.insert("body".into(), json!(data));
            out.insert(
                "isBase64Encoded".into(),
                json!(*data_type == DataType::Binary),
            );
        }
        EventKind::Cleanup {
            reason,
            close_code,
            close_reason,
            ..
        } => {
            context["eventType"] = json!("DISCONNECT");
            // As AWS: a close frame without a status is 1005, no close frame at all 1006.
            let (code, text) = match (close_code, reason) {
                (Some(code), _) => (*code, close_reason.as_str()),
                (None, DisconnectReason::ClientClose) => (
                    codes::CLOSE_NO_STATUS,
                    "Client-side close frame status not set",
                ),
                (None, _) => (codes::CLOSE_ABNORMAL, close_reason.as_str()),
            };
            context["disconnectStatusCode"] = json!(code);
            context["disconnectReason"] = json!(text);
            // AWS sends these (mostly empty) headers on $disconnect.
            let host = domain_name(config, facts);
            let headers = json!({
                "Host": host, "x-api-key": "", "X-Forwarded-For": "", "x-restapi": "",
            });
            let multi = json!({
                "Host": [host], "x-api-key": [""], "X-Forwarded-For": [""], "x-restapi": [""],
            });
            out.insert("headers".into(), headers);
            out.insert("multiValueHeaders".into(), multi);
        }
    }
    out.entry("isBase64Encoded").or_insert(json!(false));
    out.insert("requestContext".into(), context);
    serde_json::to_vec(&Value::Object(out)).unwrap_or_default()
}

/// `$connect` replies: a Lambda proxy result (`statusCode`, `headers`, `body`) decides; an
/// empty body (or `null`, what a handler returning nothing gives) leaves it to the HTTP
/// status. Anything else (not JSON, not an object, no numeric `statusCode`) is a broken
/// integration: 502. `context` (a Switchboard extension, like an authorizer's context) is
/// kept and sent as `requestContext.authorizer`.
pub(crate) fn register_verdict(reply: &Reply) -> Result<Verdict, CallError> {
    if !reply.is_success() {
        return native::refusal(reply.status, snippet(&reply.body));
    }
    let result = match proxy_result(reply)? {
        Some(result) => result,
        None if is_empty(reply) => return Ok(Verdict::Accept(RegisterReply::default())),
        None => {
            return Err(CallError::BadReply(format!(
                "the $connect reply is not a Lambda proxy result (a JSON object with a numeric \
                 statusCode): `{}`",
                snippet(&reply.body)
            )));
        }
    };
    if !(200..300).contains(&result.status) {
        let body = result.body.unwrap_or_default();
        return native::refusal(result.status, snippet(body.as_bytes()));
    }
    let subprotocol = result
        .headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("sec-websocket-protocol"))
        .and_then(|(_, v)| v.as_str())
        .map(str::to_owned);
    Ok(Verdict::Accept(RegisterReply {
        subprotocol,
        context: result.context,
        headers: Default::default(),
    }))
}

/// A MESSAGE reply: on a two-way route, the proxy result's `body` (or a plain reply body)
/// goes back to the client; a non-2xx `statusCode` is a failed integration.
pub(crate) fn transport_reply(two_way: bool, reply: &Reply) -> Result<Option<Message>, CallError> {
    let Some(result) = proxy_result(reply)? else {
        if is_empty(reply) {
            return Ok(None); // a handler that returned nothing
        }
        return Ok(two_way.then(|| native::reply_message(reply)).flatten());
    };
    if !(200..300).contains(&result.status) {
        return Err(CallError::Status {
            status: result.status,
            body: result.body.unwrap_or_default(),
        });
    }
    if !two_way {
        return Ok(None);
    }
    Ok(match result.body {
        None => None,
        Some(body) if result.base64 => match BASE64.decode(body.as_bytes()) {
            Ok(bytes) => Some(Message::Binary(bytes.into())),
            Err(e) => {
                tracing::warn!(cause = %e, "two-way reply has isBase64Encoded but its body is not base64; not sent");
                None
            }
        },
        Some(body) => Some(Message::text(body)),
    })
}

/// What a client gets when its message's integration failed, as on AWS.
pub(crate) fn internal_error(connection_id: &str) -> Message {
    Message::text(
        json!({
            "message": "Internal server error",
            "connectionId": connection_id,
            "requestId": short_id(),
        })
        .to_string(),
    )
}

struct ProxyResult {
    status: u16,
    headers: Map<String, Value>,
    body: Option<String>,
    base64: bool,
    context: Value,
}

/// Whether a reply says nothing: no body, only whitespace, or JSON `null`.
fn is_empty(reply: &Reply) -> bool {
    let body = reply.body.trim_ascii();
    body.is_empty() || body == b"null"
}

/// The reply as a Lambda proxy result, `None` when it is not one (empty, or not a JSON
/// object with `statusCode`).
fn proxy_result(reply: &Reply) -> Result<Option<ProxyResult>, CallError> {
    if is_empty(reply) {
        return Ok(None);
    }
    let Ok(Value::Object(mut object)) = serde_json::from_slice::<Value>(&reply.body) else {
        return Ok(None);
    };
    let Some(status) = object.get("statusCode") else {
        return Ok(None);
    };
    let status = status
        .as_u64()
        .and_then(|s| u16::try_from(s).ok())
        .filter(|s| (100..600).contains(s))
        .ok_or_else(|| CallError::BadReply(format!("statusCode {status} is not an HTTP status")))?;
    let headers = match object.remove("headers") {
        Some(Value::Object(h)) => h,
        _ => Map::new(),
    };
    let body = match object.remove("body") {
        Some(Value::String(s)) => Some(s),
        Some(Value::Null) | None => None,
        Some(other) => Some(other.to_string()),
    };
    let base64 = object
        .get("isBase64Encoded")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let context = object.remove("context").unwrap_or(Value::Null);
    Ok(Some(ProxyResult {
        status,
        headers,
        body,
        base64,
        context,
    }))
}

/// The authorizer object later events carry: the context register returned (an object).
fn authorizer(context: &Value) -> Option<Value> {
    context.is_object().then(|| context.clone())
}

fn domain_name(config: &AwsConfig, facts: Facts<'_>) -> String {
    if !config.domain_name.is_empty() {
        return config.domain_name.clone();
    }
    // Admission keeps the port only when it is not the scheme's default.
    facts.host.unwrap_or("localhost").to_owned()
}

/// `sec-websocket-key` → `Sec-WebSocket-Key`: the case AWS passes headers in.
fn title_case(name: &str) -> String {
    name.split('-')
        .map(|part| match part {
            "websocket" => "WebSocket".to_owned(),
            _ => {
                let mut chars = part.chars();
                chars
                    .next()
                    .map(|c| c.to_ascii_uppercase().to_string() + chars.as_str())
                    .unwrap_or_default()
            }
        })
        .collect::<Vec<_>>()
        .join("-")
}

/// An id in the style of AWS request ids (16 characters).
fn short_id() -> String {
    let bytes = uuid::Uuid::new_v4();
    BASE64.encode(&bytes.as_bytes()[..11])[..15].to_owned() + "="
}

#[cfg(test)]
mod tests {
    use super::*;
    use wire::event::HandshakeRequest;

    #[test]
    fn ids() {
        assert_eq!(short_id().len(), 16);
        assert!(short_id().ends_with('='));
    }

    fn facts() -> Facts<'static> {
        Facts {
            connected_at_ms: 1_607_854_667_185,
            source_ip: "203.0.113.0",
            user_agent: Some("ua"),
            host: Some("abc.example:8080"),
        }
    }

    fn event(kind: EventKind, context: Value) -> Event {
        Event {
            connection_id: "c1".into(),
            seq: 0,
            node: "n".into(),
            timestamp: 1_607_854_667_186,
            context,
            event_id: kind.event_id("c1", 0),
            kind,
        }
    }

    #[test]
    fn connect_event_shape() {
        let request = HandshakeRequest {
            path: "/".into(),
            query: "token=a&token=b".into(),
            headers: vec![
                ("sec-websocket-key".into(), "k".into()),
                ("host".into(), "abc".into()),
            ],
            source_ip: "203.0.113.0".into(),
            subprotocols: vec![],
        };
        let body = encode(
            &AwsConfig::default(),
            &event(EventKind::Register { request }, Value::Null),
            facts(),
            "$connect",
        );
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["headers"]["Sec-WebSocket-Key"], "k");
        assert_eq!(v["queryStringParameters"]["token"], "b");
        assert_eq!(
            v["multiValueQueryStringParameters"]["token"],
            json!(["a", "b"])
        );
        let rc = &v["requestContext"];
        assert_eq!(rc["routeKey"], "$connect");
        assert_eq!(rc["eventType"], "CONNECT");
        assert_eq!(rc["messageId"], Value::Null);
        assert_eq!(rc["requestId"], "c1:register");
        assert_eq!(rc["extendedRequestId"], "c1:register");
        assert_eq!(rc["connectionId"], "c1");
        assert_eq!(rc["stage"], "prod");
        assert_eq!(rc["domainName"], "abc.example:8080");
        assert_eq!(rc["requestTime"], "13/Dec/2020:10:17:47 +0000");
        assert_eq!(rc["identity"]["sourceIp"], "203.0.113.0");
        assert_eq!(v["isBase64Encoded"], false);
    }

    #[test]
    fn message_and_disconnect_shapes_carry_the_authorizer() {
        let ctx = json!({"principalId": "u1", "role": "admin"});
        let body = encode(
            &AwsConfig::default(),
            &event(
                EventKind::Transport {
                    data_type: DataType::Binary,
                    data: "AAE=".into(),
                },
                ctx.clone(),
            ),
            facts(),
            "sendmessage",
        );
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["body"], "AAE=");
        assert_eq!(v["isBase64Encoded"], true);
        assert_eq!(v["requestContext"]["routeKey"], "sendmessage");
        assert_eq!(v["requestContext"]["eventType"], "MESSAGE");
        assert_eq!(v["requestContext"]["messageId"], "c1:0");
        assert_eq!(v["requestContext"]["requestId"], "c1:0");
        assert_eq!(v["requestContext"]["authorizer"], ctx);
        let body = encode(
            &AwsConfig::default(),
            &event(
                EventKind::Cleanup {
                    reason: DisconnectReason::ClientClose,
                    close_code: Some(1001),
                    close_reason: "bye".into(),
                    stats: None,
                },
                Value::Null,
            ),
            facts(),
            "$disconnect",
        );
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["requestContext"]["disconnectStatusCode"], 1001);
        assert_eq!(v["requestContext"]["disconnectReason"], "bye");
        assert_eq!(v["requestContext"]["eventType"], "DISCONNECT");
        assert_eq!(v["requestContext"]["requestId"], "c1:cleanup");
        assert_eq!(v["requestContext"]["extendedRequestId"], "c1:cleanup");
        assert_eq!(v["requestContext"]["messageId"], Value::Null);
        assert_eq!(v["headers"]["Host"], "abc.example:8080");
        assert_eq!(v["multiValueHeaders"]["x-api-key"], json!([""]));
        assert!(v["requestContext"].get("authorizer").is_none());
        let disconnect = |reason, close_code| {
            let body = encode(
                &AwsConfig::default(),
                &event(
                    EventKind::Cleanup {
                        reason,
                        close_code,
                        close_reason: String::new(),
                        stats: None,
                    },
                    Value::Null,
                ),
                facts(),
                "$disconnect",
            );
            let v: Value = serde_json::from_slice(&body).unwrap();
            v["requestContext"]["disconnectStatusCode"].as_u64()
        };
        assert_eq!(disconnect(DisconnectReason::ClientClose, None), Some(1005));
        assert_eq!(
            disconnect(DisconnectReason::ConnectionLost, None),
            Some(1006)
        );
        assert_eq!(
            disconnect(DisconnectReason::ServerDisconnect, Some(1000)),
            Some(1000)
        );
        // A reaper's cleanup for a dead node's connection: no close frame was seen.
        assert_eq!(disconnect(DisconnectReason::NodeLost, None), Some(1006));
    }

    fn reply(status: u16, body: &str) -> Reply {
        Reply {
            status,
            content_type: None,
            body: body.to_owned().into(),
        }
    }

    #[test]
    fn connect_replies() {
        let accept = |r| matches!(register_verdict(&r).unwrap(), Verdict::Accept(_));
        assert!(accept(reply(200, "")));
        assert!(accept(reply(200, r#"{"statusCode":200}"#)));
        match register_verdict(&reply(200, r#"{"statusCode":401,"body":"no"}"#)).unwrap() {
            Verdict::Refuse { status, body } => assert_eq!((status, body.as_str()), (401, "no")),
            other => panic!("{other:?}"),
        }
        match register_verdict(&reply(
            200,
            r#"{"statusCode":200,"headers":{"Sec-WebSocket-Protocol":"chat"},"context":{"principalId":"u"}}"#,
        ))
        .unwrap()
        {
            Verdict::Accept(r) => {
                assert_eq!(r.subprotocol.as_deref(), Some("chat"));
                assert_eq!(r.context["principalId"], "u");
            }
            other => panic!("{other:?}"),
        }
        assert!(register_verdict(&reply(200, r#"{"statusCode":"x"}"#)).is_err());
        assert!(accept(reply(200, "null")));
        for broken in ["not json", "[1]", r#"{"body":"no status"}"#, r#""ok""#] {
            let err = register_verdict(&reply(200, broken)).unwrap_err();
            assert!(
                err.to_string().contains("Lambda proxy result"),
                "{broken}: {err}"
            );
        }
        assert!(matches!(
            register_verdict(&reply(403, "")).unwrap(),
            Verdict::Refuse { status: 403, .. }
        ));
    }

    #[test]
    fn message_replies() {
        let two_way = transport_reply(true, &reply(200, r#"{"statusCode":200,"body":"hi"}"#));
        assert_eq!(two_way.unwrap(), Some(Message::text("hi")));
        let one_way = transport_reply(false, &reply(200, r#"{"statusCode":200,"body":"hi"}"#));
        assert_eq!(one_way.unwrap(), None);
        assert!(transport_reply(true, &reply(200, r#"{"statusCode":500}"#)).is_err());
        assert_eq!(
            transport_reply(true, &reply(200, "plain")).unwrap(),
            Some(Message::text("plain"))
        );
        assert_eq!(transport_reply(true, &reply(200, "null")).unwrap(), None);
    }

    #[test]
    fn header_case() {
        assert_eq!(title_case("sec-websocket-version"), "Sec-WebSocket-Version");
        assert_eq!(title_case("x-forwarded-for"), "X-Forwarded-For");
        assert_eq!(title_case("host"), "Host");
    }
}
