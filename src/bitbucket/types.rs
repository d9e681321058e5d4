//! Wire types of Bitbucket Server's REST API 1.0.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One page of a paged listing, its values read as `T` (only the fields `T` names are kept:
/// a page of 1000 repositories is a few KB of slugs, not megabytes of JSON values).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Page<T = Value> {
    #[serde(default = "Vec::new")]
    pub values: Vec<T>,
    #[serde(default)]
    pub is_last_page: bool,
    #[serde(default)]
    pub next_page_start: Option<u64>,
}

/// A project, as much of it as a listing needs.
#[derive(Deserialize)]
pub(crate) struct ProjectKey {
    pub key: String,
}

/// A repository, as much of it as a listing needs.
#[derive(Deserialize)]
pub(crate) struct RepoSlug {
    pub slug: String,
}

/// One page of `browse/{path}` on a file.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct LinesPage {
    #[serde(default)]
    pub lines: Vec<Line>,
    #[serde(default)]
    pub is_last_page: bool,
    #[serde(default)]
    pub next_page_start: Option<u64>,
}

#[derive(Deserialize)]
pub(crate) struct Line {
    #[serde(default)]
    pub text: String,
}

/// Bitbucket's error body: `{"errors": [{"message", "exceptionName"}]}`.
#[derive(Deserialize)]
pub(crate) struct ErrorBody {
    #[serde(default)]
    pub errors: Vec<ErrorItem>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ErrorItem {
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub exception_name: Option<String>,
}

/// A repository as the sync names it: `PROJECT/slug`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RepoRef {
    pub project: String,
    pub slug: String,
}

impl RepoRef {
    /// Parses `PROJECT/slug`.
    pub fn parse(text: &str) -> Result<Self, String> {
        match text.split_once('/') {
            Some((project, slug))
                if !project.is_empty() && !slug.is_empty() && !slug.contains('/') =>
            {
                Ok(Self {
                    project: project.to_owned(),
                    slug: slug.to_owned(),
                })
            }
            _ => Err(format!("{text:?} is not PROJECT/slug")),
        }
    }
}

impl std::fmt::Display for RepoRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.project, self.slug)
    }
}

impl Serialize for RepoRef {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for RepoRef {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// A pull request, as a check of it is journaled and run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullRequest {
    pub repo: RepoRef,
    pub id: u64,
    /// The source branch's head (`fromRef.latestCommit`): what is checked, and where the
    /// check is published.
    pub commit: String,
    /// The target branch (`refs/heads/main`): what merging would change.
    pub target: String,
}

/// Which build-status API a server has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuildsApi {
    /// `POST /rest/api/latest/projects/{p}/repos/{r}/commits/{c}/builds` (7.14 and later).
    Repository,
    /// `POST /rest/build-status/1.0/commits/{c}` (every version; deprecated since 7.14).
    Legacy,
}
