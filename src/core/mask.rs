//! Masks secret values in every line that leaves a run (Port logs, local view, server log).

use std::borrow::Cow;
use std::sync::{Arc, RwLock};

/// What a masked secret is replaced with.
pub const MASK: &str = "****";
/// Shorter values would mask ordinary words; such secrets are not worth the false hits.
const MIN_SECRET_LEN: usize = 3;

/// A growing set of secret strings; clones share the set.
#[derive(Clone, Default)]
pub struct Masker {
    secrets: Arc<RwLock<Vec<String>>>,
}

impl Masker {
    pub fn new<I, S>(secrets: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let masker = Self::default();
        masker.add_all(secrets);
        masker
    }

    /// A masker that starts with this one's secrets but grows on its own.
    pub fn fork(&self) -> Self {
        Self::new(self.secrets.read().expect("masker lock").iter().cloned())
    }

    pub fn add_all<I, S>(&self, secrets: I)
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut list = self.secrets.write().expect("masker lock");
        for secret in secrets {
            let secret = secret.into();
            // Logs are masked line by line: a multi-line secret (a kubeconfig, a key) is
            // also masked as each of its lines.
            let lines: Vec<String> = if secret.contains('\n') {
                secret
                    .lines()
                    .map(|l| l.trim_end_matches('\r').to_owned())
                    .collect()
            } else {
                Vec::new()
            };
            for value in std::iter::once(secret).chain(lines) {
                if value.chars().count() >= MIN_SECRET_LEN && !list.contains(&value) {
                    list.push(value);
                }
            }
        }
        // Longest first, so a secret that contains another is masked whole.
        list.sort_by_key(|s| std::cmp::Reverse(s.len()));
    }

    pub fn mask<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let list = self.secrets.read().expect("masker lock");
        let mut out = Cow::Borrowed(text);
        for secret in list.iter() {
            if out.contains(secret.as_str()) {
                out = Cow::Owned(out.replace(secret.as_str(), MASK));
            }
        }
        out
    }

    /// Masks every string and object key in a JSON object (a run's output leaves the run as
    /// its log does).
    pub fn mask_map(&self, map: &mut serde_json::Map<String, serde_json::Value>) {
        for (key, mut value) in std::mem::take(map) {
            self.mask_value(&mut value);
            map.insert(self.mask(&key).into_owned(), value);
        }
    }

    fn mask_value(&self, value: &mut serde_json::Value) {
        match value {
            serde_json::Value::String(text) => {
                if let Cow::Owned(masked) = self.mask(text) {
                    *text = masked;
                }
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(|v| self.mask_value(v)),
            serde_json::Value::Object(map) => self.mask_map(map),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_replaced_longest_first() {
        let m = Masker::new(["abc", "abcdef"]);
        assert_eq!(m.mask("x abcdef y abc"), "x **** y ****");
        assert!(matches!(m.mask("nothing here"), Cow::Borrowed(_)));
    }

    #[test]
    fn tiny_secrets_are_ignored_and_forks_grow_alone() {
        let base = Masker::new(["a", "s3cret"]);
        assert_eq!(base.mask("a s3cret"), "a ****");
        let fork = base.fork();
        fork.add_all(["run-only"]);
        assert_eq!(fork.mask("run-only s3cret"), "**** ****");
        assert_eq!(base.mask("run-only"), "run-only");
    }

    #[test]
    fn a_multi_line_secret_is_masked_line_by_line_too() {
        let m = Masker::new(["token: abc123\r\nkey: xyz789"]);
        assert_eq!(m.mask("token: abc123"), "****");
        assert_eq!(m.mask("got key: xyz789"), "got ****");
    }

    #[test]
    fn json_strings_and_keys_are_masked_at_any_depth() {
        let m = Masker::new(["s3cret"]);
        let mut map = serde_json::json!({
            "plain": "ok", "n": 1, "s3cret-key": true,
            "nested": {"list": ["a s3cret", {"deep": "s3cret"}]}
        })
        .as_object()
        .cloned()
        .unwrap();
        m.mask_map(&mut map);
        assert_eq!(
            serde_json::Value::Object(map),
            serde_json::json!({
                "plain": "ok", "n": 1, "****-key": true,
                "nested": {"list": ["a ****", {"deep": "****"}]}
            })
        );
    }
}
