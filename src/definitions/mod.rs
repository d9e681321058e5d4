//! The Port definitions kept in this repository: `blueprints/*.json` and `actions/*.json`.
//!
//! Loaded and checked the same way by `validate` (offline) and `apply` (before any write).
//! Every problem of every file is collected, each with its path, so one run shows them all.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::domain::{Identifier, Operation};
use crate::schema::definition::check_property;

/// Placeholder in an action's `invocationMethod.url`, replaced with the public URL at apply time.
pub const PUBLIC_URL_PLACEHOLDER: &str = "${PORT_RUNNER_PUBLIC_URL}";

mod delivery;
mod manifests;

pub use manifests::check_port_yaml;

pub use delivery::{for_runner, webhook_url, Delivery, PULLED_URL};

/// A problem with one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileProblem {
    pub file: PathBuf,
    pub message: String,
}

impl fmt::Display for FileProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.file.display(), self.message)
    }
}

/// One definition file, parsed.
#[derive(Debug, Clone)]
pub struct Definition {
    pub file: PathBuf,
    pub identifier: String,
    pub json: Map<String, Value>,
}

/// Blueprints and actions of a repository checkout.
#[derive(Debug, Clone, Default)]
pub struct Definitions {
    pub blueprints: Vec<Definition>,
    pub actions: Vec<Definition>,
}

impl Definitions {
    /// Loads `<root>/blueprints/*.json` and `<root>/actions/*.json` (not `actions/samples/`).
    pub fn load(root: &Path) -> (Self, Vec<FileProblem>) {
        let mut problems = Vec::new();
        let blueprints = load_dir(&root.join("blueprints"), &mut problems);
        let actions = load_dir(&root.join("actions"), &mut problems);
        (
            Self {
                blueprints,
                actions,
            },
            problems,
        )
    }

    /// Loads just one folder of definition files: the blueprints port.yaml files are checked
    /// against, or the actions `serve` offers and checks inputs against. A file that cannot
    /// be read is a problem, not a definition; a missing folder is none of either.
    pub fn load_folder(dir: &Path) -> (Vec<Definition>, Vec<FileProblem>) {
        let mut problems = Vec::new();
        let definitions = load_dir(dir, &mut problems);
        (definitions, problems)
    }

    /// Blueprints named by relations and actions that are not in the folder.
    pub fn outside_references(&self) -> BTreeSet<String> {
        let inside: BTreeSet<&str> = self
            .blueprints
            .iter()
            .map(|d| d.identifier.as_str())
            .collect();
        let from_relations = self
            .blueprints
            .iter()
            .flat_map(|d| relation_targets(&d.json));
        let from_actions = self.actions.iter().filter_map(|d| {
            d.json
                .get("trigger")
                .and_then(|t| t.get("blueprintIdentifier"))
                .and_then(Value::as_str)
                .map(str::to_owned)
        });
        from_relations
            .chain(from_actions)
            .filter(|id| !inside.contains(id.as_str()))
            .collect()
    }

    /// Checks every file; `known_actions` are the actions this runner has handlers for.
    pub fn check(&self, known_actions: &[&str]) -> Vec<FileProblem> {
        self.check_with(known_actions, &BTreeSet::new())
    }

    /// As [`check`](Self::check), with blueprints that exist elsewhere (in Port) counted as known.
    pub fn check_with(
        &self,
        known_actions: &[&str],
        external: &BTreeSet<String>,
    ) -> Vec<FileProblem> {
        let mut problems = Vec::new();
        let blueprint_ids: BTreeSet<&str> = self
            .blueprints
            .iter()
            .map(|d| d.identifier.as_str())
            .chain(external.iter().map(String::as_str))
            .collect();
        duplicates(&self.blueprints, "blueprint", &mut problems);
        duplicates(&self.actions, "action", &mut problems);
        for def in &self.blueprints {
            for message in check_blueprint(&def.json, &blueprint_ids) {
                problems.push(FileProblem {
                    file: def.file.clone(),
                    message,
                });
            }
        }
        for def in &self.actions {
            for message in check_action(&def.json, &blueprint_ids, known_actions) {
                problems.push(FileProblem {
                    file: def.file.clone(),
                    message,
                });
            }
        }
        problems
    }

    /// Blueprints in an order where relation targets come before the blueprints pointing at
    /// them; the second list holds those in a cycle, which are created without relations first.
    pub fn blueprint_order(&self) -> (Vec<&Definition>, BTreeSet<String>) {
        let ids: BTreeSet<&str> = self
            .blueprints
            .iter()
            .map(|d| d.identifier.as_str())
            .collect();
        let deps: BTreeMap<&str, BTreeSet<String>> = self
            .blueprints
            .iter()
            .map(|d| {
                let targets = relation_targets(&d.json)
                    .into_iter()
                    .filter(|t| t != &d.identifier && ids.contains(t.as_str()))
                    .collect();
                (d.identifier.as_str(), targets)
            })
            .collect();
        let mut done: BTreeSet<String> = BTreeSet::new();
        let mut order = Vec::new();
        loop {
            let ready: Vec<&Definition> = self
                .blueprints
                .iter()
                .filter(|d| !done.contains(&d.identifier))
                .filter(|d| deps[d.identifier.as_str()].iter().all(|t| done.contains(t)))
                .collect();
            if ready.is_empty() {
                break;
            }
            for d in ready {
                done.insert(d.identifier.clone());
                order.push(d);
            }
        }
        let cyclic: BTreeSet<String> = self
            .blueprints
            .iter()
            .filter(|d| !done.contains(&d.identifier))
            .map(|d| d.identifier.clone())
            .collect();
        order.extend(
            self.blueprints
                .iter()
                .filter(|d| cyclic.contains(&d.identifier)),
        );
        (order, cyclic)
    }
}

fn load_dir(dir: &Path, problems: &mut Vec<FileProblem>) -> Vec<Definition> {
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_file() && p.extension().and_then(|e| e.to_str()) == Some("json"))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => {
            problems.push(FileProblem {
                file: dir.to_path_buf(),
                message: format!("cannot read the folder: {e}"),
            });
            return Vec::new();
        }
    };
    files.sort();
    files
        .into_iter()
        .filter_map(|file| {
            load_file(&file)
                .map_err(|m| {
                    problems.push(FileProblem {
                        file: file.clone(),
                        message: m,
                    })
                })
                .ok()
        })
        .collect()
}

/// Parses one definition file (JSON errors with line and column).
pub fn load_file(file: &Path) -> Result<Definition, String> {
    let text = std::fs::read_to_string(file).map_err(|e| format!("cannot read: {e}"))?;
    let value: Value = serde_json::from_str(&text).map_err(|e| {
        format!(
            "invalid JSON at line {}, column {}: {}",
            e.line(),
            e.column(),
            strip_position(&e.to_string())
        )
    })?;
    let Value::Object(json) = value else {
        return Err("expected a JSON object".into());
    };
    let identifier = json
        .get("identifier")
        .and_then(Value::as_str)
        .ok_or("identifier is missing or not a string")?
        .to_owned();
    Ok(Definition {
        file: file.to_path_buf(),
        identifier,
        json,
    })
}

fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_owned(),
        None => message.to_owned(),
    }
}

fn duplicates(defs: &[Definition], kind: &str, problems: &mut Vec<FileProblem>) {
    let mut seen: BTreeMap<&str, &Path> = BTreeMap::new();
    for def in defs {
        if let Some(first) = seen.insert(&def.identifier, &def.file) {
            problems.push(FileProblem {
                file: def.file.clone(),
                message: format!(
                    "{kind} '{}' is also defined in {}",
                    def.identifier,
                    first.display()
                ),
            });
        }
    }
}

fn relation_targets(json: &Map<String, Value>) -> Vec<String> {
    json.get("relations")
        .and_then(Value::as_object)
        .map(|rels| {
            rels.values()
                .filter_map(|r| r.get("target").and_then(Value::as_str).map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn check_blueprint(json: &Map<String, Value>, known: &BTreeSet<&str>) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(Value::String(id)) = json.get("identifier") {
        if let Err(e) = Identifier::schema("identifier", id) {
            out.push(e.to_string());
        }
    }
    match json.get("title") {
        Some(Value::String(t)) if !t.is_empty() && t.chars().count() <= 100 => {}
        Some(Value::String(_)) => out.push("title must be 1 to 100 characters".into()),
        _ => out.push("title is missing or not a string".into()),
    }
    if let Some(Value::String(d)) = json.get("description") {
        if d.chars().count() > 200 {
            out.push("description must be at most 200 characters".into());
        }
    }
    let Some(Value::Object(schema)) = json.get("schema") else {
        out.push("schema is missing or not an object".into());
        return out;
    };
    let props = match schema.get("properties") {
        Some(Value::Object(props)) => props.clone(),
        None => Map::new(),
        Some(_) => {
            out.push("schema.properties must be an object".into());
            Map::new()
        }
    };
    for (name, prop) in &props {
        check_property(&format!("schema.properties.{name}"), prop, &mut out);
    }
    if let Some(required) = schema.get("required") {
        match required.as_array() {
            Some(names) => {
                for name in names {
                    match name.as_str() {
                        Some(n) if props.contains_key(n) => {}
                        Some(n) => out.push(format!(
                            "schema.required names '{n}', which is not a property"
                        )),
                        None => out.push("schema.required must list property names".into()),
                    }
                }
            }
            None => out.push("schema.required must be an array".into()),
        }
    }
    match json.get("relations") {
        None => {}
        Some(Value::Object(rels)) => {
            for (name, rel) in rels {
                let at = format!("relations.{name}");
                match rel.get("target").and_then(Value::as_str) {
                    Some(target) if known.contains(target) => {}
                    Some(target) => out.push(format!(
                        "{at}.target '{target}' is not a blueprint in the blueprints folder"
                    )),
                    None => out.push(format!("{at}.target is missing")),
                }
                for flag in ["required", "many"] {
                    if rel.get(flag).is_some_and(|v| !v.is_boolean()) {
                        out.push(format!("{at}.{flag} must be true or false"));
                    }
                }
            }
        }
        Some(_) => out.push("relations must be an object".into()),
    }
    out
}

fn check_action(
    json: &Map<String, Value>,
    blueprints: &BTreeSet<&str>,
    known_actions: &[&str],
) -> Vec<String> {
    let mut out = Vec::new();
    let id = json
        .get("identifier")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if let Err(e) = Identifier::schema("identifier", id) {
        out.push(e.to_string());
    }
    if !json.get("title").is_some_and(Value::is_string) {
        out.push("title is missing or not a string".into());
    }
    let Some(Value::Object(trigger)) = json.get("trigger") else {
        out.push("trigger is missing or not an object (Port's current action format)".into());
        return out;
    };
    let automation = trigger.get("type").and_then(Value::as_str) == Some("automation");
    match trigger.get("type").and_then(Value::as_str) {
        Some("self-service") => check_self_service(trigger, blueprints, &mut out),
        Some("automation") => check_automation(trigger, blueprints, &mut out),
        _ => out.push(
            "trigger.type must be \"self-service\" (a button) or \"automation\" (an event)".into(),
        ),
    }
    let Some(Value::Object(method)) = json.get("invocationMethod") else {
        out.push("invocationMethod is missing or not an object".into());
        return out;
    };
    if method.get("type").and_then(Value::as_str) != Some("WEBHOOK") {
        out.push(
            "invocationMethod.type must be \"WEBHOOK\" (this runner is a webhook backend)".into(),
        );
        return out;
    }
    let url = method
        .get("url")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if url.is_empty() {
        out.push("invocationMethod.url is missing".into());
    }
    if method.get("synchronized").and_then(Value::as_bool) == Some(true) {
        out.push(
            "invocationMethod.synchronized must be false: runs report back asynchronously".into(),
        );
    }
    match method.get("body") {
        Some(body @ Value::Object(_)) => {
            if !body.to_string().contains(".run.id") {
                out.push("invocationMethod.body must carry the run id ({{ .run.id }}, e.g. in port_context.runId)".into());
            }
        }
        _ => out.push("invocationMethod.body is missing: Port's default body is undocumented, so the body template must be explicit".into()),
    }
    // An automation runs the action its body names (`port_context.action`), a button itself.
    let handled = match automation {
        true => method
            .get("body")
            .and_then(|b| b.pointer("/port_context/action"))
            .and_then(Value::as_str)
            .unwrap_or_default(),
        false => id,
    };
    if url.contains(PUBLIC_URL_PLACEHOLDER) && !known_actions.contains(&handled) {
        out.push(match automation {
            true => format!(
                "it is sent to this runner, but its body's port_context.action {handled:?} is not an action a handler here handles (known: {})",
                known_actions.join(", ")
            ),
            false => format!(
                "it is sent to this runner, but no handler here handles '{id}' (known: {})",
                known_actions.join(", ")
            ),
        });
    }
    out
}

/// A button's trigger: operation, blueprint, userInputs.
fn check_self_service(
    trigger: &Map<String, Value>,
    blueprints: &BTreeSet<&str>,
    out: &mut Vec<String>,
) {
    let operation = trigger
        .get("operation")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if let Err(e) = Operation::parse("trigger.operation", operation) {
        out.push(e.to_string());
    }
    match trigger.get("blueprintIdentifier").and_then(Value::as_str) {
        Some(bp) if !blueprints.contains(bp) => out.push(format!(
            "trigger.blueprintIdentifier '{bp}' is not a blueprint in the blueprints folder"
        )),
        None if matches!(operation, "DAY-2" | "DELETE") => out.push(format!(
            "trigger.blueprintIdentifier is needed for a {operation} action (it acts on an entity)"
        )),
        _ => {}
    }
    match trigger.get("userInputs") {
        Some(Value::Object(inputs)) => {
            let props = inputs
                .get("properties")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default();
            if !inputs.get("properties").is_some_and(Value::is_object) {
                out.push("trigger.userInputs.properties must be an object".into());
            }
            for (name, input) in &props {
                check_property(&format!("trigger.userInputs.properties.{name}"), input, out);
            }
            if let Some(required) = inputs.get("required").and_then(Value::as_array) {
                for name in required {
                    if !name.as_str().is_some_and(|n| props.contains_key(n)) {
                        out.push(format!(
                            "trigger.userInputs.required names {name}, which is not an input"
                        ));
                    }
                }
            }
        }
        _ => out.push("trigger.userInputs is missing or not an object".into()),
    }
}

/// Port's automation events (`trigger.event.type`).
const AUTOMATION_EVENTS: [&str; 8] = [
    "ENTITY_CREATED",
    "ENTITY_UPDATED",
    "ENTITY_DELETED",
    "ANY_ENTITY_CHANGE",
    "TIMER_PROPERTY_EXPIRED",
    "RUN_CREATED",
    "RUN_UPDATED",
    "ANY_RUN_CHANGE",
];

/// An automation's trigger: an event of a blueprint (or of an action's runs).
fn check_automation(
    trigger: &Map<String, Value>,
    blueprints: &BTreeSet<&str>,
    out: &mut Vec<String>,
) {
    let event = trigger.get("event").and_then(Value::as_object);
    let kind = event
        .and_then(|e| e.get("type"))
        .and_then(Value::as_str)
        .unwrap_or_default();
    if !AUTOMATION_EVENTS.contains(&kind) {
        out.push(format!(
            "trigger.event.type {kind:?} is not one of {}",
            AUTOMATION_EVENTS.join(", ")
        ));
        return;
    }
    if kind.contains("RUN") {
        if !event.is_some_and(|e| e.get("actionIdentifier").is_some_and(Value::is_string)) {
            out.push(format!(
                "trigger.event.actionIdentifier is needed for {kind}"
            ));
        }
        return;
    }
    match event
        .and_then(|e| e.get("blueprintIdentifier"))
        .and_then(Value::as_str)
    {
        Some(bp) if !blueprints.contains(bp) => out.push(format!(
            "trigger.event.blueprintIdentifier '{bp}' is not a blueprint in the blueprints folder"
        )),
        Some(_) => {}
        None => out.push(format!(
            "trigger.event.blueprintIdentifier is needed for {kind}"
        )),
    }
    if kind == "TIMER_PROPERTY_EXPIRED"
        && !event.is_some_and(|e| e.get("propertyIdentifier").is_some_and(Value::is_string))
    {
        out.push("trigger.event.propertyIdentifier (the timer property) is needed for TIMER_PROPERTY_EXPIRED".into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn blueprint_problems_are_all_reported() {
        let known: BTreeSet<&str> = ["service"].into();
        let problems = check_blueprint(
            &obj(json!({
                "identifier": "svc", "title": "",
                "schema": {"properties": {
                    "a": {"type": "text"},
                    "b": {"type": "string", "format": "uri"},
                    "c": {"type": "string", "enum": ["x", 1], "enumColors": {"y": "red"}},
                    "d": {"type": "number", "format": "email"}
                }, "required": ["zz"]},
                "relations": {"team": {"target": "team"}}
            })),
            &known,
        );
        let expected = [
            "title must be 1 to 100 characters",
            "schema.properties.a.type 'text' is not one of",
            "schema.properties.b.format 'uri' is not one of",
            "schema.properties.c.enum value 1 is not a string",
            "schema.properties.c.enumColors names 'y', which is not in enum",
            "schema.properties.d.format 'email' only applies to strings",
            "schema.required names 'zz', which is not a property",
            "relations.team.target 'team' is not a blueprint in the blueprints folder",
        ];
        assert_problems(&problems, &expected);
    }

    /// Exactly the problems expected, each found by how it starts.
    fn assert_problems(problems: &[String], expected: &[&str]) {
        for e in expected {
            assert!(
                problems.iter().any(|p| p.starts_with(e)),
                "missing {e:?} in {problems:#?}"
            );
        }
        assert_eq!(problems.len(), expected.len(), "{problems:#?}");
    }

    #[test]
    fn action_problems_are_all_reported() {
        let known: BTreeSet<&str> = ["service"].into();
        let problems = check_action(
            &obj(json!({
                "identifier": "restart", "title": "Restart",
                "trigger": {"type": "self-service", "operation": "DAY-2",
                            "userInputs": {"properties": {"n": {"type": "int"}}, "required": ["m"]}},
                "invocationMethod": {"type": "WEBHOOK", "url": "${PORT_RUNNER_PUBLIC_URL}/webhook",
                                     "synchronized": true, "body": {"x": 1}}
            })),
            &known,
            &["echo"],
        );
        let expected = [
            "trigger.blueprintIdentifier is needed for a DAY-2 action",
            "trigger.userInputs.properties.n.type 'int' is not one of",
            "trigger.userInputs.required names \"m\", which is not an input",
            "invocationMethod.synchronized must be false",
            "invocationMethod.body must carry the run id",
            "it is sent to this runner, but no handler here handles 'restart' (known: echo)",
        ];
        assert_problems(&problems, &expected);
    }

    #[test]
    fn blueprints_are_ordered_targets_first_and_cycles_are_named() {
        let def = |id: &str, targets: &[&str]| Definition {
            file: PathBuf::from(format!("{id}.json")),
            identifier: id.into(),
            json: obj(json!({
                "identifier": id,
                "relations": targets.iter().map(|t| (t.to_string(), json!({"target": t}))).collect::<Map<_, _>>()
            })),
        };
        let defs = Definitions {
            blueprints: vec![
                def("service", &["team", "service"]),
                def("team", &[]),
                def("a", &["b"]),
                def("b", &["a"]),
            ],
            actions: vec![],
        };
        let (order, cyclic) = defs.blueprint_order();
        let ids: Vec<&str> = order.iter().map(|d| d.identifier.as_str()).collect();
        assert!(ids.iter().position(|i| *i == "team") < ids.iter().position(|i| *i == "service"));
        assert_eq!(cyclic, ["a".to_string(), "b".to_string()].into());
        assert_eq!(ids.len(), 4);
    }
}
