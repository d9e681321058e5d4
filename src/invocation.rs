//! One action invocation, whatever shape it arrived in.
//!
//! The webhook builds it from the legacy envelope or our v2 body; `sync` and tests build it
//! directly. Everything in it has been validated, so handlers trust it as it is.

use serde::Serialize;
use serde_json::{Map, Value};

use crate::domain::{ActionId, BlueprintId, DomainError, EntityId, Identifier, Operation, RunId};

/// The entity a DAY-2 or DELETE run acts on, as Port sent it.
#[derive(Debug, Clone, Serialize)]
pub struct EntityRef {
    pub identifier: EntityId,
    pub blueprint: Option<BlueprintId>,
    /// The whole entity object (title, properties, relations, …) as received.
    pub raw: Map<String, Value>,
}

/// Who pressed the button.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TriggeredBy {
    pub user_id: Option<String>,
    pub email: Option<String>,
    pub origin: Option<String>,
}

/// A validated action invocation.
#[derive(Debug, Clone, Serialize)]
pub struct Invocation {
    pub run_id: RunId,
    pub action: ActionId,
    pub operation: Operation,
    pub blueprint: Option<BlueprintId>,
    pub entity: Option<EntityRef>,
    /// User inputs keyed by input identifier.
    pub inputs: Map<String, Value>,
    /// Identifiers of inputs Port marked as secret (`censoredProperties` / `encryptedProperties`).
    pub secret_inputs: Vec<String>,
    pub triggered_by: TriggeredBy,
}

impl Invocation {
    /// Rebuilds an invocation from its stored (serialized) form, re-validating every field.
    pub fn from_stored(value: &Value) -> Result<Self, DomainError> {
        let text = |key: &str| value.get(key).and_then(Value::as_str);
        let run_id = RunId::parse("run_id", text("run_id").unwrap_or_default())?;
        let action = Identifier::schema("action", text("action").unwrap_or_default())?;
        let operation = Operation::parse("operation", text("operation").unwrap_or_default())?;
        let blueprint = text("blueprint")
            .map(|b| Identifier::schema("blueprint", b))
            .transpose()?;
        let entity = match value.get("entity") {
            Some(Value::Object(e)) => Some(EntityRef {
                identifier: Identifier::entity(
                    "entity.identifier",
                    e.get("identifier")
                        .and_then(Value::as_str)
                        .unwrap_or_default(),
                )?,
                blueprint: e
                    .get("blueprint")
                    .and_then(Value::as_str)
                    .map(|b| Identifier::schema("entity.blueprint", b))
                    .transpose()?,
                raw: e
                    .get("raw")
                    .and_then(Value::as_object)
                    .cloned()
                    .unwrap_or_default(),
            }),
            _ => None,
        };
        let by = value.get("triggered_by");
        let by_text = |key: &str| {
            by.and_then(|b| b.get(key))
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        Ok(Self {
            run_id,
            action,
            operation,
            blueprint,
            entity,
            inputs: value
                .get("inputs")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default(),
            secret_inputs: value
                .get("secret_inputs")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default(),
            triggered_by: TriggeredBy {
                user_id: by_text("user_id"),
                email: by_text("email"),
                origin: by_text("origin"),
            },
        })
    }

    /// Values that must never appear in a log line: the string forms of secret inputs.
    pub fn secret_values(&self) -> Vec<String> {
        let mut out = Vec::new();
        for key in &self.secret_inputs {
            if let Some(value) = self.inputs.get(key) {
                collect_strings(value, &mut out);
            }
        }
        out
    }
}

fn collect_strings(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::String(s) => out.push(s.clone()),
        Value::Number(n) => out.push(n.to_string()),
        Value::Array(items) => items.iter().for_each(|v| collect_strings(v, out)),
        Value::Object(map) => map.values().for_each(|v| collect_strings(v, out)),
        Value::Bool(_) | Value::Null => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_invocation_survives_being_stored() {
        let body = json!({
            "action": "echo", "trigger": {"by": {"userId": "u1", "user": {"email": "a@b.c"}}, "origin": "UI"},
            "context": {"runId": "r_1", "blueprint": "service"},
            "payload": {"entity": {"identifier": "svc", "blueprint": "service", "title": "S"},
                        "action": {"trigger": "DAY-2"}, "properties": {"x": [1, 2]}, "censoredProperties": ["x"]}
        });
        let inv = crate::webhook::payload::parse(body.to_string().as_bytes(), None).unwrap();
        let stored = serde_json::to_value(&inv).unwrap();
        let back = Invocation::from_stored(&stored).unwrap();
        assert_eq!(serde_json::to_value(&back).unwrap(), stored);
        let mut tampered = stored.clone();
        tampered["run_id"] = json!("r/../x");
        assert!(Invocation::from_stored(&tampered).is_err());
    }
}
