//! One action invocation, whatever shape it arrived in.
//!
//! The webhook builds it from the legacy envelope or our v2 body; `sync` and tests build it
//! directly. Everything in it has been validated, so handlers trust it as it is.

use serde::Serialize;
use serde_json::{Map, Value};

use crate::domain::{ActionId, BlueprintId, EntityId, Operation, RunId};

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
