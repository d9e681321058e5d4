//! Which files of a repository are GitOps files (`--gitops-paths`, per project
//! `--gitops-project-paths`): literal paths, read directly (one request each, the cheapest
//! proof), and globs (`services/*/port.yaml`, `**/port.yml`), which need the repository's
//! file list. `*` stays within a folder; `**` crosses folders, none included.

use std::collections::BTreeMap;

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};

/// The patterns of one repository.
#[derive(Debug, Clone)]
pub struct GitOpsPaths {
    literals: Vec<String>,
    globs: Option<GlobSet>,
}

/// `{`, written so that brace-counting tools stay balanced.
const OPEN_BRACE: char = '\u{7b}';

fn is_glob(pattern: &str) -> bool {
    pattern.contains(['*', '?', '[', OPEN_BRACE])
}

/// Checks one pattern: a relative path in a repository (no `/` first, no `.` or `..`
/// parts), and a glob that compiles.
pub fn check_pattern(text: &str) -> Result<String, String> {
    let pattern = text.trim();
    let relative = !pattern.is_empty()
        && !pattern.starts_with('/')
        && !pattern
            .split('/')
            .any(|part| part.is_empty() || part == "." || part == "..");
    if !relative {
        return Err(format!(
            "{text:?} is not a file path or glob in a repository (e.g. port.yaml or services/*/port.yaml)"
        ));
    }
    if is_glob(pattern) {
        glob(pattern).map_err(|e| format!("{text:?} is not a glob: {e}"))?;
    }
    Ok(pattern.to_owned())
}

fn glob(pattern: &str) -> Result<globset::Glob, globset::Error> {
    GlobBuilder::new(pattern).literal_separator(true).build()
}

impl GitOpsPaths {
    pub fn new(patterns: &[String]) -> Result<Self, String> {
        let mut literals = Vec::new();
        let mut set = GlobSetBuilder::new();
        let mut any_glob = false;
        for pattern in patterns {
            let pattern = check_pattern(pattern)?;
            if is_glob(&pattern) {
                set.add(glob(&pattern).map_err(|e| format!("{pattern:?}: {e}"))?);
                any_glob = true;
            } else if !literals.contains(&pattern) {
                literals.push(pattern);
            }
        }
        if patterns.is_empty() {
            return Err("no GitOps paths: give at least one (e.g. port.yaml)".into());
        }
        let globs = match any_glob {
            true => Some(set.build().map_err(|e| e.to_string())?),
            false => None,
        };
        Ok(Self { literals, globs })
    }

    /// The literal paths (read directly when there is no glob).
    pub fn literals(&self) -> &[String] {
        &self.literals
    }

    /// Whether finding the files needs the repository's file list.
    pub fn has_globs(&self) -> bool {
        self.globs.is_some()
    }

    pub fn matches(&self, path: &str) -> bool {
        self.literals.iter().any(|l| l == path)
            || self.globs.as_ref().is_some_and(|g| g.is_match(path))
    }
}

impl Default for GitOpsPaths {
    fn default() -> Self {
        Self::new(&["port.yaml".to_owned()]).expect("a valid default")
    }
}

/// The patterns of every project: the default, and the projects that override it.
#[derive(Debug, Clone, Default)]
pub struct PathRules {
    default: GitOpsPaths,
    projects: BTreeMap<String, GitOpsPaths>,
}

impl PathRules {
    /// `overrides` are `PROJECT=pattern` items; a project's items replace the default.
    pub fn new(default: &[String], overrides: &[String]) -> Result<Self, String> {
        let mut by_project: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for item in overrides {
            let (project, pattern) = item
                .split_once('=')
                .filter(|(p, _)| !p.trim().is_empty())
                .ok_or_else(|| {
                    format!("{item:?} is not PROJECT=path (e.g. MONO=services/*/port.yaml)")
                })?;
            by_project
                .entry(project.trim().to_owned())
                .or_default()
                .push(pattern.to_owned());
        }
        Ok(Self {
            default: GitOpsPaths::new(default)?,
            projects: by_project
                .into_iter()
                .map(|(project, patterns)| {
                    GitOpsPaths::new(&patterns)
                        .map(|paths| (project.clone(), paths))
                        .map_err(|e| format!("project {project}: {e}"))
                })
                .collect::<Result<_, _>>()?,
        })
    }

    pub fn for_project(&self, project: &str) -> &GitOpsPaths {
        self.projects.get(project).unwrap_or(&self.default)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(p: &[&str]) -> GitOpsPaths {
        GitOpsPaths::new(&p.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn globs_match_within_and_across_folders() {
        let p = paths(&["services/*/port.yaml", "**/port.yml", "port.yaml"]);
        assert!(p.has_globs());
        assert_eq!(p.literals(), ["port.yaml"]);
        for yes in [
            "services/api/port.yaml",
            "port.yml",
            "a/b/c/port.yml",
            "port.yaml",
        ] {
            assert!(p.matches(yes), "{yes}");
        }
        for no in [
            "services/api/v2/port.yaml",
            "services/port.yaml",
            "x/port.yaml",
        ] {
            assert!(!p.matches(no), "{no}");
        }
        assert!(!paths(&["port.yaml", "port.yml"]).has_globs());
    }

    #[test]
    fn bad_patterns_and_overrides_are_refused_with_the_reason() {
        assert!(check_pattern("/etc/port.yaml").is_err());
        assert!(check_pattern("a/../port.yaml").is_err());
        assert!(check_pattern("services/[a/port.yaml")
            .unwrap_err()
            .contains("is not a glob"));
        let rules = PathRules::new(
            &["port.yaml".into()],
            &["MONO=services/*/port.yaml".into(), "MONO=port.yaml".into()],
        )
        .unwrap();
        assert!(rules.for_project("MONO").has_globs());
        assert!(!rules.for_project("OTHER").has_globs());
        assert!(
            PathRules::new(&["port.yaml".into()], &["services/*".into()])
                .unwrap_err()
                .contains("is not PROJECT=path")
        );
    }
}
