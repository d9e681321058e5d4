//! Port Workflows' node runs (`wfnr_…`): a `WEBHOOK` node with `synchronized: false` hands
//! its run to a backend, which reports it here instead of through the action-run API.
//! Shapes as Port's own clients send them (port-labs/port-agent, port-labs/ocean; gathered in
//! `docs/port-protocol.md`): `PATCH /workflows/nodes/runs/{id}` with
//! `status` (`IN_PROGRESS`, `COMPLETED`), `result` (`SUCCESS`, `FAILED`, `CANCELLED`),
//! `output`, `externalRunId`, `links`; `POST …/logs` with `{logs: [{level, message}]}`.

use reqwest::Method;
use serde::Serialize;
use serde_json::{json, Value};

use super::client::PortClient;
use super::error::PortError;
use super::types::{RunPatch, RunStatus};
use crate::domain::NODE_RUN_PREFIX;

/// How a node run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum NodeResult {
    Success,
    Failed,
    Cancelled,
}

/// A log line's level, as Port spells it (`WARN`, not `WARNING`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum NodeLogLevel {
    Info,
    Warn,
    Error,
}

impl NodeLogLevel {
    /// The level a line of our run log reads as.
    pub fn of(line: &str) -> Self {
        let lower = line.trim_start().to_ascii_lowercase();
        if lower.starts_with("error") || lower.contains(" failed") {
            Self::Error
        } else if lower.starts_with("warn") {
            Self::Warn
        } else {
            Self::Info
        }
    }
}

impl PortClient {
    /// A run's final status: `COMPLETED` through the node-run API for a workflow node run
    /// (`wfnr_…`; later nodes read its `summary` beside the handler's output), the
    /// action-run API's `PATCH` otherwise.
    pub async fn finish_run(
        &self,
        id: &str,
        status: RunStatus,
        summary: &str,
        link: Option<&str>,
        output: &serde_json::Map<String, Value>,
    ) -> Result<(), PortError> {
        if id.starts_with(NODE_RUN_PREFIX) {
            let result = match status {
                RunStatus::Success => NodeResult::Success,
                RunStatus::Failure => NodeResult::Failed,
            };
            let mut output = output.clone();
            output.insert("summary".into(), summary.into());
            return self.node_run_completed(id, result, &output, link).await;
        }
        let patch = RunPatch {
            status: Some(status),
            status_label: None,
            summary: Some(summary.to_owned()),
            link: link.map(str::to_owned),
        };
        self.patch_run(id, &patch).await
    }

    /// `PATCH /workflows/nodes/runs/{id}` with `{status: IN_PROGRESS}`.
    pub async fn node_run_started(&self, node_run: &str) -> Result<(), PortError> {
        self.patch_node_run(node_run, &json!({ "status": "IN_PROGRESS" }))
            .await
    }

    /// `PATCH /workflows/nodes/runs/{id}`: `COMPLETED` with its result, output and link.
    pub async fn node_run_completed(
        &self,
        node_run: &str,
        result: NodeResult,
        output: &serde_json::Map<String, Value>,
        link: Option<&str>,
    ) -> Result<(), PortError> {
        let mut body = json!({
            "status": "COMPLETED",
            "result": result,
            "output": output,
            "externalRunId": node_run,
        });
        if let Some(link) = link {
            body["links"] = json!([link]);
        }
        self.patch_node_run(node_run, &body).await
    }

    async fn patch_node_run(&self, node_run: &str, body: &Value) -> Result<(), PortError> {
        self.call(
            Method::PATCH,
            &["workflows", "nodes", "runs", node_run],
            &[],
            Some(body),
        )
        .await
        .map(|_| ())
    }

    /// `POST /workflows/nodes/runs/{id}/logs`: one batch, a level per line.
    pub async fn add_node_run_logs(&self, node_run: &str, message: &str) -> Result<(), PortError> {
        let logs: Vec<Value> = message
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|line| json!({ "level": NodeLogLevel::of(line), "message": line }))
            .collect();
        if logs.is_empty() {
            return Ok(());
        }
        self.call(
            Method::POST,
            &["workflows", "nodes", "runs", node_run, "logs"],
            &[],
            Some(&json!({ "logs": logs })),
        )
        .await
        .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_read_from_the_line() {
        assert_eq!(
            NodeLogLevel::of("error: bucket exists"),
            NodeLogLevel::Error
        );
        assert_eq!(
            NodeLogLevel::of("step apply failed (exit 1)"),
            NodeLogLevel::Error
        );
        assert_eq!(NodeLogLevel::of("warning: deprecated"), NodeLogLevel::Warn);
        assert_eq!(NodeLogLevel::of("stack dev: 1 created"), NodeLogLevel::Info);
        assert_eq!(
            serde_json::to_value(NodeLogLevel::Warn).unwrap(),
            json!("WARN")
        );
    }
}
