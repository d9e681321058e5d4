//! `port-runner invoke FILE`: sign a sample invocation, send it, follow the run.
//!
//! A fresh run id is put in by default so a sample can be sent again and again; the
//! exit code is 0 only if the run ended SUCCESS.

use std::time::Duration;

use anyhow::{bail, Context as _};
use serde_json::Value;

use crate::cli::InvokeArgs;
use crate::config::local_secret_path;
use crate::domain::RunId;
use crate::webhook::signature::{sign, timestamp_now, SIGNATURE_HEADER, TIMESTAMP_HEADER};

/// What the run ended as (or that we stopped following it).
#[derive(Debug, PartialEq, Eq)]
pub enum InvokeOutcome {
    Success,
    Failure,
    /// Accepted, but not followed (`--no-wait`, or `GET /runs` is not open to us).
    Accepted,
}

pub async fn run(args: InvokeArgs) -> anyhow::Result<InvokeOutcome> {
    let text = std::fs::read_to_string(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    let mut body: Value = serde_json::from_str(&text).map_err(|e| {
        anyhow::anyhow!(
            "{}: not valid JSON at line {}, column {}: {e}",
            args.file.display(),
            e.line(),
            e.column()
        )
    })?;
    let run_id = set_run_id(&mut body, args.keep_run_id)
        .with_context(|| format!("{}: not an invocation", args.file.display()))?;
    let (secret, key) = signing_secret(&args)?;
    let raw = serde_json::to_vec(&body)?;
    let timestamp = timestamp_now();
    let base = args.runner_url.trim_end_matches('/');

    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let response = http
        .post(format!("{base}/webhook"))
        .header("content-type", "application/json")
        .header(TIMESTAMP_HEADER, &timestamp)
        .header(SIGNATURE_HEADER, sign(&secret, &timestamp, &raw))
        .body(raw)
        .send()
        .await
        .with_context(|| {
            format!(
                "cannot reach {base}/webhook: is `port-runner serve` running there? (a runner on another address or port: --url or PORT_RUNNER_URL)"
            )
        })?;
    let status = response.status();
    let answer: Value = response.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        let message = answer["message"].as_str().unwrap_or("no message");
        let signed = match status.as_u16() {
            401 => format!("; invoke signed it with {key}"),
            _ => String::new(),
        };
        bail!("the server refused the invocation ({status}): {message}{signed}");
    }
    if answer["duplicate"] == true {
        eprintln!("run {run_id} was already accepted earlier: not run again (give no --keep-run-id to send it as a new run)");
    } else {
        eprintln!("accepted run {run_id} ({status})");
    }
    if args.no_wait {
        return Ok(InvokeOutcome::Accepted);
    }
    follow(&http, base, &run_id, Duration::from_secs(args.wait_secs)).await
}

/// Puts a fresh run id into the body (unless told to keep it) and returns the id sent.
fn set_run_id(body: &mut Value, keep: bool) -> anyhow::Result<String> {
    let slot = if body.get("port_context").is_some() {
        &mut body["port_context"]["runId"]
    } else if body.get("context").is_some() {
        &mut body["context"]["runId"]
    } else {
        bail!("expected a legacy envelope (context.runId) or a v2 body (port_context.runId)");
    };
    if !keep || !slot.is_string() {
        *slot = Value::String(RunId::generate("r_local_").to_string());
    }
    Ok(slot.as_str().unwrap_or_default().to_owned())
}

/// The key to sign with, and where it came from (said when the runner refuses it).
fn signing_secret(args: &InvokeArgs) -> anyhow::Result<(String, String)> {
    for name in ["PORT_RUNNER_LOCAL_SECRET", "PORT_CLIENT_SECRET"] {
        if let Ok(secret) = std::env::var(name) {
            if !secret.is_empty() {
                return Ok((secret, format!("{name} from the environment")));
            }
        }
    }
    let path = local_secret_path(&args.data_dir);
    let secret = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "no signing key: set PORT_RUNNER_LOCAL_SECRET or PORT_CLIENT_SECRET, or start `port-runner serve` in local mode first (it writes {})",
            path.display()
        )
    })?;
    let from = format!(
        "the local secret in {} (another runner's data folder: --data-dir or PORT_RUNNER_DATA_DIR)",
        path.display()
    );
    Ok((secret.trim().to_owned(), from))
}

async fn follow(
    http: &reqwest::Client,
    base: &str,
    run_id: &str,
    wait: Duration,
) -> anyhow::Result<InvokeOutcome> {
    let url = format!("{base}/runs/{run_id}");
    let mut request = http.get(&url);
    if let Ok(token) = std::env::var("PORT_RUNNER_ADMIN_TOKEN") {
        request = request.bearer_auth(token);
    }
    let deadline = tokio::time::Instant::now() + wait;
    let mut printed = 0;
    loop {
        let response = request
            .try_clone()
            .expect("GET has no body")
            .send()
            .await
            .with_context(|| format!("cannot reach {url}"))?;
        if matches!(response.status().as_u16(), 401 | 403) {
            eprintln!(
                "the run's progress is in Port (GET /runs needs PORT_RUNNER_ADMIN_TOKEN here)"
            );
            return Ok(InvokeOutcome::Accepted);
        }
        let answer: Value = response
            .json()
            .await
            .context("unreadable answer from GET /runs")?;
        let run = &answer["run"];
        if let Some(logs) = run["logs"].as_array() {
            for line in logs.iter().skip(printed) {
                println!("{}", line["message"].as_str().unwrap_or_default());
            }
            printed = printed.max(logs.len());
        }
        match run["state"].as_str() {
            Some("SUCCESS") => return Ok(InvokeOutcome::Success),
            Some("FAILURE") => return Ok(InvokeOutcome::Failure),
            _ => {}
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("run {run_id} did not finish within {}s", wait.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_fresh_run_id_replaces_the_samples_unless_kept() {
        let mut legacy = json!({"context": {"runId": "r_sample"}, "payload": {}});
        let id = set_run_id(&mut legacy, false).unwrap();
        assert!(id.starts_with("r_local_"));
        assert_eq!(legacy["context"]["runId"], id);

        let mut v2 = json!({"port_context": {"runId": "r_keep"}});
        assert_eq!(set_run_id(&mut v2, true).unwrap(), "r_keep");
        assert!(set_run_id(&mut json!({"x": 1}), false).is_err());
    }
}
