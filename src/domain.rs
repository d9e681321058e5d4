//! Domain types parsed once at the edge from untrusted input.
//!
//! Each type has a private field and is only built through `parse`, so code past the
//! webhook never re-checks strings: a `RunId` is always safe to put in a URL path, an
//! `Identifier` always matches Port's identifier pattern.

use std::fmt;

use serde::Serialize;
use serde_json::Value;

/// Why a value from the outside was refused; `field` names where it came from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct DomainError {
    pub field: String,
    pub reason: String,
}

impl DomainError {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

fn describe(value: &str) -> String {
    const SHOWN: usize = 40;
    let mut shown: String = value.chars().take(SHOWN).collect();
    if value.chars().count() > SHOWN {
        shown.push('…');
    }
    format!("{shown:?}")
}

/// A Pulumi stack name. It becomes a path in the state backend (`.pulumi/stacks/<project>/<stack>.json`)
/// and an argument of the CLI, so only letters, digits, `-`, `_` and `.` (no `..`), starting
/// with a letter or digit, at most 100.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StackName(String);

impl StackName {
    pub const MAX_LEN: usize = 100;

    pub fn parse(field: &str, value: &str) -> Result<Self, DomainError> {
        let ok = (1..=Self::MAX_LEN).contains(&value.len())
            && value.starts_with(|c: char| c.is_ascii_alphanumeric())
            && value
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            && !value.contains("..");
        if ok {
            Ok(Self(value.to_owned()))
        } else {
            Err(DomainError::new(
                field,
                format!(
                    "{} is not a stack name: use 1 to {} letters, digits, '-', '_' or '.', starting with a letter or digit",
                    describe(value),
                    Self::MAX_LEN
                ),
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for StackName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Port's id of an action run (`r_…` today, `run_…` in older examples: the prefix is not checked).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct RunId(String);

impl<'de> serde::Deserialize<'de> for RunId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Self::parse("run id", &text).map_err(serde::de::Error::custom)
    }
}

impl RunId {
    pub const MAX_LEN: usize = 128;

    pub fn parse(field: &str, value: &str) -> Result<Self, DomainError> {
        if value.is_empty() {
            return Err(DomainError::new(field, "must not be empty"));
        }
        if value.len() > Self::MAX_LEN {
            return Err(DomainError::new(
                field,
                format!("must be at most {} characters", Self::MAX_LEN),
            ));
        }
        // The id becomes a path segment of Port's API: allow only URL-safe characters.
        if !value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        {
            return Err(DomainError::new(
                field,
                format!(
                    "{} may contain only letters, digits, '_', '-' and '.'",
                    describe(value)
                ),
            ));
        }
        Ok(Self(value.to_owned()))
    }

    /// A fresh id for runs that do not come from Port (`invoke`, `sync`).
    pub fn generate(prefix: &str) -> Self {
        Self(format!("{prefix}{}", uuid::Uuid::new_v4().simple()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A Port Workflows node run (`wfnr_…`): reported through the node-run API.
    pub fn is_node_run(&self) -> bool {
        self.0.starts_with(NODE_RUN_PREFIX)
    }
}

/// How Port names a workflow node run's identifier.
pub const NODE_RUN_PREFIX: &str = "wfnr_";

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An identifier as Port defines it for entities, blueprints and actions:
/// `^(?!\.{1,2}$)[\p{L}0-9@_.+:\\/=-]+$`, with a length cap that depends on the kind.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Identifier(String);

impl Identifier {
    /// Entity identifiers may be up to 1000 characters long.
    pub const ENTITY_MAX_LEN: usize = 1000;
    /// Blueprint and action identifiers may be up to 100 characters long.
    pub const SCHEMA_MAX_LEN: usize = 100;

    pub fn parse(field: &str, value: &str, max_len: usize) -> Result<Self, DomainError> {
        if value.is_empty() {
            return Err(DomainError::new(field, "must not be empty"));
        }
        if value.chars().count() > max_len {
            return Err(DomainError::new(
                field,
                format!("must be at most {max_len} characters"),
            ));
        }
        if value == "." || value == ".." {
            return Err(DomainError::new(field, "must not be '.' or '..'"));
        }
        if let Some(bad) = value.chars().find(|c| !Self::allowed(*c)) {
            return Err(DomainError::new(
                field,
                format!(
                    "{} contains {bad:?}; Port identifiers allow letters, digits and @_.+:\\/=-",
                    describe(value)
                ),
            ));
        }
        Ok(Self(value.to_owned()))
    }

    pub fn entity(field: &str, value: &str) -> Result<Self, DomainError> {
        Self::parse(field, value, Self::ENTITY_MAX_LEN)
    }

    pub fn schema(field: &str, value: &str) -> Result<Self, DomainError> {
        Self::parse(field, value, Self::SCHEMA_MAX_LEN)
    }

    fn allowed(c: char) -> bool {
        c.is_alphabetic() || c.is_ascii_digit() || "@_.+:\\/=-".contains(c)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Identifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The identifier of a self-service action; handlers are registered under it.
pub type ActionId = Identifier;
/// The identifier of a blueprint.
pub type BlueprintId = Identifier;
/// The identifier of an entity.
pub type EntityId = Identifier;

/// What the action does to its entity, as Port's trigger names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
pub enum Operation {
    #[serde(rename = "CREATE")]
    Create,
    #[serde(rename = "DAY-2")]
    Day2,
    #[serde(rename = "DELETE")]
    Delete,
}

impl Operation {
    pub const ALL: [Operation; 3] = [Operation::Create, Operation::Day2, Operation::Delete];

    pub fn parse(field: &str, value: &str) -> Result<Self, DomainError> {
        match value {
            "CREATE" => Ok(Self::Create),
            "DAY-2" => Ok(Self::Day2),
            "DELETE" => Ok(Self::Delete),
            other => Err(DomainError::new(
                field,
                format!(
                    "{} is not an operation; expected CREATE, DAY-2 or DELETE",
                    describe(other)
                ),
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Create => "CREATE",
            Self::Day2 => "DAY-2",
            Self::Delete => "DELETE",
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How an entity write treats what the catalog already holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteMode {
    /// `upsert=true`: create or replace; fields not sent are removed.
    Replace,
    /// `upsert=true&merge=true`: create or update only the fields sent.
    Merge,
}

/// One entity's outcome in a (bulk) write, in the caller's order.
#[derive(Debug, Clone, PartialEq)]
pub enum WriteResult {
    Ok {
        identifier: String,
        created: bool,
    },
    Failed {
        identifier: Option<String>,
        status: Option<u16>,
        message: String,
    },
}

impl WriteResult {
    /// What a write that is only recorded locally (local mode) answers: each entity accepted.
    pub fn accepted_locally(entities: &[Value]) -> Vec<Self> {
        entities
            .iter()
            .map(|e| Self::Ok {
                identifier: e
                    .get("identifier")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
                created: false,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_ids_are_restricted_to_url_safe_characters() {
        assert!(RunId::parse("runId", "r_HardNzG6kzc9vWOQ").is_ok());
        assert!(RunId::parse("runId", "run_abc-1.2").is_ok());
        for bad in ["", "r/../x", "r x", "r?x=1", "r%2F", "rü"] {
            let err = RunId::parse("context.runId", bad).unwrap_err();
            assert_eq!(err.field, "context.runId", "{bad}");
        }
        assert!(RunId::parse("runId", &"a".repeat(129)).is_err());
    }

    #[test]
    fn identifiers_follow_ports_pattern() {
        for ok in ["svc-a", "Ünïcode", "a@b.c+d:e\\f/g=h-i", "x"] {
            assert!(Identifier::entity("identifier", ok).is_ok(), "{ok}");
        }
        for bad in [".", "..", "", "has space", "semi;colon", "dollar$"] {
            assert!(Identifier::entity("identifier", bad).is_err(), "{bad}");
        }
        assert!(Identifier::schema("blueprint", &"b".repeat(101)).is_err());
        assert!(Identifier::entity("identifier", &"b".repeat(1000)).is_ok());
    }

    #[test]
    fn an_identifier_error_names_the_offending_character() {
        let err = Identifier::entity("payload.entity.identifier", "a b").unwrap_err();
        assert!(err.to_string().contains("' '"), "{err}");
        assert!(err.to_string().starts_with("payload.entity.identifier:"));
    }

    #[test]
    fn operations_round_trip_and_reject_unknown_values() {
        for op in Operation::ALL {
            assert_eq!(Operation::parse("op", op.as_str()).unwrap(), op);
        }
        let err = Operation::parse("payload.action.trigger", "day-2").unwrap_err();
        assert!(err.reason.contains("CREATE, DAY-2 or DELETE"));
    }
}
