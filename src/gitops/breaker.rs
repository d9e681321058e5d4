//! The mass-deletion breaker: a sync about to delete much of what it owns is more likely
//! wrong (a permission change, a project filter, a renamed project) than right.

use std::collections::HashMap;

use super::keys::{EntityKey, SourceKey};
use super::plan::RepoPlan;
use super::report::{Problem, ProblemKind, SyncReport};
use super::state::SyncState;

/// Deletions above 10 that are more than `ratio` of what the record owns look like a
/// permission change, a wrong project filter or a renamed project, not like edits: none are
/// made, the repositories concerned are read again next time, and the sync fails saying how
/// to go ahead anyway. Creates and updates still go through.
pub(super) fn mass_delete_breaker(
    state: &SyncState,
    deletes: &mut Vec<(SourceKey, EntityKey)>,
    plans: &mut HashMap<SourceKey, RepoPlan>,
    ratio: f64,
    report: &mut SyncReport,
) {
    let owned: usize = state.repos.values().map(|r| r.entities.len()).sum();
    let share = deletes.len() as f64 / owned.max(1) as f64;
    if deletes.len() <= 10 || share <= ratio {
        return;
    }
    report.problems.push(Problem {
        kind: ProblemKind::MassDelete,
        location: "sync".into(),
        entity: None,
        message: format!(
            "deleted nothing: this sync would delete {} of the {owned} entities it owns ({:.0} %, over the {:.0} % that --gitops-max-delete-ratio allows); if that is intended, run it with --allow-mass-delete (port-runner sync) or the input allow_mass_delete (the gitops_sync action)",
            deletes.len(),
            share * 100.0,
            ratio * 100.0
        ),
        spots: Vec::new(),
    });
    for (repo, _) in deletes.drain(..) {
        plans.entry(repo.clone()).or_default().dirty = true;
        if !report
            .deletions_skipped
            .iter()
            .any(|s| s.starts_with(&format!("{repo}:")))
        {
            report
                .deletions_skipped
                .push(format!("{repo}: the mass-deletion breaker tripped"));
        }
    }
}
