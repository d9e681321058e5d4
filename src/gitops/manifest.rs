//! `port.yaml`: one entity (a mapping) or a list of them.

use serde_json::Value;

/// One entity as written in the file, before validation.
#[derive(Debug, Clone)]
pub struct ManifestEntity {
    /// Position in the list; `None` for a single-entity file.
    pub index: Option<usize>,
    pub value: Value,
}

impl ManifestEntity {
    /// How a report names it: `'svc-a'`, or `#2` when it has no usable identifier.
    pub fn label(&self) -> String {
        match self.value.get("identifier").and_then(Value::as_str) {
            Some(id) => match self.index {
                Some(i) => format!("entity '{id}' (item {i})"),
                None => format!("entity '{id}'"),
            },
            None => match self.index {
                Some(i) => format!("item {i}"),
                None => "the entity".to_owned(),
            },
        }
    }
}

/// Why a file could not be read as entities at all.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ManifestError {
    #[error("YAML syntax error at line {line}, column {column}: {message}")]
    Syntax {
        line: usize,
        column: usize,
        message: String,
    },
    /// A key twice in one mapping, at the second one's line.
    #[error("YAML syntax error at line {line}, column 1: the key {key:?} appears twice in one mapping: keep one")]
    Duplicate { line: usize, key: String },
    #[error("{0}")]
    Shape(String),
}

/// Parses a whole file. An empty file declares no entities.
pub fn parse(text: &str) -> Result<Vec<ManifestEntity>, ManifestError> {
    // Through YAML's own value first: it refuses duplicate keys, where going straight to
    // JSON would silently keep the last one.
    let yaml: serde_yaml_ng::Value = serde_yaml_ng::from_str(text).map_err(|e| {
        let message = strip_position(&e.to_string());
        // A duplicate is reported where its mapping starts: point at the key itself.
        if let Some(key) = duplicated(&message) {
            if let Some(line) = super::positions::duplicate_key(text, &key) {
                return ManifestError::Duplicate { line, key };
            }
        }
        match e.location() {
            Some(at) => ManifestError::Syntax {
                line: at.line(),
                column: at.column(),
                message,
            },
            None => ManifestError::Shape(e.to_string()),
        }
    })?;
    let value: Value = serde_json::to_value(&yaml)
        .map_err(|e| ManifestError::Shape(format!("not representable as JSON: {e}")))?;
    match value {
        Value::Null => Ok(Vec::new()),
        Value::Object(_) => Ok(vec![ManifestEntity { index: None, value }]),
        Value::Array(items) => Ok(items
            .into_iter()
            .enumerate()
            .map(|(i, value)| ManifestEntity {
                index: Some(i),
                value,
            })
            .collect()),
        other => Err(ManifestError::Shape(format!(
            "expected an entity (a mapping) or a list of entities, got {}",
            kind(&other)
        ))),
    }
}

/// For a report of every problem (`validate`): the file's entities with each duplicated
/// key's later entry left out, and the duplicates as problems. A sync never uses this: a file
/// with a duplicate is not applied (see [`parse`]).
pub fn parse_reporting_duplicates(
    text: &str,
) -> (
    Vec<ManifestError>,
    Result<Vec<ManifestEntity>, ManifestError>,
) {
    let mut duplicates = Vec::new();
    let mut text = text.to_owned();
    for _ in 0..50 {
        match parse(&text) {
            Err(ManifestError::Duplicate { line, key }) => {
                text = without_entry(&text, line);
                duplicates.push(ManifestError::Duplicate { line, key });
            }
            other => return (duplicates, other),
        }
    }
    (duplicates, Ok(Vec::new()))
}

/// `text` with the mapping entry at `line` blanked (its key line and the more indented
/// lines of its value), so that every other line keeps its number.
fn without_entry(text: &str, line: usize) -> String {
    let indent = |l: &str| l.len() - l.trim_start_matches([' ', '-']).len();
    let lines: Vec<&str> = text.lines().collect();
    let Some(first) = lines.get(line - 1) else {
        return text.to_owned();
    };
    let depth = indent(first);
    let mut out: Vec<&str> = lines.clone();
    out[line - 1] = "";
    for (i, l) in lines.iter().enumerate().skip(line) {
        if l.trim().is_empty() || indent(l) > depth {
            out[i] = "";
        } else {
            break;
        }
    }
    out.join("\n") + "\n"
}

/// The key of serde_yaml's `duplicate entry with key "…"`.
fn duplicated(message: &str) -> Option<String> {
    let (_, quoted) = message.split_once("duplicate entry with key ")?;
    serde_json::from_str(quoted).ok()
}

fn strip_position(message: &str) -> String {
    match message.find(" at line ") {
        Some(i) => message[..i].to_owned(),
        None => message.to_owned(),
    }
}

pub(crate) fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_single_entity_and_a_list_both_parse() {
        let one = parse("identifier: a\ntitle: A\nblueprint: service\n").unwrap();
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].index, None);
        let many = parse("- identifier: a\n- identifier: b\n").unwrap();
        assert_eq!(many.len(), 2);
        assert_eq!(many[1].index, Some(1));
        assert_eq!(many[1].label(), "entity 'b' (item 1)");
        assert!(parse("").unwrap().is_empty());
        assert!(parse("# only a comment\n").unwrap().is_empty());
    }

    #[test]
    fn syntax_errors_carry_line_and_column() {
        let err = parse("identifier: a\ntitle: [unclosed\nblueprint: x\n").unwrap_err();
        let ManifestError::Syntax { line, column, .. } = err else {
            panic!("{err:?}")
        };
        assert_eq!(line, 3);
        assert!(column >= 1);
    }

    #[test]
    fn duplicate_keys_and_scalars_are_refused() {
        assert!(parse("identifier: a\nidentifier: b\n").is_err());
        // The duplicate's own line, not its item's.
        let text = "- identifier: a\n  title: A\n  blueprint: service\n  title: B\n";
        let err = parse(text).unwrap_err();
        assert_eq!(
            err,
            ManifestError::Duplicate {
                line: 4,
                key: "title".into()
            }
        );
        assert_eq!(
            err.to_string(),
            "YAML syntax error at line 4, column 1: the key \"title\" appears twice in one mapping: keep one"
        );
        // For a report, the rest of the file is still read, each line where it was.
        let text = "- identifier: a\n  title: A\n  title:\n    nested: x\n- identifier: b\n  title: A\n  title: C\n- 42\n";
        let (duplicates, rest) = parse_reporting_duplicates(text);
        let lines: Vec<String> = duplicates.iter().map(|d| d.to_string()).collect();
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(
            lines[0].starts_with("YAML syntax error at line 3"),
            "{lines:?}"
        );
        assert!(
            lines[1].starts_with("YAML syntax error at line 7"),
            "{lines:?}"
        );
        let rest = rest.unwrap();
        assert_eq!(rest.len(), 3);
        assert_eq!(rest[2].value, serde_json::json!(42));
        let err = parse("just a string").unwrap_err();
        assert_eq!(
            err.to_string(),
            "expected an entity (a mapping) or a list of entities, got a string"
        );
    }
}
