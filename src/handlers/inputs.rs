//! User inputs checked against the action's `userInputs` before anything runs.
//!
//! The runner knows its actions (`actions/*.json`), so a run whose inputs do not fit them
//! fails at once, naming every bad field, instead of reaching a handler or a tool.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{Map, Value};

use crate::definitions::Definition;
use crate::schema::{string_list, ObjectSchema, Violation};

/// One action's inputs, compiled once, and what its trigger says: the blueprint its
/// entities are of and the operation of its button.
#[derive(Debug, Clone)]
pub struct InputSchema {
    inputs: Arc<ObjectSchema>,
    blueprint: Option<String>,
    operation: Option<String>,
}

impl InputSchema {
    /// From an action in Port's current format (`trigger.userInputs`).
    pub fn from_action(action: &Value) -> Self {
        let inputs = &action["trigger"]["userInputs"];
        // Inputs the action does not define are left to the handler (Port sends only defined
        // ones; a custom action may reuse a handler with more).
        let trigger = |key: &str| action["trigger"][key].as_str().map(str::to_owned);
        Self {
            inputs: Arc::new(ObjectSchema::compile(
                inputs.get("properties"),
                &string_list(inputs.get("required")),
                true,
            )),
            blueprint: trigger("blueprintIdentifier"),
            operation: trigger("operation"),
        }
    }

    /// The blueprint the action declares (`trigger.blueprintIdentifier`), if any.
    pub fn blueprint(&self) -> Option<&str> {
        self.blueprint.as_deref()
    }

    /// The operation of the action's button (`trigger.operation`), if it says.
    pub fn operation(&self) -> Option<&str> {
        self.operation.as_deref()
    }

    /// Every problem with `inputs`, each naming its field. Encrypted inputs are checked
    /// too: the runner decrypts them first.
    pub fn check(&self, inputs: &Map<String, Value>) -> Result<(), Vec<String>> {
        let problems: Vec<String> = self
            .inputs
            .check(inputs, "input")
            .into_iter()
            .map(|v| match v {
                Violation::Missing(name) => format!("input '{name}' is required"),
                Violation::Unknown(name) => format!("input '{name}' is not defined"),
                Violation::Invalid { message, .. } => message,
            })
            .collect();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }
}

/// The input schemas of the actions in a folder, by action identifier.
#[derive(Debug, Clone, Default)]
pub struct ActionInputs(HashMap<String, InputSchema>);

impl ActionInputs {
    /// The schemas of loaded action definitions.
    pub fn of(actions: &[Definition]) -> Self {
        Self(
            actions
                .iter()
                .map(|a| {
                    let json = Value::Object(a.json.clone());
                    (a.identifier.clone(), InputSchema::from_action(&json))
                })
                .collect(),
        )
    }

    pub fn get(&self, action: &str) -> Option<&InputSchema> {
        self.0.get(action)
    }

    /// Every action with its schema, by identifier.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &InputSchema)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v))
    }

    pub fn insert(&mut self, action: &str, schema: InputSchema) {
        self.0.insert(action.to_owned(), schema);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> InputSchema {
        InputSchema::from_action(&json!({"trigger": {"userInputs": {
            "properties": {
                "bucket_name": {"type": "string", "pattern": "^[a-z0-9][a-z0-9-]{2,62}$"},
                "acl": {"type": "string", "enum": ["private", "public-read"]},
                "nodes": {"type": "number", "minimum": 1, "maximum": 10},
                "tags": {"type": "object"},
                "token": {"type": "string", "encryption": "aes256-gcm"}
            },
            "required": ["bucket_name", "acl"]
        }}}))
    }

    #[test]
    fn valid_inputs_pass_and_decrypted_secret_ones_are_checked_too() {
        let ok = json!({"bucket_name": "my-bucket", "acl": "private", "nodes": 3, "token": "s3cret", "tags": null});
        schema().check(ok.as_object().unwrap()).unwrap();
        let bad = json!({"bucket_name": "my-bucket", "acl": "private", "token": 12});
        let problems = schema().check(bad.as_object().unwrap()).unwrap_err();
        assert!(
            problems[0].starts_with("input 'token' must be a string"),
            "{problems:?}"
        );
    }

    #[test]
    fn every_bad_field_is_named() {
        let bad = json!({"bucket_name": "../etc", "acl": "world", "nodes": 40, "tags": "a=b"});
        let problems = schema().check(bad.as_object().unwrap()).unwrap_err();
        for expected in [
            "input 'bucket_name' must match /^[a-z0-9][a-z0-9-]{2,62}$/",
            "input 'acl' must be one of \"private\", \"public-read\", got \"world\"",
            "input 'nodes' must be between 1 and 10, got 40",
            "input 'tags' must be an object, got \"a=b\"",
        ] {
            assert!(
                problems.iter().any(|p| p.starts_with(expected)),
                "{expected} not in {problems:#?}"
            );
        }
        // A pattern the action describes is said in the description's words, not as a regex.
        let described =
            InputSchema::from_action(&json!({"trigger": {"userInputs": {"properties": {
                "region": {"type": "string", "pattern": "^[a-z]{2}-[a-z]+-[0-9]$",
                           "description": "an AWS region such as eu-west-1"}
            }}}}));
        let problems = described
            .check(json!({"region": "Frankfurt"}).as_object().unwrap())
            .unwrap_err();
        assert_eq!(
            problems,
            ["input 'region' is not in the expected form (an AWS region such as eu-west-1), got \"Frankfurt\""]
        );
        let missing = schema().check(json!({}).as_object().unwrap()).unwrap_err();
        assert_eq!(
            missing,
            vec!["input 'bucket_name' is required", "input 'acl' is required"]
        );
    }
}
