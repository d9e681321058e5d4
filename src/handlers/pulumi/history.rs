//! What an update or a destroy changed, in the CLI's own machine-readable words: the newest
//! entry of `pulumi stack history --json` and its `resourceChanges`, as the Automation API
//! reads an update's summary. A summary then says "1 updated, 3 unchanged", not only that
//! the stack is up to date.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use super::PulumiHandler;
use crate::core::RunContext;

/// One entry of the history (only what the summary needs).
#[derive(Deserialize)]
struct Update {
    #[serde(default, rename = "resourceChanges")]
    resource_changes: BTreeMap<String, u64>,
}

/// The order and words of the CLI's own `Resources:` summary.
const WORDS: [(&str, &str); 6] = [
    ("create", "created"),
    ("update", "updated"),
    ("replace", "replaced"),
    ("delete", "deleted"),
    ("import", "imported"),
    ("same", "unchanged"),
];

impl PulumiHandler {
    /// The last update's changes in words (`1 updated, 3 unchanged`); `None` when the
    /// history cannot be read: the run's outcome does not hang on its summary.
    pub(super) async fn last_changes(
        &self,
        ctx: &RunContext,
        workdir: &Path,
        stack: &str,
    ) -> Option<String> {
        let args = [
            "stack",
            "history",
            "--json",
            "--page-size",
            "1",
            "--stack",
            stack,
        ];
        let read = self
            .cli_json::<Vec<Update>>(ctx, workdir, &args, "`pulumi stack history --json`")
            .await;
        match read {
            Ok(Ok(updates)) => updates.first().map(|u| describe(&u.resource_changes)),
            Ok(Err(e)) | Err((_, e)) => {
                ctx.log
                    .line(format!("(what changed is not known: {e})"))
                    .await;
                None
            }
        }
    }
}

/// `1 created, 2 unchanged`, in the CLI's order; other operations by their own names.
fn describe(changes: &BTreeMap<String, u64>) -> String {
    let mut parts: Vec<String> = WORDS
        .iter()
        .filter_map(|(op, word)| {
            changes
                .get(*op)
                .filter(|n| **n > 0)
                .map(|n| format!("{n} {word}"))
        })
        .collect();
    parts.extend(
        changes
            .iter()
            .filter(|(op, n)| **n > 0 && !WORDS.iter().any(|(known, _)| known == op))
            .map(|(op, n)| format!("{n} {op}")),
    );
    if parts.is_empty() {
        "no changes".to_owned()
    } else {
        parts.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_read_in_the_cli_s_words_and_order() {
        let changes: BTreeMap<String, u64> =
            [("same", 4), ("update", 1), ("read", 2), ("delete", 0)]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect();
        assert_eq!(describe(&changes), "1 updated, 4 unchanged, 2 read");
        assert_eq!(describe(&BTreeMap::new()), "no changes");
    }
}
