//! What a sync did, for the run log, the run summary and `sync --output json`.

use serde::Serialize;

/// What kind of trouble a problem is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProblemKind {
    /// The file or entity is wrong: fix the file.
    Rejected,
    /// Two files declare the same blueprint/identifier.
    Conflict,
    /// Bitbucket could not be read: nothing of that repository was changed or deleted.
    ReadFailed,
    /// Port refused or failed a write.
    WriteFailed,
    /// The sync would have deleted too much of what it owns: it deleted nothing.
    MassDelete,
}

/// One thing that went wrong, located as precisely as we can.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    pub kind: ProblemKind,
    /// `PROJECT/repo:port.yaml`, or `PROJECT/repo` when no file is involved.
    pub location: String,
    /// `entity 'svc-a' (item 2)` when one entity is concerned.
    pub entity: Option<String>,
    pub message: String,
    /// Where in the file each part of it is (for annotations on the line); not reported.
    #[serde(skip)]
    pub spots: Vec<Spot>,
}

/// One part of a problem and where it sits in its file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spot {
    pub at: SpotAt,
    pub message: String,
}

/// Where: a line the YAML parser named, or a key of one entity of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpotAt {
    /// The file as a whole.
    File,
    /// A line (1-based).
    Line(usize),
    /// The key at `path` of the entity at `item` (`None` in a single-entity file); an empty
    /// path is the entity itself.
    Key {
        item: Option<usize>,
        path: Vec<String>,
    },
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.kind {
            ProblemKind::Rejected => "rejected",
            ProblemKind::Conflict => "conflict",
            ProblemKind::ReadFailed => "read failed",
            ProblemKind::WriteFailed => "write failed",
            ProblemKind::MassDelete => "deletions blocked",
        };
        match &self.entity {
            Some(entity) => write!(f, "{kind}: {}: {entity}: {}", self.location, self.message),
            None => write!(f, "{kind}: {}: {}", self.location, self.message),
        }
    }
}

/// The outcome of one sync.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SyncReport {
    pub dry_run: bool,
    pub full: bool,
    pub repos_scanned: usize,
    /// Repositories skipped because nothing changed since the last sync.
    pub repos_unchanged: usize,
    pub files_read: usize,
    /// `blueprint/identifier` of entities created, updated, deleted (or, in a dry run, that would be).
    pub created: Vec<String>,
    pub updated: Vec<String>,
    pub deleted: Vec<String>,
    /// Entities whose content equals what was last applied.
    pub unchanged: usize,
    pub problems: Vec<Problem>,
    /// Repositories whose deletions were skipped, with the reason.
    pub deletions_skipped: Vec<String>,
    pub bitbucket_requests: u64,
    pub port_writes: u64,
}

impl SyncReport {
    pub fn count(&self, kind: ProblemKind) -> usize {
        self.problems.iter().filter(|p| p.kind == kind).count()
    }

    /// Everything was read, valid and applied.
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }

    /// One line for the run summary.
    pub fn summary(&self) -> String {
        let verb = if self.dry_run { "would " } else { "" };
        let mut text = format!(
            "{}{} repositories ({} unchanged), {} files: {verb}create {}, {verb}update {}, {verb}delete {}, {} unchanged",
            if self.dry_run { "dry run: " } else { "" },
            self.repos_scanned,
            self.repos_unchanged,
            self.files_read,
            self.created.len(),
            self.updated.len(),
            self.deleted.len(),
            self.unchanged,
        );
        if self.is_clean() {
            text.push_str("; everything applied");
        } else {
            text.push_str(&format!(
                "; NOT everything applied: {} rejected, {} conflicts, {} read failures, {} write failures (the rest was applied)",
                self.count(ProblemKind::Rejected),
                self.count(ProblemKind::Conflict),
                self.count(ProblemKind::ReadFailed),
                self.count(ProblemKind::WriteFailed),
            ));
            if let Some(p) = self
                .problems
                .iter()
                .find(|p| p.kind == ProblemKind::MassDelete)
            {
                text.push_str(&format!("; {}", p.message));
            }
        }
        text
    }

    /// The detail lines for a log: changes, problems, skipped deletions, request counts.
    pub fn lines(&self) -> Vec<String> {
        let verb = |done: &str, planned: &str| {
            if self.dry_run {
                planned.to_owned()
            } else {
                done.to_owned()
            }
        };
        let mut lines = Vec::new();
        for id in &self.created {
            lines.push(format!("{} {id}", verb("created", "would create")));
        }
        for id in &self.updated {
            lines.push(format!("{} {id}", verb("updated", "would update")));
        }
        for id in &self.deleted {
            lines.push(format!("{} {id}", verb("deleted", "would delete")));
        }
        for problem in &self.problems {
            lines.push(problem.to_string());
        }
        for skipped in &self.deletions_skipped {
            lines.push(format!("deletions skipped: {skipped}"));
        }
        lines.push(format!(
            "{} Bitbucket requests, {} Port writes",
            self.bitbucket_requests, self.port_writes
        ));
        lines
    }
}
