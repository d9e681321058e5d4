//! `port.yaml` files checked offline (`validate`) against a folder of blueprints: every
//! problem of a file at once, each naming its entity.

use std::path::Path;

use serde_json::Value;

use super::{Definition, FileProblem};
use crate::domain::Identifier;
use crate::gitops::blueprint::Blueprint;
use crate::gitops::manifest;

/// Checks `port.yaml` files against the blueprints in `blueprints`.
pub fn check_port_yaml(path: &Path, blueprints: &[Definition]) -> Vec<FileProblem> {
    let problem = |message: String| FileProblem {
        file: path.to_path_buf(),
        message,
    };
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) => return vec![problem(format!("cannot read: {e}"))],
    };
    // Every problem of the file at once: a duplicated key does not hide the others.
    let (duplicates, parsed) = manifest::parse_reporting_duplicates(&text);
    let mut problems: Vec<FileProblem> =
        duplicates.iter().map(|d| problem(d.to_string())).collect();
    let entities = match parsed {
        Ok(entities) => entities,
        Err(e) => {
            problems.push(problem(e.to_string()));
            return problems;
        }
    };
    for entity in entities {
        let label = entity.label();
        let Value::Object(map) = &entity.value else {
            problems.push(problem(format!("{label}: an entity must be a mapping")));
            continue;
        };
        let Some(blueprint_id) = map.get("blueprint").and_then(Value::as_str) else {
            problems.push(problem(format!(
                "{label}: blueprint is missing or not a string"
            )));
            continue;
        };
        let Some(def) = blueprints.iter().find(|d| d.identifier == blueprint_id) else {
            problems.push(problem(format!(
                "{label}: unknown blueprint '{blueprint_id}' (not in the blueprints folder)"
            )));
            // What needs no blueprint is still checked: the identifier.
            if let Some(Err(e)) = map
                .get("identifier")
                .and_then(Value::as_str)
                .map(|id| Identifier::entity("identifier", id))
            {
                problems.push(problem(format!("{label}: {e}")));
            }
            continue;
        };
        match Blueprint::from_port(&Value::Object(def.json.clone())) {
            Ok(blueprint) => {
                if let Err(found) = blueprint.check(map) {
                    problems.push(problem(format!(
                        "{label}: {}",
                        found
                            .iter()
                            .map(|p| p.message.as_str())
                            .collect::<Vec<_>>()
                            .join("; ")
                    )));
                }
            }
            Err(e) => problems.push(problem(format!("blueprint '{blueprint_id}': {e}"))),
        }
    }
    problems
}
