//! Provisioning end to end through the real `port-runner serve` binary and a signed webhook:
//! the shipped S3 actions with the real `aws` CLI against a real S3-compatible server
//! (`moto_server`), and the shipped Pulumi definitions against the recording stand-in for the
//! Pulumi CLI (`tests/fixtures/pulumi`; the real CLI cannot be installed on our machines).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use crate::fake_port::{FakePort, CLIENT_ID, CLIENT_SECRET};
use crate::helpers::Served;
use crate::helpers::{hostile_values, unique_run_id, v2};

pub(crate) const AWS_KEY_ID: &str = "AKIATESTINGKEYID0001";
pub(crate) const AWS_SECRET: &str = "moto-secret-access-key-never-logged";

pub(crate) fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A real S3-compatible server on loopback, stopped on drop.
struct Moto {
    child: Child,
    url: String,
}

impl Moto {
    async fn start() -> Self {
        let port = free_port();
        let mut child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect(
                "moto_server (pip install 'moto[server]' awscli; .ci/setup does) must be on PATH",
            );
        let url = format!("http://127.0.0.1:{port}");
        for _ in 0..200 {
            if reqwest::get(&url).await.is_ok() {
                return Self { child, url };
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("moto_server did not start on {url}");
    }

    /// The real `aws` CLI, as the test's own eyes on S3.
    fn aws(&self, line: &str) -> Value {
        let args = w(line);
        let out = Command::new("aws")
            .args(&args)
            .args(["--output", "json", "--region", "us-east-1"])
            .env("AWS_ENDPOINT_URL", &self.url)
            .env("AWS_ACCESS_KEY_ID", AWS_KEY_ID)
            .env("AWS_SECRET_ACCESS_KEY", AWS_SECRET)
            .output()
            .expect("aws CLI on PATH");
        assert!(
            out.status.success(),
            "aws {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An actions folder: the shipped action JSON plus the given handler definitions.
pub(crate) fn actions_with(handlers: &[PathBuf]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(repo().join("actions")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "json") {
            std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
        }
    }
    std::fs::create_dir(dir.path().join("handlers")).unwrap();
    for file in handlers {
        std::fs::copy(
            file,
            dir.path().join("handlers").join(file.file_name().unwrap()),
        )
        .unwrap();
    }
    dir
}

/// The shipped actions, with more YAML added to some handler definitions (`(action, yaml)`;
/// program paths made absolute, so the copy runs from anywhere).
pub(crate) fn shipped_with(extra: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = actions_with(&[]);
    for entry in std::fs::read_dir(repo().join("actions/handlers")).unwrap() {
        let path = entry.unwrap().path();
        let programs = format!("program: {}/", repo().join("actions/pulumi").display());
        let mut text = std::fs::read_to_string(&path)
            .unwrap()
            .replace("program: ../pulumi/", &programs);
        let action = path.file_stem().unwrap().to_str().unwrap().to_owned();
        for (name, more) in extra {
            if *name == action {
                text.push_str(&format!("\n{more}\n"));
            }
        }
        let to = dir.path().join("handlers").join(path.file_name().unwrap());
        std::fs::write(to, text).unwrap();
    }
    dir
}

pub(crate) fn serve(
    fake: &FakePort,
    actions: &Path,
    data: &Path,
    extra: &[(&str, &str)],
) -> Served {
    let home = std::env::var("HOME").unwrap_or_default();
    let mut envs = vec![
        ("PORT_CLIENT_ID", CLIENT_ID),
        ("PORT_CLIENT_SECRET", CLIENT_SECRET),
        ("PORT_API_URL", fake.api_url.as_str()),
        ("HOME", home.as_str()),
    ];
    envs.extend_from_slice(extra);
    Served::start(
        &envs,
        &[
            "--data-dir",
            data.to_str().unwrap(),
            "--actions-dir",
            actions.to_str().unwrap(),
            "--max-concurrent-runs",
            "4",
        ],
    )
}

/// An actions folder holding one handler definition, `handlers/<name>.yaml`.
pub(crate) fn one_action(name: &str, definition: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("handlers")).unwrap();
    std::fs::write(dir.path().join(format!("handlers/{name}.yaml")), definition).unwrap();
    dir
}

/// One Pulumi action on the shipped S3 program (by absolute path); `rest` is the rest of its
/// definition.
pub(crate) fn s3_action(name: &str, rest: &str) -> tempfile::TempDir {
    let program = repo().join("actions/pulumi/s3_bucket");
    let head = format!(
        "action: {name}\nhandler: pulumi\nprogram: {}\n",
        program.display()
    );
    one_action(name, &format!("{head}{rest}"))
}

/// `serve` with the stand-in as the Pulumi CLI and the cloud credentials the shipped Pulumi
/// definitions pass on, plus `extra` environment.
pub(crate) fn serve_standin(
    fake: &FakePort,
    actions: &Path,
    data: &Path,
    extra: &[(&str, &str)],
) -> Served {
    let standin = repo().join("tests/fixtures/pulumi");
    let mut envs = vec![
        ("PORT_RUNNER_PULUMI_BIN", standin.to_str().unwrap()),
        ("AWS_ACCESS_KEY_ID", AWS_KEY_ID),
        ("AWS_SECRET_ACCESS_KEY", AWS_SECRET),
        ("CIVO_TOKEN", "civo-token-for-tests"),
    ];
    envs.extend_from_slice(extra);
    serve(fake, actions, data, &envs)
}

async fn post(served: &Served, body: &Value) {
    let response = served.post_signed(body).await;
    let status = response.status();
    assert_eq!(status, 202, "{}", response.text().await.unwrap());
}

/// Runs one action to its end and returns the final PATCH.
pub(crate) async fn run(
    served: &Served,
    fake: &FakePort,
    action: &str,
    operation: &str,
    inputs: Value,
    entity: Option<Value>,
) -> (String, Value) {
    let run_id = unique_run_id();
    let mut body = v2(&run_id, action, operation, inputs);
    if let Some(entity) = entity {
        body["entity"] = entity;
    }
    post(served, &body).await;
    let fin = fake.wait_final(&run_id).await;
    (run_id, fin)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_bucket_lifecycle_with_the_real_aws_cli_against_moto() {
    let moto = Moto::start().await;
    let fake = FakePort::start().await;
    let examples = repo().join("actions/examples/aws-cli");
    let actions = actions_with(&[
        examples.join("create_bucket.yaml"),
        examples.join("change_acl.yaml"),
        examples.join("delete_bucket.yaml"),
    ]);
    let data = tempfile::tempdir().unwrap();
    let mut served = serve(
        &fake,
        actions.path(),
        data.path(),
        &[
            ("AWS_ENDPOINT_URL", &moto.url),
            ("AWS_ACCESS_KEY_ID", AWS_KEY_ID),
            ("AWS_SECRET_ACCESS_KEY", AWS_SECRET),
        ],
    );

    let (create, fin) = run(
        &served,
        &fake,
        "create_bucket",
        "CREATE",
        json!({"bucket_name": "port-runner-test", "bucket_acl": "private",
               "tags": {"team": "payments", "env": "dev"}}),
        None,
    )
    .await;
    assert_eq!(fin["status"], "SUCCESS", "{:#?}", fake.log_lines(&create));
    let tags = moto.aws(r#"s3api get-bucket-tagging --bucket port-runner-test"#);
    let mut tag_set: Vec<(String, String)> = tags["TagSet"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["Key"].as_str().unwrap().into(),
                t["Value"].as_str().unwrap().into(),
            )
        })
        .collect();
    tag_set.sort();
    assert_eq!(
        tag_set,
        [
            ("env".into(), "dev".into()),
            ("team".into(), "payments".into())
        ]
    );
    let entity = fake.entity("s3_bucket", "port-runner-test").unwrap();
    assert_eq!(
        entity["properties"],
        json!({"bucket_name": "port-runner-test", "bucket_acl": "private", "region": "us-east-1",
               "url": "https://port-runner-test.s3.us-east-1.amazonaws.com",
               "tags": {"team": "payments", "env": "dev"}})
    );
    let lines = fake.log_lines(&create);
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("$ aws s3api create-bucket")),
        "{lines:#?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("step public-access skipped")),
        "{lines:#?}"
    );
    assert!(lines.iter().all(|l| !l.contains(AWS_SECRET)));

    let bucket = json!({"identifier": "port-runner-test", "blueprint": "s3_bucket",
                        "properties": entity["properties"]});
    let (day2, fin) = run(
        &served,
        &fake,
        "change_acl",
        "DAY-2",
        json!({"bucket_acl": "public-read"}),
        Some(bucket.clone()),
    )
    .await;
    assert_eq!(fin["status"], "SUCCESS", "{:#?}", fake.log_lines(&day2));
    let acl = moto.aws(r#"s3api get-bucket-acl --bucket port-runner-test"#);
    assert!(
        acl["Grants"]
            .as_array()
            .unwrap()
            .iter()
            .any(
                |g| g["Grantee"]["URI"] == "http://acs.amazonaws.com/groups/global/AllUsers"
                    && g["Permission"] == "READ"
            ),
        "{acl:#}"
    );
    assert_eq!(
        fake.entity("s3_bucket", "port-runner-test").unwrap()["properties"]["bucket_acl"],
        "public-read"
    );

    // preview_only runs the definition's `preview:` steps instead: the ACL stays, the
    // entity stays, the bucket stays.
    let (preview, fin) = run(
        &served,
        &fake,
        "change_acl",
        "DAY-2",
        json!({"bucket_acl": "private", "preview_only": true}),
        Some(bucket.clone()),
    )
    .await;
    assert_eq!(fin["status"], "SUCCESS", "{:#?}", fake.log_lines(&preview));
    assert!(
        fin["summary"]
            .as_str()
            .unwrap()
            .contains("nothing was changed"),
        "{fin}"
    );
    let lines = fake.log_lines(&preview);
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("$ aws s3api get-bucket-acl")),
        "{lines:#?}"
    );
    assert!(
        lines.contains(&"would set the canned ACL private on port-runner-test".to_owned()),
        "{lines:#?}"
    );
    assert!(
        lines.iter().all(|l| !l.contains("put-bucket-acl")),
        "{lines:#?}"
    );
    let still = moto.aws(r#"s3api get-bucket-acl --bucket port-runner-test"#);
    assert_eq!(still, acl, "the preview changed the ACL");
    assert_eq!(
        fake.entity("s3_bucket", "port-runner-test").unwrap()["properties"]["bucket_acl"],
        "public-read"
    );
    // That preview, approved: exactly that change runs (its preview id is its run id).
    let grants = |acl: &Value, group: &str| {
        acl["Grants"]
            .as_array()
            .unwrap()
            .iter()
            .any(|g| g["Grantee"]["URI"] == format!("http://acs.amazonaws.com/groups/{group}"))
    };
    let acl_run = |inputs: Value| {
        run(
            &served,
            &fake,
            "change_acl",
            "DAY-2",
            inputs,
            Some(bucket.clone()),
        )
    };
    let approved = json!({"bucket_acl": "private", "preview_id": preview});
    let (apply, fin) = acl_run(approved).await;
    assert_eq!(fin["status"], "SUCCESS", "{:#?}", fake.log_lines(&apply));
    let now = moto.aws(r#"s3api get-bucket-acl --bucket port-runner-test"#);
    assert!(!grants(&now, "global/AllUsers"), "{now:#}");
    // A preview whose bucket changed before the apply is refused; nothing changes.
    let planned = json!({"bucket_acl": "public-read", "preview_only": true});
    let (moved, fin) = acl_run(planned).await;
    assert_eq!(fin["status"], "SUCCESS", "{:#?}", fake.log_lines(&moved));
    // Someone changes the bucket's ACL between the preview and its approval.
    moto.aws(r#"s3api put-bucket-acl --bucket port-runner-test --acl authenticated-read"#);
    let approved = json!({"bucket_acl": "public-read", "preview_id": moved});
    let (_, fin) = acl_run(approved).await;
    assert_eq!(fin["status"], "FAILURE");
    let summary = fin["summary"].as_str().unwrap();
    assert!(
        summary.contains("step current-acl") && summary.contains("nothing was changed"),
        "{summary}"
    );
    let after = moto.aws(r#"s3api get-bucket-acl --bucket port-runner-test"#);
    assert!(
        grants(&after, "global/AuthenticatedUsers") && !grants(&after, "global/AllUsers"),
        "{after:#}"
    );
    let (preview, fin) = run(
        &served,
        &fake,
        "delete_bucket",
        "DELETE",
        json!({"preview_only": true}),
        Some(bucket.clone()),
    )
    .await;
    assert_eq!(fin["status"], "SUCCESS", "{:#?}", fake.log_lines(&preview));
    assert!(fake
        .log_lines(&preview)
        .iter()
        .any(|l| l.starts_with("$ aws s3 ls --recursive --summarize")));
    assert!(fake.entity("s3_bucket", "port-runner-test").is_some());
    assert_eq!(
        moto.aws(r#"s3api list-buckets"#)["Buckets"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // A DAY-2 change on a bucket that does not exist fails with aws's own reason.
    let (missing, fin) = run(
        &served,
        &fake,
        "change_acl",
        "DAY-2",
        json!({"bucket_acl": "private"}),
        Some(json!({"identifier": "no-such-bucket", "blueprint": "s3_bucket"})),
    )
    .await;
    assert_eq!(fin["status"], "FAILURE");
    let summary = fin["summary"].as_str().unwrap();
    assert!(
        summary.contains("step acl: aws exited 255") && summary.contains("NoSuchBucket"),
        "{summary}\n{:#?}",
        fake.log_lines(&missing)
    );

    // The bucket's ttl expires: Port's automation event (no body template) is routed to the
    // blueprint's DELETE action, the aws CLI form here.
    let delete = unique_run_id();
    let mut expired = bucket;
    expired["properties"]["ttl"] = json!("2026-12-01T09:00:00.000Z");
    let event = json!({"event": port_event("TIMER_PROPERTY_EXPIRED", "s3_bucket", &expired),
                       "run": {"id": delete}});
    post(&served, &event).await;
    let fin = fake.wait_final(&delete).await;
    assert_eq!(fin["status"], "SUCCESS", "{:#?}", fake.log_lines(&delete));
    assert!(fake.log_lines(&delete).contains(
        &"automation event TIMER_PROPERTY_EXPIRED: running delete_bucket on the entity".to_owned()
    ));
    let buckets = moto.aws(r#"s3api list-buckets"#);
    assert_eq!(buckets["Buckets"], json!([]));
    assert!(fake.entity("s3_bucket", "port-runner-test").is_none());
    served.terminate();
}

/// An argv written as one line (no argument here has a space).
pub(crate) fn w(line: &str) -> Vec<String> {
    line.split_whitespace().map(str::to_owned).collect()
}

/// The stand-in's record of the calls it received.
pub(crate) fn calls(state: &Path) -> Vec<Value> {
    std::fs::read_to_string(state.join("standin-calls.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

pub(crate) fn argv(call: &Value) -> Vec<String> {
    call["argv"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect()
}

pub(crate) fn control(state: &Path, control: Value) {
    // The runner creates the state folder when a Pulumi action first runs.
    std::fs::create_dir_all(state).unwrap();
    std::fs::write(
        state.join("standin-control.json"),
        serde_json::to_vec(&control).unwrap(),
    )
    .unwrap();
}

pub(crate) struct PulumiRig {
    pub(crate) fake: FakePort,
    pub(crate) served: Served,
    pub(crate) state: PathBuf,
    pub(crate) _data: tempfile::TempDir,
}

pub(crate) async fn pulumi_rig() -> PulumiRig {
    let fake = FakePort::start().await;
    let data = tempfile::tempdir().unwrap();
    let served = serve_standin(&fake, &repo().join("actions"), data.path(), &[]);
    PulumiRig {
        state: data.path().join("pulumi-state"),
        fake,
        served,
        _data: data,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shipped_bucket_actions_drive_pulumi_like_the_automation_api() {
    let rig = pulumi_rig().await;
    let (fake, state) = (&rig.fake, &rig.state);
    let (create, fin) = run(
        &rig.served,
        fake,
        "create_bucket",
        "CREATE",
        json!({"bucket_name": "pay-assets", "bucket_acl": "private", "region": "eu-west-1",
               "tags": {"team": "payments"}}),
        None,
    )
    .await;
    assert_eq!(fin["status"], "SUCCESS", "{:#?}", fake.log_lines(&create));
    let recorded: Vec<Vec<String>> = calls(state).iter().map(argv).collect();
    assert_eq!(
        recorded,
        [
            w(
                r#"--non-interactive stack select --create --secrets-provider passphrase --stack pay-assets"#
            ),
            w(
                r#"--non-interactive config set --stack pay-assets --plaintext aws:region -- eu-west-1"#
            ),
            w(
                r#"--non-interactive config set --stack pay-assets --plaintext bucketName -- pay-assets"#
            ),
            w(r#"--non-interactive config set --stack pay-assets --plaintext acl -- private"#),
            w(r#"--non-interactive config rm --stack pay-assets tags"#),
            w(
                r#"--non-interactive config set --stack pay-assets --path --plaintext tags["team"] -- payments"#
            ),
            // The checkpoint read for creates an interrupted operation left pending.
            w(r#"--non-interactive stack export --stack pay-assets"#),
            w(
                r#"--non-interactive up --yes --skip-preview --suppress-progress --color never --stack pay-assets"#
            ),
            // What the update changed, for the summary, as the Automation API reads it.
            w(r#"--non-interactive stack history --json --page-size 1 --stack pay-assets"#),
            w(r#"--non-interactive stack output --json --stack pay-assets"#),
        ]
    );
    assert_eq!(
        fin["summary"].as_str().unwrap().split(';').next().unwrap(),
        "stack pay-assets: 5 created"
    );
    let first = &calls(state)[0];
    let names: Vec<&str> = first["env_names"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect();
    assert!(
        !names.contains(&"PORT_CLIENT_SECRET") && !names.contains(&"CIVO_TOKEN"),
        "{names:?}"
    );
    assert!(
        names.contains(&"PULUMI_CONFIG_PASSPHRASE_FILE")
            && names.contains(&"AWS_SECRET_ACCESS_KEY")
    );
    assert_eq!(
        first["env"]["PULUMI_BACKEND_URL"],
        format!("file://{}", state.display())
    );
    let entity = fake.entity("s3_bucket", "pay-assets").unwrap();
    assert_eq!(
        entity["properties"],
        json!({"bucket_name": "pay-assets", "url": "https://pay-assets.s3.eu-west-1.amazonaws.com",
               "bucket_acl": "private", "region": "eu-west-1", "tags": {"team": "payments"}})
    );

    // DAY-2 on the entity's stack: select (never --create), set, up, merge the entity.
    let bucket = json!({"identifier": "pay-assets", "blueprint": "s3_bucket"});
    let before = calls(state).len();
    let (_, fin) = run(
        &rig.served,
        fake,
        "change_acl",
        "DAY-2",
        json!({"bucket_acl": "public-read"}),
        Some(bucket.clone()),
    )
    .await;
    assert_eq!(fin["status"], "SUCCESS");
    // The summary says what changed, from the CLI's own record of the update.
    assert_eq!(
        fin["summary"],
        "stack pay-assets: 1 updated, 4 unchanged; entity s3_bucket/pay-assets updated"
    );
    let day2: Vec<Vec<String>> = calls(state)[before..].iter().map(argv).collect();
    assert_eq!(
        day2[0],
        w(r#"--non-interactive stack select --stack pay-assets"#)
    );
    assert_eq!(
        day2[1],
        w(r#"--non-interactive config set --stack pay-assets --plaintext acl -- public-read"#)
    );
    assert_eq!(
        fake.entity("s3_bucket", "pay-assets").unwrap()["properties"]["bucket_acl"],
        "public-read"
    );

    // A failed DAY-2 destroys nothing and leaves the entity as it was.
    control(state, json!({"fail": {"up": "program"}}));
    let before = calls(state).len();
    let (failed, fin) = run(
        &rig.served,
        fake,
        "change_acl",
        "DAY-2",
        json!({"bucket_acl": "private"}),
        Some(bucket.clone()),
    )
    .await;
    assert_eq!(fin["status"], "FAILURE");
    let summary = fin["summary"].as_str().unwrap();
    assert!(
        summary.starts_with("pulumi up failed for stack pay-assets")
            && summary.contains("an unhandled error occurred: the provider refused the change"),
        "{summary}"
    );
    assert!(calls(state)[before..]
        .iter()
        .all(|c| argv(c)[1] != "destroy"));
    assert!(fake
        .log_lines(&failed)
        .iter()
        .any(|l| l.starts_with("nothing was destroyed")));
    assert_eq!(
        fake.entity("s3_bucket", "pay-assets").unwrap()["properties"]["bucket_acl"],
        "public-read"
    );

    // A stale lock left by a crashed process: a message that says what to do.
    control(state, json!({"fail": {"up": "locked"}}));
    let (_, fin) = run(
        &rig.served,
        fake,
        "change_acl",
        "DAY-2",
        json!({"bucket_acl": "private"}),
        Some(bucket.clone()),
    )
    .await;
    let summary = fin["summary"].as_str().unwrap();
    assert!(
        summary.contains("stack pay-assets is locked by another Pulumi operation (held by runner@")
            && summary.contains("(no longer running)")
            && summary.contains("pulumi cancel --yes --stack pay-assets"),
        "{summary}"
    );
    control(state, json!({}));

    let before = calls(state).len();
    let (deleted, fin) = run(
        &rig.served,
        fake,
        "delete_bucket",
        "DELETE",
        json!({}),
        Some(bucket.clone()),
    )
    .await;
    assert_eq!(fin["status"], "SUCCESS", "{fin}");
    let log = fake.log_lines(&deleted);
    assert!(
        log.iter()
            .any(|l| l.starts_with("recovering: stack pay-assets was left locked by runner@")),
        "{log:#?}"
    );
    assert!(
        log.contains(&"recovered: stack pay-assets is unlocked".to_owned()),
        "{log:#?}"
    );
    // The lock that crash left is provably dead (this host, no such process): cleared first.
    let delete: Vec<Vec<String>> = calls(state)[before..].iter().map(argv).collect();
    assert_eq!(
        delete,
        [
            w(r#"--non-interactive cancel --yes --stack pay-assets"#),
            w(r#"--non-interactive stack export --stack pay-assets"#),
            w(
                r#"--non-interactive destroy --yes --skip-preview --suppress-progress --color never --stack pay-assets"#
            ),
            w(r#"--non-interactive stack history --json --page-size 1 --stack pay-assets"#),
            w(r#"--non-interactive stack rm --yes --stack pay-assets"#),
        ]
    );
    assert!(
        fin["summary"]
            .as_str()
            .unwrap()
            .starts_with("stack pay-assets destroyed (5 deleted)"),
        "{fin}"
    );
    assert!(fake.entity("s3_bucket", "pay-assets").is_none());
    assert!(!state
        .join(".pulumi/stacks/port-s3-bucket/pay-assets.json")
        .exists());

    // Deleting again: the stack is gone, the run still succeeds and says so.
    let (again, fin) = run(
        &rig.served,
        fake,
        "delete_bucket",
        "DELETE",
        json!({}),
        Some(bucket),
    )
    .await;
    assert_eq!(fin["status"], "SUCCESS");
    assert!(fake
        .log_lines(&again)
        .contains(&"stack pay-assets does not exist: nothing to destroy".to_owned()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn civo_cluster_kubeconfig_stays_out_of_the_catalog_and_the_logs() {
    let rig = pulumi_rig().await;
    let (fake, state) = (&rig.fake, &rig.state);
    let (create, fin) = run(
        &rig.served,
        fake,
        "create_civo_cluster",
        "CREATE",
        json!({"cluster_name": "team-a", "region": "FRA1", "count": 3, "size": "g4s.kube.medium",
               "type": "k3s", "cni": "cilium"}),
        None,
    )
    .await;
    assert_eq!(fin["status"], "SUCCESS", "{:#?}", fake.log_lines(&create));
    let entity = fake.entity("civo_cluster", "team-a").unwrap();
    assert_eq!(
        entity["properties"],
        json!({"cluster_name": "team-a", "region": "FRA1", "count": 3, "size": "g4s.kube.medium",
               "type": "k3s", "cni": "cilium",
               "api_endpoint": "https://team-a.k8s.civo.example:6443"})
    );
    assert!(!entity.to_string().contains("standin-"), "{entity}");
    let stack: Value = serde_json::from_slice(
        &std::fs::read(state.join(".pulumi/stacks/port-civo-cluster/team-a.json")).unwrap(),
    )
    .unwrap();
    let kubeconfig = stack["outputs"]["kubeconfig"].as_str().unwrap();
    let token = kubeconfig
        .lines()
        .last()
        .unwrap()
        .trim()
        .trim_start_matches("token: ");
    let all = fake
        .requests()
        .iter()
        .map(|r| r.body.to_string())
        .collect::<String>();
    assert!(!all.contains(token), "the kubeconfig token reached Port");
    assert!(fake
        .log_lines(&create)
        .contains(&"secret outputs kept out of the catalog: kubeconfig".to_owned()));
    let civo_calls = calls(state);
    assert!(civo_calls
        .iter()
        .all(|c| c["env"]["CIVO_TOKEN"] == "civo-token-for-tests"
            && c["env"].get("AWS_SECRET_ACCESS_KEY").is_none()));

    let cluster = json!({"identifier": "team-a", "blueprint": "civo_cluster"});
    let (_, fin) = run(
        &rig.served,
        fake,
        "scale_civo_cluster",
        "DAY-2",
        json!({"count": 5}),
        Some(cluster),
    )
    .await;
    assert_eq!(fin["status"], "SUCCESS");
    assert_eq!(
        fake.entity("civo_cluster", "team-a").unwrap()["properties"]["count"],
        5
    );
    assert_eq!(
        fake.entity("civo_cluster", "team-a").unwrap()["properties"]["cni"],
        "cilium"
    );

    // Two runs on one stack at once: the second waits for the first (the CLI's own lock
    // would otherwise fail it), and says so.
    control(state, json!({"up_seconds": 0.6}));
    let cluster = json!({"identifier": "team-a", "blueprint": "civo_cluster"});
    let (a, b) = (unique_run_id(), unique_run_id());
    for (id, count) in [(&a, 2), (&b, 4)] {
        let mut body = v2(id, "scale_civo_cluster", "DAY-2", json!({"count": count}));
        body["entity"] = cluster.clone();
        post(&rig.served, &body).await;
    }
    let (fa, fb) = (fake.wait_final(&a).await, fake.wait_final(&b).await);
    assert_eq!(
        (fa["status"].as_str(), fb["status"].as_str()),
        (Some("SUCCESS"), Some("SUCCESS"))
    );
    let waited: Vec<String> = [&a, &b]
        .iter()
        .flat_map(|id| fake.log_lines(id))
        .filter(|l| l.starts_with("waiting for pulumi:port-civo-cluster/team-a: locked by run "))
        .collect();
    assert_eq!(waited.len(), 1, "{waited:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulumi_failures_are_explained_and_a_failed_create_keeps_its_stack() {
    let rig = pulumi_rig().await;
    let (fake, state) = (&rig.fake, &rig.state);
    for (kind, expected) in [
        ("auth", "Pulumi could not log in: set PULUMI_ACCESS_TOKEN"),
        ("passphrase", "the stack's secrets cannot be decrypted"),
        ("crash", "pulumi up failed for stack"),
    ] {
        control(state, json!({"fail": {"up": kind}}));
        let (run_id, fin) = run(
            &rig.served,
            fake,
            "create_bucket",
            "CREATE",
            json!({"bucket_name": format!("b-{kind}")}),
            None,
        )
        .await;
        assert_eq!(fin["status"], "FAILURE");
        let summary = fin["summary"].as_str().unwrap();
        assert!(summary.contains(expected), "{kind}: {summary}");
        assert!(
            fake.log_lines(&run_id)
                .iter()
                .any(|l| l.starts_with(&format!("stack b-{kind} is kept as it is"))),
            "{kind}"
        );
        assert!(fake.entity("s3_bucket", &format!("b-{kind}")).is_none());
    }
    control(state, json!({}));
    // DAY-2 on a stack this runner never created.
    let (_, fin) = run(
        &rig.served,
        fake,
        "change_acl",
        "DAY-2",
        json!({"bucket_acl": "private"}),
        Some(json!({"identifier": "never-made", "blueprint": "s3_bucket"})),
    )
    .await;
    let summary = fin["summary"].as_str().unwrap();
    assert!(
        summary.contains("stack never-made of project port-s3-bucket does not exist"),
        "{summary}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_values_reach_pulumi_as_one_argument_or_are_refused() {
    let rig = pulumi_rig().await;
    let (fake, state) = (&rig.fake, &rig.state);
    let values = hostile_values();
    let tags: serde_json::Map<String, Value> = values
        .iter()
        .enumerate()
        .map(|(i, v)| (format!("k{i}"), json!(v)))
        .chain([("empty".to_owned(), Value::Null)])
        .collect();
    let (run_id, fin) = run(
        &rig.served,
        fake,
        "create_bucket",
        "CREATE",
        json!({"bucket_name": "hostile-tags", "tags": tags}),
        None,
    )
    .await;
    assert_eq!(fin["status"], "SUCCESS", "{:#?}", fake.log_lines(&run_id));
    let recorded: Vec<Vec<String>> = calls(state).iter().map(argv).collect();
    for (i, value) in values.iter().enumerate() {
        let expected = vec![
            "--non-interactive".to_owned(),
            "config".into(),
            "set".into(),
            "--stack".into(),
            "hostile-tags".into(),
            "--path".into(),
            "--plaintext".into(),
            format!("tags[\"k{i}\"]"),
            "--".into(),
            value.clone(),
        ];
        assert_eq!(
            recorded.iter().filter(|a| **a == expected).count(),
            1,
            "{value:?}"
        );
    }
    // Nothing else ran: select, 3 scalar sets, clearing the tags, one set per value (the null
    // is skipped), the checkpoint read, up, its history entry, output.
    assert_eq!(recorded.len(), 1 + 3 + 1 + values.len() + 4);
    // Every value came back as one value in the stack's outputs and so in the entity.
    let entity = fake.entity("s3_bucket", "hostile-tags").unwrap();
    for (i, value) in values.iter().enumerate() {
        assert_eq!(
            entity["properties"]["tags"][format!("k{i}")],
            json!(value),
            "{value:?}"
        );
    }

    // As stack names they are refused by the action's input pattern before anything runs.
    let before = calls(state).len();
    for value in &values {
        let (_, fin) = run(
            &rig.served,
            fake,
            "create_bucket",
            "CREATE",
            json!({"bucket_name": value}),
            None,
        )
        .await;
        assert_eq!(fin["status"], "FAILURE", "{value:?}");
        assert!(
            fin["summary"].as_str().unwrap().contains("bucket_name"),
            "{fin}"
        );
    }
    // And as the entity a DAY-2 run names, by the stack-name check.
    // (Values Port identifiers cannot hold never get past the webhook: 422.)
    for value in ["../x", "-rf", "a/b", "x..y", ":x", "@x"] {
        let (_, fin) = run(
            &rig.served,
            fake,
            "change_acl",
            "DAY-2",
            json!({"bucket_acl": "private"}),
            Some(json!({"identifier": value, "blueprint": "s3_bucket"})),
        )
        .await;
        assert_eq!(fin["status"], "FAILURE", "{value:?}");
    }
    assert_eq!(
        calls(state).len(),
        before,
        "a refused value still ran the CLI"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_values_reach_a_command_as_one_argument_or_are_refused() {
    let fake = FakePort::start().await;
    let dir = tempfile::tempdir().unwrap();
    let record = dir.path().join("argv.jsonl");
    let recorder = repo().join("tests/fixtures/record-argv");
    std::fs::create_dir(dir.path().join("handlers")).unwrap();
    std::fs::write(
        dir.path().join("handlers/note.yaml"),
        format!(
            "action: note\nhandler: command\nsteps:\n  - name: record\n    program: {}\n    args: ['{}', '\"--note\"', .inputs.note]\n",
            recorder.display(),
            serde_json::to_string(record.to_str().unwrap()).unwrap()
        ),
    )
    .unwrap();
    let data = tempfile::tempdir().unwrap();
    let served = serve(&fake, dir.path(), data.path(), &[]);
    let recorded = || -> Vec<Vec<String>> {
        std::fs::read_to_string(&record)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    for value in hostile_values() {
        let before = recorded().len();
        let (_, fin) = run(
            &served,
            &fake,
            "note",
            "CREATE",
            json!({"note": value}),
            None,
        )
        .await;
        if value.starts_with('-') {
            assert_eq!(fin["status"], "FAILURE", "{value:?}");
            let summary = fin["summary"].as_str().unwrap();
            assert!(summary.contains("would be read as an option"), "{summary}");
            assert_eq!(recorded().len(), before, "{value:?} ran");
        } else {
            assert_eq!(fin["status"], "SUCCESS", "{value:?}: {fin}");
            assert_eq!(
                recorded()[before..],
                [vec!["--note".to_owned(), value.clone()]]
            );
        }
    }
    let (_, fin) = run(
        &served,
        &fake,
        "note",
        "CREATE",
        json!({"note": "a\u{0}b"}),
        None,
    )
    .await;
    assert_eq!(fin["status"], "FAILURE");
    assert!(
        fin["summary"].as_str().unwrap().contains("NUL character"),
        "{fin}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pulumi_up_that_hangs_is_stopped_at_its_timeout_and_fails_the_run() {
    let fake = FakePort::start().await;
    let data = tempfile::tempdir().unwrap();
    let actions = s3_action(
        "slow_bucket",
        "stack: .inputs.name\ntimeout_secs: 2\nconfig:\n  bucketName: .inputs.name\n",
    );
    let served = serve_standin(&fake, actions.path(), data.path(), &[]);
    let state = data.path().join("pulumi-state");
    control(&state, json!({"fail": {"up": "hang"}}));
    let (run_id, fin) = run(
        &served,
        &fake,
        "slow_bucket",
        "CREATE",
        json!({"name": "slow-one"}),
        None,
    )
    .await;
    assert_eq!(fin["status"], "FAILURE");
    let summary = fin["summary"].as_str().unwrap();
    assert!(
        summary.starts_with("pulumi up failed for stack slow-one")
            && summary.contains("did not finish within 2s and was stopped"),
        "{summary}"
    );
    assert!(fake
        .log_lines(&run_id)
        .iter()
        .any(|l| l.starts_with("stack slow-one is kept as it is")));
    // The hanging stand-in (its whole process group) is gone.
    let standin_alive = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("cmdline")).ok())
        .any(|cmd| cmd.contains("fixtures/pulumi") && cmd.contains("slow-one"));
    assert!(!standin_alive, "the stand-in still runs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_taken_away_leaves_the_stack_config_and_the_entity() {
    let rig = pulumi_rig().await;
    let fake = &rig.fake;
    for tags in [
        json!({"team": "pay", "cost": "high"}),
        json!({"team": "pay"}),
    ] {
        let (run_id, fin) = run(
            &rig.served,
            fake,
            "create_bucket",
            "CREATE",
            json!({"bucket_name": "tagged", "tags": tags}),
            None,
        )
        .await;
        assert_eq!(fin["status"], "SUCCESS", "{:#?}", fake.log_lines(&run_id));
        assert_eq!(
            fake.entity("s3_bucket", "tagged").unwrap()["properties"]["tags"],
            tags
        );
    }
}

/// A lock file as the CLI writes it, for `stack` of the S3 project.
pub(crate) fn write_lock(state: &Path, stack: &str, pid: u32, host: &str) -> PathBuf {
    let dir = state.join(format!(".pulumi/locks/organization/port-s3-bucket/{stack}"));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{}.json", uuid::Uuid::new_v4()));
    std::fs::write(
        &path,
        json!({"pid": pid, "username": "someone", "hostname": host, "timestamp": "2026-12-01T10:00:00Z"}).to_string(),
    )
    .unwrap();
    path
}

pub(crate) fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_that_may_be_alive_is_never_cleared_and_its_owner_is_named() {
    let PulumiRig {
        fake,
        served,
        state,
        _data,
    } = pulumi_rig().await;
    drop(served);
    // A runner whose DAY-2 waits 1 s for a held stack (not its whole timeout).
    let actions = shipped_with(&[("change_acl", "lock_wait_secs: 1")]);
    let served = serve_standin(&fake, actions.path(), _data.path(), &[]);
    let rig = PulumiRig {
        fake,
        served,
        state,
        _data,
    };
    let (fake, state) = (&rig.fake, &rig.state);
    let (_, fin) = run(
        &rig.served,
        fake,
        "create_bucket",
        "CREATE",
        json!({"bucket_name": "held"}),
        None,
    )
    .await;
    assert_eq!(fin["status"], "SUCCESS", "{fin}");
    let bucket = json!({"identifier": "held", "blueprint": "s3_bucket"});
    let mut holder = std::process::Command::new("sleep")
        .arg("60")
        .spawn()
        .unwrap();
    for (pid, host, says) in [
        (
            holder.id(),
            host_name(),
            "(pid {pid}) since 2026-12-01T10:00:00Z (still running)",
        ),
        (
            1,
            "build-agent-7".to_owned(),
            "on another host: port-runner cannot tell whether it runs",
        ),
    ] {
        let lock = write_lock(state, "held", pid, &host);
        let before = calls(state).len();
        let (day2, fin) = run(
            &rig.served,
            fake,
            "change_acl",
            "DAY-2",
            json!({"bucket_acl": "private"}),
            Some(bucket.clone()),
        )
        .await;
        let summary = fin["summary"].as_str().unwrap();
        assert_eq!(fin["status"], "FAILURE");
        assert!(
            summary.contains(&format!("held by someone@{host}")),
            "{summary}"
        );
        assert!(
            summary.contains(&says.replace("{pid}", &pid.to_string())),
            "{summary}"
        );
        assert!(
            summary.contains("pulumi cancel --yes --stack held"),
            "{summary}"
        );
        assert!(lock.exists(), "a lock that may be alive stays");
        let log = fake.log_lines(&day2);
        assert!(
            log.iter().any(
                |l| l.starts_with("waiting for stack held: locked by someone@")
                    && l.ends_with("of at most 1s")
            ),
            "waited for it first: {log:#?}"
        );
        assert!(
            calls(state)[before..]
                .iter()
                .all(|c| argv(c)[1] != "cancel"),
            "no cancel"
        );
        std::fs::remove_file(lock).unwrap();
    }
    holder.kill().unwrap();
    holder.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_kill_during_the_create_of_a_fixed_name_bucket_the_same_create_succeeds() {
    let fake = FakePort::start().await;
    let data = tempfile::tempdir().unwrap();
    let state = data.path().join("pulumi-state");
    let mut served = serve_standin(&fake, &repo().join("actions"), data.path(), &[]);
    control(&state, json!({"up_seconds": 30}));
    let create = unique_run_id();
    post(
        &served,
        &v2(
            &create,
            "create_bucket",
            "CREATE",
            json!({"bucket_name": "crashy", "region": "eu-west-1"}),
        ),
    )
    .await;
    let lock_dir = state.join(".pulumi/locks/organization/port-s3-bucket/crashy");
    let lock = crate::helpers::until(
        Duration::from_secs(30),
        || "pulumi up to take the stack's lock".to_owned(),
        || {
            std::fs::read_dir(&lock_dir)
                .ok()?
                .flatten()
                .next()
                .map(|e| e.path())
        },
    )
    .await;
    // The kill comes once the bucket is made (the CLI then sleeps for `up_seconds`): the
    // lock is taken a moment before.
    let made = || {
        let cloud: Value =
            serde_json::from_slice(&std::fs::read(state.join("standin-cloud.json")).ok()?).ok()?;
        cloud.get("aws:s3:Bucket::crashy").map(drop)
    };
    crate::helpers::until(
        Duration::from_secs(30),
        || "the bucket to be made in the stand-in's cloud".to_owned(),
        made,
    )
    .await;
    // The machine loses both: port-runner and the CLI it ran, with no chance to clean up.
    let cli_pid: i32 = serde_json::from_slice::<Value>(&std::fs::read(&lock).unwrap()).unwrap()
        ["pid"]
        .as_i64()
        .unwrap() as i32;
    // (The runner frozen first, then the CLI killed: a runner that dies first sends it
    // SIGINT, and it cleans up; a live one would see it die and report the run.)
    // SAFETY: kill(2) on this test's runner and the stand-in it started.
    unsafe {
        libc::kill(served.child.id() as i32, libc::SIGSTOP);
        libc::kill(cli_pid, libc::SIGKILL);
    }
    served.child.kill().unwrap();
    served.child.wait().unwrap();
    crate::helpers::until(
        Duration::from_secs(10),
        || "the CLI to be gone".to_owned(),
        || (!port_runner::tool::alive(cli_pid)).then_some(()),
    )
    .await;
    assert!(lock.exists(), "the kill left the lock behind");
    control(&state, json!({}));

    let served = serve_standin(&fake, &repo().join("actions"), data.path(), &[]);
    let fin = fake.wait_final(&create).await;
    assert_eq!(fin["status"], "FAILURE");
    assert!(
        fin["summary"].as_str().unwrap().starts_with("interrupted"),
        "{fin}"
    );
    // The bucket was made in the cloud, and the killed `up` never recorded it: its create is
    // pending. The real CLI warns and creates it again, which S3 refuses outside us-east-1.
    let cloud = || -> Value {
        serde_json::from_slice(&std::fs::read(state.join("standin-cloud.json")).unwrap()).unwrap()
    };
    assert!(cloud().get("aws:s3:Bucket::crashy").is_some());
    let (again, fin) = run(
        &served,
        &fake,
        "create_bucket",
        "CREATE",
        json!({"bucket_name": "crashy", "region": "eu-west-1"}),
        None,
    )
    .await;
    let log = fake.log_lines(&again);
    assert_eq!(fin["status"], "SUCCESS", "{log:#?}");
    assert!(!lock.exists());
    assert!(
        log.iter().any(
            |l| l.starts_with("recovering: stack crashy was left locked by runner@")
                && l.contains(&format!("(pid {cli_pid})"))
        ),
        "{log:#?}"
    );
    assert!(
        log.iter().any(|l| l.starts_with(
            "recovering: stack crashy has 4 create(s) an interrupted operation left pending"
        ) && l.contains("aws:s3:Bucket bucket")),
        "{log:#?}"
    );
    assert!(
        log.iter().any(|l| l.starts_with("recovered: imported ")
            && l.contains("aws:s3:Bucket bucket (as crashy)")
            && l.contains("aws:s3:BucketAcl bucketAcl (as crashy,private)")),
        "{log:#?}"
    );
    // One refresh imported them all; the `up` after it saw no pending operation.
    let refreshes: Vec<Vec<String>> = calls(&state)
        .iter()
        .map(argv)
        .filter(|argv| argv.get(1).map(String::as_str) == Some("refresh"))
        .collect();
    assert_eq!(refreshes.len(), 1, "{refreshes:?}");
    let imports = refreshes[0]
        .iter()
        .filter(|a| *a == "--import-pending-creates")
        .count();
    assert_eq!(imports, 8, "4 URN ID pairs: {:?}", refreshes[0]);
    assert!(
        !log.iter()
            .any(|l| l.contains("pending operations from previous deployment")),
        "{log:#?}"
    );
    // One bucket in the cloud, in the stack, nothing pending.
    let buckets = cloud()
        .as_object()
        .unwrap()
        .keys()
        .filter(|k| k.starts_with("aws:s3:Bucket::"))
        .count();
    assert_eq!(buckets, 1, "{}", cloud());
    assert_eq!(cloud().as_object().unwrap().len(), 4, "{}", cloud());
    let checkpoint: Value = serde_json::from_slice(
        &std::fs::read(state.join(".pulumi/stacks/port-s3-bucket/crashy.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(checkpoint["pending_operations"], json!([]));
    assert_eq!(checkpoint["resources"]["bucket"]["__id"], "crashy");
    assert_eq!(
        fake.entity("s3_bucket", "crashy").unwrap()["properties"]["region"],
        "eu-west-1"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_imports_or_clears_what_an_interrupted_update_left_pending() {
    let rig = pulumi_rig().await;
    let stack_file = created_bucket(&rig, "pendy").await;
    // What a killed `up` leaves: creates under way in the checkpoint, one of them made in the
    // cloud (a bucket, importable by its name), one not importable (no import_ids entry).
    let mut checkpoint: Value =
        serde_json::from_slice(&std::fs::read(&stack_file).unwrap()).unwrap();
    checkpoint["pending_operations"] = json!([
        {"resource": {"urn": "urn:pulumi:pendy::port-s3-bucket::aws:s3:BucketPolicy::policy",
                      "type": "aws:s3:BucketPolicy", "inputs": {"bucket": "pendy"}},
         "type": "creating"},
        {"resource": {"urn": "urn:pulumi:pendy::port-s3-bucket::aws:s3:Bucket::logs",
                      "type": "aws:s3:Bucket", "inputs": {"bucket": "pendy-logs"}},
         "type": "creating"}
    ]);
    std::fs::write(&stack_file, serde_json::to_vec(&checkpoint).unwrap()).unwrap();
    let cloud_file = rig.state.join("standin-cloud.json");
    let mut cloud: Value = serde_json::from_slice(&std::fs::read(&cloud_file).unwrap()).unwrap();
    cloud["aws:s3:Bucket::pendy-logs"] = json!({"bucket": "pendy-logs", "__id": "pendy-logs"});
    std::fs::write(&cloud_file, serde_json::to_vec(&cloud).unwrap()).unwrap();
    let (delete, fin) = run(
        &rig.served,
        &rig.fake,
        "delete_bucket",
        "DELETE",
        json!({}),
        Some(json!({"identifier": "pendy", "blueprint": "s3_bucket"})),
    )
    .await;
    let log = rig.fake.log_lines(&delete);
    assert_eq!(fin["status"], "SUCCESS", "{log:#?}");
    assert!(
        log.iter().any(|l| l.starts_with(
            "recovering: stack pendy has 2 create(s) an interrupted operation left pending"
        ) && l.ends_with("before destroy")),
        "{log:#?}"
    );
    assert!(
        log.iter()
            .any(|l| l.starts_with("recovered: imported aws:s3:Bucket logs (as pendy-logs)")),
        "{log:#?}"
    );
    assert!(
        log.iter()
            .any(|l| l.starts_with("recovered: cleared aws:s3:BucketPolicy policy")),
        "{log:#?}"
    );
    let destroys = calls(&rig.state)
        .iter()
        .map(argv)
        .filter(|argv| argv.get(1).map(String::as_str) == Some("destroy"))
        .count();
    assert_eq!(destroys, 1);
    assert!(!stack_file.exists());
    assert!(rig.fake.entity("s3_bucket", "pendy").is_none());
    // The imported bucket went with the stack: nothing of it is left in the cloud.
    let cloud: Value = serde_json::from_slice(&std::fs::read(&cloud_file).unwrap()).unwrap();
    assert_eq!(cloud, json!({}), "{cloud}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preview_only_reports_the_planned_changes_and_changes_nothing() {
    let rig = pulumi_rig().await;
    let (fake, state) = (&rig.fake, &rig.state);
    let (_, fin) = run(
        &rig.served,
        fake,
        "create_bucket",
        "CREATE",
        json!({"bucket_name": "seen", "bucket_acl": "private"}),
        None,
    )
    .await;
    assert_eq!(fin["status"], "SUCCESS", "{fin}");
    let entity = fake.entity("s3_bucket", "seen").unwrap();
    let bucket =
        json!({"identifier": "seen", "blueprint": "s3_bucket", "properties": entity["properties"]});
    let settings_file = rig
        ._data
        .path()
        .join("pulumi-projects/port-s3-bucket/Pulumi.seen.yaml");
    let settings_before = std::fs::read(&settings_file).unwrap();
    let stack_file = state.join(".pulumi/stacks/port-s3-bucket/seen.json");
    let stack_before = std::fs::read(&stack_file).unwrap();

    let before = calls(state).len();
    let (preview, fin) = run(
        &rig.served,
        fake,
        "change_acl",
        "DAY-2",
        json!({"bucket_acl": "public-read", "preview_only": true}),
        Some(bucket.clone()),
    )
    .await;
    assert_eq!(fin["status"], "SUCCESS", "{:#?}", fake.log_lines(&preview));
    let summary = fin["summary"].as_str().unwrap();
    assert!(
        summary.starts_with("preview of stack seen: 1 to update"),
        "{summary}"
    );
    // The preview's id, to approve exactly this change with: its run id.
    assert!(
        summary.ends_with(&format!("; nothing was changed; preview id {preview}")),
        "{summary}"
    );
    let lines = fake.log_lines(&preview);
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("would update: aws:s3:BucketAcl") && l.contains("acl")),
        "{lines:#?}"
    );
    let made: Vec<String> = calls(state)[before..]
        .iter()
        .map(|c| argv(c)[1].clone())
        .collect();
    assert!(made.contains(&"preview".to_owned()), "{made:?}");
    assert!(!made.contains(&"up".to_owned()), "{made:?}");
    assert_eq!(
        std::fs::read(&settings_file).unwrap(),
        settings_before,
        "config put back"
    );
    assert_eq!(
        std::fs::read(&stack_file).unwrap(),
        stack_before,
        "state untouched"
    );
    assert_eq!(
        fake.entity("s3_bucket", "seen").unwrap(),
        entity,
        "entity untouched"
    );

    // That preview, approved: the stack is updated (its preview id is its run id).
    let acl_run = |inputs: Value| {
        run(
            &rig.served,
            fake,
            "change_acl",
            "DAY-2",
            inputs,
            Some(bucket.clone()),
        )
    };
    let approved = json!({"bucket_acl": "public-read", "preview_id": preview});
    let (apply, fin) = acl_run(approved).await;
    assert_eq!(fin["status"], "SUCCESS", "{:#?}", fake.log_lines(&apply));
    assert!(fake
        .log_lines(&apply)
        .iter()
        .any(|l| l.contains("the plan is the approved one")));
    assert_ne!(
        std::fs::read(&stack_file).unwrap(),
        stack_before,
        "the approved change ran"
    );
    // A preview whose stack another run updated (its configuration and state) before the
    // approval is refused: no `up`.
    let planned = json!({"bucket_acl": "private", "preview_only": true});
    let (moved, fin) = acl_run(planned).await;
    assert_eq!(fin["status"], "SUCCESS", "{fin}");
    let other = json!({"bucket_acl": "private"});
    let (_, fin) = acl_run(other).await;
    assert_eq!(fin["status"], "SUCCESS", "{fin}");
    let stack_between = std::fs::read(&stack_file).unwrap();
    let before = calls(state).len();
    let approved = json!({"bucket_acl": "private", "preview_id": moved});
    let (_, fin) = acl_run(approved).await;
    assert_eq!(fin["status"], "FAILURE", "{fin}");
    let summary = fin["summary"].as_str().unwrap();
    assert!(
        summary.contains("stack seen's configuration is not what the preview saw")
            && summary.contains("nothing was changed"),
        "{summary}"
    );
    let made: Vec<String> = calls(state)[before..]
        .iter()
        .map(|c| argv(c)[1].clone())
        .collect();
    assert!(!made.contains(&"up".to_owned()), "{made:?}");
    assert_eq!(
        std::fs::read(&stack_file).unwrap(),
        stack_between,
        "state untouched"
    );

    let (preview, fin) = run(
        &rig.served,
        fake,
        "delete_bucket",
        "DELETE",
        json!({"preview_only": true}),
        Some(bucket),
    )
    .await;
    assert_eq!(fin["status"], "SUCCESS", "{:#?}", fake.log_lines(&preview));
    assert!(
        fin["summary"].as_str().unwrap().contains("to delete"),
        "{fin}"
    );
    assert!(stack_file.exists());
    assert!(fake.entity("s3_bucket", "seen").is_some());
}

/// Creates bucket `name` through the shipped action; its stack's checkpoint file.
pub(crate) async fn created_bucket(rig: &PulumiRig, name: &str) -> PathBuf {
    let (_, fin) = run(
        &rig.served,
        &rig.fake,
        "create_bucket",
        "CREATE",
        json!({"bucket_name": name}),
        None,
    )
    .await;
    assert_eq!(fin["status"], "SUCCESS", "{fin}");
    let stack_file = rig
        .state
        .join(format!(".pulumi/stacks/port-s3-bucket/{name}.json"));
    assert!(stack_file.exists());
    stack_file
}

/// The body the shipped automation `delete_bucket_on_ttl` renders for a Port event.
fn ttl_expired(run_id: &str, blueprint: &str, entity: Value) -> Value {
    let automation: Value = serde_json::from_slice(
        &std::fs::read(repo().join("actions/delete_bucket_on_ttl.json")).unwrap(),
    )
    .unwrap();
    let template = &automation["invocationMethod"]["body"];
    // What Port's templating makes of it (the expressions the automation uses).
    assert_eq!(template["port_context"]["action"], "delete_bucket");
    assert_eq!(
        template["entity"],
        "{{ .event.diff.after // .event.diff.before }}"
    );
    json!({
        "port_context": {
            "runId": run_id, "action": "delete_bucket", "operation": "DELETE", "blueprint": blueprint,
            "trigger": {"by": {"orgId": "org_1", "userId": "auth0|1"}, "origin": "AUTOMATION", "at": "2026-12-01T10:00:00Z"},
            "encryptedProperties": []
        },
        "inputs": {},
        "entity": entity
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_ttl_destroys_the_stack_and_removes_the_entity() {
    let rig = pulumi_rig().await;
    let (fake, state) = (&rig.fake, &rig.state);
    let stack_file = created_bucket(&rig, "ephemeral").await;

    // TIMER_PROPERTY_EXPIRED: the event's diff.after is the entity, ttl passed.
    let mut entity = fake.entity("s3_bucket", "ephemeral").unwrap();
    entity["blueprint"] = json!("s3_bucket");
    entity["properties"]["ttl"] = json!("2026-12-01T09:00:00.000Z");
    let expired = unique_run_id();
    post(
        &rig.served,
        &ttl_expired(&expired, "s3_bucket", entity.clone()),
    )
    .await;
    let fin = fake.wait_final(&expired).await;
    assert_eq!(fin["status"], "SUCCESS", "{:#?}", fake.log_lines(&expired));
    assert!(
        fin["summary"]
            .as_str()
            .unwrap()
            .starts_with("stack ephemeral destroyed"),
        "{fin}"
    );
    assert!(!stack_file.exists());
    assert!(fake.entity("s3_bucket", "ephemeral").is_none());

    // The same event again (or ENTITY_DELETED after it): nothing left to destroy, SUCCESS.
    let again = unique_run_id();
    post(
        &rig.served,
        &ttl_expired(&again, "s3_bucket", entity.clone()),
    )
    .await;
    let fin = fake.wait_final(&again).await;
    assert_eq!(fin["status"], "SUCCESS", "{fin}");
    assert!(fake
        .log_lines(&again)
        .contains(&"stack ephemeral does not exist: nothing to destroy".to_owned()));

    // An automation of another blueprint pointed at this action: refused, nothing run.
    let before = calls(state).len();
    let other = unique_run_id();
    let mut service = entity;
    service["blueprint"] = json!("service");
    post(&rig.served, &ttl_expired(&other, "service", service)).await;
    let fin = fake.wait_final(&other).await;
    assert_eq!(fin["status"], "FAILURE");
    let summary = fin["summary"].as_str().unwrap();
    assert!(
        summary.contains("acts on s3_bucket entities") && summary.contains("'service'"),
        "{summary}"
    );
    assert_eq!(calls(state).len(), before, "no Pulumi command for it");
}

/// Port's own event, as an automation with no body template sends it.
fn port_event(kind: &str, blueprint: &str, entity: &Value) -> Value {
    json!({
        "action": kind,
        "resourceType": "entity",
        "trigger": {"by": {"orgId": "org_1", "userId": "auth0|1"}, "origin": "AUTOMATION", "at": "2026-12-01T10:00:00Z"},
        "context": {"blueprintIdentifier": blueprint, "entityIdentifier": entity["identifier"], "propertyIdentifier": "ttl"},
        "diff": {"before": entity, "after": entity}
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_s_own_event_shape_is_routed_to_the_blueprint_s_delete_action() {
    let rig = pulumi_rig().await;
    let (fake, state) = (&rig.fake, &rig.state);
    let stack_file = created_bucket(&rig, "evented").await;
    let entity = fake.entity("s3_bucket", "evented").unwrap();

    // The event beside its run, as Port's template data has it, with the verb Port's event
    // holds (`TIMER_EXPIRED`), sent by an automation whose webhook method is DELETE:
    // delete_bucket runs.
    let expired = unique_run_id();
    let body =
        json!({"event": port_event("TIMER_EXPIRED", "s3_bucket", &entity), "run": {"id": expired}});
    let response = rig.served.send_signed(reqwest::Method::DELETE, &body).await;
    assert_eq!(response.status(), 202, "{}", response.text().await.unwrap());
    let fin = fake.wait_final(&expired).await;
    assert_eq!(fin["status"], "SUCCESS", "{:#?}", fake.log_lines(&expired));
    assert!(fake.log_lines(&expired).contains(
        &"automation event TIMER_PROPERTY_EXPIRED: running delete_bucket on the entity".to_owned()
    ));
    assert!(!stack_file.exists());
    assert!(fake.entity("s3_bucket", "evented").is_none());
    // Counted under the action that ran, not the event's placeholder.
    let metrics = reqwest::get(format!("http://{}/metrics", rig.served.addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"port_runner_runs_total{action="delete_bucket",outcome="success"} 1"#)
            && !metrics.contains(r#"action="port_automation_event""#),
        "{metrics}"
    );

    // A blueprint nothing here provisions, and an event that does not end an entity: each
    // FAILURE saying why, and no Pulumi command run.
    let before = calls(state).len();
    let other = unique_run_id();
    let body =
        json!({"event": port_event("ENTITY_DELETED", "service", &entity), "run": {"id": other}});
    post(&rig.served, &body).await;
    let fin = fake.wait_final(&other).await;
    assert_eq!(fin["status"], "FAILURE");
    let summary = fin["summary"].as_str().unwrap();
    assert!(
        summary.contains("does not provision blueprint 'service'"),
        "{summary}"
    );
    let updated = unique_run_id();
    let body = json!({"event": port_event("ENTITY_UPDATED", "s3_bucket", &entity), "run": {"id": updated}});
    post(&rig.served, &body).await;
    let fin = fake.wait_final(&updated).await;
    assert_eq!(fin["status"], "FAILURE");
    let summary = fin["summary"].as_str().unwrap();
    assert!(
        summary.contains("ENTITY_UPDATED") && summary.contains("TIMER_PROPERTY_EXPIRED"),
        "{summary}"
    );
    assert_eq!(calls(state).len(), before, "no Pulumi command for either");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_checks_mark_the_entity_and_change_no_stack() {
    let fake = FakePort::start().await;
    let data = tempfile::tempdir().unwrap();
    let envs = [("PORT_RUNNER_DRIFT_INTERVAL_SECS", "1")];
    let state = data.path().join("pulumi-state");
    let served = serve_standin(&fake, &repo().join("actions"), data.path(), &envs);
    for bucket in ["drifty", "steady"] {
        let (_, fin) = run(
            &served,
            &fake,
            "create_bucket",
            "CREATE",
            json!({"bucket_name": bucket, "bucket_acl": "private"}),
            None,
        )
        .await;
        assert_eq!(fin["status"], "SUCCESS", "{fin}");
    }
    let checkpoint = |stack: &str| {
        std::fs::read(state.join(format!(".pulumi/stacks/port-s3-bucket/{stack}.json"))).unwrap()
    };
    let before = (checkpoint("drifty"), checkpoint("steady"));
    // Someone opens the bucket's ACL in the console: the cloud no longer matches the stack.
    control(
        &state,
        json!({"drift": {"drifty": {"bucketAcl": {"acl": "public-read"}}}}),
    );
    let drift_of = |stack: &str| {
        fake.entity("s3_bucket", stack)
            .map(|e| e["properties"]["drift"].clone())
    };
    crate::helpers::until(
        Duration::from_secs(30),
        || {
            format!(
                "drift on the entities: {:?} {:?}",
                drift_of("drifty"),
                drift_of("steady")
            )
        },
        || {
            (drift_of("drifty") == Some(json!("drifted"))
                && drift_of("steady") == Some(json!("in_sync")))
            .then_some(())
        },
    )
    .await;
    let drifty = fake.entity("s3_bucket", "drifty").unwrap();
    assert_eq!(
        drifty["properties"]["drifted_resources"],
        json!(["aws:s3:BucketAcl bucketAcl (update: acl)"])
    );
    assert!(drifty["properties"]["drift_checked_at"]
        .as_str()
        .is_some_and(|t| t.starts_with("20")));
    // The rest of the entity is as the run left it.
    assert_eq!(drifty["properties"]["bucket_acl"], "private");
    // Checks never change a stack: previews only, the checkpoints byte for byte as they were.
    let refreshes: Vec<Vec<String>> = calls(&state)
        .iter()
        .map(argv)
        .filter(|a| a.get(1).map(String::as_str) == Some("refresh"))
        .collect();
    assert!(!refreshes.is_empty());
    assert!(refreshes
        .iter()
        .all(|a| a.contains(&"--preview-only".to_owned())));
    assert_eq!((checkpoint("drifty"), checkpoint("steady")), before);
    let metrics = reqwest::get(format!("http://{}/metrics", served.addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"port_runner_stack_drift{project="port-s3-bucket",stack="drifty"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"port_runner_stack_drift{project="port-s3-bucket",stack="steady"} 0"#),
        "{metrics}"
    );

    // Put right in the cloud: the next round says so.
    control(&state, json!({}));
    crate::helpers::until(
        Duration::from_secs(30),
        || format!("drifty back in sync: {:?}", drift_of("drifty")),
        || (drift_of("drifty") == Some(json!("in_sync"))).then_some(()),
    )
    .await;
    assert_eq!(
        fake.entity("s3_bucket", "drifty").unwrap()["properties"]["drifted_resources"],
        json!([])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_left_by_a_replica_whose_lease_ran_out_is_cleared_and_another_host_s_is_not() {
    let fake = FakePort::start().await;
    let database = crate::pg::fresh_database().await;
    let data = tempfile::tempdir().unwrap();
    let envs = [
        ("DATABASE_URL", database.as_str()),
        ("PORT_RUNNER_REPLICA_ID", "survivor-0badc0de"),
    ];
    let state = data.path().join("pulumi-state");
    // A DAY-2 that waits 1 s for a stack another host holds (not its whole timeout).
    let actions = shipped_with(&[("change_acl", "lock_wait_secs: 1")]);
    let served = serve_standin(&fake, actions.path(), data.path(), &envs);
    let (_, fin) = run(
        &served,
        &fake,
        "create_bucket",
        "CREATE",
        json!({"bucket_name": "shared"}),
        None,
    )
    .await;
    assert_eq!(fin["status"], "SUCCESS", "{fin}");
    let bucket = json!({"identifier": "shared", "blueprint": "s3_bucket"});
    let db = crate::pg::client(&database).await;

    // Replica `pod-a-1a2b3c4d` died during an `up` on the shared stack: its lease on the
    // stack ran out, and its CLI's lock file (host `pod-a`) is still in the shared backend.
    db.execute(
        "INSERT INTO port_runner_locks (name, run_id, owner, lease_until)
         VALUES ('pulumi:port-s3-bucket/shared', 'r_dead', 'pod-a-1a2b3c4d', now() - interval '1 minute')",
        &[],
    )
    .await
    .unwrap();
    let lock = write_lock(&state, "shared", 4242, "pod-a");
    let (day2, fin) = run(
        &served,
        &fake,
        "change_acl",
        "DAY-2",
        json!({"bucket_acl": "private"}),
        Some(bucket.clone()),
    )
    .await;
    assert_eq!(fin["status"], "SUCCESS", "{:#?}", fake.log_lines(&day2));
    assert!(!lock.exists());
    let log = fake.log_lines(&day2);
    assert!(
        log.iter().any(|l| l
            .starts_with("recovering: stack shared was left locked by someone@pod-a (pid 4242)")
            && l.contains("replica pod-a-1a2b3c4d died holding the stack (its lease ran out)")),
        "{log:#?}"
    );

    // The same lock file with no expired lease behind it proves nothing: left, and named.
    let lock = write_lock(&state, "shared", 4242, "pod-a");
    let (_, fin) = run(
        &served,
        &fake,
        "change_acl",
        "DAY-2",
        json!({"bucket_acl": "private"}),
        Some(bucket),
    )
    .await;
    assert_eq!(fin["status"], "FAILURE");
    let summary = fin["summary"].as_str().unwrap();
    assert!(
        summary.contains("held by someone@pod-a (pid 4242)")
            && summary.contains("pulumi cancel --yes --stack shared"),
        "{summary}"
    );
    assert!(lock.exists());
}

/// With `update_plans: true`, an approved DAY-2 also runs under Pulumi's own update plan:
/// the preview saves it (`preview --save-plan`, experimental, so `PULUMI_EXPERIMENTAL=true`),
/// and the apply's `up --plan` refuses to deviate from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approved_pulumi_apply_runs_under_the_update_plan_its_preview_saved() {
    let fake = FakePort::start().await;
    let data = tempfile::tempdir().unwrap();
    let actions = shipped_with(&[("change_acl", "update_plans: true")]);
    let served = serve_standin(&fake, actions.path(), data.path(), &[]);
    let state = data.path().join("pulumi-state");
    let (_, fin) = run(
        &served,
        &fake,
        "create_bucket",
        "CREATE",
        json!({"bucket_name": "planned"}),
        None,
    )
    .await;
    assert_eq!(fin["status"], "SUCCESS", "{fin}");
    let entity = fake.entity("s3_bucket", "planned").unwrap();
    let bucket = json!({"identifier": "planned", "blueprint": "s3_bucket", "properties": entity["properties"]});
    let preview_inputs = json!({"bucket_acl": "public-read", "preview_only": true});
    let (preview, fin) = run(
        &served,
        &fake,
        "change_acl",
        "DAY-2",
        preview_inputs,
        Some(bucket.clone()),
    )
    .await;
    assert_eq!(fin["status"], "SUCCESS", "{:#?}", fake.log_lines(&preview));
    let before = calls(&state).len();
    let approved = json!({"bucket_acl": "public-read", "preview_id": preview});
    let (apply, fin) = run(
        &served,
        &fake,
        "change_acl",
        "DAY-2",
        approved,
        Some(bucket),
    )
    .await;
    assert_eq!(fin["status"], "SUCCESS", "{:#?}", fake.log_lines(&apply));
    let made: Vec<Vec<String>> = calls(&state)[before..].iter().map(argv).collect();
    let up = made.iter().find(|a| a[1] == "up").expect("an up ran");
    let plan = up.iter().position(|a| a == "--plan").expect("up --plan");
    assert!(
        up[plan + 1].ends_with(&format!("approved-{apply}.json")),
        "{up:?}"
    );
    let previews: Vec<&Vec<String>> = made.iter().filter(|a| a[1] == "preview").collect();
    assert!(
        previews
            .iter()
            .all(|a| a.contains(&"--save-plan".to_owned())),
        "{previews:?}"
    );
}
