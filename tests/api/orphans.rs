//! Nothing orphaned: a runner killed alone (`kill -9` of its pid, as the OOM killer or a
//! supervisor does it, its tools left alive by the kernel) takes its tools with it through
//! the parent-death signal, stops at its next start whatever survived that, reports the run
//! once saying so; a stack a live process holds is waited for.

use std::time::Duration;

use serde_json::json;

use crate::fake_port::FakePort;
use crate::helpers::{unique_run_id, until, v2};
use crate::provision::{
    control, one_action, pulumi_rig, repo, run, serve, serve_standin, write_lock,
};

/// Pids of live (not zombie) processes whose command line contains every one of `words`.
fn processes(words: &[&str]) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            (words.iter().all(|w| cmd.contains(w)) && port_runner::tool::alive(pid)).then_some(pid)
        })
        .collect()
}

/// Whether a process ignores SIGTERM (`SigIgn` in `/proc/<pid>/status`).
fn ignores_sigterm(pid: i32) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("SigIgn:"))
        .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        .is_some_and(|mask| mask & (1 << (libc::SIGTERM - 1)) != 0)
}

async fn started(run_id: &str, what: &str, words: &[&str]) -> Vec<i32> {
    until(
        Duration::from_secs(30),
        || format!("{what} to run for {run_id}"),
        || Some(processes(words)).filter(|p| !p.is_empty()),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_killed_alone_takes_its_pulumi_cli_with_it_and_the_next_run_needs_no_hand_work() {
    let fake = FakePort::start().await;
    let data = tempfile::tempdir().unwrap();
    let state = data.path().join("pulumi-state");
    let mut served = serve_standin(&fake, &repo().join("actions"), data.path(), &[]);
    control(&state, json!({"up_seconds": 60}));
    let create = unique_run_id();
    let body = v2(
        &create,
        "create_bucket",
        "CREATE",
        json!({"bucket_name": "lonely"}),
    );
    assert_eq!(served.post_signed(&body).await.status(), 202);
    started(&create, "pulumi up", &["fixtures/pulumi", "up", "lonely"]).await;
    let locks = state.join(".pulumi/locks/organization/port-s3-bucket/lonely");
    let held = || std::fs::read_dir(&locks).map(|d| d.count()).unwrap_or(0);
    until(
        Duration::from_secs(30),
        || "pulumi up to take the stack's lock".to_owned(),
        || (held() > 0).then_some(()),
    )
    .await;
    // The runner alone dies; the kernel leaves its children running.
    served.child.kill().unwrap();
    served.child.wait().unwrap();
    // The parent-death signal reached the CLI as SIGINT: it saved, unlocked and ended.
    until(
        Duration::from_secs(15),
        || "the stand-in to end after its runner died".to_owned(),
        || {
            processes(&["fixtures/pulumi", "lonely"])
                .is_empty()
                .then_some(())
        },
    )
    .await;
    assert_eq!(held(), 0, "the lock was released");
    control(&state, json!({}));

    let served = serve_standin(&fake, &repo().join("actions"), data.path(), &[]);
    let fin = fake.wait_final(&create).await;
    assert_eq!(fin["status"], "FAILURE");
    assert!(
        fin["summary"]
            .as_str()
            .unwrap()
            .starts_with("interrupted: runner restarted during the run"),
        "{fin}"
    );
    let (day2, fin) = run(
        &served,
        &fake,
        "change_acl",
        "DAY-2",
        json!({"bucket_acl": "private"}),
        Some(json!({"identifier": "lonely", "blueprint": "s3_bucket"})),
    )
    .await;
    let log = fake.log_lines(&day2);
    assert_eq!(fin["status"], "SUCCESS", "{log:#?}");
    assert!(
        !log.iter().any(|l| l.starts_with("recovering:")),
        "nothing to recover: {log:#?}"
    );
    assert_eq!(
        fake.requests_to("PATCH", &format!("/actions/runs/{create}"))
            .iter()
            .filter(|r| r.body.get("status").is_some())
            .count(),
        1,
        "the interrupted run ended once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tool_that_outlives_its_runner_is_stopped_at_the_next_start_before_its_run_is_reported() {
    let fake = FakePort::start().await;
    let data = tempfile::tempdir().unwrap();
    let marker = format!("stubborn-{}", unique_run_id());
    // A step that ignores the parent-death signal (SIGTERM) and a plain `sleep`.
    let definition = format!(
        r#"
action: stubborn
handler: command
steps:
  - name: hold
    program: python3
    args: ['"-c"', '"import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(120)"', '"{marker}"']
"#
    );
    let actions = one_action("stubborn", &definition);
    let mut served = serve(&fake, actions.path(), data.path(), &[]);
    let run_id = unique_run_id();
    let body = v2(&run_id, "stubborn", "CREATE", json!({}));
    assert_eq!(served.post_signed(&body).await.status(), 202);
    started(&run_id, "the stubborn step", &[&marker]).await;
    // Once it ignores SIGTERM (its SigIgn mask has bit 15), not before.
    let pids = until(
        Duration::from_secs(60),
        || "the step to ignore SIGTERM".to_owned(),
        || {
            let pids: Vec<i32> = processes(&[&marker])
                .into_iter()
                .filter(|pid| ignores_sigterm(*pid))
                .collect();
            (!pids.is_empty()).then_some(pids)
        },
    )
    .await;
    served.child.kill().unwrap();
    served.child.wait().unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(processes(&[&marker]), pids, "it ignored its runner's death");

    let _served = serve(&fake, actions.path(), data.path(), &[]);
    let fin = fake.wait_final(&run_id).await;
    assert!(
        processes(&[&marker]).is_empty(),
        "stopped before the run was reported"
    );
    assert_eq!(fin["status"], "FAILURE");
    let summary = fin["summary"].as_str().unwrap();
    assert!(
        summary.starts_with("interrupted: runner restarted during the run; python3 (pid ")
            && summary.contains(
                "was still running after the restart and was stopped (SIGTERM, then SIGKILL"
            ),
        "{summary}"
    );
    assert!(
        std::fs::read_dir(data.path().join("running-tools"))
            .unwrap()
            .count()
            == 0,
        "no record left"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_killed_alone_takes_a_long_command_step_with_it() {
    let fake = FakePort::start().await;
    let data = tempfile::tempdir().unwrap();
    let actions = one_action(
        "long_sleep",
        "action: long_sleep\nhandler: command\nsteps:\n  - name: wait\n    program: sleep\n    args: ['\"97.5\"']\n",
    );
    let mut served = serve(&fake, actions.path(), data.path(), &[]);
    let run_id = unique_run_id();
    assert_eq!(
        served
            .post_signed(&v2(&run_id, "long_sleep", "CREATE", json!({})))
            .await
            .status(),
        202
    );
    started(&run_id, "sleep", &["sleep", "97.5"]).await;
    served.child.kill().unwrap();
    served.child.wait().unwrap();
    until(
        Duration::from_secs(10),
        || "the sleep to end with its runner".to_owned(),
        || processes(&["sleep", "97.5"]).is_empty().then_some(()),
    )
    .await;
    let _served = serve(&fake, actions.path(), data.path(), &[]);
    let fin = fake.wait_final(&run_id).await;
    assert_eq!(fin["status"], "FAILURE");
    assert_eq!(
        fin["summary"],
        "interrupted: runner restarted during the run"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stack_a_live_process_holds_is_waited_for_and_a_zombie_holder_is_gone() {
    let rig = pulumi_rig().await;
    let (fake, state) = (&rig.fake, &rig.state);
    let (_, fin) = run(
        &rig.served,
        fake,
        "create_bucket",
        "CREATE",
        json!({"bucket_name": "busy"}),
        None,
    )
    .await;
    assert_eq!(fin["status"], "SUCCESS", "{fin}");
    // Someone runs a Pulumi operation on the stack from outside: live for 2 s, then it exits
    // (and, never reaped by this test until the end, stays a zombie: gone all the same).
    let mut holder = std::process::Command::new("sleep")
        .arg("2")
        .spawn()
        .unwrap();
    let host = crate::provision::host_name();
    let lock = write_lock(state, "busy", holder.id(), &host);
    let (day2, fin) = run(
        &rig.served,
        fake,
        "change_acl",
        "DAY-2",
        json!({"bucket_acl": "public-read"}),
        Some(json!({"identifier": "busy", "blueprint": "s3_bucket"})),
    )
    .await;
    let log = fake.log_lines(&day2);
    assert_eq!(fin["status"], "SUCCESS", "{log:#?}");
    assert!(
        log.iter().any(
            |l| l.starts_with("waiting for stack busy: locked by someone@")
                && l.contains(&format!("(pid {})", holder.id()))
        ),
        "{log:#?}"
    );
    assert!(
        log.iter()
            .any(|l| l.starts_with("recovering: stack busy was left locked by someone@")),
        "the zombie's lock is cleared as a dead holder's: {log:#?}"
    );
    assert!(!lock.exists());
    holder.wait().unwrap();
}
