//! GitOps files anywhere in a repository: globs per project, ownership per file (a move
//! between files is an update), the file list read only when the default branch moved, and
//! pull-request checks annotating the nested file.

use serde_json::json;

use crate::gitops::{microservice_blueprint, sync};
use crate::helpers::{post_bitbucket_event, spawn_app_with, AppOptions, TestApp};

fn service(id: &str, tier: &str) -> String {
    format!("- identifier: {id}\n  title: Service {id}\n  blueprint: microservice\n  properties:\n    tier: {tier}\n")
}

/// MONO's repositories by glob, every other project by its root `port.yaml`.
async fn monorepo_app() -> TestApp {
    let app = spawn_app_with(AppOptions {
        gitops: true,
        gitops_project_paths: vec![
            "MONO=services/*/port.yaml".into(),
            "MONO=**/port.yml".into(),
        ],
        ..AppOptions::default()
    })
    .await;
    app.port().add_blueprint(microservice_blueprint());
    app
}

fn deletes(app: &TestApp) -> usize {
    app.port().requests_to("DELETE", "/entities/").len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn globs_find_nested_files_and_an_unchanged_repository_costs_one_read() {
    let app = monorepo_app().await;
    let bb = app.bitbucket();
    bb.put_file(
        "MONO",
        "mono",
        "services/api/port.yaml",
        &service("api", "backend"),
    );
    bb.put_file(
        "MONO",
        "mono",
        "services/web/port.yaml",
        &service("web", "frontend"),
    );
    bb.put_file(
        "MONO",
        "mono",
        "libs/core/util/port.yml",
        &service("util", "backend"),
    );
    // Not GitOps files: `*` stays within one folder, and the root file is not listed for MONO.
    bb.put_file(
        "MONO",
        "mono",
        "services/api/v2/port.yaml",
        &service("nested", "backend"),
    );
    bb.put_file("MONO", "mono", "port.yaml", &service("root", "backend"));
    for i in 0..3 {
        bb.put_file(
            "MONO",
            &format!("svc-{i}"),
            &format!("services/s{i}/port.yaml"),
            &service(&format!("s{i}"), "backend"),
        );
    }
    // Another project keeps the default: its root port.yaml, read directly.
    bb.put_file("OTHER", "svc", "port.yaml", &service("other", "backend"));
    bb.put_file(
        "OTHER",
        "svc",
        "services/x/port.yaml",
        &service("unseen", "backend"),
    );

    let (fin, log) = sync(&app, json!({})).await;
    assert_eq!(fin["status"], "SUCCESS", "{log:#?}");
    for id in ["api", "web", "util", "s0", "s1", "s2", "other"] {
        assert!(
            app.port().entity("microservice", id).is_some(),
            "{id}: {log:#?}"
        );
    }
    for id in ["nested", "root", "unseen"] {
        assert!(app.port().entity("microservice", id).is_none(), "{id}");
    }
    assert_eq!(app.port().entity_count(), 7);
    let listed = bb
        .requests()
        .iter()
        .filter(|r| r.contains("/files?"))
        .count();
    assert_eq!(listed, 4, "one file list per MONO repository");
    assert!(
        !bb.requests().iter().any(|r| r.contains("/repos/svc/files")),
        "OTHER is not listed"
    );

    // Nothing changed: one request per repository (MONO: its head; OTHER: its file), plus
    // the project and repository listings.
    bb.reset_requests();
    let (fin, log) = sync(&app, json!({})).await;
    assert_eq!(fin["status"], "SUCCESS", "{log:#?}");
    let requests = bb.requests();
    let per_repo: Vec<&String> = requests
        .iter()
        .filter(|r| r.contains("/commits?") || r.contains("/raw/"))
        .collect();
    assert_eq!(per_repo.len(), 5, "{requests:#?}");
    assert!(
        !requests.iter().any(|r| r.contains("/files?")),
        "{requests:#?}"
    );
    assert_eq!(requests.len(), 5 + 1 + 2, "{requests:#?}");
    assert!(
        log.iter()
            .any(|l| l.starts_with("read 5 repositories: 0 files to process, 5 unchanged")),
        "counted by repository, not by file: {log:#?}"
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_between_files_is_an_update_and_a_deleted_file_deletes_its_entities() {
    let app = monorepo_app().await;
    let bb = app.bitbucket();
    bb.put_file(
        "MONO",
        "mono",
        "services/api/port.yaml",
        &(service("api", "backend") + &service("shared", "backend")),
    );
    bb.put_file(
        "MONO",
        "mono",
        "services/web/port.yaml",
        &service("web", "frontend"),
    );
    let (fin, log) = sync(&app, json!({})).await;
    assert_eq!(fin["status"], "SUCCESS", "{log:#?}");

    // `shared` moves from the api file to the web file in one commit.
    bb.put_file(
        "MONO",
        "mono",
        "services/api/port.yaml",
        &service("api", "backend"),
    );
    bb.put_file(
        "MONO",
        "mono",
        "services/web/port.yaml",
        &(service("web", "frontend") + &service("shared", "frontend")),
    );
    let before = deletes(&app);
    let (fin, log) = sync(&app, json!({})).await;
    assert_eq!(fin["status"], "SUCCESS", "{log:#?}");
    assert_eq!(deletes(&app), before, "a move is not a delete: {log:#?}");
    let shared = app.port().entity("microservice", "shared").unwrap();
    assert_eq!(shared["properties"]["tier"], "frontend");

    // The web file goes: its entities go, the api file's stay.
    bb.remove_file("MONO", "mono", "services/web/port.yaml");
    let (fin, log) = sync(&app, json!({})).await;
    assert_eq!(fin["status"], "SUCCESS", "{log:#?}");
    assert!(app.port().entity("microservice", "web").is_none());
    assert!(app.port().entity("microservice", "shared").is_none());
    assert!(app.port().entity("microservice", "api").is_some());
    assert_eq!(deletes(&app), before + 2);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_request_check_annotates_the_nested_file_on_its_line() {
    let app = monorepo_app().await;
    let bb = app.bitbucket();
    bb.put_file(
        "MONO",
        "mono",
        "services/api/port.yaml",
        &service("api", "backend"),
    );
    let (fin, log) = sync(&app, json!({})).await;
    assert_eq!(fin["status"], "SUCCESS", "{log:#?}");
    let commit = "abcdefabcdefabcdefabcdefabcdefabcdefabcd";
    let added = service("new", "sideways");
    bb.put_commit(
        "MONO",
        "mono",
        commit,
        &[
            ("services/api/port.yaml", &service("api", "backend")),
            ("services/new/port.yaml", &added),
        ],
    );
    let repo = json!({"slug": "mono", "project": {"key": "MONO"}});
    let body = json!({"eventKey": "pr:opened", "pullRequest": {"id": 1,
        "fromRef": {"id": "refs/heads/new", "latestCommit": commit, "repository": repo},
        "toRef": {"id": "refs/heads/main", "repository": repo}}});
    let (status, answer) = post_bitbucket_event(&app.base_url, "pr:opened", &body).await;
    assert_eq!(status, 202, "{answer}");
    let run = app
        .wait_local_final(answer["runId"].as_str().unwrap())
        .await;
    assert_eq!(run["state"], "SUCCESS", "{run:#}");
    let report = bb.report("MONO/mono", commit, "port-catalog").unwrap();
    assert_eq!(report["result"], "FAIL");
    let annotations = bb.annotations("MONO/mono", commit, "port-catalog");
    assert_eq!(annotations.len(), 1, "{annotations:#?}");
    assert_eq!(annotations[0]["path"], "services/new/port.yaml");
    assert_eq!(annotations[0]["line"], 5);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_repositories_read_as_empty_whatever_the_server_answers() {
    // Globs for MONO, two literal paths elsewhere: both ways ask for the default branch's
    // head, which an empty repository does not have.
    let app = spawn_app_with(AppOptions {
        gitops: true,
        gitops_paths: vec!["port.yaml".into(), "port.yml".into()],
        gitops_project_paths: vec!["MONO=services/*/port.yaml".into()],
        ..AppOptions::default()
    })
    .await;
    app.port().add_blueprint(microservice_blueprint());
    let bb = app.bitbucket();
    bb.put_file(
        "MONO",
        "mono",
        "services/api/port.yaml",
        &service("api", "backend"),
    );
    bb.put_file("APP", "svc", "port.yaml", &service("svc", "backend"));
    for (project, slug) in [
        ("MONO", "empty-a"),
        ("MONO", "empty-b"),
        ("APP", "empty-c"),
        ("APP", "empty-d"),
    ] {
        bb.add_empty_repo(project, slug);
    }
    use crate::fake_bitbucket::EmptyAnswer;
    for answer in [
        EmptyAnswer::EmptyPage,
        EmptyAnswer::NoContent,
        EmptyAnswer::NoSuchCommit,
    ] {
        bb.set_empty_answer(answer);
        let (fin, log) = sync(&app, json!({"full": true})).await;
        assert_eq!(fin["status"], "SUCCESS", "{answer:?}: {log:#?}");
        assert!(
            !log.iter()
                .any(|l| l.contains("read failure") || l.contains("could not read")),
            "{answer:?}: {log:#?}"
        );
        assert!(app.port().entity("microservice", "api").is_some());
        assert!(app.port().entity("microservice", "svc").is_some());
    }
    // The deprecated route, whose 204 broke every sync, is not asked.
    assert!(
        !bb.requests()
            .iter()
            .any(|r| r.contains("/branches/default")),
        "{:#?}",
        bb.requests()
    );
}
