//! Parses a verified webhook body into an [`Invocation`].
//!
//! Three shapes are accepted (see `docs/port-protocol.md`):
//! - the legacy envelope (`action`, `context.runId`, `payload.action.trigger`,
//!   `payload.properties`, `payload.entity`), which Port's legacy-compatible v2 template
//!   also renders;
//! - our v2 body: `{"port_context": {"runId", "action", "operation", "blueprint", …},
//!   "inputs": {…}, "entity": {…}|null}` as rendered by the action files in `actions/`;
//! - Port's own automation event, from an automation with no body template (`event.rs`).
//!
//! Errors name the JSON path and say what was expected, because the person reading them
//! is wiring an action body template by hand.

use serde::Deserialize;
use serde_json::{Map, Value};

use super::{EntityRef, Invocation, TriggeredBy};
use crate::domain::{DomainError, Identifier, Operation, RunId};

/// Why a body is not an invocation.
#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    #[error("body is not valid JSON: {message} at line {line}, column {column}")]
    Syntax {
        message: String,
        line: usize,
        column: usize,
    },
    #[error("{path}: {message}")]
    Shape { path: String, message: String },
    #[error("unrecognised body: expected the legacy envelope (with context.runId and payload), a v2 body (with port_context.runId) or an automation event (with context and diff)")]
    Unrecognised,
    #[error(transparent)]
    Invalid(#[from] DomainError),
}

/// The body as a JSON object (its syntax and its root checked), for `body.rs` to dispatch.
pub(super) fn json_object(body: &[u8]) -> Result<Value, PayloadError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| PayloadError::Syntax {
        message: strip_position(&e.to_string()),
        line: e.line(),
        column: e.column(),
    })?;
    match value {
        Value::Object(_) => Ok(value),
        other => Err(PayloadError::Shape {
            path: "(root)".into(),
            message: format!("expected a JSON object, got {}", kind(&other)),
        }),
    }
}

/// An action's body: our v2 body (`port_context`) or Port's legacy envelope.
pub(super) fn from_action_body(
    value: Value,
    run_id_header: Option<&str>,
) -> Result<Invocation, PayloadError> {
    let root = value.as_object().map(|r| {
        (
            r.contains_key("port_context"),
            r.contains_key("context") || r.contains_key("payload"),
        )
    });
    match root {
        Some((true, _)) => {
            let wire: V2Body = typed(value)?;
            from_v2(wire, run_id_header)
        }
        Some((false, true)) => {
            let wire: LegacyEnvelope = typed(value)?;
            from_legacy(wire)
        }
        _ => Err(PayloadError::Unrecognised),
    }
}

/// Every top-level field an action body may have, read straight from the bytes: one pass
/// for the bodies that are well formed, instead of bytes to a JSON tree, then the tree to
/// the typed form. `None` when the body is not plainly one shape or does not read cleanly:
/// the tree path then decides, with its error naming the JSON path.
pub(super) fn at_once(
    body: &[u8],
    run_id_header: Option<&str>,
) -> Option<Result<Invocation, PayloadError>> {
    #[derive(Deserialize)]
    struct AnyBody {
        port_context: Option<V2Context>,
        inputs: Option<Map<String, Value>>,
        entity: Option<Map<String, Value>>,
        action: Option<String>,
        trigger: Option<WireTrigger>,
        context: Option<LegacyContext>,
        payload: Option<LegacyPayload>,
        /// An automation event's markers: such a body goes the tree path.
        event: Option<serde::de::IgnoredAny>,
        diff: Option<serde::de::IgnoredAny>,
    }
    let any: AnyBody = serde_json::from_slice(body).ok()?;
    if any.event.is_some() || any.diff.is_some() {
        return None;
    }
    if let Some(port_context) = any.port_context {
        let wire = V2Body {
            port_context,
            inputs: any.inputs,
            entity: any.entity,
        };
        return Some(from_v2(wire, run_id_header));
    }
    let (action, context, payload) = (any.action?, any.context?, any.payload?);
    Some(from_legacy(LegacyEnvelope {
        action,
        trigger: any.trigger,
        context,
        payload,
    }))
}

pub(super) fn typed<T: for<'de> Deserialize<'de>>(value: Value) -> Result<T, PayloadError> {
    serde_path_to_error::deserialize(value).map_err(|e| PayloadError::Shape {
        path: match e.path().to_string() {
            p if p == "." => "(root)".into(),
            p => p,
        },
        message: e.into_inner().to_string(),
    })
}

fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_string(),
        None => message.to_string(),
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[derive(Deserialize)]
struct LegacyEnvelope {
    action: String,
    #[serde(default)]
    trigger: Option<WireTrigger>,
    context: LegacyContext,
    payload: LegacyPayload,
}

#[derive(Deserialize)]
struct LegacyContext {
    #[serde(rename = "runId")]
    run_id: String,
    #[serde(default)]
    blueprint: Option<String>,
}

#[derive(Deserialize)]
struct LegacyPayload {
    #[serde(default)]
    entity: Option<Map<String, Value>>,
    action: LegacyAction,
    #[serde(default)]
    properties: Option<Map<String, Value>>,
    #[serde(default, rename = "censoredProperties")]
    censored_properties: Option<Vec<String>>,
}

#[derive(Deserialize)]
struct LegacyAction {
    trigger: String,
}

#[derive(Deserialize, Default)]
pub(super) struct WireTrigger {
    #[serde(default)]
    by: Option<WireBy>,
    #[serde(default)]
    origin: Option<String>,
}

#[derive(Deserialize, Default)]
struct WireBy {
    #[serde(default, rename = "userId")]
    user_id: Option<String>,
    #[serde(default)]
    user: Option<WireUser>,
}

#[derive(Deserialize, Default)]
struct WireUser {
    #[serde(default)]
    email: Option<String>,
}

#[derive(Deserialize)]
struct V2Body {
    port_context: V2Context,
    #[serde(default)]
    inputs: Option<Map<String, Value>>,
    #[serde(default)]
    entity: Option<Map<String, Value>>,
}

#[derive(Deserialize)]
struct V2Context {
    #[serde(default, rename = "runId", alias = "run_id")]
    run_id: Option<String>,
    action: String,
    operation: String,
    #[serde(default)]
    blueprint: Option<String>,
    #[serde(default)]
    trigger: Option<WireTrigger>,
    #[serde(default, rename = "encryptedProperties")]
    encrypted_properties: Option<Vec<String>>,
}

fn from_legacy(wire: LegacyEnvelope) -> Result<Invocation, PayloadError> {
    Ok(Invocation {
        run_id: RunId::parse("context.runId", &wire.context.run_id)?,
        action: Identifier::schema("action", &wire.action)?,
        operation: Operation::parse("payload.action.trigger", &wire.payload.action.trigger)?,
        blueprint: blueprint("context.blueprint", wire.context.blueprint)?,
        entity: entity("payload.entity", wire.payload.entity)?,
        inputs: wire.payload.properties.unwrap_or_default(),
        secret_inputs: wire.payload.censored_properties.unwrap_or_default(),
        triggered_by: triggered_by(wire.trigger),
        job: None,
        event: None,
    })
}

fn from_v2(wire: V2Body, run_id_header: Option<&str>) -> Result<Invocation, PayloadError> {
    let ctx = wire.port_context;
    let run_id = match (ctx.run_id.as_deref(), run_id_header) {
        (Some(id), _) => RunId::parse("port_context.runId", id)?,
        (None, Some(id)) => RunId::parse("RUN_ID header", id)?,
        (None, None) => {
            return Err(PayloadError::Shape {
                path: "port_context.runId".into(),
                message: "missing; the action body must carry \"{{ .run.id }}\"".into(),
            })
        }
    };
    Ok(Invocation {
        run_id,
        action: Identifier::schema("port_context.action", &ctx.action)?,
        operation: Operation::parse("port_context.operation", &ctx.operation)?,
        blueprint: blueprint("port_context.blueprint", ctx.blueprint)?,
        entity: entity("entity", wire.entity)?,
        inputs: wire.inputs.unwrap_or_default(),
        secret_inputs: ctx.encrypted_properties.unwrap_or_default(),
        triggered_by: triggered_by(ctx.trigger),
        job: None,
        event: None,
    })
}

fn blueprint(field: &str, value: Option<String>) -> Result<Option<Identifier>, DomainError> {
    // Port's templates render a missing blueprint as "" or null.
    value
        .filter(|b| !b.is_empty())
        .map(|b| Identifier::schema(field, &b))
        .transpose()
}

pub(super) fn entity(
    field: &str,
    value: Option<Map<String, Value>>,
) -> Result<Option<EntityRef>, DomainError> {
    // CREATE runs carry `null` (legacy) or `{}` (a v2 template that forgot the `if`).
    let Some(raw) = value.filter(|m| !m.is_empty()) else {
        return Ok(None);
    };
    let id_field = format!("{field}.identifier");
    let identifier = match raw.get("identifier") {
        Some(Value::String(s)) => Identifier::entity(&id_field, s)?,
        Some(other) => {
            return Err(DomainError::new(
                id_field,
                format!("expected a string, got {}", kind(other)),
            ))
        }
        None => return Err(DomainError::new(id_field, "missing")),
    };
    let blueprint = match raw.get("blueprint") {
        Some(Value::String(s)) if !s.is_empty() => {
            Some(Identifier::schema(&format!("{field}.blueprint"), s)?)
        }
        _ => None,
    };
    Ok(Some(EntityRef {
        identifier,
        blueprint,
        raw,
    }))
}

pub(super) fn triggered_by(trigger: Option<WireTrigger>) -> TriggeredBy {
    let trigger = trigger.unwrap_or_default();
    let by = trigger.by.unwrap_or_default();
    TriggeredBy {
        user_id: by.user_id,
        email: by.user.unwrap_or_default().email,
        origin: trigger.origin,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::invocation::body::parse;
    use serde_json::json;

    fn legacy() -> Value {
        json!({
            "action": "echo", "resourceType": "run", "status": "TRIGGERED",
            "trigger": {"by": {"orgId": "org_1", "userId": "auth0|1", "user": {"email": "a@b.c"}},
                        "origin": "UI", "at": "2023-11-13T15:20:16.641Z"},
            "context": {"entity": "svc-a", "blueprint": "service", "runId": "r_1"},
            "payload": {
                "entity": {"identifier": "svc-a", "blueprint": "service", "title": "A", "properties": {}},
                "action": {"invocationMethod": {"type": "WEBHOOK"}, "trigger": "DAY-2"},
                "properties": {"message": "hi", "token": "t0ps3cret"},
                "censoredProperties": ["token"]
            }
        })
    }

    fn parse_value(v: &Value) -> Result<Invocation, PayloadError> {
        parse(serde_json::to_vec(v).unwrap().as_slice(), None)
    }

    #[test]
    fn the_legacy_envelope_parses_into_an_invocation() {
        let inv = parse_value(&legacy()).unwrap();
        assert_eq!(inv.run_id.as_str(), "r_1");
        assert_eq!(inv.action.as_str(), "echo");
        assert_eq!(inv.operation, Operation::Day2);
        assert_eq!(inv.blueprint.unwrap().as_str(), "service");
        assert_eq!(inv.entity.unwrap().identifier.as_str(), "svc-a");
        assert_eq!(inv.inputs["message"], "hi");
        assert_eq!(inv.secret_inputs, vec!["token"]);
        assert_eq!(inv.triggered_by.email.as_deref(), Some("a@b.c"));
    }

    #[test]
    fn a_create_run_from_the_v2_legacy_template_has_no_entity() {
        let mut v = legacy();
        v["context"]["entity"] = Value::Null;
        v["payload"]["entity"] = json!({});
        v["payload"]["action"]["trigger"] = json!("CREATE");
        v["payload"]["censoredProperties"] = Value::Null;
        v["trigger"] = json!({"by": {"userId": "u"}, "origin": "UI", "at": "x"});
        let inv = parse_value(&v).unwrap();
        assert!(inv.entity.is_none());
        assert_eq!(inv.operation, Operation::Create);
        assert!(inv.secret_inputs.is_empty());
    }

    #[test]
    fn the_v2_body_parses_and_may_take_the_run_id_from_the_header() {
        let body = json!({
            "port_context": {"action": "echo", "operation": "CREATE", "blueprint": "",
                             "encryptedProperties": ["pw"]},
            "inputs": {"pw": "x"}, "entity": null
        });
        let raw = serde_json::to_vec(&body).unwrap();
        let inv = parse(&raw, Some("r_hdr")).unwrap();
        assert_eq!(inv.run_id.as_str(), "r_hdr");
        assert!(inv.blueprint.is_none());
        assert_eq!(inv.secret_inputs, vec!["pw"]);
        let err = parse(&raw, None).unwrap_err();
        assert!(
            err.to_string().starts_with("port_context.runId: missing"),
            "{err}"
        );
    }

    #[test]
    fn one_pass_and_the_tree_read_a_body_alike() {
        let v2 = json!({
            "port_context": {"runId": "r_2", "action": "echo", "operation": "DAY-2",
                             "blueprint": "service", "encryptedProperties": ["pw"],
                             "trigger": {"by": {"userId": "u"}, "origin": "UI"}},
            "inputs": {"pw": "x", "n": [1, {"b": 2, "a": 1}]},
            "entity": {"identifier": "svc-a", "blueprint": "service", "properties": {"z": 1, "a": 2}}
        });
        for body in [legacy(), v2] {
            let raw = serde_json::to_vec(&body).unwrap();
            let once = at_once(&raw, None).expect("a plain body").unwrap();
            let tree = from_action_body(json_object(&raw).unwrap(), None).unwrap();
            assert_eq!(
                serde_json::to_string(&once).unwrap(),
                serde_json::to_string(&tree).unwrap()
            );
        }
        // Not plainly one shape, or not clean: the tree decides (and names the path).
        let event = json!({"event": {"context": {}, "diff": {}}, "run": {"id": "r_3"}});
        let mut wrong = legacy();
        wrong["payload"]["properties"] = json!("not an object");
        let mut partial = legacy();
        partial.as_object_mut().unwrap().remove("action");
        for body in [event, wrong, partial, json!([1]), json!({"hello": 1})] {
            assert!(
                at_once(&serde_json::to_vec(&body).unwrap(), None).is_none(),
                "{body}"
            );
        }
    }

    #[test]
    fn malformed_json_reports_line_and_column() {
        let err = parse(b"{\n  \"action\": \"echo\",\n  oops\n}", None).unwrap_err();
        let PayloadError::Syntax { line, column, .. } = err else {
            panic!("{err}")
        };
        assert_eq!((line, column), (3, 3));
    }

    #[test]
    fn wrong_types_name_the_json_path() {
        let mut v = legacy();
        v["payload"]["properties"] = json!("not an object");
        let err = parse_value(&v).unwrap_err().to_string();
        assert!(
            err.starts_with("payload.properties: invalid type: string"),
            "{err}"
        );

        let mut v = legacy();
        v["context"]["runId"] = json!(42);
        let err = parse_value(&v).unwrap_err().to_string();
        assert!(
            err.starts_with("context.runId: invalid type: integer"),
            "{err}"
        );
    }

    #[test]
    fn invalid_values_name_the_field() {
        let mut v = legacy();
        v["payload"]["action"]["trigger"] = json!("UPDATE");
        let err = parse_value(&v).unwrap_err().to_string();
        assert!(err.starts_with("payload.action.trigger:"), "{err}");

        let mut v = legacy();
        v["payload"]["entity"]["identifier"] = json!("bad id");
        let err = parse_value(&v).unwrap_err().to_string();
        assert!(err.starts_with("payload.entity.identifier:"), "{err}");
    }

    #[test]
    fn other_bodies_are_unrecognised() {
        assert!(matches!(
            parse(br#"{"hello": 1}"#, None).unwrap_err(),
            PayloadError::Unrecognised
        ));
        assert!(parse(b"[1]", None)
            .unwrap_err()
            .to_string()
            .contains("expected a JSON object"));
    }

    #[test]
    fn secret_values_cover_nested_inputs() {
        let mut v = legacy();
        v["payload"]["properties"]["token"] = json!({"a": ["x1y2", 12345]});
        let inv = parse_value(&v).unwrap();
        assert_eq!(inv.secret_values(), vec!["x1y2", "12345"]);
    }
}
