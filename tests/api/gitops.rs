//! GitOps sync end to end: the gitops_sync action (signed webhook) against fake Bitbucket
//! and fake Port, the push webhook, and `port-runner sync`.

use std::time::Duration;

use port_runner::bitbucket::FileApi;
use serde_json::{json, Value};

use crate::helpers::{
    legacy, spawn_app_with, unique_run_id, until, AppOptions, TestApp, BB_HOOK_SECRET,
};

pub(crate) fn microservice_blueprint() -> Value {
    json!({
        "identifier": "microservice",
        "title": "Microservice",
        "schema": {
            "properties": {
                "url": {"type": "string", "format": "url"},
                "tier": {"type": "string", "enum": ["frontend", "backend"]},
                "replicas": {"type": "number", "minimum": 1},
                "language": {"type": "string"}
            },
            "required": ["tier"]
        },
        "relations": {
            "depends_on": {"target": "microservice", "many": true, "required": false}
        }
    })
}

pub(crate) async fn gitops_app(file_api: FileApi) -> TestApp {
    let app = spawn_app_with(AppOptions {
        gitops: true,
        file_api,
        ..AppOptions::default()
    })
    .await;
    app.port().add_blueprint(microservice_blueprint());
    app
}

pub(crate) fn service(id: &str, tier: &str) -> String {
    format!("identifier: {id}\ntitle: Service {id}\nblueprint: microservice\nproperties:\n  tier: {tier}\n  url: https://{id}.example.com\n")
}

pub(crate) fn list(ids: &[&str]) -> String {
    ids.iter()
        .map(|id| {
            format!("- identifier: {id}\n  title: Service {id}\n  blueprint: microservice\n  properties:\n    tier: backend\n")
        })
        .collect()
}

/// Runs the gitops_sync action through the signed webhook; returns the final PATCH and the log.
pub(crate) async fn sync(app: &TestApp, inputs: Value) -> (Value, Vec<String>) {
    let run_id = unique_run_id();
    let response = app
        .post_signed(&legacy(&run_id, "gitops_sync", "CREATE", inputs))
        .await;
    assert_eq!(response.status(), 202);
    let fin = app.port().wait_final(&run_id).await;
    (fin, app.port().log_lines(&run_id))
}

pub(crate) fn entity_writes(app: &TestApp) -> usize {
    app.port()
        .requests()
        .iter()
        .filter(|r| r.path.contains("/entities") && (r.method == "POST" || r.method == "DELETE"))
        .filter(|r| !r.path.ends_with("/search"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_and_list_files_are_synced_with_the_run_id_and_without_merge() {
    // port.yml is read when asked for (--gitops-paths port.yaml,port.yml).
    let app = spawn_app_with(AppOptions {
        gitops: true,
        gitops_paths: vec!["port.yaml".into(), "port.yml".into()],
        ..AppOptions::default()
    })
    .await;
    app.port().add_blueprint(microservice_blueprint());
    app.bitbucket()
        .put_file("PAY", "api", "port.yaml", &service("pay-api", "backend"));
    app.bitbucket().put_file(
        "PAY",
        "workers",
        "port.yml",
        &list(&["pay-worker", "pay-cron"]),
    );
    app.bitbucket().add_repo("PAY", "docs");
    let (fin, log) = sync(&app, json!({})).await;
    assert_eq!(fin["status"], "SUCCESS", "{log:#?}");
    let summary = fin["summary"].as_str().unwrap();
    assert!(
        summary.contains("create 3") && summary.contains("everything applied"),
        "{summary}"
    );
    for id in ["pay-api", "pay-worker", "pay-cron"] {
        assert!(app.port().entity("microservice", id).is_some(), "{id}");
    }
    let api = app.port().entity("microservice", "pay-api").unwrap();
    assert_eq!(api["properties"]["url"], "https://pay-api.example.com");
    assert!(api.get("blueprint").is_none());
    let bulk = app.port().requests_to("POST", "/entities/bulk");
    assert!(!bulk.is_empty());
    for call in &bulk {
        assert!(
            call.query.starts_with("upsert=true&run_id=r_"),
            "{}",
            call.query
        );
        assert!(
            !call.query.contains("merge"),
            "the file is the whole truth: {}",
            call.query
        );
    }
    assert!(
        log.iter().any(|l| l == "created microservice/pay-api"),
        "{log:#?}"
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_longer_than_one_browse_page_is_read_whole() {
    let app = gitops_app(FileApi::Browse).await;
    app.bitbucket().set_lines_page_max(100);
    let ids: Vec<String> = (0..80).map(|i| format!("svc-{i:03}")).collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let text = list(&refs);
    assert!(text.lines().count() > 300, "spans several pages");
    app.bitbucket().put_file("BIG", "mono", "port.yaml", &text);
    let (fin, log) = sync(&app, json!({})).await;
    assert_eq!(fin["status"], "SUCCESS", "{log:#?}");
    for id in &ids {
        assert!(
            app.port().entity("microservice", id).is_some(),
            "{id} missing"
        );
    }
    let browse_calls = app
        .bitbucket()
        .requests()
        .iter()
        .filter(|r| r.contains("/browse/port.yaml"))
        .count();
    assert!(browse_calls >= 3, "{browse_calls}");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_yaml_and_invalid_entities_are_reported_precisely_and_the_rest_is_synced() {
    let app = gitops_app(FileApi::Raw).await;
    app.bitbucket().put_file(
        "A",
        "broken",
        "port.yaml",
        "identifier: x\ntitle: [unclosed\nblueprint: microservice\n",
    );
    let mut mixed = list(&["good-one"]);
    mixed.push_str("- identifier: bad tier\n  title: Bad\n  blueprint: microservice\n  properties:\n    tier: middle\n");
    mixed.push_str("- identifier: ghost\n  title: Ghost\n  blueprint: nosuchblueprint\n");
    mixed.push_str(
        "- identifier: no-title\n  blueprint: microservice\n  properties:\n    tier: backend\n",
    );
    app.bitbucket().put_file("A", "mixed", "port.yaml", &mixed);
    app.bitbucket()
        .put_file("B", "fine", "port.yaml", &service("fine", "frontend"));

    let (fin, log) = sync(&app, json!({})).await;
    assert_eq!(fin["status"], "FAILURE");
    let summary = fin["summary"].as_str().unwrap();
    assert!(
        summary.contains("NOT everything applied: 4 rejected"),
        "{summary}"
    );
    assert!(summary.contains("create 2"), "{summary}");
    assert!(app.port().entity("microservice", "good-one").is_some());
    assert!(app.port().entity("microservice", "fine").is_some());
    let expect = [
        "rejected: A/broken:port.yaml: YAML syntax error at line 3, column",
        "rejected: A/mixed:port.yaml: entity 'bad tier' (item 1): identifier: \"bad tier\" contains ' '",
        "rejected: A/mixed:port.yaml: entity 'ghost' (item 2): unknown blueprint 'nosuchblueprint'",
        "rejected: A/mixed:port.yaml: entity 'no-title' (item 3): title is missing",
    ];
    for e in expect {
        assert!(
            log.iter().any(|l| l.starts_with(e)),
            "missing {e:?} in {log:#?}"
        );
    }
    let bad = log.iter().find(|l| l.contains("'bad tier'")).unwrap();
    assert!(
        bad.contains("property 'tier' must be one of \"frontend\", \"backend\", got \"middle\""),
        "{bad}"
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_entities_files_and_repositories_are_deleted_and_nothing_else() {
    let app = gitops_app(FileApi::Raw).await;
    let bb = app.bitbucket();
    bb.put_file("P", "list", "port.yaml", &list(&["keep", "drop"]));
    bb.put_file(
        "P",
        "file-goes",
        "port.yaml",
        &service("orphan-file", "backend"),
    );
    bb.put_file(
        "P",
        "repo-goes",
        "port.yaml",
        &service("orphan-repo", "backend"),
    );
    // An entity this runner did not create: never touched.
    app.port().put_entity(
        "microservice",
        json!({"identifier": "hand-made", "title": "By hand"}),
    );
    let (fin, _) = sync(&app, json!({})).await;
    assert_eq!(fin["status"], "SUCCESS");

    bb.put_file("P", "list", "port.yaml", &list(&["keep"]));
    bb.remove_file("P", "file-goes", "port.yaml");
    bb.remove_repo("P", "repo-goes");
    let (fin, log) = sync(&app, json!({})).await;
    assert_eq!(fin["status"], "SUCCESS", "{log:#?}");
    assert!(app.port().entity("microservice", "keep").is_some());
    for gone in ["drop", "orphan-file", "orphan-repo"] {
        assert!(
            app.port().entity("microservice", gone).is_none(),
            "{gone} still there"
        );
        assert!(
            log.contains(&format!("deleted microservice/{gone}")),
            "{log:#?}"
        );
    }
    assert!(app.port().entity("microservice", "hand-made").is_some());
    let deletes = app.port().requests_to("DELETE", "/entities/");
    assert_eq!(deletes.len(), 3);
    assert!(deletes.iter().all(|d| d.query.contains("run_id=r_")));
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repository_that_errors_keeps_its_entities() {
    let app = gitops_app(FileApi::Raw).await;
    let bb = app.bitbucket();
    bb.put_file("P", "flaky", "port.yaml", &service("flaky-svc", "backend"));
    bb.put_file(
        "P",
        "steady",
        "port.yaml",
        &service("steady-svc", "backend"),
    );
    assert_eq!(sync(&app, json!({})).await.0["status"], "SUCCESS");

    // The file changes, but Bitbucket answers 503 for that repository throughout.
    bb.put_file("P", "flaky", "port.yaml", "[]");
    bb.fail("/repos/flaky/", 503, 1000, None);
    let (fin, log) = sync(&app, json!({})).await;
    assert_eq!(fin["status"], "FAILURE");
    assert!(
        app.port().entity("microservice", "flaky-svc").is_some(),
        "a 5xx is not a deletion"
    );
    assert!(
        log.iter()
            .any(|l| l.starts_with("read failed: P/flaky: Bitbucket is unavailable")),
        "{log:#?}"
    );
    assert!(
        log.contains(&"deletions skipped: P/flaky: it could not be read".to_owned()),
        "{log:#?}"
    );
    assert!(app.port().requests_to("DELETE", "/entities/").is_empty());
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_no_change_resync_writes_nothing_and_reads_each_repository_once() {
    let app = gitops_app(FileApi::Raw).await;
    let bb = app.bitbucket();
    bb.set_page_max(25);
    for i in 0..40 {
        if i % 3 == 0 {
            bb.add_repo("P", &format!("r{i:02}"));
        } else {
            bb.put_file(
                "P",
                &format!("r{i:02}"),
                "port.yaml",
                &service(&format!("s{i:02}"), "backend"),
            );
        }
    }
    assert_eq!(sync(&app, json!({})).await.0["status"], "SUCCESS");
    let writes_before = entity_writes(&app);
    bb.reset_requests();

    let (fin, log) = sync(&app, json!({})).await;
    assert_eq!(fin["status"], "SUCCESS", "{log:#?}");
    assert_eq!(entity_writes(&app), writes_before, "zero Port writes");
    let requests = bb.requests();
    let listings = requests
        .iter()
        .filter(|r| {
            r.ends_with("/repos?start=0&limit=1000")
                || r.contains("/repos?start=")
                || r.starts_with("/rest/api/1.0/projects?")
        })
        .count();
    assert_eq!(
        requests.len() - listings,
        40,
        "one read per repository: {requests:#?}"
    );
    assert!(
        fin["summary"]
            .as_str()
            .unwrap()
            .contains("40 repositories (40 unchanged)"),
        "{fin}"
    );

    // A commit elsewhere in a repository without a file costs its read, and still writes nothing.
    bb.commit_elsewhere("P", "r00");
    let (fin, _) = sync(&app, json!({})).await;
    assert_eq!(fin["status"], "SUCCESS");
    assert_eq!(entity_writes(&app), writes_before);

    // --full re-applies everything.
    let (fin, _) = sync(&app, json!({"full": true})).await;
    assert!(
        fin["summary"].as_str().unwrap().contains("update 26"),
        "{fin}"
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_property_removed_from_the_file_disappears_from_port() {
    let app = gitops_app(FileApi::Raw).await;
    app.bitbucket()
        .put_file("P", "svc", "port.yaml", &service("svc", "backend"));
    sync(&app, json!({})).await;
    assert!(
        app.port().entity("microservice", "svc").unwrap()["properties"]
            .get("url")
            .is_some()
    );
    app.bitbucket().put_file(
        "P",
        "svc",
        "port.yaml",
        "identifier: svc\ntitle: Svc\nblueprint: microservice\nproperties:\n  tier: backend\n",
    );
    let (fin, _) = sync(&app, json!({})).await;
    assert!(
        fin["summary"].as_str().unwrap().contains("update 1"),
        "{fin}"
    );
    let props = &app.port().entity("microservice", "svc").unwrap()["properties"];
    assert_eq!(props, &json!({"tier": "backend"}));
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_files_claiming_one_entity_are_a_conflict_not_an_overwrite() {
    let app = gitops_app(FileApi::Raw).await;
    app.bitbucket()
        .put_file("P", "first", "port.yaml", &service("shared", "backend"));
    sync(&app, json!({})).await;
    app.bitbucket()
        .put_file("P", "second", "port.yaml", &service("shared", "frontend"));
    let (fin, log) = sync(&app, json!({})).await;
    assert_eq!(fin["status"], "FAILURE");
    assert!(log.iter().any(|l| l.starts_with("conflict: P/second:port.yaml: entity 'shared': microservice/shared is also declared by P/first")), "{log:#?}");
    assert_eq!(
        app.port().entity("microservice", "shared").unwrap()["properties"]["tier"],
        "backend"
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_are_waited_out_and_bad_credentials_stop_the_sync() {
    let app = gitops_app(FileApi::Raw).await;
    app.bitbucket()
        .put_file("P", "svc", "port.yaml", &service("svc", "backend"));
    app.bitbucket().fail("/raw/port.yaml", 429, 2, Some("0"));
    let (fin, log) = sync(&app, json!({})).await;
    assert_eq!(fin["status"], "SUCCESS", "{log:#?}");
    assert!(app.port().entity("microservice", "svc").is_some());

    app.bitbucket()
        .fail("/rest/api/1.0/projects", 401, 1000, None);
    let (fin, _) = sync(&app, json!({})).await;
    assert_eq!(fin["status"], "FAILURE");
    let summary = fin["summary"].as_str().unwrap();
    assert!(
        summary.starts_with("sync stopped: Bitbucket refused our credentials (401)"),
        "{summary}"
    );
    assert!(summary.contains("BITBUCKET_USERNAME"), "{summary}");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_writes_nothing_and_says_what_it_would_do() {
    let app = gitops_app(FileApi::Raw).await;
    app.bitbucket()
        .put_file("P", "svc", "port.yaml", &list(&["a", "b"]));
    let (fin, log) = sync(&app, json!({"dry_run": true})).await;
    assert_eq!(fin["status"], "SUCCESS");
    assert!(
        fin["summary"].as_str().unwrap().starts_with("dry run:"),
        "{fin}"
    );
    assert!(
        log.contains(&"would create microservice/a".to_owned()),
        "{log:#?}"
    );
    assert_eq!(entity_writes(&app), 0);
    // Nothing was recorded either: a real sync afterwards creates both.
    let (fin, _) = sync(&app, json!({})).await;
    assert!(
        fin["summary"].as_str().unwrap().contains("create 2"),
        "{fin}"
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_push_webhook_syncs_only_its_repository() {
    let app = gitops_app(FileApi::Raw).await;
    let bb = app.bitbucket();
    bb.put_file(
        "P",
        "pushed",
        "port.yaml",
        &service("pushed-svc", "backend"),
    );
    bb.put_file("P", "other", "port.yaml", &service("other-svc", "backend"));
    let body = json!({
        "eventKey": "repo:refs_changed",
        "date": "2026-11-22T10:00:00+0000",
        "actor": {"name": "dev"},
        "repository": {"slug": "pushed", "name": "pushed", "project": {"key": "P"}},
        "changes": [{"ref": {"id": "refs/heads/main", "displayId": "main", "type": "BRANCH"},
                     "refId": "refs/heads/main", "fromHash": "a", "toHash": "b", "type": "UPDATE"}]
    });
    let raw = serde_json::to_vec(&body).unwrap();
    let post = |signature: String| {
        app.http
            .post(format!("{}/bitbucket/webhook", app.base_url))
            .header("x-event-key", "repo:refs_changed")
            .header("x-hub-signature", signature)
            .body(raw.clone())
            .send()
    };
    let forged = post(port_runner::webhook::bitbucket::sign("wrong", &raw))
        .await
        .unwrap();
    assert_eq!(forged.status(), 401);
    let response = post(port_runner::webhook::bitbucket::sign(BB_HOOK_SECRET, &raw))
        .await
        .unwrap();
    assert_eq!(response.status(), 202);

    until(
        Duration::from_secs(20),
        || "the push to be synced".to_owned(),
        || app.port().entity("microservice", "pushed-svc"),
    )
    .await;
    assert!(
        app.port().entity("microservice", "other-svc").is_none(),
        "only the pushed repository"
    );
    assert!(
        bb.requests().iter().all(|r| !r.contains("/repos/other/")),
        "{:#?}",
        bb.requests()
    );
    assert!(app
        .port()
        .requests_to("POST", "/entities/bulk")
        .iter()
        .all(|r| !r.query.contains("run_id")));
    app.shutdown().await;
}

/// Projects ALPHA and BETA with this many repositories each, one entity in each.
fn many_repos(app: &TestApp, alpha: usize, beta: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for (project, repos) in [("ALPHA", alpha), ("BETA", beta)] {
        for i in 0..repos {
            let id = format!("{}-svc-{i}", project.to_ascii_lowercase());
            app.bitbucket().put_file(
                project,
                &format!("svc-{i}"),
                "port.yaml",
                &service(&id, "backend"),
            );
            ids.push(id);
        }
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_data_center_loses_nothing_with_or_without_retry_after() {
    for retry_after in [false, true] {
        let app = gitops_app(FileApi::Raw).await;
        let ids = many_repos(&app, 15, 15);
        // Data Center's bucket, small and quick so the suite stays fast.
        app.bitbucket().rate_limit(5.0, 40.0, retry_after);
        let (fin, log) = sync(&app, json!({})).await;
        assert_eq!(fin["status"], "SUCCESS", "{log:#?}");
        for id in &ids {
            assert!(
                app.port().entity("microservice", id).is_some(),
                "{id} missing (Retry-After: {retry_after})"
            );
        }
        let (limited, sent) = (app.bitbucket().limited(), app.bitbucket().requests().len());
        assert!(limited > 0, "the bucket limited the sync");
        assert!(
            limited * 100 <= sent * 40,
            "{limited} of {sent} requests answered 429 (Retry-After: {retry_after})"
        );
        let said: Vec<&String> = log
            .iter()
            .filter(|l| l.starts_with("Bitbucket is rate limiting: pacing at"))
            .collect();
        assert_eq!(said.len(), 1, "said once per sync: {log:#?}");
        let metrics = app.get("/metrics", None).await.text().await.unwrap();
        let counted = metrics
            .lines()
            .find_map(|l| l.strip_prefix("port_runner_bitbucket_rate_limited_total "))
            .and_then(|v| v.parse::<u64>().ok());
        assert_eq!(counted, Some(limited as u64), "{metrics}");
        assert!(
            metrics.contains("port_runner_bitbucket_pace_requests_per_second "),
            "{metrics}"
        );
        app.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mass_deletion_breaker_keeps_an_emptied_project_and_the_override_passes() {
    let app = gitops_app(FileApi::Raw).await;
    let ids = many_repos(&app, 6, 12);
    let (fin, _) = sync(&app, json!({})).await;
    assert_eq!(fin["status"], "SUCCESS");
    // A permission change or a renamed project: every file of BETA is gone.
    for i in 0..12 {
        app.bitbucket().remove_repo("BETA", &format!("svc-{i}"));
    }
    app.bitbucket().put_file(
        "ALPHA",
        "new",
        "port.yaml",
        &service("alpha-new", "backend"),
    );
    let (fin, log) = sync(&app, json!({})).await;
    assert_eq!(fin["status"], "FAILURE", "{log:#?}");
    let summary = fin["summary"].as_str().unwrap();
    assert!(
        summary.contains(
            "deleted nothing: this sync would delete 12 of the 18 entities it owns (67 %"
        ) && summary.contains("--allow-mass-delete"),
        "{summary}"
    );
    for id in &ids {
        assert!(
            app.port().entity("microservice", id).is_some(),
            "{id} was kept"
        );
    }
    assert!(
        app.port().entity("microservice", "alpha-new").is_some(),
        "creates still go through"
    );
    let (fin, log) = sync(&app, json!({"allow_mass_delete": true})).await;
    assert_eq!(fin["status"], "SUCCESS", "{log:#?}");
    for id in ids.iter().filter(|id| id.starts_with("beta")) {
        assert!(
            app.port().entity("microservice", id).is_none(),
            "{id} deleted"
        );
    }
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_sync_costs_one_read_per_repository_and_port_yml_is_opt_in() {
    let app = gitops_app(FileApi::Raw).await;
    let bb = app.bitbucket();
    for i in 0..30 {
        match i % 3 {
            0 => bb.add_repo("P", &format!("r{i:02}")),
            1 => bb.put_file(
                "P",
                &format!("r{i:02}"),
                "port.yml",
                &service(&format!("y{i:02}"), "backend"),
            ),
            _ => bb.put_file(
                "P",
                &format!("r{i:02}"),
                "port.yaml",
                &service(&format!("s{i:02}"), "backend"),
            ),
        }
    }
    let (fin, log) = sync(&app, json!({})).await;
    assert_eq!(fin["status"], "SUCCESS", "{log:#?}");
    let reads = bb
        .requests()
        .iter()
        .filter(|r| r.contains("/raw/") || r.contains("/browse/") || r.contains("/commits?"))
        .count();
    assert_eq!(
        reads,
        30,
        "the floor: one read per repository: {:#?}",
        bb.requests()
    );
    assert!(app.port().entity("microservice", "s02").is_some());
    assert!(
        app.port().entity("microservice", "y01").is_none(),
        "port.yml is not read unless --gitops-paths names it"
    );
    app.shutdown().await;
}
