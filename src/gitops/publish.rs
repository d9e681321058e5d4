//! A pull-request check on Bitbucket: the build status `INPROGRESS` first (so a merge check
//! waits for it), then the review, then the "Port catalog" Code Insights report with one
//! annotation per problem on the line of the offending key, and the verdict as the build
//! status. Deletions are said in the report's details and as file annotations: they are
//! what a reviewer most needs to see.

use super::contracts::BlueprintSource;
use super::engine::SyncEngine;
use std::collections::BTreeMap;

use super::keys::SourceKey;
use super::positions::Positions;
use super::report::{ProblemKind, SpotAt};
use super::review::{CatalogLookup, Planned, Review, ReviewError};
use crate::bitbucket::insights::{
    fit, Annotation, AnnotationType, BuildState, BuildStatus, DataValue, InsightReport,
    InsightResult, Severity,
};
use crate::bitbucket::PullRequest;
use crate::bitbucket::{BitbucketError, RepoRef};

/// The report's key and the build status's key.
pub const CHECK_KEY: &str = "port-catalog";
const TITLE: &str = "Port catalog";

/// Where links in the check point.
#[derive(Debug, Clone)]
pub struct Links {
    /// Port's web app, e.g. `https://app.port.io`.
    pub app_url: String,
}

impl Links {
    fn entity(&self, blueprint: &str, identifier: &str) -> String {
        let page = format!("{}/{blueprint}Entity", self.app_url.trim_end_matches('/'));
        match reqwest::Url::parse_with_params(&page, [("identifier", identifier)]) {
            Ok(url) => url.to_string(),
            Err(_) => page,
        }
    }
}

/// What a finished check published.
#[derive(Debug)]
pub struct Checked {
    pub review: Review,
    pub report: InsightReport,
    pub annotations: Vec<Annotation>,
}

#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error(transparent)]
    Review(#[from] ReviewError),
    #[error("Bitbucket refused to publish the check on {repo} ({status}): the account needs read access to the repository (REPO_READ is what reports, annotations and build statuses ask for); grant it, or stop sending pull-request events to this runner")]
    Permission { repo: String, status: u16 },
    /// The build status went through (so the account reads the repository), the report's
    /// replacement did not: Bitbucket lets only a report's creator replace it.
    #[error("Bitbucket refused to replace the \"Port catalog\" report on {repo} at {commit} ({status}): only the account that created a report may replace it, and this one was made by another (were the runner's Bitbucket credentials changed?); publish with that account, or delete the report (DELETE /rest/insights/latest/projects/…/commits/{commit}/reports/port-catalog) and push again")]
    NotCreator {
        repo: String,
        commit: String,
        status: u16,
    },
    #[error("cannot publish the check on {repo}: {source}")]
    Publish {
        repo: String,
        source: BitbucketError,
    },
}

fn publishing(repo: &RepoRef) -> impl Fn(BitbucketError) -> CheckError + '_ {
    move |e| match e {
        BitbucketError::Unauthorized { status, .. } => CheckError::Permission {
            repo: repo.to_string(),
            status,
        },
        source => CheckError::Publish {
            repo: repo.to_string(),
            source,
        },
    }
}

impl SyncEngine {
    /// Checks `pr` and publishes the result on its source commit.
    pub async fn check_pull_request(
        &self,
        pr: &PullRequest,
        blueprints: &dyn BlueprintSource,
        catalog: &dyn CatalogLookup,
        links: &Links,
    ) -> Result<Checked, CheckError> {
        let bb = &self.bitbucket;
        let status = |state, description: String| BuildStatus {
            key: CHECK_KEY.into(),
            name: TITLE.into(),
            state,
            url: links.app_url.clone(),
            description,
        };
        // A refusal here ends the check before anything else is tried: said once.
        bb.post_build_status(
            &pr.repo,
            &pr.commit,
            &status(
                BuildState::Inprogress,
                "checking the catalog changes".into(),
            ),
        )
        .await
        .map_err(publishing(&pr.repo))?;
        let review = match self.review(pr, blueprints, catalog).await {
            Ok(review) => review,
            Err(e) => {
                // Best effort: the check could not be made, say so on the commit.
                let _ = bb
                    .post_build_status(
                        &pr.repo,
                        &pr.commit,
                        &status(BuildState::Failed, format!("could not check: {e}")),
                    )
                    .await;
                return Err(e.into());
            }
        };
        let report = render_report(&review, links);
        let annotations = render_annotations(&review, links);
        bb.put_report(&pr.repo, &pr.commit, CHECK_KEY, &report)
            .await
            .map_err(|e| match e {
                BitbucketError::Unauthorized { status, .. } => CheckError::NotCreator {
                    repo: pr.repo.to_string(),
                    commit: pr.commit.clone(),
                    status,
                },
                other => publishing(&pr.repo)(other),
            })?;
        bb.replace_annotations(&pr.repo, &pr.commit, CHECK_KEY, &annotations)
            .await
            .map_err(publishing(&pr.repo))?;
        let state = match report.result {
            InsightResult::Pass => BuildState::Successful,
            InsightResult::Fail => BuildState::Failed,
        };
        bb.post_build_status(&pr.repo, &pr.commit, &status(state, headline(&review)))
            .await
            .map_err(publishing(&pr.repo))?;
        Ok(Checked {
            review,
            report,
            annotations,
        })
    }
}

/// One sentence: the counts, or that nothing changes.
pub fn headline(review: &Review) -> String {
    if !review.touched {
        return "no Port GitOps file changes: nothing changes in the catalog".into();
    }
    let problems = match review.problems.len() {
        0 => String::new(),
        1 => "; 1 problem".into(),
        n => format!("; {n} problems"),
    };
    format!(
        "{} to create, {} to update, {} to delete{problems}",
        review.created.len(),
        review.updated.len(),
        review.deleted.len()
    )
}

fn keys(items: &[Planned], with_fields: bool) -> String {
    let shown: Vec<String> = items
        .iter()
        .take(20)
        .map(|p| match (with_fields, p.fields.is_empty()) {
            (true, false) => format!("{} ({})", p.key(), p.fields.join(", ")),
            _ => p.key(),
        })
        .collect();
    let more = items.len().saturating_sub(shown.len());
    if more > 0 {
        format!("{} and {more} more", shown.join(", "))
    } else {
        shown.join(", ")
    }
}

fn render_report(review: &Review, links: &Links) -> InsightReport {
    let names: Vec<&str> = review
        .files
        .keys()
        .chain(&review.deleted_files)
        .map(String::as_str)
        .collect();
    let file = match names.is_empty() {
        true => "any GitOps file".to_owned(),
        false => names.join(", "),
    };
    let mut details = Vec::new();
    if !review.touched {
        details.push(format!(
            "This pull request does not change {file}: nothing changes in Port's catalog."
        ));
    } else {
        for deleted in &review.deleted_files {
            details.push(format!("This pull request deletes {deleted}."));
        }
        details.push(format!(
            "Merging it would create {}, update {} and delete {} entities in Port's catalog ({} unchanged).",
            review.created.len(),
            review.updated.len(),
            review.deleted.len(),
            review.unchanged
        ));
        if !review.deleted.is_empty() {
            details.push(format!("DELETES: {}.", keys(&review.deleted, false)));
        }
        if !review.created.is_empty() {
            details.push(format!("Creates: {}.", keys(&review.created, false)));
        }
        if !review.updated.is_empty() {
            details.push(format!("Updates: {}.", keys(&review.updated, true)));
        }
        if !review.problems.is_empty() {
            details.push(format!(
                "{} must be fixed before merging (see the annotations): {}",
                match review.problems.len() {
                    1 => "1 problem".to_owned(),
                    n => format!("{n} problems"),
                },
                review
                    .problems
                    .iter()
                    .map(|p| p.to_string())
                    .collect::<Vec<_>>()
                    .join(" | ")
            ));
        }
        if !review.compared {
            details.push("(No Port catalog to compare with: creates and updates are judged from the ownership record.)".into());
        }
    }
    let first = review
        .deleted
        .iter()
        .chain(&review.updated)
        .chain(&review.created)
        .next();
    let link = first.map(|p| links.entity(&p.blueprint, &p.identifier));
    let mut data = vec![
        (
            "Create".to_owned(),
            DataValue::Number(review.created.len() as u64),
        ),
        (
            "Update".to_owned(),
            DataValue::Number(review.updated.len() as u64),
        ),
        (
            "Delete".to_owned(),
            DataValue::Number(review.deleted.len() as u64),
        ),
        (
            "Problems".to_owned(),
            DataValue::Number(review.problems.len() as u64),
        ),
        ("Files".to_owned(), DataValue::Text(fit(&file, 200))),
    ];
    if let Some(href) = &link {
        data.push((
            "Entities".to_owned(),
            DataValue::Link {
                text: "open in Port".into(),
                href: href.clone(),
            },
        ));
    }
    InsightReport {
        title: TITLE.into(),
        details: details.join(" "),
        result: if review.passed() {
            InsightResult::Pass
        } else {
            InsightResult::Fail
        },
        reporter: "port-runner".into(),
        link,
        data,
    }
}

fn render_annotations(review: &Review, links: &Links) -> Vec<Annotation> {
    let positions: BTreeMap<&str, Positions> = review
        .files
        .iter()
        .map(|(path, text)| (path.as_str(), Positions::of(text)))
        .collect();
    let first = review.files.keys().chain(&review.deleted_files).next();
    let Some(first) = first.cloned() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (p, problem) in review.problems.iter().enumerate() {
        let (severity, kind) = match problem.kind {
            ProblemKind::Rejected => (Severity::High, AnnotationType::Bug),
            ProblemKind::Conflict => (Severity::Medium, AnnotationType::Bug),
            _ => (Severity::Medium, AnnotationType::CodeSmell),
        };
        let named = |message: &str| match &problem.entity {
            Some(entity) => format!("{entity}: {message}"),
            None => message.to_owned(),
        };
        // A problem's location names its file as the record keys it (`PROJECT/slug:path`).
        let located = SourceKey::parse(&problem.location);
        let file = located.path().unwrap_or(&first).to_owned();
        let here = positions.get(file.as_str());
        let spots: Vec<(usize, String)> = if problem.spots.is_empty() {
            vec![(0, named(&problem.message))]
        } else {
            problem
                .spots
                .iter()
                .map(|spot| {
                    let line = match &spot.at {
                        SpotAt::File => 0,
                        SpotAt::Line(line) => *line,
                        SpotAt::Key { item, path } => {
                            here.and_then(|at| at.line(*item, path)).unwrap_or(0)
                        }
                    };
                    (line, named(&spot.message))
                })
                .collect()
        };
        for (s, (line, message)) in spots.into_iter().enumerate() {
            out.push(Annotation {
                path: file.clone(),
                line,
                message,
                severity,
                kind,
                external_id: format!("port-problem-{p}-{s}"),
                link: None,
            });
        }
    }
    for gone in &review.deleted {
        let file = gone.path.clone().unwrap_or_else(|| first.clone());
        out.push(Annotation {
            path: file.clone(),
            line: 0,
            message: format!(
                "merging deletes {} from Port's catalog: {file} no longer declares it",
                gone.key()
            ),
            severity: Severity::Low,
            kind: AnnotationType::CodeSmell,
            external_id: format!("port-delete-{}", gone.key()),
            link: Some(links.entity(&gone.blueprint, &gone.identifier)),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gitops::report::{Problem, Spot};

    fn links() -> Links {
        Links {
            app_url: "https://app.port.io/".into(),
        }
    }

    fn planned(id: &str) -> Planned {
        Planned {
            blueprint: "service".into(),
            identifier: id.into(),
            item: None,
            fields: vec![],
            path: None,
        }
    }

    #[test]
    fn a_failing_review_names_deletions_and_puts_problems_on_their_lines() {
        let review = Review {
            files: BTreeMap::from([(
                "port.yaml".to_owned(),
                "- identifier: a\n  blueprint: service\n  properties:\n    tier: middle\n"
                    .to_owned(),
            )]),
            touched: true,
            created: vec![],
            updated: vec![Planned {
                fields: vec!["properties.tier".into()],
                ..planned("a")
            }],
            deleted: vec![planned("gone")],
            problems: vec![Problem {
                kind: ProblemKind::Rejected,
                location: "P/r:port.yaml".into(),
                entity: Some("entity 'a' (item 0)".into()),
                message: "property 'tier' must be one of …".into(),
                spots: vec![Spot {
                    at: SpotAt::Key {
                        item: Some(0),
                        path: vec!["properties".into(), "tier".into()],
                    },
                    message: "property 'tier' must be one of …".into(),
                }],
            }],
            compared: true,
            ..Review::default()
        };
        let report = render_report(&review, &links());
        assert_eq!(report.result, InsightResult::Fail);
        assert!(
            report.details.contains("DELETES: service/gone."),
            "{}",
            report.details
        );
        assert!(report
            .details
            .contains("Updates: service/a (properties.tier)."));
        assert_eq!(
            report.link.as_deref(),
            Some("https://app.port.io/serviceEntity?identifier=gone")
        );
        let annotations = render_annotations(&review, &links());
        assert_eq!(annotations.len(), 2);
        assert_eq!(annotations[0].line, 4);
        assert_eq!(annotations[0].severity, Severity::High);
        assert!(annotations[0]
            .message
            .starts_with("entity 'a' (item 0): property 'tier'"));
        assert_eq!(annotations[1].line, 0);
        assert!(annotations[1].message.contains("deletes service/gone"));
        assert_eq!(
            headline(&review),
            "0 to create, 1 to update, 1 to delete; 1 problem"
        );
    }

    #[test]
    fn an_untouched_file_passes_with_a_short_report() {
        let review = Review {
            files: BTreeMap::from([("port.yaml".to_owned(), String::new())]),
            ..Review::default()
        };
        let report = render_report(&review, &links());
        assert_eq!(report.result, InsightResult::Pass);
        assert_eq!(
            report.details,
            "This pull request does not change port.yaml: nothing changes in Port's catalog."
        );
        assert!(render_annotations(&review, &links()).is_empty() && report.link.is_none());
    }
}
