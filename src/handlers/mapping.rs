//! What the declarative handlers (`command`, `pulumi`) share: the jq context of a run, the
//! entity mapping (CREATE upserts, DAY-2 merges, DELETE deletes) and the allowlist of the
//! runner's environment variables a tool may see.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::jq::{Expr, JqError};
use crate::core::{HandlerError, RunContext};
use crate::domain::WriteMode;
use crate::domain::{Identifier, Operation};
use crate::invocation::Invocation;

/// The `entity:` section of a definition file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct EntityFile {
    blueprint: String,
    identifier: String,
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    properties: BTreeMap<String, String>,
    #[serde(default)]
    relations: BTreeMap<String, String>,
}

/// How a run's result becomes a catalog entity, compiled.
pub(super) struct EntityMapping {
    blueprint: Identifier,
    identifier: Expr,
    title: Option<Expr>,
    properties: Vec<(String, Expr)>,
    relations: Vec<(String, Expr)>,
}

pub(super) fn failed(e: JqError) -> HandlerError {
    HandlerError::Failed(e.to_string())
}

/// The context every expression of a run is evaluated against.
pub(super) fn run_context(inv: &Invocation) -> Value {
    json!({
        "inputs": inv.inputs,
        "entity": inv.entity.as_ref().map(|e| Value::Object(e.raw.clone())).unwrap_or(Value::Null),
        "run": {"id": inv.run_id, "action": inv.action, "operation": inv.operation,
                "blueprint": inv.blueprint},
        "outputs": {}
    })
}

/// A computed value as one argument or variable: strings as they are, numbers and booleans
/// printed; anything else is a mistake in the definition or the inputs.
pub(super) fn as_text(what: &str, value: &Value) -> Result<String, HandlerError> {
    match value {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        other => Err(HandlerError::Failed(format!(
            "{what} evaluated to {other}, not a string, number or boolean"
        ))),
    }
}

/// Compiles a jq expression, naming the field on error.
pub(super) fn compile(field: &str, source: &str) -> Result<Expr, String> {
    Expr::compile(source).map_err(|e| format!("{field}: {e}"))
}

impl EntityMapping {
    /// The blueprint the mapped entity is of.
    pub(super) fn blueprint(&self) -> &Identifier {
        &self.blueprint
    }

    pub(super) fn compile(file: &EntityFile) -> Result<Self, String> {
        let each = |section: &str, map: &BTreeMap<String, String>| {
            map.iter()
                .map(|(k, v)| compile(&format!("entity.{section}.{k}"), v).map(|x| (k.clone(), x)))
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(Self {
            blueprint: Identifier::schema("entity.blueprint", &file.blueprint)
                .map_err(|e| e.to_string())?,
            identifier: compile("entity.identifier", &file.identifier)?,
            title: file
                .title
                .as_deref()
                .map(|t| compile("entity.title", t))
                .transpose()?,
            properties: each("properties", &file.properties)?,
            relations: each("relations", &file.relations)?,
        })
    }

    /// Makes the catalog follow the run: DELETE deletes the run's entity, CREATE upserts the
    /// mapped entity whole, DAY-2 merges it. Returns what was done, for the run's summary.
    pub(super) async fn apply(
        &self,
        ctx: &RunContext,
        context: &Value,
    ) -> Result<String, HandlerError> {
        let inv = &ctx.invocation;
        let blueprint = &self.blueprint;
        if inv.operation == Operation::Delete {
            let entity = inv.entity.as_ref().ok_or_else(|| {
                HandlerError::Failed("a DELETE run needs an entity to delete".into())
            })?;
            ctx.catalog.delete(blueprint, &entity.identifier).await?;
            return Ok(format!("deleted {blueprint}/{}", entity.identifier));
        }
        let identifier = as_text(
            "entity.identifier",
            &self.identifier.eval(context).map_err(failed)?,
        )?;
        Identifier::entity("entity.identifier", &identifier)
            .map_err(|e| HandlerError::Failed(e.to_string()))?;
        let mut body = Map::new();
        body.insert("identifier".into(), Value::String(identifier.clone()));
        if let Some(title) = &self.title {
            body.insert("title".into(), title.eval(context).map_err(failed)?);
        }
        let eval_all = |list: &[(String, Expr)]| -> Result<Map<String, Value>, HandlerError> {
            list.iter()
                .map(|(name, expr)| Ok((name.clone(), expr.eval(context).map_err(failed)?)))
                .collect()
        };
        body.insert(
            "properties".into(),
            Value::Object(eval_all(&self.properties)?),
        );
        body.insert(
            "relations".into(),
            Value::Object(eval_all(&self.relations)?),
        );
        let (mode, done) = if inv.operation == Operation::Day2 {
            (WriteMode::Merge, "updated")
        } else {
            (WriteMode::Replace, "written")
        };
        ctx.catalog
            .upsert(blueprint, &Value::Object(body), mode)
            .await?;
        Ok(format!("entity {blueprint}/{identifier} {done}"))
    }
}

/// Names of the runner's environment variables a definition lets its tools see (provider
/// credentials such as `AWS_ACCESS_KEY_ID` or `CIVO_TOKEN`). The runner's own secrets can
/// never be listed.
#[derive(Debug, Clone, Default)]
pub(super) struct PassEnv {
    names: Vec<String>,
}

/// Variable names whose values are not secret and stay readable in logs.
const PLAIN_ENV: [&str; 6] = [
    "AWS_ENDPOINT_URL",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_PROFILE",
    "PULUMI_BACKEND_URL",
    "PULUMI_HOME",
];

impl PassEnv {
    pub(super) fn compile(names: &[String]) -> Result<Self, String> {
        for name in names {
            let valid = !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
            if !valid {
                return Err(format!(
                    "pass_env: {name:?} is not an environment variable name (A-Z, 0-9, _)"
                ));
            }
            if crate::secret::is_secret_env(name)
                || name.starts_with("PORT_")
                || name.starts_with("BITBUCKET_")
                || name == "DATABASE_URL"
            {
                return Err(format!(
                    "pass_env: {name} is the runner's own configuration and is never given to tools"
                ));
            }
        }
        Ok(Self {
            names: names.to_vec(),
        })
    }

    /// The listed variables that are set, split into plain ones and secret ones (masked).
    pub(super) fn collect(&self) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
        let (mut plain, mut secret) = (BTreeMap::new(), BTreeMap::new());
        for name in &self.names {
            if let Ok(value) = std::env::var(name) {
                if PLAIN_ENV.contains(&name.as_str()) {
                    plain.insert(name.clone(), value);
                } else {
                    secret.insert(name.clone(), value);
                }
            }
        }
        (plain, secret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pass_env_refuses_the_runners_own_secrets_and_odd_names() {
        for bad in [
            "PORT_CLIENT_SECRET",
            "BITBUCKET_TOKEN",
            "DATABASE_URL",
            "a b",
            "",
        ] {
            let err = PassEnv::compile(&[bad.to_owned()]).unwrap_err();
            assert!(err.starts_with("pass_env:"), "{err}");
        }
        assert!(PassEnv::compile(&["AWS_SECRET_ACCESS_KEY".into(), "CIVO_TOKEN".into()]).is_ok());
    }

    #[test]
    fn plain_variables_are_kept_apart_from_secret_ones() {
        // PATH is always set; HOME nearly always. Neither is in PLAIN_ENV, so both are secret.
        let env = PassEnv::compile(&["PATH".into(), "PULUMI_BACKEND_URL".into()]).unwrap();
        let (plain, secret) = env.collect();
        assert!(secret.contains_key("PATH"));
        assert_eq!(
            plain.contains_key("PULUMI_BACKEND_URL"),
            std::env::var("PULUMI_BACKEND_URL").is_ok()
        );
    }
}
