//! Code Insights and build statuses: what a pull-request check publishes on a commit.
//!
//! Shapes as Atlassian's REST docs define them: a report is `PUT` whole under its key (so
//! publishing again replaces it), its annotations are deleted and posted again (never piled
//! up), and a build status is keyed, so the `INPROGRESS` posted first is replaced by the
//! verdict. Bitbucket's limits are kept here, as its API description sets them (Data Center
//! 9.2's OpenAPI): six data fields, 450 characters of a title or reporter, 2000 of details or
//! of an annotation's message, 450 of an `externalId` (a longer one is hashed), 50000 of a
//! path, 1000 annotations a report, 255 of a build status's key, name and description. An
//! annotation that cannot be made to fit is left out, never sent to sink its batch.
//!
//! Build statuses: the repository-scoped API (`/rest/api/latest/…/commits/{c}/builds`, since
//! 7.14) where the server's build capabilities say so, else the legacy one
//! (`/rest/build-status/1.0/commits/{c}`), as Atlassian's own Jenkins integration chooses;
//! a 404 from the repository-scoped route (an older server) also falls back.

use reqwest::Method;
use serde::Serialize;
use serde_json::{json, Value};

use super::client::BitbucketClient;
use super::error::BitbucketError;
use super::types::{BuildsApi, RepoRef};

/// Bitbucket's cap on a report's data fields.
pub const MAX_DATA: usize = 6;
/// Bitbucket's cap on `details` and on an annotation's `message`.
pub const MAX_TEXT: usize = 2000;
/// Bitbucket's cap on a report's annotations.
pub const MAX_ANNOTATIONS: usize = 1000;
/// Annotations sent per request.
const ANNOTATIONS_PER_POST: usize = 100;
/// Bitbucket's cap on an annotation's `externalId`.
pub const MAX_EXTERNAL_ID: usize = 450;
/// Bitbucket's cap on an annotation's path.
const MAX_PATH: usize = 50_000;
/// Bitbucket's cap on a report's title and reporter.
const MAX_TITLE: usize = 450;
/// Bitbucket's cap on a build status's fields (the legacy API's, the stricter).
const MAX_BUILD_FIELD: usize = 255;
/// The capability a server lists when it has the repository-scoped builds API.
const RICH_BUILD_STATUS: &str = "richBuildStatus";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum InsightResult {
    Pass,
    Fail,
}

/// One of a report's data fields.
#[derive(Debug, Clone, PartialEq)]
pub enum DataValue {
    Number(u64),
    Text(String),
    Link { text: String, href: String },
}

#[derive(Debug, Clone, PartialEq)]
pub struct InsightReport {
    pub title: String,
    pub details: String,
    pub result: InsightResult,
    pub reporter: String,
    pub link: Option<String>,
    pub data: Vec<(String, DataValue)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Severity {
    Low,
    Medium,
    High,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AnnotationType {
    Bug,
    CodeSmell,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Annotation {
    pub path: String,
    /// 1-based; 0 is the file as a whole.
    pub line: usize,
    pub message: String,
    pub severity: Severity,
    #[serde(rename = "type")]
    pub kind: AnnotationType,
    pub external_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum BuildState {
    Inprogress,
    Successful,
    Failed,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BuildStatus {
    pub key: String,
    pub name: String,
    pub state: BuildState,
    pub url: String,
    pub description: String,
}

/// An `externalId` within Bitbucket's limit: as it is when it fits, else its start and a
/// hash of the whole (so two long ones stay apart).
pub fn external_id(id: &str) -> String {
    if id.chars().count() <= MAX_EXTERNAL_ID {
        return id.to_owned();
    }
    use sha2::Digest;
    let hash: String = sha2::Sha256::digest(id.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let head: String = id.chars().take(MAX_EXTERNAL_ID - hash.len() - 1).collect();
    format!("{head}~{hash}")
}

impl Annotation {
    /// The annotation as Bitbucket takes it, or `None` when it cannot be made to (a path
    /// over the limit): message cut, `externalId` hashed when too long.
    fn fitted(&self) -> Option<Self> {
        if self.path.chars().count() > MAX_PATH {
            return None;
        }
        let message = match self.message.trim() {
            "" => "(no message)".to_owned(),
            _ => fit(&self.message, MAX_TEXT),
        };
        Some(Self {
            message,
            external_id: external_id(&self.external_id),
            ..self.clone()
        })
    }
}

/// Cuts `text` to Bitbucket's limit, saying so.
pub fn fit(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

impl InsightReport {
    fn wire(&self) -> Value {
        let data: Vec<Value> = self
            .data
            .iter()
            .take(MAX_DATA)
            .map(|(title, value)| match value {
                DataValue::Number(n) => json!({"title": title, "type": "NUMBER", "value": n}),
                DataValue::Text(t) => json!({"title": title, "type": "TEXT", "value": t}),
                DataValue::Link { text, href } => json!({
                    "title": title, "type": "LINK", "value": {"linktext": text, "href": href}
                }),
            })
            .collect();
        let mut body = json!({
            "title": fit(&self.title, MAX_TITLE),
            "details": fit(&self.details, MAX_TEXT),
            "result": self.result,
            "reporter": fit(&self.reporter, MAX_TITLE),
            "data": data,
        });
        if let Some(link) = &self.link {
            body["link"] = json!(link);
        }
        body
    }
}

/// `projects/{key}/repos/{slug}/commits/{commit}`.
fn commit_path<'a>(repo: &'a RepoRef, commit: &'a str) -> [&'a str; 6] {
    [
        "projects",
        repo.project.as_str(),
        "repos",
        repo.slug.as_str(),
        "commits",
        commit,
    ]
}

impl BitbucketClient {
    /// Creates or replaces the report `key` on `commit`.
    pub async fn put_report(
        &self,
        repo: &RepoRef,
        commit: &str,
        key: &str,
        report: &InsightReport,
    ) -> Result<(), BitbucketError> {
        let mut path = vec!["insights", "latest"];
        path.extend(commit_path(repo, commit));
        path.extend(["reports", key]);
        self.call(Method::PUT, &path, &[], Some(&report.wire()))
            .await
            .map(drop)
    }

    /// Replaces the annotations of report `key`: the old ones are deleted first.
    pub async fn replace_annotations(
        &self,
        repo: &RepoRef,
        commit: &str,
        key: &str,
        annotations: &[Annotation],
    ) -> Result<(), BitbucketError> {
        let mut path = vec!["insights", "latest"];
        path.extend(commit_path(repo, commit));
        path.extend(["reports", key, "annotations"]);
        self.call(Method::DELETE, &path, &[], None).await?;
        let mut seen = std::collections::HashSet::new();
        let kept: Vec<Annotation> = annotations
            .iter()
            .filter_map(Annotation::fitted)
            // An `externalId` is unique within a report: a repeat would refuse the batch.
            .filter(|a| seen.insert(a.external_id.clone()))
            .take(MAX_ANNOTATIONS)
            .collect();
        for chunk in kept.chunks(ANNOTATIONS_PER_POST) {
            self.call(
                Method::POST,
                &path,
                &[],
                Some(&json!({ "annotations": chunk })),
            )
            .await?;
        }
        Ok(())
    }

    /// Sets the build status `status.key` of `commit` (a later one of that key replaces it),
    /// through the API the server has.
    pub async fn post_build_status(
        &self,
        repo: &RepoRef,
        commit: &str,
        status: &BuildStatus,
    ) -> Result<(), BitbucketError> {
        let body = serde_json::to_value(BuildStatus {
            key: fit(&status.key, MAX_BUILD_FIELD),
            name: fit(&status.name, MAX_BUILD_FIELD),
            description: fit(&status.description, MAX_BUILD_FIELD),
            ..status.clone()
        })
        .expect("a build status serializes");
        let legacy = ["build-status", "1.0", "commits", commit];
        if self.builds_api().await? == BuildsApi::Legacy {
            return self
                .call(Method::POST, &legacy, &[], Some(&body))
                .await
                .map(drop);
        }
        let mut path = vec!["api", "latest"];
        path.extend(commit_path(repo, commit));
        path.push("builds");
        match self.call(Method::POST, &path, &[], Some(&body)).await {
            // No such route (not Bitbucket's word on the repository or commit): older than
            // its capabilities said, or behind a proxy that hides it. Legacy from now on.
            Err(BitbucketError::NotFound {
                exception: None, ..
            }) => {
                let _ = self.builds_api.set(BuildsApi::Legacy);
                self.call(Method::POST, &legacy, &[], Some(&body))
                    .await
                    .map(drop)
            }
            other => other.map(drop),
        }
    }

    /// The server's build-status API, asked once (`GET /rest/api/latest/build/capabilities`,
    /// which servers before 7.14 do not have either).
    async fn builds_api(&self) -> Result<BuildsApi, BitbucketError> {
        if let Some(api) = self.builds_api.get() {
            return Ok(*api);
        }
        let api = match self
            .call(
                Method::GET,
                &["api", "latest", "build", "capabilities"],
                &[],
                None,
            )
            .await
        {
            Ok(raw) => {
                let caps: Value = serde_json::from_slice(&raw.body).unwrap_or(Value::Null);
                let rich = caps["buildStatus"]
                    .as_array()
                    .is_some_and(|c| c.iter().any(|v| v == RICH_BUILD_STATUS));
                if rich {
                    BuildsApi::Repository
                } else {
                    BuildsApi::Legacy
                }
            }
            Err(BitbucketError::NotFound { .. }) => BuildsApi::Legacy,
            // Not known yet (a passing failure): try the current API, ask again next time.
            Err(BitbucketError::Transient { .. }) => return Ok(BuildsApi::Repository),
            Err(e) => return Err(e),
        };
        Ok(*self.builds_api.get_or_init(|| async { api }).await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_annotation_is_fitted_or_left_out_never_sent_to_be_refused() {
        let annotation = |path: String, id: String| Annotation {
            path,
            line: 1,
            message: "  ".into(),
            severity: Severity::Low,
            kind: AnnotationType::CodeSmell,
            external_id: id,
            link: None,
        };
        let long = |n| "x".repeat(n);
        let fitted = annotation("port.yaml".into(), format!("port-delete-s/{}", long(990)))
            .fitted()
            .unwrap();
        assert_eq!(fitted.external_id.chars().count(), MAX_EXTERNAL_ID);
        assert_eq!(fitted.message, "(no message)");
        let other = annotation("port.yaml".into(), format!("port-delete-s/{}y", long(989)))
            .fitted()
            .unwrap();
        assert_ne!(fitted.external_id, other.external_id, "hashed apart");
        let short = annotation("port.yaml".into(), "port-1".into())
            .fitted()
            .unwrap();
        assert_eq!(short.external_id, "port-1");
        assert!(annotation(long(50_001), "port-2".into()).fitted().is_none());
    }

    #[test]
    fn reports_keep_to_bitbucket_s_limits() {
        let report = InsightReport {
            title: "Port catalog".into(),
            details: "x".repeat(3000),
            result: InsightResult::Fail,
            reporter: "port-runner".into(),
            link: Some("https://app.port.io/serviceEntity?identifier=a".into()),
            data: (0..8)
                .map(|i| (format!("f{i}"), DataValue::Number(i)))
                .collect(),
        };
        let wire = report.wire();
        assert_eq!(wire["result"], "FAIL");
        assert_eq!(wire["data"].as_array().unwrap().len(), MAX_DATA);
        assert_eq!(
            wire["data"][0],
            json!({"title": "f0", "type": "NUMBER", "value": 0})
        );
        assert_eq!(wire["details"].as_str().unwrap().chars().count(), MAX_TEXT);
        let annotation = serde_json::to_value(Annotation {
            path: "port.yaml".into(),
            line: 3,
            message: "m".into(),
            severity: Severity::High,
            kind: AnnotationType::CodeSmell,
            external_id: "port-1".into(),
            link: None,
        })
        .unwrap();
        assert_eq!(
            annotation,
            json!({"path": "port.yaml", "line": 3, "message": "m", "severity": "HIGH",
                   "type": "CODE_SMELL", "externalId": "port-1"})
        );
        assert_eq!(
            serde_json::to_value(BuildState::Inprogress).unwrap(),
            "INPROGRESS"
        );
    }
}
