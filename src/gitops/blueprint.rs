//! Checks an entity against its blueprint as Port defines it, before anything is sent.
//!
//! Port's blueprint schema is JSON-Schema-like but its own (formats such as `user` or
//! `markdown`, relations beside properties), so the checks are written for it: types, enums,
//! formats, patterns, lengths and bounds, required properties, and relations (single vs many,
//! required). Every problem of an entity is reported, not just the first.

use std::collections::BTreeMap;

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::manifest::kind;
use crate::domain::Identifier;

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

/// The schema of one property (or action input), compiled for checking values.
#[derive(Debug, Clone)]
pub struct PropSchema {
    kind: Option<String>,
    format: Option<String>,
    enum_values: Option<Vec<Value>>,
    /// `None` when the blueprint has no pattern; `Some(None)` when Rust's regex cannot
    /// express it (lookarounds): then the pattern is not checked rather than misjudged.
    pattern: Option<Option<regex::Regex>>,
    pattern_text: Option<String>,
    min_length: Option<u64>,
    max_length: Option<u64>,
    minimum: Option<f64>,
    maximum: Option<f64>,
    items: Option<Box<PropSchema>>,
}

#[derive(Debug, Clone)]
struct RelationSchema {
    many: bool,
    required: bool,
}

/// A blueprint's schema, compiled for checking entities.
#[derive(Debug, Clone)]
pub struct Blueprint {
    pub identifier: String,
    properties: BTreeMap<String, PropSchema>,
    required: Vec<String>,
    relations: BTreeMap<String, RelationSchema>,
}

/// An entity that passed every check, ready to send.
#[derive(Debug, Clone)]
pub struct ValidEntity {
    pub blueprint: String,
    pub identifier: String,
    /// The body for Port's upsert: identifier, title, properties, relations (+ icon, team).
    pub body: Value,
    /// SHA-256 of the canonical body: equal hashes mean nothing to write.
    pub hash: String,
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
        let properties = schema
            .get("properties")
            .and_then(Value::as_object)
            .map(|props| {
                props
                    .iter()
                    .map(|(k, v)| (k.clone(), PropSchema::from_json(v)))
                    .collect()
            })
            .unwrap_or_default();
        let required = string_list(schema.get("required"));
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
            required,
            relations,
        })
    }

    /// Checks `entity` (already known to name this blueprint); every problem is returned.
    pub fn check(&self, entity: &Map<String, Value>) -> Result<ValidEntity, Vec<String>> {
        let mut problems = Vec::new();
        for key in entity.keys() {
            if !ENTITY_KEYS.contains(&key.as_str()) {
                problems.push(format!(
                    "unknown field '{key}' (an entity has {})",
                    ENTITY_KEYS.join(", ")
                ));
            }
        }
        let identifier = match entity.get("identifier") {
            Some(Value::String(id)) => match Identifier::entity("identifier", id) {
                Ok(_) => Some(id.clone()),
                Err(e) => {
                    problems.push(e.to_string());
                    None
                }
            },
            Some(other) => {
                problems.push(format!("identifier must be a string, got {}", kind(other)));
                None
            }
            None => {
                problems.push("identifier is missing".into());
                None
            }
        };
        match entity.get("title") {
            Some(Value::String(_)) => {}
            Some(other) => problems.push(format!("title must be a string, got {}", kind(other))),
            None => problems.push("title is missing".into()),
        }
        let properties = self.check_properties(entity.get("properties"), &mut problems);
        let relations = self.check_relations(entity.get("relations"), &mut problems);
        if let Some(icon) = entity.get("icon") {
            if !icon.is_string() {
                problems.push(format!("icon must be a string, got {}", kind(icon)));
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
            body,
            hash,
        })
    }

    fn check_properties(
        &self,
        value: Option<&Value>,
        problems: &mut Vec<String>,
    ) -> Map<String, Value> {
        let props = match value {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(map)) => map.clone(),
            Some(other) => {
                problems.push(format!("properties must be a mapping, got {}", kind(other)));
                return Map::new();
            }
        };
        for (name, value) in &props {
            match self.properties.get(name) {
                None => problems.push(format!(
                    "property '{name}' is not defined on blueprint '{}'",
                    self.identifier
                )),
                Some(_) if value.is_null() => {}
                Some(schema) => schema.check(&format!("property '{name}'"), value, problems),
            }
        }
        for name in &self.required {
            if props.get(name).is_none_or(Value::is_null) {
                problems.push(format!(
                    "required property '{name}' of blueprint '{}' is missing",
                    self.identifier
                ));
            }
        }
        props
    }

    fn check_relations(
        &self,
        value: Option<&Value>,
        problems: &mut Vec<String>,
    ) -> Map<String, Value> {
        let rels = match value {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(map)) => map.clone(),
            Some(other) => {
                problems.push(format!("relations must be a mapping, got {}", kind(other)));
                return Map::new();
            }
        };
        for (name, value) in &rels {
            let Some(schema) = self.relations.get(name) else {
                problems.push(format!(
                    "relation '{name}' is not defined on blueprint '{}'",
                    self.identifier
                ));
                continue;
            };
            let ok = match (schema.many, value) {
                (_, Value::Null) => true,
                (false, Value::String(id)) => check_target(name, id, problems),
                (true, Value::Array(ids)) => ids.iter().all(|id| match id {
                    Value::String(id) => check_target(name, id, problems),
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
                problems.push(format!(
                    "relation '{name}' expects {expected}, got {}",
                    short(value)
                ));
            }
        }
        for (name, schema) in &self.relations {
            if schema.required && rels.get(name).is_none_or(Value::is_null) {
                problems.push(format!(
                    "required relation '{name}' of blueprint '{}' is missing",
                    self.identifier
                ));
            }
        }
        rels
    }
}

fn check_target(relation: &str, id: &str, problems: &mut Vec<String>) -> bool {
    match Identifier::entity(&format!("relation '{relation}'"), id) {
        Ok(_) => true,
        Err(e) => {
            problems.push(e.to_string());
            true // reported precisely above; do not report the shape again
        }
    }
}

impl PropSchema {
    pub fn from_json(v: &Value) -> Self {
        let text = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
        let pattern_text = text("pattern");
        Self {
            kind: text("type"),
            format: text("format"),
            enum_values: v.get("enum").and_then(Value::as_array).cloned(),
            pattern: pattern_text.as_deref().map(|p| regex::Regex::new(p).ok()),
            pattern_text,
            min_length: v.get("minLength").and_then(Value::as_u64),
            max_length: v.get("maxLength").and_then(Value::as_u64),
            minimum: v.get("minimum").and_then(Value::as_f64),
            maximum: v.get("maximum").and_then(Value::as_f64),
            items: v.get("items").map(|i| Box::new(Self::from_json(i))),
        }
    }

    /// Checks `value`; problems are worded with `what` (e.g. `input 'size'`).
    pub fn check(&self, what: &str, value: &Value, problems: &mut Vec<String>) {
        let type_ok = match (self.kind.as_deref(), value) {
            (Some("string"), Value::String(_))
            | (Some("number"), Value::Number(_))
            | (Some("boolean"), Value::Bool(_))
            | (Some("object"), Value::Object(_))
            | (Some("array"), Value::Array(_)) => true,
            (Some("string" | "number" | "boolean" | "object" | "array"), _) => false,
            // Types this runner does not know are left to Port.
            _ => true,
        };
        if !type_ok {
            problems.push(format!(
                "{what} must be {}, got {}",
                article(self.kind.as_deref().unwrap_or("?")),
                short(value)
            ));
            return;
        }
        if let Some(allowed) = &self.enum_values {
            if !allowed.contains(value) {
                let list: Vec<String> = allowed.iter().map(|v| v.to_string()).collect();
                problems.push(format!(
                    "{what} must be one of {}, got {}",
                    list.join(", "),
                    short(value)
                ));
            }
        }
        match value {
            Value::String(s) => self.check_string(what, s, problems),
            Value::Number(n) => {
                let x = n.as_f64().unwrap_or(f64::NAN);
                if self.minimum.is_some_and(|min| x < min)
                    || self.maximum.is_some_and(|max| x > max)
                {
                    problems.push(format!(
                        "{what} must be between {} and {}, got {n}",
                        self.minimum.map_or("-∞".into(), |m| m.to_string()),
                        self.maximum.map_or("∞".into(), |m| m.to_string())
                    ));
                }
            }
            Value::Array(items) => {
                if let Some(item_schema) = &self.items {
                    for (i, item) in items.iter().enumerate() {
                        item_schema.check(&format!("{what} item {i}"), item, problems);
                    }
                }
            }
            _ => {}
        }
    }

    fn check_string(&self, what: &str, s: &str, problems: &mut Vec<String>) {
        let len = s.chars().count() as u64;
        if self.min_length.is_some_and(|m| len < m) || self.max_length.is_some_and(|m| len > m) {
            problems.push(format!(
                "{what} must be {}–{} characters long, got {len}",
                self.min_length.unwrap_or(0),
                self.max_length.map_or("∞".into(), |m| m.to_string())
            ));
        }
        if let (Some(Some(re)), Some(text)) = (&self.pattern, &self.pattern_text) {
            if !re.is_match(s) {
                problems.push(format!("{what} must match /{text}/, got {s:?}"));
            }
        }
        if let Some(format) = self.format.as_deref() {
            if let Err(why) = check_format(format, s) {
                problems.push(format!("{what} is not a valid {format}: {why}"));
            }
        }
    }
}

fn check_format(format: &str, s: &str) -> Result<(), String> {
    match format {
        "url" => match reqwest::Url::parse(s) {
            Ok(url) if url.has_host() => Ok(()),
            Ok(_) => Err(format!("{s:?} has no host")),
            Err(e) => Err(format!("{s:?}: {e}")),
        },
        "email" => {
            let ok = match s.split_once('@') {
                Some((local, domain)) => {
                    !local.is_empty()
                        && domain.contains('.')
                        && !domain.starts_with('.')
                        && !domain.ends_with('.')
                        && !s.chars().any(char::is_whitespace)
                        && !domain.contains('@')
                }
                None => false,
            };
            if ok {
                Ok(())
            } else {
                Err(format!("{s:?}"))
            }
        }
        "date-time" => {
            time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
                .map(|_| ())
                .map_err(|_| format!("{s:?} (expected RFC 3339, e.g. 2026-11-22T10:00:00Z)"))
        }
        "ipv4" => s
            .parse::<std::net::Ipv4Addr>()
            .map(|_| ())
            .map_err(|_| format!("{s:?}")),
        "ipv6" => s
            .parse::<std::net::Ipv6Addr>()
            .map(|_| ())
            .map_err(|_| format!("{s:?}")),
        // user, team, markdown, yaml, timer, …: checked by Port.
        _ => Ok(()),
    }
}

fn article(kind: &str) -> String {
    match kind {
        "array" | "object" => format!("an {kind}"),
        other => format!("a {other}"),
    }
}

fn short(value: &Value) -> String {
    let text = value.to_string();
    if text.chars().count() > 60 {
        format!("{}…", text.chars().take(60).collect::<String>())
    } else {
        text
    }
}

/// The strings of a JSON list (`schema.required`, `userInputs.required`); anything else is empty.
pub fn string_list(value: Option<&Value>) -> Vec<String> {
    value
        .and_then(Value::as_array)
        .map(|items| {
            items
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
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
        assert_eq!(ok.body["relations"], json!({"team": "team-a"}));
        assert!(ok.body.get("blueprint").is_none());
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
                problems.iter().any(|p| p.starts_with(expected)),
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
    fn a_pattern_rust_cannot_compile_is_not_held_against_the_entity() {
        let bp = Blueprint::from_port(&json!({
            "identifier": "x",
            "schema": {"properties": {"p": {"type": "string", "pattern": "^(?=a)a$"}}}
        }))
        .unwrap();
        let mut e = entity(json!({"properties": {"p": "zzz"}, "relations": {}}));
        e.insert("blueprint".into(), json!("x"));
        assert!(bp.check(&e).is_ok());
    }
}
