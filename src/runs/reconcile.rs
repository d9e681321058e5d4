//! Runs Port created while this runner was unreachable (a deploy, a crash, a laptop asleep
//! behind ngrok): their webhook never arrived, and Port would keep them `IN_PROGRESS` for
//! ever. Reconcile lists the active runs of the actions this runner serves and adopts each
//! one Port meant for this runner's webhook URL: its rendered body becomes the invocation
//! (it came over the authenticated API, so there is no signature to check) and it runs like
//! a delivered one.
//!
//! Exactly once: the journal's run-id admission decides, so a delivery racing the adoption,
//! and replicas reconciling at once, run it once. A run meant for anything else (another
//! URL, a GitHub or GitLab backend, Port's agent) or waiting for approval is never touched.

use std::sync::Arc;

use crate::port::{ActiveRun, PortClient, PortError};

use super::runner::{Runner, SubmitError};

/// What one pass found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Reconciled {
    /// Runs adopted now.
    pub adopted: usize,
    /// Active runs of our actions that are someone else's, or already known here.
    pub skipped: usize,
}

/// Lists Port's active runs and adopts the ones this runner never received.
pub struct Reconciler {
    port: Arc<PortClient>,
    runner: Arc<Runner>,
    /// This runner's webhook URL as `apply` writes it into the actions.
    webhook_url: String,
    actions: Vec<String>,
}

impl Reconciler {
    pub fn new(
        port: Arc<PortClient>,
        runner: Arc<Runner>,
        webhook_url: String,
        actions: Vec<String>,
    ) -> Self {
        Self {
            port,
            runner,
            webhook_url,
            actions,
        }
    }

    /// One pass over every action; an action whose runs cannot be listed is retried at the
    /// next pass (the error is returned after the others were looked at).
    pub async fn once(&self) -> Result<Reconciled, PortError> {
        let mut found = Reconciled::default();
        let mut failed = None;
        for action in &self.actions {
            match self.port.list_active_runs(action).await {
                Ok(runs) => {
                    for run in runs {
                        if self.adopt(&run).await {
                            found.adopted += 1;
                        } else {
                            found.skipped += 1;
                        }
                    }
                }
                Err(e) => failed = Some(e),
            }
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(found),
        }
    }

    /// Adopts `run` when it is ours and new here; whether it was adopted.
    async fn adopt(&self, run: &ActiveRun) -> bool {
        if run.status.as_deref().is_some_and(|s| s != "IN_PROGRESS") {
            return false; // WAITING_FOR_APPROVAL, or final by now
        }
        let Some(payload) = &run.payload else {
            return false;
        };
        let ours = payload.kind.as_deref() == Some("WEBHOOK")
            && payload.agent != Some(true)
            && payload
                .url
                .as_deref()
                .is_some_and(|url| same_url(url, &self.webhook_url));
        let Some(body) = payload.body.as_ref().filter(|_| ours) else {
            return false;
        };
        if crate::domain::RunId::parse("id", &run.id)
            .ok()
            .is_some_and(|id| self.runner.registry().get(&id).is_some())
        {
            return false; // delivered (or adopted) already
        }
        let raw = serde_json::to_vec(body).expect("JSON serializes");
        let invocation = match crate::invocation::body::parse(&raw, Some(&run.id)) {
            Ok(invocation) => invocation,
            Err(e) => {
                tracing::warn!(run_id = %run.id, error = %e, "a run Port holds for this runner has a body it cannot read; left alone");
                return false;
            }
        };
        if invocation.run_id.as_str() != run.id {
            tracing::warn!(run_id = %run.id, body_run_id = %invocation.run_id, "a run whose body names another run id; left alone");
            return false;
        }
        match self.runner.adopt(invocation).await {
            Ok(()) => {
                tracing::info!(run_id = %run.id, "picked up a run from Port: its webhook was not received");
                true
            }
            Err(SubmitError::Duplicate) => false,
            Err(e) => {
                tracing::warn!(run_id = %run.id, error = %e, "could not adopt a run; trying again at the next reconcile");
                false
            }
        }
    }
}

/// Whether two webhook URLs are the same endpoint (scheme and host case, a trailing slash).
fn same_url(a: &str, b: &str) -> bool {
    let norm = |u: &str| match reqwest::Url::parse(u.trim()) {
        Ok(url) => url.as_str().trim_end_matches('/').to_owned(),
        Err(_) => u.trim().trim_end_matches('/').to_owned(),
    };
    norm(a) == norm(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_urls_compare_as_endpoints() {
        assert!(same_url(
            "https://AB12.ngrok.app/webhook/",
            "https://ab12.ngrok.app/webhook"
        ));
        assert!(!same_url(
            "https://ab12.ngrok.app/webhook",
            "https://other.example.com/webhook"
        ));
        assert!(!same_url(
            "https://ab12.ngrok.app/other",
            "https://ab12.ngrok.app/webhook"
        ));
    }
}
