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
    #[error("{0}")]
    Shape(String),
}

/// Parses a whole file. An empty file declares no entities.
pub fn parse(text: &str) -> Result<Vec<ManifestEntity>, ManifestError> {
    // Through YAML's own value first: it refuses duplicate keys, where going straight to
    // JSON would silently keep the last one.
    let yaml: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(text).map_err(|e| match e.location() {
            Some(at) => ManifestError::Syntax {
                line: at.line(),
                column: at.column(),
                message: strip_position(&e.to_string()),
            },
            None => ManifestError::Shape(e.to_string()),
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
        let err = parse("just a string").unwrap_err();
        assert_eq!(
            err.to_string(),
            "expected an entity (a mapping) or a list of entities, got a string"
        );
    }
}
