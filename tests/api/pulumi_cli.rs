//! The Pulumi handler against the stand-in where it behaves as the real CLI (3.259) does and
//! our first stand-in did not: an interrupted create is not refused but re-created, the CLI
//! stops on SIGINT, previews and refresh digests count in `changeSummary` and carry every
//! resource's state. `tests/fixtures/pulumi` names, at each such place, the pulumi/pulumi source
//! file it follows.

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

use crate::fake_port::FakePort;
use crate::provision::{argv, calls, control, repo, run, s3_action, serve_standin};

/// A runner serving one Pulumi definition against the stand-in: the fake Port, the runner,
/// the state folder (and the folders kept alive with them).
async fn rig(
    name: &str,
    definition: &str,
) -> (
    FakePort,
    crate::helpers::Served,
    std::path::PathBuf,
    [tempfile::TempDir; 2],
) {
    let fake = FakePort::start().await;
    let data = tempfile::tempdir().unwrap();
    let actions = s3_action(name, definition);
    let served = serve_standin(&fake, actions.path(), data.path(), &[]);
    let state = data.path().join("pulumi-state");
    (fake, served, state, [data, actions])
}

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_import_id_a_pending_bucket_is_made_again_and_s3_refuses_it() {
    // What happens on the real CLI when nothing imports a pending create: the `up` warns and
    // creates the bucket again, and S3 (outside us-east-1) answers BucketAlreadyOwnedByYou.
    let (fake, served, state, _dirs) = rig(
        "plain_bucket",
        "stack: .inputs.name\nconfig:\n  aws:region: '\"eu-west-1\"'\n  bucketName: .inputs.name\n",
    )
    .await;
    let (_, fin) = run(
        &served,
        &fake,
        "plain_bucket",
        "CREATE",
        json!({"name": "twice"}),
        None,
    )
    .await;
    assert_eq!(fin["status"], "SUCCESS", "{fin}");
    // A killed `up` of a second bucket in the same stack: made in the cloud, left pending.
    let stack_file = state.join(".pulumi/stacks/port-s3-bucket/twice.json");
    let mut checkpoint = read_json(&stack_file);
    let bucket = checkpoint["resources"]["bucket"].clone();
    checkpoint["resources"]
        .as_object_mut()
        .unwrap()
        .remove("bucket");
    checkpoint["pending_operations"] = json!([{"resource": {
        "urn": "urn:pulumi:twice::port-s3-bucket::aws:s3:Bucket::bucket",
        "type": "aws:s3:Bucket", "inputs": {"bucket": "twice"}}, "type": "creating"}]);
    std::fs::write(&stack_file, serde_json::to_vec(&checkpoint).unwrap()).unwrap();
    assert_eq!(bucket["__id"], "twice");

    let (again, fin) = run(
        &served,
        &fake,
        "plain_bucket",
        "CREATE",
        json!({"name": "twice"}),
        None,
    )
    .await;
    let log = fake.log_lines(&again);
    assert_eq!(fin["status"], "FAILURE", "{log:#?}");
    assert!(
        log.iter()
            .any(|l| l.starts_with("recovered: cleared aws:s3:Bucket bucket")
                && l.contains("no import_ids entry")),
        "the log names what may be orphaned: {log:#?}"
    );
    let summary = fin["summary"].as_str().unwrap();
    assert!(
        summary.starts_with("pulumi up failed for stack twice")
            && summary.contains("BucketAlreadyOwnedByYou"),
        "{summary}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_up_is_interrupted_so_the_cli_saves_its_state_and_frees_its_lock() {
    let (fake, served, state, _dirs) = rig(
        "slow_bucket",
        "stack: .inputs.name\ntimeout_secs: 5\nconfig:\n  bucketName: .inputs.name\n",
    )
    .await;
    control(&state, json!({"up_seconds": 30}));
    let (_, fin) = run(
        &served,
        &fake,
        "slow_bucket",
        "CREATE",
        json!({"name": "slow"}),
        None,
    )
    .await;
    assert_eq!(fin["status"], "FAILURE");
    let summary = fin["summary"].as_str().unwrap();
    assert!(
        summary.contains("did not finish within 5s and was stopped"),
        "{summary}"
    );
    // SIGINT, as the Automation API sends it: the CLI finished what was under way, recorded
    // it and released its lock (SIGTERM to the group would have left both behind).
    let locks = state.join(".pulumi/locks/organization/port-s3-bucket/slow");
    let held: Vec<_> = std::fs::read_dir(&locks)
        .map(|d| d.flatten().collect())
        .unwrap_or_default();
    assert!(held.is_empty(), "{held:?}");
    let checkpoint = read_json(&state.join(".pulumi/stacks/port-s3-bucket/slow.json"));
    assert_eq!(checkpoint["pending_operations"], json!([]), "{checkpoint}");
    assert_eq!(checkpoint["resources"].as_object().unwrap().len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn previews_and_drift_count_by_the_change_summary_on_big_stacks() {
    let fake = FakePort::start().await;
    let data = tempfile::tempdir().unwrap();
    let served = serve_standin(
        &fake,
        &repo().join("actions"),
        data.path(),
        &[("PORT_RUNNER_DRIFT_INTERVAL_SECS", "1")],
    );
    let state = data.path().join("pulumi-state");
    // 49 resources and the root stack: Pulumi's own "50 resources".
    control(&state, json!({"repeat": {"publicAccess": 46}}));
    let (_, fin) = run(
        &served,
        &fake,
        "create_bucket",
        "CREATE",
        json!({"bucket_name": "fifty", "bucket_acl": "private"}),
        None,
    )
    .await;
    assert_eq!(fin["status"], "SUCCESS", "{fin}");
    let entity = fake.entity("s3_bucket", "fifty").unwrap();
    let (preview, fin) = run(
        &served,
        &fake,
        "change_acl",
        "DAY-2",
        json!({"bucket_acl": "public-read", "preview_only": true}),
        Some(json!({"identifier": "fifty", "blueprint": "s3_bucket",
                    "properties": entity["properties"]})),
    )
    .await;
    assert_eq!(fin["status"], "SUCCESS", "{:#?}", fake.log_lines(&preview));
    assert_eq!(
        fin["summary"],
        format!("preview of stack fifty: 1 to update, 49 unchanged; nothing was changed; preview id {preview}")
    );

    // A stack of 300 resources whose refresh digest (every resource's old and new state) is
    // far beyond what is captured in memory, and an ACL changed in the cloud whose provider
    // gives no detailed diff: a bare `refresh` step, the summary counting the update.
    control(&state, json!({"repeat": {"publicAccess": 297}}));
    let (_, fin) = run(
        &served,
        &fake,
        "create_bucket",
        "CREATE",
        json!({"bucket_name": "big", "bucket_acl": "private"}),
        None,
    )
    .await;
    assert_eq!(fin["status"], "SUCCESS", "{fin}");
    control(
        &state,
        json!({
            "repeat": {"publicAccess": 297},
            "state_padding": 20000,
            "no_detailed_diff": ["aws:s3:BucketAcl"],
            "drift": {"big": {"bucketAcl": {"acl": "public-read"}}}
        }),
    );
    let drift_of = |stack: &str| {
        fake.entity("s3_bucket", stack)
            .map(|e| e["properties"]["drift"].clone())
    };
    crate::helpers::until(
        Duration::from_secs(60),
        || format!("big drifted: {:?}", fake.entity("s3_bucket", "big")),
        || (drift_of("big") == Some(json!("drifted"))).then_some(()),
    )
    .await;
    let big = fake.entity("s3_bucket", "big").unwrap();
    assert_eq!(
        big["properties"]["drifted_resources"],
        json!(["aws:s3:BucketAcl bucketAcl (refresh)"])
    );
    // The digest really was big: the stand-in printed ~12 MB for it.
    let refreshes = calls(&state)
        .iter()
        .map(argv)
        .filter(|a| {
            a.get(1).map(String::as_str) == Some("refresh") && a.contains(&"big".to_owned())
        })
        .count();
    assert!(refreshes >= 1);
}
