//! Port's JSON Schema, checked by one validator: the `jsonschema` crate, with Port's string
//! formats registered ([`formats`]) and its regular expressions run by fancy-regex (so the
//! look-arounds Port accepts are checked too).
//!
//! Three callers share it: entities of `port.yaml` against their blueprint's properties,
//! run inputs against their action's `userInputs`, and blueprint/action files against what a
//! property definition may say ([`definition`]). What is Port's own and not JSON Schema
//! (relations, identifier rules, `spec`, the null-means-unset convention) stays with the
//! callers. A property schema is copied keyword by keyword before it is compiled, so a
//! keyword Port allows but JSON Schema reads differently (a jq `required`, a type this
//! runner does not know) is left to Port rather than misjudged.

pub mod definition;
pub mod formats;

use std::collections::HashSet;

use serde_json::{Map, Value};

/// The property types Port has.
pub const TYPES: [&str; 5] = ["string", "number", "boolean", "object", "array"];

/// What is wrong with one value of an object checked against an [`ObjectSchema`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Violation {
    /// A required property is missing (or null).
    Missing(String),
    /// A property the schema does not define (only when unknown ones are refused).
    Unknown(String),
    /// A value that does not fit: where (`["tags", "1"]`, empty for the object itself) and
    /// a text that names it (`property 'tags' item 1 must be …`).
    Invalid { path: Vec<String>, message: String },
}

/// The schema of an object whose properties Port defines (an entity's `properties`, a run's
/// inputs), compiled once, when it is first used: a compiled validator holds megabytes, and
/// a runner with many actions need not hold them for actions nobody runs.
pub struct ObjectSchema {
    /// The copied schema the validator was built from (for bounds and types in messages).
    schema: Value,
    validator: std::sync::OnceLock<jsonschema::Validator>,
    /// The properties it defines: null values of these mean "unset" and are not checked.
    defined: HashSet<String>,
}

impl std::fmt::Debug for ObjectSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectSchema")
            .field("schema", &self.schema)
            .finish()
    }
}

impl ObjectSchema {
    /// From Port's `properties` and `required`; `allow_unknown` lets properties the schema
    /// does not define through (run inputs) instead of reporting them (entities).
    pub fn compile(properties: Option<&Value>, required: &[String], allow_unknown: bool) -> Self {
        let props: Map<String, Value> = properties
            .and_then(Value::as_object)
            .map(|p| {
                p.iter()
                    .map(|(k, v)| (k.clone(), copy_property(v)))
                    .collect()
            })
            .unwrap_or_default();
        let defined = props.keys().cloned().collect();
        let schema = serde_json::json!({
            "type": "object",
            "properties": props,
            "required": required,
            "additionalProperties": allow_unknown,
        });
        Self {
            schema,
            validator: std::sync::OnceLock::new(),
            defined,
        }
    }

    fn validator(&self) -> &jsonschema::Validator {
        self.validator.get_or_init(|| {
            build(&self.schema).unwrap_or_else(|e| {
                // Every keyword was copied checked, so this is a bug, not bad input: check
                // nothing rather than refuse everything, and say so.
                tracing::error!(error = %e, "a copied property schema did not compile; its values are left to Port");
                build(&serde_json::json!({})).expect("the empty schema compiles")
            })
        })
    }

    /// Every problem with `values`, properties named as `{noun} '{name}'`.
    pub fn check(&self, values: &Map<String, Value>, noun: &str) -> Vec<Violation> {
        // Null means unset for a property the schema defines (Port's convention).
        let instance = Value::Object(
            values
                .iter()
                .filter(|(k, v)| !(v.is_null() && self.defined.contains(*k)))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        );
        let errors: Vec<_> = self.validator().iter_errors(&instance).collect();
        let mistyped: HashSet<String> = errors
            .iter()
            .filter(|e| {
                matches!(
                    e.kind(),
                    jsonschema::error::ValidationErrorKind::Type { .. }
                )
            })
            .map(|e| e.instance_path().as_str().to_owned())
            .collect();
        let mut out: Vec<Violation> = Vec::new();
        for error in &errors {
            let path = error.instance_path();
            let segments: Vec<String> = path.segments().map(|s| s.to_string()).collect();
            let violation = match segments.split_first() {
                None => match error.kind() {
                    jsonschema::error::ValidationErrorKind::Required { property } => {
                        Violation::Missing(property.as_str().unwrap_or_default().to_owned())
                    }
                    jsonschema::error::ValidationErrorKind::AdditionalProperties { unexpected } => {
                        out.extend(unexpected.iter().cloned().map(Violation::Unknown));
                        continue;
                    }
                    _ => Violation::Invalid {
                        path: Vec::new(),
                        message: error.to_string(),
                    },
                },
                Some((name, rest)) => {
                    let is_type = matches!(
                        error.kind(),
                        jsonschema::error::ValidationErrorKind::Type { .. }
                    );
                    // A value of the wrong type gets one message, not one per keyword.
                    if !is_type && mistyped.contains(path.as_str()) {
                        continue;
                    }
                    let mut what = format!("{noun} '{name}'");
                    for index in rest {
                        what.push_str(&format!(" item {index}"));
                    }
                    let sub = self.schema_at(name, rest);
                    Violation::Invalid {
                        path: segments.clone(),
                        message: describe(&what, sub, error),
                    }
                }
            };
            if !out.contains(&violation) {
                out.push(violation);
            }
        }
        out
    }

    /// The copied schema of `name` and, below it, of the array items at `rest`.
    fn schema_at(&self, name: &str, rest: &[String]) -> &Value {
        let mut at = &self.schema["properties"][name];
        for _ in rest {
            at = &at["items"];
        }
        at
    }
}

/// Compiles a schema with Port's formats.
fn build(schema: &Value) -> Result<jsonschema::Validator, jsonschema::ValidationError<'static>> {
    let mut options = jsonschema::options()
        .with_draft(jsonschema::Draft::Draft202012)
        .should_validate_formats(true);
    for format in formats::PORT_FORMATS {
        options = options.with_format(format, move |s: &str| formats::check(format, s).is_ok());
    }
    options.build(schema)
}

/// A Port property schema reduced to the keywords this runner checks, each only when it has
/// the shape JSON Schema gives it. A pattern that does not compile is left to Port.
fn copy_property(prop: &Value) -> Value {
    let mut out = Map::new();
    if let Some(t) = prop.get("type").and_then(Value::as_str) {
        if TYPES.contains(&t) {
            out.insert("type".into(), t.into());
        }
    }
    if let Some(f) = prop.get("format").filter(|f| f.is_string()) {
        out.insert("format".into(), f.clone());
    }
    if let Some(e) = prop.get("enum").filter(|e| e.is_array()) {
        out.insert("enum".into(), e.clone());
    }
    if let Some(p) = prop.get("pattern").and_then(Value::as_str) {
        if build(&serde_json::json!({ "pattern": p })).is_ok() {
            out.insert("pattern".into(), p.into());
            // What the pattern means, in the action author's words: said instead of the regex.
            if let Some(d) = prop.get("description").filter(|d| d.is_string()) {
                out.insert("description".into(), d.clone());
            }
        } else {
            tracing::warn!(
                pattern = p,
                "a pattern no regular-expression engine here compiles is left to Port"
            );
        }
    }
    for key in ["minLength", "maxLength"] {
        if let Some(n) = prop.get(key).filter(|n| n.is_u64()) {
            out.insert(key.into(), n.clone());
        }
    }
    for key in ["minimum", "maximum"] {
        if let Some(n) = prop.get(key).filter(|n| n.is_number()) {
            out.insert(key.into(), n.clone());
        }
    }
    if let Some(items) = prop.get("items").filter(|i| i.is_object()) {
        out.insert("items".into(), copy_property(items));
    }
    Value::Object(out)
}

/// One validation error in the words the hub user and the `port.yaml` author read.
fn describe(what: &str, schema: &Value, error: &jsonschema::ValidationError<'_>) -> String {
    use jsonschema::error::ValidationErrorKind as K;
    let instance: &Value = error.instance();
    let bound = |key: &str, none: &str| {
        schema
            .get(key)
            .map_or_else(|| none.to_owned(), Value::to_string)
    };
    match error.kind() {
        K::Type { .. } => format!(
            "{what} must be {}, got {}",
            article(schema["type"].as_str().unwrap_or("?")),
            short(instance)
        ),
        K::Enum { options } => {
            let list: Vec<String> = options
                .as_array()
                .map(|o| o.iter().map(Value::to_string).collect())
                .unwrap_or_default();
            format!(
                "{what} must be one of {}, got {}",
                list.join(", "),
                short(instance)
            )
        }
        K::Minimum { .. } | K::Maximum { .. } => format!(
            "{what} must be between {} and {}, got {instance}",
            bound("minimum", "-∞"),
            bound("maximum", "∞")
        ),
        K::MinLength { .. } | K::MaxLength { .. } => format!(
            "{what} must be {}–{} characters long, got {}",
            bound("minLength", "0"),
            bound("maxLength", "∞"),
            instance.as_str().map_or(0, |s| s.chars().count())
        ),
        K::Pattern { pattern } => match schema.get("description").and_then(Value::as_str) {
            Some(meant) => format!(
                "{what} is not in the expected form ({meant}), got {:?}",
                instance.as_str().unwrap_or_default()
            ),
            None => format!(
                "{what} must match /{pattern}/, got {:?}",
                instance.as_str().unwrap_or_default()
            ),
        },
        K::Format { format } => {
            let why = formats::check(format, instance.as_str().unwrap_or_default())
                .err()
                .unwrap_or_default();
            format!("{what} is not a valid {format}: {why}")
        }
        _ => format!("{what}: {error}"),
    }
}

/// "a string", "an object".
pub fn article(kind: &str) -> String {
    match kind {
        "array" | "object" => format!("an {kind}"),
        other => format!("a {other}"),
    }
}

/// A value as JSON, cut to 60 characters.
pub fn short(value: &Value) -> String {
    let text = value.to_string();
    if text.chars().count() > 60 {
        format!("{}…", text.chars().take(60).collect::<String>())
    } else {
        text
    }
}

/// The strings of a JSON list (`schema.required`, `userInputs.required`); anything else
/// (a jq `required`, which Port evaluates itself) is empty.
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> ObjectSchema {
        ObjectSchema::compile(
            Some(&json!({
                "code": {"type": "string", "pattern": "^(?!tmp-)[a-z-]+$"},
                "tags": {"type": "array", "items": {"type": "string", "maxLength": 3}},
                "n": {"type": "number", "minimum": 1},
                "odd": {"type": "integer-ish", "enum": {"jqQuery": ".x"}}
            })),
            &["code".to_owned()],
            false,
        )
    }

    fn invalid(path: &[&str], message: &str) -> Violation {
        Violation::Invalid {
            path: path.iter().map(|s| s.to_string()).collect(),
            message: message.into(),
        }
    }

    fn check(v: Value) -> Vec<Violation> {
        schema().check(v.as_object().unwrap(), "property")
    }

    #[test]
    fn a_look_around_pattern_is_checked() {
        assert!(check(json!({"code": "svc-a"})).is_empty());
        assert_eq!(
            check(json!({"code": "tmp-a"})),
            vec![invalid(
                &["code"],
                "property 'code' must match /^(?!tmp-)[a-z-]+$/, got \"tmp-a\""
            )]
        );
    }

    #[test]
    fn every_problem_is_named_with_its_path_once() {
        let problems = check(json!({"tags": ["abcd", 7], "n": "x", "extra": null}));
        assert_eq!(
            problems,
            vec![
                invalid(
                    &["tags", "0"],
                    "property 'tags' item 0 must be 0–3 characters long, got 4"
                ),
                invalid(
                    &["tags", "1"],
                    "property 'tags' item 1 must be a string, got 7"
                ),
                invalid(&["n"], "property 'n' must be a number, got \"x\""),
                Violation::Unknown("extra".into()),
                Violation::Missing("code".into()),
            ]
        );
    }

    #[test]
    fn keywords_in_a_shape_json_schema_reads_otherwise_are_left_to_port() {
        assert!(check(json!({"code": "a", "odd": 42, "n": null})).is_empty());
    }
}
