//! A synchronized answer (`POST /webhook?wait=N`): a Port Workflows `WEBHOOK` node with
//! `synchronized: true` ends when our HTTP answer comes and hands it to later nodes as
//! `.outputs[<node>].response.data`. The run is journaled and runs as any other; the answer
//! only waits (at most `N` seconds) for its end. Work that takes longer is answered `202`
//! as usual and reports through the node-run API, which Port may refuse for a node it
//! already ended: such work belongs in a `synchronized: false` node.

use std::time::Duration;

use actix_web::HttpResponse;
use serde_json::json;

use crate::core::RunState;
use crate::domain::RunId;
use crate::runs::Runner;

/// How often the run's state is looked at while waiting.
const POLL: Duration = Duration::from_millis(25);

/// The run's end within `wait`: `200` with its status, summary, link and output for a
/// success, `422` with the same for a failure (so the node fails); else `202`.
pub async fn answer(runner: &Runner, run_id: &RunId, wait: Duration) -> HttpResponse {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let tail = runner.registry().tail(run_id, usize::MAX);
        if tail.is_some_and(|t| t.state.is_final()) {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            return HttpResponse::Accepted().json(json!({
                "ok": true,
                "runId": run_id,
                "status": "IN_PROGRESS",
                "message": format!("still running after {}s: its end is reported through Port's API", wait.as_secs()),
            }));
        }
        tokio::time::sleep(POLL).await;
    }
    let Some(record) = runner.registry().get(run_id) else {
        return HttpResponse::Accepted().json(json!({ "ok": true, "runId": run_id }));
    };
    let success = record.state == RunState::Success;
    let body = json!({
        "ok": success,
        "runId": run_id,
        "status": if success { "SUCCESS" } else { "FAILURE" },
        "summary": record.summary,
        "link": record.link,
        "output": record.output,
    });
    match success {
        true => HttpResponse::Ok().json(body),
        false => HttpResponse::UnprocessableEntity().json(body),
    }
}
