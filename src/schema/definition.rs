//! What a property definition in a blueprint or an action's `userInputs` may say, as a JSON
//! Schema of its own (the meta-schema below), checked by the same validator; the rules that
//! tie keywords to each other (enum values of the property's type, `enumColors` naming enum
//! values, formats only on strings) are Port's and written by hand.

use std::sync::LazyLock;

use serde_json::{json, Value};

use super::formats::PORT_FORMATS;
use super::TYPES;

/// A property definition: a `type` Port has, a `format` Port knows, an `enum` list, and
/// `enumColors` naming colours. Other keywords are Port's business.
static META: LazyLock<jsonschema::Validator> = LazyLock::new(|| {
    jsonschema::options()
        .with_draft(jsonschema::Draft::Draft202012)
        .build(&json!({
            "type": "object",
            "required": ["type"],
            "properties": {
                "type": {"enum": TYPES},
                "format": {"type": "string", "enum": PORT_FORMATS},
                "enum": {"type": "array"},
                "enumColors": {"type": "object", "additionalProperties": {"type": "string"}},
            },
        }))
        .expect("the property meta-schema compiles")
});

/// Every problem of the property definition `prop`, each prefixed with its path `at`
/// (`schema.properties.tier`).
pub fn check_property(at: &str, prop: &Value, out: &mut Vec<String>) {
    let mut bad_enum = false;
    for error in META.iter_errors(prop) {
        let path: Vec<String> = error
            .instance_path()
            .segments()
            .map(|s| s.to_string())
            .collect();
        let text = |v: &Value| v.as_str().map_or_else(|| v.to_string(), str::to_owned);
        let message = match path.iter().map(String::as_str).collect::<Vec<_>>()[..] {
            [] if !prop.is_object() => format!("{at} must be an object"),
            [] => format!("{at}.type is missing"),
            ["type"] => format!(
                "{at}.type '{}' is not one of {}",
                text(error.instance()),
                TYPES.join(", ")
            ),
            ["format"] if !error.instance().is_string() => format!("{at}.format must be a string"),
            ["format"] => format!(
                "{at}.format '{}' is not one of {}",
                text(error.instance()),
                PORT_FORMATS.join(", ")
            ),
            ["enum"] => {
                bad_enum = true;
                format!("{at}.enum must be an array")
            }
            ["enumColors"] => format!("{at}.enumColors must be an object"),
            ["enumColors", key] => format!("{at}.enumColors.{key} must be a color name"),
            _ => format!("{at}: {error}"),
        };
        out.push(message);
    }
    let Some(prop) = prop.as_object() else {
        return;
    };
    let kind = prop.get("type").and_then(Value::as_str);
    if let Some(f) = prop.get("format").and_then(Value::as_str) {
        if PORT_FORMATS.contains(&f) && kind.is_some_and(|k| k != "string" && k != "array") {
            out.push(format!("{at}.format '{f}' only applies to strings"));
        }
    }
    match prop.get("enum").and_then(Value::as_array) {
        Some(values) => {
            for v in values {
                let fits = match (kind, v) {
                    (Some("string"), Value::String(_)) | (Some("number"), Value::Number(_)) => true,
                    (Some("string" | "number"), _) => false,
                    _ => true,
                };
                if !fits {
                    out.push(format!(
                        "{at}.enum value {v} is not a {}",
                        kind.unwrap_or("?")
                    ));
                }
            }
            if let Some(colors) = prop.get("enumColors").and_then(Value::as_object) {
                for key in colors.keys() {
                    if !values.iter().any(|v| v.as_str() == Some(key)) {
                        out.push(format!(
                            "{at}.enumColors names '{key}', which is not in enum"
                        ));
                    }
                }
            }
        }
        None if !bad_enum && prop.contains_key("enumColors") => {
            out.push(format!("{at}.enumColors needs an enum"));
        }
        None => {}
    }
    if kind == Some("array") {
        if let Some(items) = prop.get("items") {
            check_property(&format!("{at}.items"), items, out);
        }
    }
}
