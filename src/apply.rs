//! `port-runner apply`: make Port's blueprints and actions match `blueprints/` and `actions/`.
//!
//! Files are checked first (every problem, with its file) and nothing is written if any is
//! wrong. Blueprints go first, relation targets before the blueprints pointing at them (a
//! cycle is created without relations, then completed); actions after. An item is written
//! only if it differs from Port's: a second run with no change writes nothing.

use std::path::PathBuf;

use serde_json::{Map, Value};

use crate::definitions::{for_runner, Definition, Definitions, Delivery, FileProblem};
use crate::port::{PortClient, PortError};

/// Maps whose keys the files own: a key in Port but not in the file is a removal.
const OWNED_MAPS: [&str; 6] = [
    "schema.properties",
    "relations",
    "calculationProperties",
    "mirrorProperties",
    "aggregationProperties",
    "trigger.userInputs.properties",
];

/// What apply did (or would do) to one definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Create,
    Update(Vec<String>),
    Unchanged,
}

#[derive(Debug, Clone)]
pub struct Item {
    pub kind: &'static str,
    pub identifier: String,
    pub file: PathBuf,
    pub change: Change,
    /// Port's refusal, when the write failed.
    pub error: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct ApplyReport {
    pub dry_run: bool,
    pub items: Vec<Item>,
    pub writes: usize,
}

impl ApplyReport {
    pub fn failed(&self) -> usize {
        self.items.iter().filter(|i| i.error.is_some()).count()
    }

    pub fn lines(&self) -> Vec<String> {
        let mut lines = Vec::new();
        for item in &self.items {
            let head = format!(
                "{} {} ({})",
                item.kind,
                item.identifier,
                item.file.display()
            );
            let verb = |done: &str, planned: &str| {
                if self.dry_run {
                    planned.to_owned()
                } else {
                    done.to_owned()
                }
            };
            match &item.change {
                Change::Create => {
                    lines.push(format!("{head}: {}", verb("created", "would create")))
                }
                Change::Unchanged => lines.push(format!("{head}: unchanged")),
                Change::Update(diffs) => {
                    lines.push(format!("{head}: {}", verb("updated", "would update")));
                    lines.extend(diffs.iter().map(|d| format!("    {d}")));
                }
            }
            if let Some(error) = &item.error {
                lines.push(format!("{head}: FAILED: {error}"));
            }
        }
        let count = |f: fn(&Change) -> bool| self.items.iter().filter(|i| f(&i.change)).count();
        lines.push(format!(
            "{}{} to create, {} to update, {} unchanged, {} failed; {} writes",
            if self.dry_run { "dry run: " } else { "" },
            count(|c| *c == Change::Create),
            count(|c| matches!(c, Change::Update(_))),
            count(|c| *c == Change::Unchanged),
            self.failed(),
            self.writes
        ));
        lines
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("{} problem(s) in the definition files; nothing was applied:\n{}", .0.len(), .0.iter().map(|p| format!("  {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<FileProblem>),
    #[error("Port could not be read: {0}")]
    Port(#[from] PortError),
}

/// Applies `defs` to Port; `load_problems` (files that did not even parse) are reported
/// together with every other problem, and nothing is written if there is any.
pub async fn apply(
    client: &PortClient,
    defs: &Definitions,
    load_problems: Vec<FileProblem>,
    known_actions: &[&str],
    delivery: Delivery<'_>,
    dry_run: bool,
) -> Result<ApplyReport, ApplyError> {
    // Relation targets and action blueprints may live in Port rather than in the folder.
    let mut external = std::collections::BTreeSet::new();
    for id in defs.outside_references() {
        if client.get_blueprint(&id).await?.is_some() {
            external.insert(id);
        }
    }
    let mut problems = load_problems;
    problems.extend(defs.check_with(known_actions, &external));
    let mut actions = Vec::new();
    for def in &defs.actions {
        match for_runner(&def.json, delivery) {
            Ok(json) => actions.push((def, json)),
            Err(message) => problems.push(FileProblem {
                file: def.file.clone(),
                message,
            }),
        }
    }
    if !problems.is_empty() {
        return Err(ApplyError::Invalid(problems));
    }

    let mut report = ApplyReport {
        dry_run,
        ..ApplyReport::default()
    };
    let (order, cyclic) = defs.blueprint_order();
    let mut complete_later = Vec::new();
    for def in order {
        let current = client.get_blueprint(&def.identifier).await?;
        let change = change(&def.json, current.as_ref());
        let mut error = None;
        if !dry_run {
            let result = match &change {
                Change::Create if cyclic.contains(&def.identifier) => {
                    // Its relation targets may not exist yet: relations come in a second pass.
                    let mut first = def.json.clone();
                    first.remove("relations");
                    complete_later.push(def);
                    write(&mut report, client.create_blueprint(&Value::Object(first))).await
                }
                Change::Create => {
                    write(
                        &mut report,
                        client.create_blueprint(&Value::Object(def.json.clone())),
                    )
                    .await
                }
                Change::Update(_) => {
                    write(
                        &mut report,
                        client.replace_blueprint(&def.identifier, &Value::Object(def.json.clone())),
                    )
                    .await
                }
                Change::Unchanged => Ok(()),
            };
            error = result.err().map(|e| e.to_string());
        }
        report.items.push(item("blueprint", def, change, error));
    }
    for def in complete_later {
        if let Err(e) = write(
            &mut report,
            client.replace_blueprint(&def.identifier, &Value::Object(def.json.clone())),
        )
        .await
        {
            if let Some(item) = report
                .items
                .iter_mut()
                .find(|i| i.identifier == def.identifier && i.kind == "blueprint")
            {
                item.error = Some(e.to_string());
            }
        }
    }
    for (def, json) in actions {
        let current = client.get_action(&def.identifier).await?;
        let change = change(&json, current.as_ref());
        let mut error = None;
        if !dry_run {
            let body = Value::Object(json.clone());
            let result = match &change {
                Change::Create => write(&mut report, client.create_action(&body)).await,
                Change::Update(_) => {
                    write(&mut report, client.replace_action(&def.identifier, &body)).await
                }
                Change::Unchanged => Ok(()),
            };
            error = result.err().map(|e| e.to_string());
        }
        report.items.push(item("action", def, change, error));
    }
    Ok(report)
}

async fn write(
    report: &mut ApplyReport,
    call: impl std::future::Future<Output = Result<(), PortError>>,
) -> Result<(), PortError> {
    report.writes += 1;
    call.await
}

fn item(kind: &'static str, def: &Definition, change: Change, error: Option<String>) -> Item {
    Item {
        kind,
        identifier: def.identifier.clone(),
        file: def.file.clone(),
        change,
        error,
    }
}

fn change(desired: &Map<String, Value>, current: Option<&Value>) -> Change {
    let Some(current) = current else {
        return Change::Create;
    };
    let mut diffs = Vec::new();
    diff(&Value::Object(desired.clone()), current, "", &mut diffs);
    if diffs.is_empty() {
        Change::Unchanged
    } else {
        Change::Update(diffs)
    }
}

/// Where `desired` differs from `current`. Port adds fields of its own (ids, timestamps,
/// defaults), so only what the file says is compared, except in the maps the file owns.
fn diff(desired: &Value, current: &Value, path: &str, out: &mut Vec<String>) {
    let at = |key: &str| {
        if path.is_empty() {
            key.to_owned()
        } else {
            format!("{path}.{key}")
        }
    };
    match (desired, current) {
        (Value::Object(d), Value::Object(c)) => {
            for (key, dv) in d {
                match c.get(key) {
                    Some(cv) => diff(dv, cv, &at(key), out),
                    None => out.push(format!("{}: (absent) → {}", at(key), short(dv))),
                }
            }
            if OWNED_MAPS.contains(&path) {
                for key in c.keys().filter(|k| !d.contains_key(*k)) {
                    out.push(format!("{}: removed", at(key)));
                }
            }
        }
        _ if desired == current => {}
        _ => out.push(format!("{path}: {} → {}", short(current), short(desired))),
    }
}

fn short(v: &Value) -> String {
    let text = v.to_string();
    if text.chars().count() > 80 {
        format!("{}…", text.chars().take(80).collect::<String>())
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn port_added_fields_are_not_changes_but_removed_properties_are() {
        let desired =
            json!({"identifier": "svc", "schema": {"properties": {"a": {"type": "string"}}}});
        let current = json!({"identifier": "svc", "createdAt": "x", "schema": {"properties": {"a": {"type": "string"}}, "required": []}});
        assert_eq!(
            change(desired.as_object().unwrap(), Some(&current)),
            Change::Unchanged
        );

        let current = json!({"identifier": "svc", "schema": {"properties": {"a": {"type": "string"}, "old": {"type": "number"}}}});
        assert_eq!(
            change(desired.as_object().unwrap(), Some(&current)),
            Change::Update(vec!["schema.properties.old: removed".into()])
        );
        let current =
            json!({"identifier": "svc", "schema": {"properties": {"a": {"type": "number"}}}});
        assert_eq!(
            change(desired.as_object().unwrap(), Some(&current)),
            Change::Update(vec![
                "schema.properties.a.type: \"number\" → \"string\"".into()
            ])
        );
        assert_eq!(change(desired.as_object().unwrap(), None), Change::Create);
    }
}
