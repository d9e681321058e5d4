//! Stack configuration values as `pulumi config set --path` takes them.

use serde_json::Value;

/// A value as `(path, text)` leaves for `config set --path`: objects and arrays are set key by
/// key (`tags["team"]`, `names[0]`), scalars as they are; null leaves are skipped.
pub(super) fn leaves(path: String, value: &Value, out: &mut Vec<(String, String, bool)>) {
    match value {
        Value::Null => {}
        Value::Object(map) => {
            for (key, value) in map {
                let quoted = serde_json::to_string(key).unwrap_or_default();
                leaves(format!("{path}[{quoted}]"), value, out);
            }
        }
        Value::Array(items) => {
            for (i, value) in items.iter().enumerate() {
                leaves(format!("{path}[{i}]"), value, out);
            }
        }
        Value::String(s) => out.push((path, s.clone(), false)),
        other => out.push((path, other.to_string(), false)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_become_path_leaves() {
        let mut out = Vec::new();
        leaves(
            "tags".into(),
            &serde_json::json!({"team": "pay", "a.b": 1, "skip": null}),
            &mut out,
        );
        let names: Vec<_> = out.iter().map(|(p, v, _)| format!("{p}={v}")).collect();
        assert_eq!(names, [r#"tags["team"]=pay"#, r#"tags["a.b"]=1"#]);
    }
}
