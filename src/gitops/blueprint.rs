//! Checks an entity against its blueprint as Port defines it, before anything is sent.
//!
//! The properties go through the one JSON Schema validator (`schema/`: types, enums, Port's
//! formats, patterns, lengths and bounds, required properties); what is Port's own is checked
//! here: the entity's fields, its identifier, and relations (single vs many, required).
//! Every problem of an entity is reported, not just the first.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::keys::EntityKey;
use super::manifest::kind;
use crate::domain::Identifier;
use crate::schema::{short, string_list, ObjectSchema, Violation};

/// Top-level keys an entity in `port.yaml` may have.
const ENTITY_KEYS: [&str; 7] = [
    "identifier",
    "title",
    "blueprint",
    "properties",
    "relations",
    "icon",
    "team",
];

#[derive(Debug, Clone)]
struct RelationSchema {
    many: bool,
    required: bool,
}

/// A blueprint's schema, compiled for checking entities.
#[derive(Debug, Clone)]
pub struct Blueprint {
    pub identifier: String,
    properties: Arc<ObjectSchema>,
    relations: BTreeMap<String, RelationSchema>,
}

/// One problem of an entity, and the key it is about (`["properties", "tier"]`; empty for
/// the entity itself), so it can be shown on the line of that key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldProblem {
    pub path: Vec<String>,
    pub message: String,
}

impl FieldProblem {
    fn at(path: &[&str], message: String) -> Self {
        Self {
            path: path.iter().map(|s| (*s).to_owned()).collect(),
            message,
        }
    }
}

impl std::fmt::Display for FieldProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// An entity that passed every check, ready to send.
#[derive(Debug, Clone)]
pub struct ValidEntity {
    pub blueprint: String,
    pub identifier: String,
    /// The body for Port's upsert: identifier, title, properties, relations (+ icon, team),
    /// as compact JSON: a sync holds every valid entity until it applies them, and a parsed
    /// body costs several times its text.
    body: Box<str>,
    /// SHA-256 of the canonical body: equal hashes mean nothing to write.
    pub hash: String,
}

impl ValidEntity {
    pub fn key(&self) -> EntityKey {
        EntityKey::new(&self.blueprint, &self.identifier)
    }

    /// The body for Port's upsert, parsed.
    pub fn body(&self) -> Value {
        serde_json::from_str(&self.body).expect("written from a value")
    }
}

impl Blueprint {
    /// Reads Port's blueprint JSON (`{identifier, schema: {properties, required}, relations}`).
    pub fn from_port(json: &Value) -> Result<Self, String> {
        let identifier = json
            .get("identifier")
            .and_then(Value::as_str)
            .ok_or("blueprint has no identifier")?
            .to_owned();
        let schema = json.get("schema").cloned().unwrap_or(Value::Null);
        let properties = Arc::new(ObjectSchema::compile(
            schema.get("properties"),
            &string_list(schema.get("required")),
            false,
        ));
        let relations = json
            .get("relations")
            .and_then(Value::as_object)
            .map(|rels| {
                rels.iter()
                    .map(|(k, v)| {
                        (
                            k.clone(),
                            RelationSchema {
                                many: v.get("many").and_then(Value::as_bool).unwrap_or(false),
                                required: v
                                    .get("required")
                                    .and_then(Value::as_bool)
                                    .unwrap_or(false),
                            },
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok(Self {
            identifier,
            properties,
            relations,
        })
    }

    /// Checks `entity` (already known to name this blueprint); every problem is returned,
    /// each with the key it is about (a pull-request check annotates that line).
    pub fn check(&self, entity: &Map<String, Value>) -> Result<ValidEntity, Vec<FieldProblem>> {
        let mut problems = Vec::new();
        for key in entity.keys() {
            if !ENTITY_KEYS.contains(&key.as_str()) {
                problems.push(FieldProblem::at(
                    &[key],
                    format!(
                        "unknown field '{key}' (an entity has {})",
                        ENTITY_KEYS.join(", ")
                    ),
                ));
            }
        }
        let identifier = match entity.get("identifier") {
            Some(Value::String(id)) => match Identifier::entity("identifier", id) {
                Ok(_) => Some(id.clone()),
                Err(e) => {
                    problems.push(FieldProblem::at(&["identifier"], e.to_string()));
                    None
                }
            },
            Some(other) => {
                problems.push(FieldProblem::at(
                    &["identifier"],
                    format!("identifier must be a string, got {}", kind(other)),
                ));
                None
            }
            None => {
                problems.push(FieldProblem::at(&[], "identifier is missing".into()));
                None
            }
        };
        match entity.get("title") {
            Some(Value::String(_)) => {}
            Some(other) => problems.push(FieldProblem::at(
                &["title"],
                format!("title must be a string, got {}", kind(other)),
            )),
            None => problems.push(FieldProblem::at(&[], "title is missing".into())),
        }
        let properties = self.check_properties(entity.get("properties"), &mut problems);
        let relations = self.check_relations(entity.get("relations"), &mut problems);
        if let Some(icon) = entity.get("icon") {
            if !icon.is_string() {
                problems.push(FieldProblem::at(
                    &["icon"],
                    format!("icon must be a string, got {}", kind(icon)),
                ));
            }
        }

        if !problems.is_empty() {
            return Err(problems);
        }
        let mut body = Map::new();
        body.insert("identifier".into(), entity["identifier"].clone());
        body.insert("title".into(), entity["title"].clone());
        body.insert("properties".into(), Value::Object(properties));
        body.insert("relations".into(), Value::Object(relations));
        for key in ["icon", "team"] {
            if let Some(v) = entity.get(key) {
                body.insert(key.into(), v.clone());
            }
        }
        let body = Value::Object(body);
        let hash = canonical_hash(&body);
        Ok(ValidEntity {
            blueprint: self.identifier.clone(),
            identifier: identifier.expect("no problems means an identifier"),
            body: body.to_string().into_boxed_str(),
            hash,
        })
    }

    fn check_properties(
        &self,
        value: Option<&Value>,
        problems: &mut Vec<FieldProblem>,
    ) -> Map<String, Value> {
        let props = match value {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(map)) => map.clone(),
            Some(other) => {
                problems.push(FieldProblem::at(
                    &["properties"],
                    format!("properties must be a mapping, got {}", kind(other)),
                ));
                return Map::new();
            }
        };
        for violation in self.properties.check(&props, "property") {
            problems.push(match violation {
                Violation::Missing(name) => FieldProblem::at(
                    &["properties"],
                    format!(
                        "required property '{name}' of blueprint '{}' is missing",
                        self.identifier
                    ),
                ),
                Violation::Unknown(name) => FieldProblem::at(
                    &["properties", &name],
                    format!(
                        "property '{name}' is not defined on blueprint '{}'",
                        self.identifier
                    ),
                ),
                Violation::Invalid { path, message } => FieldProblem {
                    path: std::iter::once("properties".to_owned())
                        .chain(path)
                        .collect(),
                    message,
                },
            });
        }
        props
    }

    fn check_relations(
        &self,
        value: Option<&Value>,
        problems: &mut Vec<FieldProblem>,
    ) -> Map<String, Value> {
        let rels = match value {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(map)) => map.clone(),
            Some(other) => {
                problems.push(FieldProblem::at(
                    &["relations"],
                    format!("relations must be a mapping, got {}", kind(other)),
                ));
                return Map::new();
            }
        };
        for (name, value) in &rels {
            let at = ["relations", name.as_str()];
            let Some(schema) = self.relations.get(name) else {
                problems.push(FieldProblem::at(
                    &at,
                    format!(
                        "relation '{name}' is not defined on blueprint '{}'",
                        self.identifier
                    ),
                ));
                continue;
            };
            let mut target = |id: &str| match Identifier::entity(&format!("relation '{name}'"), id)
            {
                Ok(_) => true,
                Err(e) => {
                    problems.push(FieldProblem::at(&at, e.to_string()));
                    true // reported precisely above; do not report the shape again
                }
            };
            let ok = match (schema.many, value) {
                (_, Value::Null) => true,
                (false, Value::String(id)) => target(id),
                (true, Value::Array(ids)) => ids.iter().all(|id| match id {
                    Value::String(id) => target(id),
                    _ => false,
                }),
                _ => false,
            };
            if !ok {
                let expected = if schema.many {
                    "a list of entity identifiers"
                } else {
                    "one entity identifier"
                };
                problems.push(FieldProblem::at(
                    &at,
                    format!("relation '{name}' expects {expected}, got {}", short(value)),
                ));
            }
        }
        for (name, schema) in &self.relations {
            if schema.required && rels.get(name).is_none_or(Value::is_null) {
                problems.push(FieldProblem::at(
                    &["relations"],
                    format!(
                        "required relation '{name}' of blueprint '{}' is missing",
                        self.identifier
                    ),
                ));
            }
        }
        rels
    }
}

/// SHA-256 of the value serialized with object keys sorted, so key order in YAML does not matter.
pub fn canonical_hash(value: &Value) -> String {
    fn write(value: &Value, out: &mut String) {
        match value {
            Value::Object(map) => {
                let mut keys: Vec<&String> = map.keys().collect();
                keys.sort();
                out.push('{');
                for (i, key) in keys.into_iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&Value::String(key.clone()).to_string());
                    out.push(':');
                    write(&map[key], out);
                }
                out.push('}');
            }
            Value::Array(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write(item, out);
                }
                out.push(']');
            }
            scalar => out.push_str(&scalar.to_string()),
        }
    }
    let mut text = String::new();
    write(value, &mut text);
    format!("{:x}", Sha256::digest(text.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn blueprint() -> Blueprint {
        Blueprint::from_port(&json!({
            "identifier": "microservice",
            "schema": {
                "properties": {
                    "url": {"type": "string", "format": "url"},
                    "owner_email": {"type": "string", "format": "email"},
                    "released": {"type": "string", "format": "date-time"},
                    "ip": {"type": "string", "format": "ipv4"},
                    "ip6": {"type": "string", "format": "ipv6"},
                    "tier": {"type": "string", "enum": ["frontend", "backend"]},
                    "code": {"type": "string", "pattern": "^[A-Z]{3}$"},
                    "replicas": {"type": "number", "minimum": 1, "maximum": 10},
                    "public": {"type": "boolean"},
                    "tags": {"type": "array", "items": {"type": "string"}},
                    "config": {"type": "object"}
                },
                "required": ["tier"]
            },
            "relations": {
                "team": {"target": "team", "many": false, "required": true},
                "depends_on": {"target": "microservice", "many": true, "required": false}
            }
        }))
        .unwrap()
    }

    fn entity(extra: Value) -> Map<String, Value> {
        let mut e = json!({
            "identifier": "svc-a", "title": "A", "blueprint": "microservice",
            "properties": {"tier": "backend"}, "relations": {"team": "team-a"}
        });
        for (k, v) in extra.as_object().unwrap() {
            e[k] = v.clone();
        }
        e.as_object().unwrap().clone()
    }

    #[test]
    fn a_valid_entity_passes_and_hashes_independently_of_key_order() {
        let ok = blueprint().check(&entity(json!({}))).unwrap();
        assert_eq!(ok.identifier, "svc-a");
        assert_eq!(ok.body()["relations"], json!({"team": "team-a"}));
        assert!(ok.body().get("blueprint").is_none());
        let a = canonical_hash(&json!({"a": 1, "b": {"c": 2, "d": [1, 2]}}));
        let b = canonical_hash(&json!({"b": {"d": [1, 2], "c": 2}, "a": 1}));
        assert_eq!(a, b);
        assert_ne!(
            a,
            canonical_hash(&json!({"a": 1, "b": {"c": 2, "d": [2, 1]}}))
        );
    }

    #[test]
    fn each_kind_of_violation_is_named() {
        let cases = [
            (
                json!({"properties": {"tier": "backend", "url": "not a url"}}),
                "property 'url' is not a valid url",
            ),
            (
                json!({"properties": {"tier": "backend", "owner_email": "bob"}}),
                "property 'owner_email' is not a valid email",
            ),
            (
                json!({"properties": {"tier": "backend", "released": "yesterday"}}),
                "property 'released' is not a valid date-time",
            ),
            (
                json!({"properties": {"tier": "backend", "ip": "300.1.1.1"}}),
                "property 'ip' is not a valid ipv4",
            ),
            (
                json!({"properties": {"tier": "backend", "ip6": "::g"}}),
                "property 'ip6' is not a valid ipv6",
            ),
            (
                json!({"properties": {"tier": "middle"}}),
                "property 'tier' must be one of \"frontend\", \"backend\", got \"middle\"",
            ),
            (
                json!({"properties": {"tier": "backend", "code": "abcd"}}),
                "property 'code' must match /^[A-Z]{3}$/",
            ),
            (
                json!({"properties": {"tier": "backend", "replicas": "3"}}),
                "property 'replicas' must be a number, got \"3\"",
            ),
            (
                json!({"properties": {"tier": "backend", "replicas": 0}}),
                "property 'replicas' must be between 1 and 10, got 0",
            ),
            (
                json!({"properties": {"tier": "backend", "tags": ["a", 2]}}),
                "property 'tags' item 1 must be a string, got 2",
            ),
            (
                json!({"properties": {"tier": "backend", "nope": 1}}),
                "property 'nope' is not defined on blueprint 'microservice'",
            ),
            (
                json!({"properties": {}}),
                "required property 'tier' of blueprint 'microservice' is missing",
            ),
            (
                json!({"relations": {}}),
                "required relation 'team' of blueprint 'microservice' is missing",
            ),
            (
                json!({"relations": {"team": ["a", "b"]}}),
                "relation 'team' expects one entity identifier, got [\"a\",\"b\"]",
            ),
            (
                json!({"relations": {"team": "t", "depends_on": "svc-b"}}),
                "relation 'depends_on' expects a list of entity identifiers",
            ),
            (
                json!({"relations": {"team": "t", "owner": "x"}}),
                "relation 'owner' is not defined on blueprint 'microservice'",
            ),
            (
                json!({"identifier": "bad id"}),
                "identifier: \"bad id\" contains ' '",
            ),
            (
                json!({"identifier": 42}),
                "identifier must be a string, got a number",
            ),
            (
                json!({"title": ["x"]}),
                "title must be a string, got a list",
            ),
            (json!({"propertes": {}}), "unknown field 'propertes'"),
        ];
        for (extra, expected) in cases {
            let problems = blueprint().check(&entity(extra.clone())).unwrap_err();
            assert!(
                problems.iter().any(|p| p.message.starts_with(expected)),
                "{extra}: expected {expected:?} in {problems:?}"
            );
        }
    }

    #[test]
    fn all_problems_of_an_entity_are_reported_together() {
        let problems = blueprint()
            .check(&entity(
                json!({"title": 1, "properties": {"tier": "x", "replicas": 99}}),
            ))
            .unwrap_err();
        assert_eq!(problems.len(), 3, "{problems:?}");
    }

    #[test]
    fn a_look_around_pattern_port_accepts_is_checked() {
        let bp = Blueprint::from_port(&json!({
            "identifier": "x",
            "schema": {"properties": {"p": {"type": "string", "pattern": "^(?=a)a$"}}}
        }))
        .unwrap();
        let with = |p: &str| {
            let mut e = entity(json!({"properties": {"p": p}, "relations": {}}));
            e.insert("blueprint".into(), json!("x"));
            e
        };
        assert!(bp.check(&with("a")).is_ok());
        let problems = bp.check(&with("zzz")).unwrap_err();
        assert_eq!(
            problems,
            vec![FieldProblem::at(
                &["properties", "p"],
                "property 'p' must match /^(?=a)a$/, got \"zzz\"".into()
            )]
        );
    }
}
