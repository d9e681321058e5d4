//! The process layer with real child processes (small scripts written by the tests).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use port_runner::core::{Masker, RunLog, RunRegistry};
use port_runner::domain::RunId;
use port_runner::runs::{FinalReportRetry, LogBatching, RunReporter};
use port_runner::tool::{self, Locks, Step, ToolError};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::helpers::until;

struct Harness {
    registry: Arc<RunRegistry>,
    run_id: RunId,
    log: RunLog,
    _reporter: RunReporter,
    dir: tempfile::TempDir,
}

fn harness(secrets: &[&str]) -> Harness {
    let registry = Arc::new(RunRegistry::new(10, 10_000));
    let run_id = RunId::generate("r_tool_");
    let inv =
        serde_json::json!({"run_id": run_id.as_str(), "action": "tool", "operation": "CREATE"});
    registry.admit(&port_runner::invocation::Invocation::from_stored(inv).unwrap());
    let lifecycle = port_runner::runs::Lifecycle {
        sink: Arc::new(port_runner::runs::LocalRuns),
        journal: Arc::new(port_runner::store::Journal::in_memory().unwrap()),
        registry: registry.clone(),
        batching: LogBatching::default(),
        retry: FinalReportRetry::default(),
        tracker: TaskTracker::new(),
        stop: CancellationToken::new(),
    };
    let reporter = RunReporter::new(
        run_id.clone(),
        &lifecycle,
        Masker::new(secrets.iter().copied()),
    );
    Harness {
        log: reporter.log(),
        registry,
        run_id,
        _reporter: reporter,
        dir: tempfile::tempdir().unwrap(),
    }
}

impl Harness {
    fn script(&self, name: &str, body: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    fn step(&self, program: &Path, args: &[&str]) -> Step {
        Step::new(
            program.to_str().unwrap(),
            args.iter().map(|a| a.to_string()).collect(),
            self.dir.path(),
        )
    }

    fn lines(&self) -> Vec<String> {
        self.registry
            .get(&self.run_id)
            .unwrap()
            .logs
            .into_iter()
            .map(|l| l.message)
            .collect()
    }
}

fn alive(pid: i32) -> bool {
    // A zombie (state Z) is dead for our purpose: it runs nothing.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat.split(") ").nth(1).unwrap_or("").starts_with('Z'),
        Err(_) => false,
    }
}

#[tokio::test]
async fn output_is_streamed_masked_and_the_runners_environment_is_not_inherited() {
    let h = harness(&[]);
    let script = h.script(
        "env.sh",
        "echo hello\necho \"token is $DEPLOY_TOKEN\" >&2\nenv",
    );
    let mut step = h.step(&script, &[]);
    step.env
        .insert("DEPLOY_TOKEN".into(), "tok-3141592653".into());
    tool::run(&step, &h.log, &CancellationToken::new())
        .await
        .unwrap();
    let lines = h.lines();
    assert!(lines.contains(&"hello".to_owned()), "{lines:?}");
    assert!(lines.contains(&"token is ****".to_owned()), "{lines:?}");
    assert!(lines.iter().all(|l| !l.contains("tok-3141592653")));
    // Cargo sets CARGO_MANIFEST_DIR for this test process: the child must not see it.
    assert!(std::env::var("CARGO_MANIFEST_DIR").is_ok());
    assert!(lines.iter().all(|l| !l.starts_with("CARGO_")), "{lines:?}");
    assert!(lines.iter().any(|l| l.starts_with("PATH=")));
}

#[tokio::test]
async fn arguments_reach_the_program_verbatim_one_each() {
    let h = harness(&[]);
    let script = h.script(
        "args.sh",
        "for a in \"$@\"; do printf '<%s>\\n' \"$a\"; done",
    );
    let hostile = [
        "$(touch pwned)",
        "`id`",
        "; rm -rf /",
        "a b",
        "--force=yes",
        "-rf",
        "../../etc/passwd",
        "'quoted'",
        "\"dq\"",
        "*",
    ];
    let step = h.step(&script, &hostile);
    tool::run(&step, &h.log, &CancellationToken::new())
        .await
        .unwrap();
    let expected: Vec<String> = hostile.iter().map(|a| format!("<{a}>")).collect();
    assert_eq!(h.lines(), expected);
    assert!(!h.dir.path().join("pwned").exists());
}

#[tokio::test]
async fn a_failing_program_reports_its_code_and_stderr() {
    let h = harness(&["sekrit-value"]);
    let script = h.script(
        "fail.sh",
        "echo working\necho 'error: bucket sekrit-value already exists' >&2\nexit 3",
    );
    let err = tool::run(&h.step(&script, &[]), &h.log, &CancellationToken::new())
        .await
        .unwrap_err();
    let ToolError::Failed {
        code, stderr_tail, ..
    } = &err
    else {
        panic!("{err:?}")
    };
    assert_eq!(*code, tool::Exit::Code(3));
    assert_eq!(
        stderr_tail,
        &vec!["error: bucket **** already exists".to_owned()]
    );
    assert!(
        err.to_string()
            .ends_with("exited 3: error: bucket **** already exists"),
        "{err}"
    );
}

#[tokio::test]
async fn a_hanging_program_is_stopped_with_everything_it_started() {
    let h = harness(&[]);
    let pidfile = h.dir.path().join("child.pid");
    let script = h.script(
        "hang.sh",
        &format!(
            "sleep 300 &\necho $! > {}\necho started\nsleep 300",
            pidfile.display()
        ),
    );
    let mut step = h.step(&script, &[]);
    step.timeout = Duration::from_millis(500);
    let err = tool::run(&step, &h.log, &CancellationToken::new())
        .await
        .unwrap_err();
    assert!(matches!(err, ToolError::TimedOut { .. }), "{err:?}");
    let grandchild: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    until(
        Duration::from_secs(10),
        || format!("orphan {grandchild} to be gone"),
        || (!alive(grandchild)).then_some(()),
    )
    .await;
}

#[tokio::test]
async fn cancelling_the_run_stops_the_program() {
    let h = harness(&[]);
    let script = h.script("wait.sh", "echo waiting\nsleep 300");
    let cancel = CancellationToken::new();
    let trigger = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        trigger.cancel();
    });
    let err = tool::run(&h.step(&script, &[]), &h.log, &cancel)
        .await
        .unwrap_err();
    assert!(matches!(err, ToolError::Cancelled { .. }), "{err:?}");
}

#[tokio::test]
async fn a_hundred_thousand_lines_keep_memory_bounded() {
    let h = harness(&[]);
    let script = h.script("chatty.sh", "seq 1 100000");
    tool::run(&h.step(&script, &[]), &h.log, &CancellationToken::new())
        .await
        .unwrap();
    let record = h.registry.get(&h.run_id).unwrap();
    assert_eq!(record.logs.len(), 10_000, "the in-memory view is capped");
    assert_eq!(record.logs_truncated, 90_000);
    assert_eq!(record.logs.last().unwrap().message, "10000");

    // Captured stdout is bounded too.
    let mut step = h.step(&script, &[]);
    step.capture_stdout = Some(1024);
    let err = tool::run(&step, &h.log, &CancellationToken::new())
        .await
        .unwrap_err();
    assert!(
        matches!(err, ToolError::OutputTooLarge { limit: 1024, .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn stdout_can_be_captured_to_parse() {
    let h = harness(&[]);
    let script = h.script("json.sh", "echo '{\"bucketName\": \"b-1\"}'");
    let mut step = h.step(&script, &[]);
    step.capture_stdout = Some(64 * 1024);
    let out = tool::run(&step, &h.log, &CancellationToken::new())
        .await
        .unwrap();
    let json: serde_json::Value = serde_json::from_str(out.stdout.as_deref().unwrap()).unwrap();
    assert_eq!(json["bucketName"], "b-1");
    let missing = tool::run(
        &h.step(Path::new("/nonexistent/tool"), &[]),
        &h.log,
        &CancellationToken::new(),
    )
    .await;
    assert!(matches!(missing, Err(ToolError::Spawn { .. })));
}

#[tokio::test]
async fn runs_on_one_resource_take_turns_and_say_so_while_others_proceed() {
    let locks = Locks::new();
    let (a, b, c) = (harness(&[]), harness(&[]), harness(&[]));
    let held = locks.acquire("pulumi:bucket/dev", &a.run_id, &a.log).await;
    let waiter = {
        let (locks, run, log) = (locks.clone(), b.run_id.clone(), b.log.clone());
        tokio::spawn(async move {
            let _guard = locks.acquire("pulumi:bucket/dev", &run, &log).await;
        })
    };
    // Another resource is free meanwhile.
    let other = locks.acquire("pulumi:bucket/prod", &c.run_id, &c.log).await;
    drop(other);
    until(
        Duration::from_secs(10),
        || "the second run to wait".to_owned(),
        || {
            (b.lines()
                .iter()
                .any(|l| l.starts_with("waiting for pulumi:bucket/dev")))
            .then_some(())
        },
    )
    .await;
    assert!(
        !waiter.is_finished(),
        "the second run waits while the first holds the lock"
    );
    assert_eq!(
        b.lines(),
        vec![format!(
            "waiting for pulumi:bucket/dev: locked by run {}",
            a.run_id
        )]
    );
    drop(held);
    tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .unwrap()
        .unwrap();
    assert!(c.lines().is_empty(), "no wait for another resource");
}
