//! The sync's two keys, as types: an entity (blueprint and identifier), and a source in the
//! ownership record (a repository, or one file of it). Built once where they are read and
//! compared as they are, never formatted into strings and split apart again.

use std::fmt;

use serde::{Deserialize, Serialize};

/// An entity by its blueprint and identifier: what a file declares, the record owns and
/// Port is written.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EntityKey {
    pub blueprint: String,
    pub identifier: String,
}

impl EntityKey {
    pub fn new(blueprint: &str, identifier: &str) -> Self {
        Self {
            blueprint: blueprint.to_owned(),
            identifier: identifier.to_owned(),
        }
    }
}

/// `blueprint/identifier`, as reports name an entity.
impl fmt::Display for EntityKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.blueprint, self.identifier)
    }
}

/// A source in the ownership record: a repository (`PROJECT/slug`: a marker holding its head
/// commit, or that it has no file), or one of its GitOps files (`PROJECT/slug:path`, which
/// owns entities). A repository's marker sorts before its files.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceKey {
    repo: String,
    path: Option<String>,
}

impl SourceKey {
    /// A repository's marker.
    pub fn repo(repo: &str) -> Self {
        Self {
            repo: repo.to_owned(),
            path: None,
        }
    }

    /// A file of a repository.
    pub fn file(repo: &str, path: &str) -> Self {
        Self {
            repo: repo.to_owned(),
            path: Some(path.to_owned()),
        }
    }

    /// Reads a key as the record stores it (`PROJECT/slug` or `PROJECT/slug:path`).
    pub fn parse(text: &str) -> Self {
        match text.split_once(':') {
            Some((repo, path)) => Self::file(repo, path),
            None => Self::repo(text),
        }
    }

    /// The repository (`PROJECT/slug`).
    pub fn repo_name(&self) -> &str {
        &self.repo
    }

    /// The project key (`PROJECT` of `PROJECT/slug`).
    pub fn project(&self) -> &str {
        self.repo.split_once('/').map_or(&self.repo, |(p, _)| p)
    }

    /// The file's path, for a file's key.
    pub fn path(&self) -> Option<&str> {
        self.path.as_deref()
    }

    /// The repository's marker (itself, for a marker).
    pub fn marker(&self) -> Self {
        Self::repo(&self.repo)
    }

    /// The file `name` of this key's repository, unless this key is a file already.
    pub fn or_file(&self, name: &str) -> Self {
        match self.path {
            Some(_) => self.clone(),
            None => Self::file(&self.repo, name),
        }
    }
}

/// As the record stores it and reports name it: `PROJECT/slug` or `PROJECT/slug:path`.
impl fmt::Display for SourceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.path {
            Some(path) => write!(f, "{}:{path}", self.repo),
            None => f.write_str(&self.repo),
        }
    }
}

impl Serialize for SourceKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for SourceKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Self::parse(&String::deserialize(d)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_key_reads_back_as_written_and_sorts_its_repository_first() {
        let file = SourceKey::parse("PRJ/a:services/x/port.yaml");
        assert_eq!(file.repo_name(), "PRJ/a");
        assert_eq!(file.path(), Some("services/x/port.yaml"));
        assert_eq!(file.to_string(), "PRJ/a:services/x/port.yaml");
        assert_eq!(file.marker(), SourceKey::repo("PRJ/a"));
        assert!(SourceKey::repo("PRJ/a") < file && file < SourceKey::repo("PRJ/a-b"));
        let json = serde_json::to_string(&file).unwrap();
        assert_eq!(serde_json::from_str::<SourceKey>(&json).unwrap(), file);
        assert_eq!(EntityKey::new("svc", "x").to_string(), "svc/x");
    }
}
