//! The routes Port's execution agent pulls runs with (`claim-pending`, `ack`) and the
//! organisation setting that makes Port hold agent runs for polling.
//!
//! Port documents none of them; they are used as port-labs/port-agent uses them
//! (`app/port_client.py`), and every answer is read tolerantly: unknown fields are ignored
//! and a run this runner cannot read is skipped, not an error.

use reqwest::Method;
use serde_json::{json, Value};

use super::client::{runs_in, Call, PortClient};
use super::error::PortError;
use super::types::{ActiveRun, RunPayload};

/// The claimer name the agent uses; Port holds agent runs for it.
pub const AGENT_INSTALLATION_ID: &str = "_PORT_EXEC_AGENT";
/// The organisation setting's value for pulling (the other one is `KAFKA`).
pub const POLLING_STREAMER: &str = "POLLING";
/// How long claimed runs stay invisible to other claimers (`visibilityTimeoutMs`, as
/// port-labs/ocean sends it; Port's default is 60 s, its maximum 600 s): long enough to
/// journal the runs and acknowledge them through a few retries of the `ack`.
pub const CLAIM_LEASE_MS: u64 = 120_000;

const RESERVED: Call = Call {
    retry: false,
    reserved: true,
};

impl PortClient {
    /// `POST /actions/runs/claim-pending`: up to `limit` pending agent runs, now claimed by
    /// this caller until their `claimedUntil`. One attempt: the caller backs off.
    pub async fn claim_pending_runs(&self, limit: usize) -> Result<Vec<ActiveRun>, PortError> {
        let body = json!({
            "installationId": AGENT_INSTALLATION_ID,
            "limit": limit,
            "invocationMethod": "WEBHOOK",
            "visibilityTimeoutMs": CLAIM_LEASE_MS,
        });
        let answer = self
            .call_with(
                Method::POST,
                &["actions", "runs", "claim-pending"],
                &[],
                Some(&body),
                RESERVED,
            )
            .await?;
        Ok(runs_in(&answer))
    }

    /// `PATCH /actions/runs/ack`: the runs stop coming back to claimers. Returns how many
    /// this call acknowledged (a run someone else acknowledged counts 0). Retried like any
    /// call: acknowledging twice is harmless, and Port's 409 to an ack of runs already
    /// acknowledged (a retry whose first attempt got through) means just that, as Ocean reads
    /// it: all of them are.
    pub async fn ack_runs(&self, run_ids: &[String]) -> Result<usize, PortError> {
        if run_ids.is_empty() {
            return Ok(0);
        }
        let answer = match self
            .call_with(
                Method::PATCH,
                &["actions", "runs", "ack"],
                &[],
                Some(&json!({ "runIds": run_ids })),
                Call {
                    retry: true,
                    ..RESERVED
                },
            )
            .await
        {
            Err(PortError::Invalid { status: 409, .. }) => return Ok(run_ids.len()),
            other => other?,
        };
        Ok(answer
            .get("ackedCount")
            .and_then(Value::as_u64)
            .unwrap_or(0) as usize)
    }

    /// `POST /workflows/runs/claim-pending`: up to `limit` workflow node runs held for an
    /// agent, read as runs whose id is the node run's (`wfnr_…`) and whose body is the
    /// rendered body of their `WEBHOOK` node. Where Port puts that body in a claimed node run
    /// is UNCONFIRMED: `config.body`, else `node.config.body`, is read.
    pub async fn claim_pending_node_runs(&self, limit: usize) -> Result<Vec<ActiveRun>, PortError> {
        let body = json!({
            "installationId": AGENT_INSTALLATION_ID,
            "limit": limit,
            "visibilityTimeoutMs": CLAIM_LEASE_MS,
        });
        let answer = self
            .call_with(
                Method::POST,
                &["workflows", "runs", "claim-pending"],
                &[],
                Some(&body),
                RESERVED,
            )
            .await?;
        let node_runs = answer.get("nodeRuns").and_then(Value::as_array);
        Ok(node_runs
            .into_iter()
            .flatten()
            .filter_map(|n| {
                let id = n.get("identifier")?.as_str()?.to_owned();
                let body = n
                    .pointer("/config/body")
                    .or_else(|| n.pointer("/node/config/body"))
                    .cloned();
                Some(ActiveRun {
                    id,
                    status: n.get("status").and_then(Value::as_str).map(str::to_owned),
                    payload: Some(RunPayload {
                        kind: Some("WEBHOOK".into()),
                        url: None,
                        agent: Some(true),
                        headers: None,
                        body,
                    }),
                })
            })
            .collect())
    }

    /// `PATCH /workflows/runs/ack` for one node run; `false` when another claimer
    /// acknowledged it first (Port's 409).
    pub async fn ack_node_run(&self, node_run: &str) -> Result<bool, PortError> {
        let call = Call {
            retry: true,
            ..RESERVED
        };
        let body = json!({ "nodeRunIdentifier": node_run });
        match self
            .call_with(
                Method::PATCH,
                &["workflows", "runs", "ack"],
                &[],
                Some(&body),
                call,
            )
            .await
        {
            Ok(answer) => Ok(answer.get("acked").and_then(Value::as_bool).unwrap_or(true)),
            Err(PortError::Invalid { status: 409, .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// `GET /organization`: the agent transport Port uses (`settings.portAgentStreamerName`),
    /// `None` when the answer does not say.
    pub async fn agent_streamer(&self) -> Result<Option<String>, PortError> {
        let answer = self.call(Method::GET, &["organization"], &[], None).await?;
        let org = answer.get("organization").unwrap_or(&answer);
        Ok(org
            .pointer("/settings/portAgentStreamerName")
            .and_then(Value::as_str)
            .map(str::to_owned))
    }

    /// Sets `settings.portAgentStreamerName`. An organisation-wide setting: only on request.
    ///
    /// Port's API description requires the organisation's `name` in a `PATCH /organization`,
    /// and does not say whether `settings` is merged or replaced: so the organisation is read
    /// first and sent back with its name and every setting it had, this one changed.
    pub async fn set_agent_streamer(&self, streamer: &str) -> Result<(), PortError> {
        let answer = self.call(Method::GET, &["organization"], &[], None).await?;
        let org = answer.get("organization").unwrap_or(&answer);
        let Some(name) = org.get("name").and_then(Value::as_str) else {
            return Err(PortError::Unexpected {
                status: 200,
                url: "/v1/organization (no name in the answer)".into(),
            });
        };
        let mut settings = org
            .get("settings")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        settings.insert("portAgentStreamerName".into(), json!(streamer));
        self.call(
            Method::PATCH,
            &["organization"],
            &[],
            Some(&json!({ "name": name, "settings": settings })),
        )
        .await
        .map(|_| ())
    }
}
