//! The `tencent` dialect: Tencent Cloud API Gateway + SCF events (`{"websocket": {...}}`
//! with `secConnectionID`, actions `connecting`, `data recv`, `closing`) and `errNo`
//! register replies. Transport replies are ignored but for their status.

use functions::event::{DataType, Event, EventKind, RegisterReply, query_pairs};
use serde_json::{Map, Value, json};

use super::{Facts, Verdict, native};
use crate::config::TencentConfig;
use crate::invoke::{CallError, Reply, snippet};

pub(super) fn encode(config: &TencentConfig, event: &Event, facts: Facts<'_>) -> Vec<u8> {
    let id = &event.connection_id;
    let body = match &event.kind {
        EventKind::Register { request } => {
            let mut websocket = Map::new();
            websocket.insert("action".into(), json!("connecting"));
            websocket.insert("secConnectionID".into(), json!(id));
            if !request.subprotocols.is_empty() {
                websocket.insert(
                    "secWebSocketProtocol".into(),
                    json!(request.subprotocols.join(",")),
                );
            }
            if let Some(ext) = request.header("sec-websocket-extensions") {
                websocket.insert("secWebSocketExtensions".into(), json!(ext));
            }
            let headers: Map<String, Value> = request
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), json!(v)))
                .collect();
            let query: Map<String, Value> = query_pairs(&request.query)
                .map(|(k, v)| (k, json!(v)))
                .collect();
            json!({
                "requestContext": {
                    "serviceName": config.service_name,
                    "path": request.path,
                    "httpMethod": "GET",
                    "requestId": uuid::Uuid::new_v4().to_string(),
                    "identity": {},
                    "sourceIp": facts.source_ip,
                    "stage": config.stage,
                    "websocketEnable": true,
                },
                "headers": headers,
                "queryString": query,
                "websocket": websocket,
            })
        }
        EventKind::Transport { data_type, data } => json!({
            "websocket": {
                "action": "data recv",
                "secConnectionID": id,
                "dataType": if *data_type == DataType::Binary { "binary" } else { "text" },
                "data": data,
            }
        }),
        EventKind::Cleanup { .. } => json!({
            "websocket": {"action": "closing", "secConnectionID": id}
        }),
    };
    serde_json::to_vec(&body).unwrap_or_default()
}

/// `errNo` 0 accepts; any other `errNo` refuses with 403 (the `errMsg` as body); a non-200
/// status refuses with that status (502 if it is not an error status); no JSON, or no
/// `errNo`, is unusable (502).
pub(super) fn register_verdict(reply: &Reply) -> Result<Verdict, CallError> {
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
        .ok_or_else(|| CallError::BadReply("register reply has no numeric errNo".into()))?;
    if err_no != 0 {
        let message = value
            .get("errMsg")
            .and_then(Value::as_str)
            .unwrap_or("refused")
            .to_owned();
        return Ok(Verdict::Refuse {
            status: 403,
            body: message,
        });
    }
    let subprotocol = value
        .pointer("/websocket/secWebSocketProtocol")
        .and_then(Value::as_str)
        .filter(|p| !p.is_empty())
        .map(str::to_owned);
    Ok(Verdict::Accept(RegisterReply {
        subprotocol,
        context: Value::Null,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(status: u16, body: &str) -> Reply {
        Reply {
            status,
            content_type: None,
            body: body.to_owned().into(),
        }
    }

    #[test]
    fn register_replies() {
        match register_verdict(&reply(
            200,
            r#"{"errNo":0,"errMsg":"ok","websocket":{"action":"connecting","secConnectionID":"x","secWebSocketProtocol":"chat"}}"#,
        ))
        .unwrap()
        {
            Verdict::Accept(r) => assert_eq!(r.subprotocol.as_deref(), Some("chat")),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            register_verdict(&reply(200, r#"{"errNo":1,"errMsg":"denied"}"#)).unwrap(),
            Verdict::Refuse { status: 403, .. }
        ));
        assert!(matches!(
            register_verdict(&reply(500, "")).unwrap(),
            Verdict::Refuse { status: 500, .. }
        ));
        assert!(register_verdict(&reply(200, "nope")).is_err());
        assert!(register_verdict(&reply(200, r#"{"errMsg":"ok"}"#)).is_err());
    }

    #[test]
    fn event_shapes() {
        let event = Event {
            connection_id: "c1".into(),
            seq: 1,
            node: "n".into(),
            timestamp: 0,
            context: Value::Null,
            kind: EventKind::Transport {
                data_type: DataType::Text,
                data: "xxx".into(),
            },
        };
        let facts = Facts {
            connected_at_ms: 0,
            source_ip: "10.0.2.14",
            user_agent: None,
            host: None,
        };
        let v: Value =
            serde_json::from_slice(&encode(&TencentConfig::default(), &event, facts)).unwrap();
        assert_eq!(
            v,
            json!({"websocket":{"action":"data recv","secConnectionID":"c1","dataType":"text","data":"xxx"}})
        );
    }
}
