//! The RPC protocols' framing, one operation model under them: an operation reads a JSON value and
//! answers one, and these codecs turn the wire into that value and back.
//!
//! - Smithy RPC v2 CBOR (`POST /service/{Service}/operation/{Operation}`, `smithy-protocol:
//!   rpc-v2-cbor`): what current AWS CLIs and SDKs send to CloudWatch and CodeDeploy. CBOR through
//!   `ciborium`.
//! - AWS JSON 1.0 and 1.1 (`X-Amz-Target: {Service}.{Operation}`): earlier SDKs, and any client built
//!   on those models.
//! - AWS query (a form `POST /` with `Action=`, XML answers): CloudWatch for the oldest SDKs and CLIs.
//!
//! A timestamp in an answer is written `{"$timestamp": epoch seconds}` by the operations; each codec
//! writes it its own way (a number in JSON, CBOR tag 1, ISO 8601 in XML).

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use ciborium::Value as Cbor;
use serde_json::{Map, Number, Value};

use super::error::{xml_escape, AwsError};
use super::Protocol;

/// Marks a timestamp in an operation's answer.
pub const TIMESTAMP: &str = "$timestamp";

/// A timestamp for an answer.
pub fn timestamp(t: chrono::DateTime<chrono::Utc>) -> Value {
    let secs = t.timestamp_millis() as f64 / 1000.0;
    serde_json::json!({ TIMESTAMP: secs })
}

/// Reads a CBOR request body into a JSON value (an empty body is an empty object).
pub fn cbor_to_json(body: &[u8]) -> Result<Value, AwsError> {
    if body.is_empty() {
        return Ok(Value::Object(Map::new()));
    }
    let v: Cbor = ciborium::from_reader(body).map_err(|e| AwsError::serialization(format!("the CBOR body does not parse: {e}")))?;
    from_cbor(v, 0)
}

fn from_cbor(v: Cbor, depth: usize) -> Result<Value, AwsError> {
    if depth > 64 {
        return Err(AwsError::serialization("the CBOR body nests deeper than 64 levels"));
    }
    Ok(match v {
        Cbor::Null => Value::Null,
        Cbor::Bool(b) => Value::Bool(b),
        Cbor::Integer(i) => {
            let i = i128::from(i);
            match i64::try_from(i) {
                Ok(n) => Value::Number(n.into()),
                Err(_) => Number::from_f64(i as f64).map_or(Value::Null, Value::Number),
            }
        }
        Cbor::Float(f) => Number::from_f64(f).map_or(Value::Null, Value::Number),
        Cbor::Text(s) => Value::String(s),
        Cbor::Bytes(_) => return Err(AwsError::serialization("byte strings are not taken by these operations")),
        Cbor::Tag(_, inner) => from_cbor(*inner, depth + 1)?,
        Cbor::Array(a) => Value::Array(a.into_iter().map(|x| from_cbor(x, depth + 1)).collect::<Result<_, _>>()?),
        Cbor::Map(m) => {
            let mut out = Map::new();
            for (k, v) in m {
                let Cbor::Text(k) = k else {
                    return Err(AwsError::serialization("a CBOR map key is not text"));
                };
                out.insert(k, from_cbor(v, depth + 1)?);
            }
            Value::Object(out)
        }
        _ => return Err(AwsError::serialization("an unknown CBOR item")),
    })
}

fn to_cbor(v: &Value) -> Cbor {
    match v {
        Value::Null => Cbor::Null,
        Value::Bool(b) => Cbor::Bool(*b),
        Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => Cbor::Integer(i.into()),
            (None, Some(f)) => Cbor::Float(f),
            _ => Cbor::Null,
        },
        Value::String(s) => Cbor::Text(s.clone()),
        Value::Array(a) => Cbor::Array(a.iter().map(to_cbor).collect()),
        Value::Object(o) => match o.get(TIMESTAMP).and_then(Value::as_f64) {
            Some(t) if o.len() == 1 => Cbor::Tag(1, Box::new(Cbor::Float(t))),
            _ => Cbor::Map(o.iter().map(|(k, v)| (Cbor::Text(k.clone()), to_cbor(v))).collect()),
        },
    }
}

/// Timestamps as JSON numbers (epoch seconds).
fn to_json(v: &Value) -> Value {
    match v {
        Value::Array(a) => Value::Array(a.iter().map(to_json).collect()),
        Value::Object(o) => match o.get(TIMESTAMP) {
            Some(t) if o.len() == 1 => t.clone(),
            _ => Value::Object(o.iter().map(|(k, v)| (k.clone(), to_json(v))).collect()),
        },
        other => other.clone(),
    }
}

fn header(r: &mut Response, name: &'static str, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        r.headers_mut().insert(name, v);
    }
}

/// An answer in Smithy RPC v2 CBOR.
pub fn cbor_response(v: &Value) -> Response {
    let mut body = Vec::new();
    ciborium::into_writer(&to_cbor(v), &mut body).expect("writing CBOR into memory");
    let mut r = (StatusCode::OK, body).into_response();
    header(&mut r, "content-type", "application/cbor");
    header(&mut r, "smithy-protocol", "rpc-v2-cbor");
    r
}

/// An error's answer in `protocol`'s shape.
pub fn error_response(e: &AwsError, protocol: Protocol, request_id: &str) -> Response {
    let mut r = match protocol {
        Protocol::Cbor(_) => cbor_error(e),
        Protocol::RestJson => {
            let mut r = (e.status, axum::Json(serde_json::json!({"message": e.message}))).into_response();
            r.headers_mut().insert("x-amzn-errortype", header_value(e.code));
            r
        }
        Protocol::Json10 | Protocol::Json11 => {
            let content_type = if protocol == Protocol::Json10 {
                "application/x-amz-json-1.0"
            } else {
                "application/x-amz-json-1.1"
            };
            let body = serde_json::json!({"__type": e.code, "message": e.message}).to_string();
            let mut r = (e.status, body).into_response();
            r.headers_mut().insert("content-type", header_value(content_type));
            r
        }
        Protocol::Query => {
            let kind = if e.status.is_server_error() { "Receiver" } else { "Sender" };
            let body = format!(
                "<ErrorResponse xmlns=\"http://monitoring.amazonaws.com/doc/2010-08-01/\"><Error><Type>{kind}</Type><Code>{}</Code><Message>{}</Message></Error><RequestId>{request_id}</RequestId></ErrorResponse>",
                xml_escape(e.code),
                xml_escape(&e.message)
            );
            let mut r = (e.status, body).into_response();
            r.headers_mut().insert("content-type", header_value("text/xml"));
            r
        }
    };
    r.headers_mut().insert("x-amzn-requestid", header_value(request_id));
    r
}

fn header_value(v: &str) -> HeaderValue {
    HeaderValue::from_str(v).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

/// An error in Smithy RPC v2 CBOR.
pub fn cbor_error(e: &AwsError) -> Response {
    let mut r = cbor_response(&serde_json::json!({"__type": e.code, "message": e.message}));
    *r.status_mut() = e.status;
    r
}

/// An answer in AWS JSON 1.0 or 1.1.
pub fn json_response(v: &Value, version: &str) -> Response {
    let mut r = (StatusCode::OK, to_json(v).to_string()).into_response();
    header(&mut r, "content-type", &format!("application/x-amz-json-{version}"));
    r
}

/// A query protocol form body as a value: `A.member.1.B=x` becomes `{"A": [{"B": "x"}]}`; scalars stay
/// strings (operations read numbers and booleans from strings too). `Action` and `Version` are left out.
pub fn form_to_json(body: &[u8]) -> Result<Value, AwsError> {
    let mut root = Value::Object(Map::new());
    for (k, v) in form_urlencoded::parse(body) {
        if k == "Action" || k == "Version" {
            continue;
        }
        let parts: Vec<&str> = k.split('.').collect();
        if parts.len() > 16 {
            return Err(AwsError::serialization(format!(
                "parameter {} nests too deep",
                super::error::bounded(&k, 100)
            )));
        }
        insert(&mut root, &parts, Value::String(v.into_owned()))
            .map_err(|_| AwsError::serialization(format!("parameter {} does not fit the others", super::error::bounded(&k, 100))))?;
    }
    Ok(root)
}

fn insert(node: &mut Value, parts: &[&str], leaf: Value) -> Result<(), ()> {
    let Some((first, rest)) = parts.split_first() else {
        *node = leaf;
        return Ok(());
    };
    let obj = node.as_object_mut().ok_or(())?;
    if rest.first() == Some(&"member") || rest.first() == Some(&"entry") {
        // A list: NAME.member.N[.rest]
        let idx: usize = rest
            .get(1)
            .and_then(|n| n.parse().ok())
            .filter(|n| (1..=1000).contains(n))
            .ok_or(())?;
        let list = obj.entry(*first).or_insert_with(|| Value::Array(Vec::new()));
        let arr = list.as_array_mut().ok_or(())?;
        while arr.len() < idx {
            arr.push(Value::Object(Map::new()));
        }
        return insert(&mut arr[idx - 1], &rest[2..], leaf);
    }
    let child = obj.entry(*first).or_insert_with(|| Value::Object(Map::new()));
    insert(child, rest, leaf)
}

fn to_xml(name: &str, v: &Value, out: &mut String) {
    match v {
        Value::Null => {}
        Value::Object(o) if o.len() == 1 && o.contains_key(TIMESTAMP) => {
            let secs = o[TIMESTAMP].as_f64().unwrap_or(0.0);
            let t = chrono::DateTime::from_timestamp_millis((secs * 1000.0) as i64).unwrap_or_default();
            out.push_str(&format!("<{name}>{}</{name}>", t.format("%Y-%m-%dT%H:%M:%S%.3fZ")));
        }
        // A map (the only one in these answers): entries of key and value, as the query protocol writes maps.
        Value::Object(o) if name == "ExtendedStatistics" => {
            out.push_str(&format!("<{name}>"));
            for (k, v) in o {
                out.push_str(&format!("<entry><key>{}</key>", xml_escape(k)));
                to_xml("value", v, out);
                out.push_str("</entry>");
            }
            out.push_str(&format!("</{name}>"));
        }
        Value::Object(o) => {
            out.push_str(&format!("<{name}>"));
            for (k, v) in o {
                to_xml(k, v, out);
            }
            out.push_str(&format!("</{name}>"));
        }
        Value::Array(a) => {
            out.push_str(&format!("<{name}>"));
            for v in a {
                to_xml("member", v, out);
            }
            out.push_str(&format!("</{name}>"));
        }
        Value::String(s) => out.push_str(&format!("<{name}>{}</{name}>", xml_escape(s))),
        Value::Bool(b) => out.push_str(&format!("<{name}>{b}</{name}>")),
        Value::Number(n) => out.push_str(&format!("<{name}>{n}</{name}>")),
    }
}

/// An answer in the query protocol: `<{Op}Response><{Op}Result>...</{Op}Result><ResponseMetadata>`.
pub fn query_response(operation: &str, v: &Value, request_id: &str) -> Response {
    let mut body = format!("<{operation}Response xmlns=\"http://monitoring.amazonaws.com/doc/2010-08-01/\">");
    if v.as_object().is_some_and(|o| !o.is_empty()) {
        to_xml(&format!("{operation}Result"), v, &mut body);
    }
    body.push_str(&format!(
        "<ResponseMetadata><RequestId>{request_id}</RequestId></ResponseMetadata></{operation}Response>"
    ));
    let mut r = (StatusCode::OK, body).into_response();
    header(&mut r, "content-type", "text/xml");
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn forms_become_values() {
        let v = form_to_json(b"Action=PutMetricAlarm&AlarmName=a&Dimensions.member.1.Name=ApiName&Dimensions.member.1.Value=orders&Dimensions.member.2.Name=Stage&Dimensions.member.2.Value=prod%2FCanary&AlarmNames.member.1=x&Period=60").unwrap();
        assert_eq!(
            v,
            json!({"AlarmName": "a", "Dimensions": [{"Name": "ApiName", "Value": "orders"}, {"Name": "Stage", "Value": "prod/Canary"}], "AlarmNames": ["x"], "Period": "60"})
        );
        assert!(form_to_json(b"A=1&A.B=2").is_err());
        assert!(form_to_json(b"A.member.0=1").is_err());
        assert!(form_to_json(b"A.member.100000=1").is_err());
    }

    #[test]
    fn cbor_round_trips_and_timestamps_are_tagged() {
        let v = json!({"a": [1, 2.5, "x", true, null], "t": {TIMESTAMP: 1.5}});
        let mut bytes = Vec::new();
        ciborium::into_writer(&to_cbor(&v), &mut bytes).unwrap();
        let back: Cbor = ciborium::from_reader(&bytes[..]).unwrap();
        let Cbor::Map(m) = &back else { panic!("{back:?}") };
        assert!(m.iter().any(|(k, v)| k == &Cbor::Text("t".into()) && matches!(v, Cbor::Tag(1, _))));
        assert_eq!(cbor_to_json(&bytes).unwrap(), json!({"a": [1, 2.5, "x", true, null], "t": 1.5}));
        assert!(cbor_to_json(b"\xff\xff").is_err());
        assert_eq!(to_json(&v)["t"], json!(1.5));
    }

    #[test]
    fn xml_escapes_and_lists() {
        let mut out = String::new();
        to_xml("R", &json!({"A": ["<x>", "y"], "T": {TIMESTAMP: 0.0}}), &mut out);
        assert_eq!(
            out,
            "<R><A><member>&lt;x&gt;</member><member>y</member></A><T>1970-01-01T00:00:00.000Z</T></R>"
        );
    }
}
