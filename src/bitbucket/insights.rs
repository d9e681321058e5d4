//! Code Insights and build statuses: what a pull-request check publishes on a commit.
//!
//! Shapes as Atlassian's REST docs define them: a report is `PUT` whole under its key (so
//! publishing again replaces it), its annotations are deleted and posted again (never piled
//! up), and a build status is keyed, so the `INPROGRESS` posted first is replaced by the
//! verdict. Bitbucket's limits are enforced here, where they are known: six data fields,
//! 2000 characters of details or of an annotation's message, 1000 annotations a report.

use reqwest::Method;
use serde::Serialize;
use serde_json::{json, Value};

use super::client::BitbucketClient;
use super::error::BitbucketError;
use super::types::RepoRef;

/// Bitbucket's cap on a report's data fields.
pub const MAX_DATA: usize = 6;
/// Bitbucket's cap on `details` and on an annotation's `message`.
pub const MAX_TEXT: usize = 2000;
/// Bitbucket's cap on a report's annotations.
pub const MAX_ANNOTATIONS: usize = 1000;
/// Annotations sent per request.
const ANNOTATIONS_PER_POST: usize = 100;

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
            "title": self.title,
            "details": fit(&self.details, MAX_TEXT),
            "result": self.result,
            "reporter": self.reporter,
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
        let kept = &annotations[..annotations.len().min(MAX_ANNOTATIONS)];
        for chunk in kept.chunks(ANNOTATIONS_PER_POST) {
            let chunk: Vec<Annotation> = chunk
                .iter()
                .map(|a| Annotation {
                    message: fit(&a.message, MAX_TEXT),
                    ..a.clone()
                })
                .collect();
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

    /// Sets the build status `status.key` of `commit` (a later one of that key replaces it).
    pub async fn post_build_status(
        &self,
        repo: &RepoRef,
        commit: &str,
        status: &BuildStatus,
    ) -> Result<(), BitbucketError> {
        let mut path = vec!["api", "latest"];
        path.extend(commit_path(repo, commit));
        path.push("builds");
        let body = serde_json::to_value(BuildStatus {
            description: fit(&status.description, 255),
            ..status.clone()
        })
        .expect("a build status serializes");
        self.call(Method::POST, &path, &[], Some(&body))
            .await
            .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
