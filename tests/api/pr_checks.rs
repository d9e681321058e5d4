//! Pull-request checks end to end: signed `pr:` events on the Bitbucket webhook, the check
//! run, and what fake Bitbucket recorded (the Code Insights report, its annotations, the
//! build statuses), with Port only read.

use port_runner::bitbucket::FileApi;
use serde_json::{json, Value};

use crate::gitops::{entity_writes, gitops_app, list, sync};
use crate::helpers::{post_bitbucket_event, TestApp};

const REPO: &str = "P/svc";

pub(crate) fn pr_event(id: u64, commit: &str, extra: Value) -> Value {
    let repo = json!({"slug": "svc", "name": "svc", "project": {"key": "P"}});
    let mut body = json!({
        "eventKey": "pr:opened",
        "date": "2026-12-01T10:00:00+0000",
        "actor": {"name": "dev"},
        "pullRequest": {
            "id": id, "version": 0, "title": "Change the catalog", "state": "OPEN", "open": true,
            "fromRef": {"id": "refs/heads/feature", "displayId": "feature",
                        "latestCommit": commit, "repository": repo},
            "toRef": {"id": "refs/heads/main", "displayId": "main",
                      "latestCommit": "0000000000000000000000000000000000000002", "repository": repo}
        }
    });
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

async fn post(app: &TestApp, key: &str, body: &Value) -> (u16, Value) {
    post_bitbucket_event(&app.base_url, key, body).await
}

/// Posts the event and waits for its check run to end.
pub(crate) async fn check(app: &TestApp, key: &str, body: &Value) -> Value {
    let (status, answer) = post(app, key, body).await;
    assert_eq!(status, 202, "{answer}");
    let run_id = answer["runId"].as_str().unwrap().to_owned();
    assert!(run_id.starts_with("pr-check-"), "{answer}");
    app.wait_local_final(&run_id).await
}

fn data(report: &Value, title: &str) -> Value {
    report["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["title"] == title)
        .map(|d| d["value"].clone())
        .unwrap_or(Value::Null)
}

fn states(app: &TestApp, commit: &str) -> Vec<String> {
    app.bitbucket()
        .builds(REPO, commit)
        .iter()
        .map(|b| b["state"].as_str().unwrap().to_owned())
        .collect()
}

/// The repository synced with `a` and `gone` on its default branch.
async fn synced() -> TestApp {
    let app = gitops_app(FileApi::Raw).await;
    app.bitbucket()
        .put_file("P", "svc", "port.yaml", &list(&["a", "gone"]));
    let (fin, log) = sync(&app, json!({})).await;
    assert_eq!(fin["status"], "SUCCESS", "{log:#?}");
    app
}

const C1: &str = "c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1";
const C2: &str = "c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_enum_fails_on_its_line_deletions_are_reported_and_a_new_push_is_checked_again() {
    let app = synced().await;
    let writes = entity_writes(&app);
    let bb = app.bitbucket();
    // `a` gets an enum value the blueprint refuses (line 5), `fresh` is new, `gone` is gone.
    let file = "\
- identifier: a
  title: Service a
  blueprint: microservice
  properties:
    tier: middle
- identifier: fresh
  title: Fresh
  blueprint: microservice
  properties:
    tier: frontend
";
    bb.put_commit("P", "svc", C1, &[("port.yaml", file), ("README.md", "hi")]);
    let run = check(&app, "pr:opened", &pr_event(7, C1, json!({}))).await;
    assert_eq!(run["state"], "SUCCESS", "{run:#}");
    let summary = run["summary"].as_str().unwrap();
    assert!(
        summary.starts_with("P/svc pull request #7 at c1c1c1c1c1c1: FAIL, 1 to create, 0 to update, 1 to delete; 1 problem"),
        "{summary}"
    );

    let report = bb.report(REPO, C1, "port-catalog").expect("a report");
    assert_eq!(report["title"], "Port catalog");
    assert_eq!(report["result"], "FAIL");
    assert_eq!(report["reporter"], "port-runner");
    assert_eq!(
        (
            data(&report, "Create"),
            data(&report, "Update"),
            data(&report, "Delete"),
            data(&report, "Problems")
        ),
        (json!(1), json!(0), json!(1), json!(1))
    );
    let details = report["details"].as_str().unwrap();
    assert!(details.contains("DELETES: microservice/gone."), "{details}");
    assert!(
        details.contains("Creates: microservice/fresh."),
        "{details}"
    );
    assert_eq!(
        report["link"],
        "https://app.port.io/microserviceEntity?identifier=gone"
    );

    let annotations = bb.annotations(REPO, C1, "port-catalog");
    assert_eq!(annotations.len(), 2, "{annotations:#?}");
    let bad = &annotations[0];
    assert_eq!(
        (bad["path"].as_str(), bad["line"].as_u64()),
        (Some("port.yaml"), Some(5)),
        "{bad}"
    );
    assert_eq!(bad["severity"], "HIGH");
    let message = bad["message"].as_str().unwrap();
    assert!(
        message.starts_with("entity 'a' (item 0): property 'tier' must be one of \"frontend\", \"backend\", got \"middle\""),
        "{message}"
    );
    let deletion = &annotations[1];
    assert_eq!(
        (deletion["line"].as_u64(), deletion["severity"].as_str()),
        (Some(0), Some("LOW"))
    );
    assert!(deletion["message"]
        .as_str()
        .unwrap()
        .contains("deletes microservice/gone"));
    assert_eq!(states(&app, C1), ["INPROGRESS", "FAILED"]);

    // Read-only against Port: nothing written, nothing deleted.
    assert_eq!(entity_writes(&app), writes);
    assert!(app.port().entity("microservice", "gone").is_some());
    assert!(app.port().entity("microservice", "fresh").is_none());

    // A redelivery of the same event is recognised, not checked again.
    let (status, _) = post(&app, "pr:opened", &pr_event(7, C1, json!({}))).await;
    assert_eq!(status, 200);

    // The author fixes the enum and pushes: the new commit is checked on its own.
    let fixed = file.replace("tier: middle", "tier: frontend");
    bb.put_commit("P", "svc", C2, &[("port.yaml", &fixed)]);
    let updated = pr_event(
        7,
        C2,
        json!({"eventKey": "pr:from_ref_updated", "previousFromHash": C1}),
    );
    let run = check(&app, "pr:from_ref_updated", &updated).await;
    assert_eq!(run["state"], "SUCCESS", "{run:#}");
    let report = bb.report(REPO, C2, "port-catalog").unwrap();
    assert_eq!(report["result"], "PASS");
    assert_eq!(
        (data(&report, "Update"), data(&report, "Problems")),
        (json!(1), json!(0))
    );
    let details = report["details"].as_str().unwrap();
    assert!(
        details.contains("Updates: microservice/a (properties.tier)."),
        "{details}"
    );
    assert_eq!(
        bb.annotations(REPO, C2, "port-catalog").len(),
        1,
        "only the deletion"
    );
    assert_eq!(states(&app, C2), ["INPROGRESS", "SUCCESSFUL"]);

    // The target branch changes: the same commit is checked again, its annotations replaced.
    bb.put_commit(
        "P",
        "svc",
        "refs/heads/develop",
        &[("port.yaml", &list(&["a", "gone"]))],
    );
    let mut retarget = pr_event(
        7,
        C1,
        json!({"eventKey": "pr:modified", "previousTarget": {"id": "refs/heads/main", "displayId": "main"}}),
    );
    retarget["pullRequest"]["toRef"]["id"] = json!("refs/heads/develop");
    let run = check(&app, "pr:modified", &retarget).await;
    assert_eq!(run["state"], "SUCCESS", "{run:#}");
    assert_eq!(
        bb.annotations(REPO, C1, "port-catalog").len(),
        2,
        "replaced, not piled up"
    );
    assert_eq!(
        states(&app, C1),
        ["INPROGRESS", "FAILED", "INPROGRESS", "FAILED"]
    );
    assert_eq!(entity_writes(&app), writes);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_request_that_leaves_the_file_alone_passes_and_others_are_ignored() {
    let app = synced().await;
    let bb = app.bitbucket();
    bb.put_commit(
        "P",
        "svc",
        C1,
        &[
            ("port.yaml", &list(&["a", "gone"])),
            ("src/main.rs", "fn main() {}"),
        ],
    );
    let run = check(&app, "pr:opened", &pr_event(8, C1, json!({}))).await;
    assert_eq!(run["state"], "SUCCESS", "{run:#}");
    let report = bb.report(REPO, C1, "port-catalog").unwrap();
    assert_eq!(report["result"], "PASS");
    assert_eq!(
        report["details"],
        "This pull request does not change port.yaml: nothing changes in Port's catalog."
    );
    assert!(bb.annotations(REPO, C1, "port-catalog").is_empty());
    assert_eq!(states(&app, C1), ["INPROGRESS", "SUCCESSFUL"]);

    // A title edit and a comment are acknowledged and ignored.
    let (status, answer) = post(
        &app,
        "pr:modified",
        &pr_event(8, C1, json!({"previousTitle": "old"})),
    )
    .await;
    assert_eq!(status, 202);
    assert_eq!(answer["ignored"], "pr:modified without a new target branch");
    let (status, answer) = post(&app, "pr:comment:added", &pr_event(8, C1, json!({}))).await;
    assert_eq!(
        (status, answer["ignored"].as_str()),
        (202, Some("event pr:comment:added"))
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_request_deleting_the_file_reports_every_deletion() {
    let app = synced().await;
    let bb = app.bitbucket();
    bb.put_commit("P", "svc", C1, &[("README.md", "no more catalog")]);
    let run = check(&app, "pr:opened", &pr_event(9, C1, json!({}))).await;
    assert_eq!(run["state"], "SUCCESS", "{run:#}");
    let report = bb.report(REPO, C1, "port-catalog").unwrap();
    assert_eq!(report["result"], "PASS");
    assert_eq!(data(&report, "Delete"), json!(2));
    let details = report["details"].as_str().unwrap();
    assert!(
        details.starts_with("This pull request deletes port.yaml.")
            && details.contains("DELETES: microservice/a, microservice/gone."),
        "{details}"
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_that_may_not_publish_gets_one_clear_message() {
    let app = synced().await;
    let bb = app.bitbucket();
    bb.put_commit("P", "svc", C1, &[("port.yaml", &list(&["a"]))]);
    bb.set_read_only(true);
    bb.reset_requests();
    let run = check(&app, "pr:opened", &pr_event(10, C1, json!({}))).await;
    assert_eq!(run["state"], "FAILURE", "{run:#}");
    let summary = run["summary"].as_str().unwrap();
    assert!(
        summary.contains("Bitbucket refused to publish the check on P/svc (403)")
            && summary.contains("the account needs read access to the repository"),
        "{summary}"
    );
    let publishing: Vec<String> = bb
        .requests()
        .into_iter()
        .filter(|r| r.contains("/rest/insights/") || r.contains("/rest/api/latest/"))
        // Asking which builds API the server has is reading, not publishing.
        .filter(|r| !r.contains("/build/capabilities"))
        .collect();
    assert_eq!(
        publishing.len(),
        1,
        "tried once, then stopped: {publishing:#?}"
    );
    assert!(bb.report(REPO, C1, "port-catalog").is_none());
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_cannot_start_a_pull_request_check() {
    let app = synced().await;
    let run_id = crate::helpers::unique_run_id();
    let inputs =
        json!({"repository": REPO, "pull_request": 1, "commit": C1, "target": "refs/heads/main"});
    let response = app
        .post_signed(&crate::helpers::legacy(
            &run_id,
            "gitops_pr_check",
            "CREATE",
            inputs,
        ))
        .await;
    assert_eq!(response.status(), 202);
    let fin = app.port().wait_final(&run_id).await;
    assert_eq!(fin["status"], "FAILURE");
    let summary = fin["summary"].as_str().unwrap();
    assert!(
        summary.contains("no handler for action 'gitops_pr_check'"),
        "{summary}"
    );
    assert!(
        !summary.contains("handles: gitops_pr_check") && !summary.contains(", gitops_pr_check"),
        "{summary}"
    );
    assert!(app.bitbucket().builds(REPO, C1).is_empty());
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_server_before_7_14_the_check_publishes_with_legacy_build_statuses_and_long_ids() {
    // Port allows identifiers of 1000 characters: `port-delete-microservice/<id>` is far over
    // the 450 an annotation's externalId may have.
    let long = format!("svc-{}", "x".repeat(600));
    let app = gitops_app(FileApi::Raw).await;
    let bb = app.bitbucket();
    bb.put_file("P", "svc", "port.yaml", &list(&["a", &long]));
    let (fin, log) = sync(&app, json!({})).await;
    assert_eq!(fin["status"], "SUCCESS", "{log:#?}");
    bb.set_before_7_14(true);
    bb.put_commit("P", "svc", C1, &[("port.yaml", &list(&["a"]))]);
    let run = check(&app, "pr:opened", &pr_event(9, C1, json!({}))).await;
    assert_eq!(run["state"], "SUCCESS", "{run:#}");
    let report = bb.report(REPO, C1, "port-catalog").expect("a report");
    assert_eq!(data(&report, "Delete"), json!(1));
    let annotations = bb.annotations(REPO, C1, "port-catalog");
    assert_eq!(annotations.len(), 1, "{annotations:#?}");
    let id = annotations[0]["externalId"].as_str().unwrap();
    assert!(
        id.chars().count() <= 450 && id.starts_with("port-delete-microservice/svc-x"),
        "{id}"
    );
    // Nothing went to the builds API the server lacks; the legacy one has both states.
    assert!(bb.builds(REPO, C1).is_empty());
    let legacy: Vec<Value> = bb.legacy_builds(C1);
    let states: Vec<&str> = legacy
        .iter()
        .map(|b| b["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["INPROGRESS", "SUCCESSFUL"], "{legacy:#?}");
    assert!(
        bb.requests()
            .iter()
            .any(|r| r.starts_with("/rest/api/latest/build/capabilities")),
        "{:#?}",
        bb.requests()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_another_account_made_is_refused_with_its_real_cause() {
    let app = synced().await;
    let bb = app.bitbucket();
    bb.put_commit("P", "svc", C1, &[("port.yaml", &list(&["a", "gone"]))]);
    bb.put_foreign_report(REPO, C1, "port-catalog");
    let run = check(&app, "pr:opened", &pr_event(8, C1, json!({}))).await;
    assert_eq!(run["state"], "FAILURE", "{run:#}");
    let summary = run["summary"].as_str().unwrap();
    assert!(
        summary.contains("only the account that created a report may replace it")
            && !summary.contains("write"),
        "{summary}"
    );
}
