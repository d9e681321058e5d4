//! jq expressions (via the jaq crates), as Port's own mappings use them: checked when the
//! definitions load, compiled for use when first evaluated (a compiled filter carries the
//! standard library it uses, hundreds of KB each: a runner with many actions keeps only
//! those of the actions it ran), evaluated against a JSON context such as
//! `{inputs, entity, run, outputs}`.

use jaq_core::load::{Arena, File, Loader};
use jaq_core::{Compiler, Ctx, Filter, Native, RcIter};
use jaq_json::Val;
use serde_json::Value;

/// A jq expression known to compile.
pub struct Expr {
    source: String,
    filter: std::sync::OnceLock<Filter<Native<Val>>>,
}

/// Why an expression did not compile or evaluate; the text names the expression.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum JqError {
    #[error("jq expression {expr:?} does not compile: {message}")]
    Compile { expr: String, message: String },
    #[error("jq expression {expr:?} failed: {message}")]
    Eval { expr: String, message: String },
    #[error("jq expression {expr:?} produced no value")]
    Empty { expr: String },
}

impl std::fmt::Debug for Expr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Expr({:?})", self.source)
    }
}

impl Expr {
    /// Checks that `source` compiles (what it is for: saying so when definitions load).
    pub fn compile(source: &str) -> Result<Self, JqError> {
        Self::filter(source)?;
        Ok(Self {
            source: source.to_owned(),
            filter: std::sync::OnceLock::new(),
        })
    }

    fn filter(source: &str) -> Result<Filter<Native<Val>>, JqError> {
        let error = |message: String| JqError::Compile {
            expr: source.to_owned(),
            message,
        };
        let loader = Loader::new(jaq_std::defs().chain(jaq_json::defs()));
        let arena = Arena::default();
        let modules = loader
            .load(
                &arena,
                File {
                    code: source,
                    path: (),
                },
            )
            .map_err(|errs| error(describe_load(source, &errs)))?;
        let filter = Compiler::default()
            .with_funs(jaq_std::funs().chain(jaq_json::funs()))
            .compile(modules)
            .map_err(|errs| error(describe_compile(&errs)))?;
        Ok(filter)
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// The first value the expression produces for `input`.
    pub fn eval(&self, input: &Value) -> Result<Value, JqError> {
        let inputs = RcIter::new(core::iter::empty());
        let mut out = self
            .filter
            .get_or_init(|| Self::filter(&self.source).expect("it compiled when it was checked"))
            .run((Ctx::new([], &inputs), Val::from(input.clone())));
        match out.next() {
            Some(Ok(value)) => Ok(Value::from(value)),
            Some(Err(e)) => {
                let mut message = e.to_string();
                if message.contains("cannot use null as iterable") {
                    // jaq differs from jq here, on purpose; say how to write it for both.
                    message.push_str(
                        " (unlike jq, jaq refuses to index null: write `.a.b? // null` for a field that may be missing)",
                    );
                }
                Err(JqError::Eval {
                    expr: self.source.clone(),
                    message,
                })
            }
            None => Err(JqError::Empty {
                expr: self.source.clone(),
            }),
        }
    }
}

/// Where `rest` (a suffix of `source`, as jaq reports it) starts, in words.
fn position(source: &str, rest: &str) -> String {
    if rest.is_empty() {
        return "at the end".to_owned();
    }
    let at = source[..source.len().saturating_sub(rest.len())]
        .chars()
        .count()
        + 1;
    // What stands there, so the reader need not count characters.
    let shown: String = rest.chars().take(12).collect();
    let more = if rest.chars().count() > 12 { "…" } else { "" };
    format!("at character {at} ({shown:?}{more})")
}

/// A parser's expectation in words: jaq's "expected nothing" means text is left over.
fn expected(what: &str, source: &str, rest: &str) -> String {
    match what {
        "nothing" => format!(
            "the expression should end {}: a missing `|` or operator, or an unbalanced bracket?",
            position(source, rest)
        ),
        "token" => format!(
            "unexpected text {}: a bracket closed that was never opened?",
            position(source, rest)
        ),
        what => format!("expected {what} {}", position(source, rest)),
    }
}

fn describe_load(source: &str, errs: &jaq_core::load::Errors<&str, ()>) -> String {
    use jaq_core::load::Error;
    let mut out = Vec::new();
    for (_, err) in errs {
        match err {
            Error::Io(items) => out.extend(
                items
                    .iter()
                    .map(|(path, e)| format!("cannot load {path}: {e}")),
            ),
            Error::Lex(items) => out.extend(
                items
                    .iter()
                    .map(|(expect, rest)| expected(expect.as_str(), source, rest)),
            ),
            Error::Parse(items) => out.extend(
                items
                    .iter()
                    .map(|(expect, rest)| expected(expect.as_str(), source, rest)),
            ),
        }
    }
    out.join("; ")
}

fn describe_compile(errs: &jaq_core::compile::Errors<&str, ()>) -> String {
    use jaq_core::compile::Undefined;
    errs.iter()
        .flat_map(|(_, items)| items.iter())
        .map(|(name, undefined)| match undefined {
            Undefined::Filter(arity) => format!("undefined filter {name}/{arity}"),
            other => format!("undefined {} {name}", other.as_str()),
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn expressions_map_a_run_context_like_ports_mappings() {
        let ctx = json!({
            "inputs": {"bucket_name": "logs", "tags": {"team": "pay"}},
            "outputs": {"create": {"Location": "/logs"}},
            "run": {"id": "r_1"}
        });
        let cases = [
            (".inputs.bucket_name", json!("logs")),
            ("\"s3://\" + .inputs.bucket_name", json!("s3://logs")),
            (
                ".inputs.tags | to_entries | map(\"\\(.key)=\\(.value)\") | join(\",\")",
                json!("team=pay"),
            ),
            (".outputs.create.Location", json!("/logs")),
            (".inputs.missing // \"default\"", json!("default")),
            (
                "{identifier: .inputs.bucket_name, run: .run.id}",
                json!({"identifier": "logs", "run": "r_1"}),
            ),
        ];
        for (source, expected) in cases {
            assert_eq!(
                Expr::compile(source).unwrap().eval(&ctx).unwrap(),
                expected,
                "{source}"
            );
        }
    }

    #[test]
    fn errors_name_the_expression() {
        let err = Expr::compile(".inputs.(").unwrap_err();
        assert_eq!(
            err.to_string(),
            "jq expression \".inputs.(\" does not compile: expected closing parenthesis at the end"
        );
        let err = Expr::compile(".a | ] | .b").unwrap_err();
        assert_eq!(
            err.to_string(),
            "jq expression \".a | ] | .b\" does not compile: unexpected text at character 6 (\"] | .b\"): a bracket closed that was never opened?"
        );
        let err = Expr::compile(".inputs.count = 1 2").unwrap_err();
        assert_eq!(
            err.to_string(),
            "jq expression \".inputs.count = 1 2\" does not compile: the expression should end at character 19 (\"2\"): a missing `|` or operator, or an unbalanced bracket?"
        );
        let err = Expr::compile("foo(1)").unwrap_err();
        assert_eq!(
            err.to_string(),
            "jq expression \"foo(1)\" does not compile: undefined filter foo/1"
        );
        let err = Expr::compile("error(\"nope\")")
            .unwrap()
            .eval(&json!({}))
            .unwrap_err();
        assert!(matches!(err, JqError::Eval { .. }), "{err}");
        let err = Expr::compile("empty")
            .unwrap()
            .eval(&json!({}))
            .unwrap_err();
        assert_eq!(err.to_string(), "jq expression \"empty\" produced no value");
    }
}
