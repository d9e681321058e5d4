//! The README's local demos, run as a newcomer runs them: on one checkout, in the README's
//! order, each command as written (`cargo run --` is the binary under test). A demo is a
//! `# terminal 1` block (what `serve` needs, then `serve`) and a `# terminal 2` block (what
//! is sent to it); `serve` is stopped with Ctrl-C (SIGINT) before the next demo, as the
//! README says.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::helpers::BIN;

/// The README's demo section: from "Try it locally" to the demos that need a Port account.
fn demo_blocks(readme: &str) -> Vec<(u32, Vec<String>)> {
    let start = readme.find("## Try it locally").expect("the demo section");
    let end = readme[start..]
        .find("### With Port")
        .map_or(readme.len(), |i| start + i);
    let mut blocks = Vec::new();
    let mut current: Option<(u32, Vec<String>)> = None;
    let mut pending = String::new();
    for line in readme[start..end].lines() {
        match (&mut current, line.trim_end()) {
            (None, "```sh") => current = Some((0, Vec::new())),
            (Some(_), "```") => blocks.extend(current.take()),
            (Some((terminal, lines)), text) => {
                if let Some(n) = text.strip_prefix("# terminal ") {
                    *terminal = n.trim().parse().expect("a terminal number");
                    continue;
                }
                match text.strip_suffix('\\') {
                    Some(head) => pending.push_str(head),
                    None => lines.push(std::mem::take(&mut pending) + text),
                }
            }
            (None, _) => {}
        }
    }
    blocks
}

/// A copy of the checkout's tracked files: the demos write into it (`./data`), as they
/// would into a fresh clone.
fn checkout() -> tempfile::TempDir {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let listed = Command::new("git")
        .args(["ls-files", "-z"])
        .current_dir(repo)
        .output()
        .expect("git");
    let copy = tempfile::tempdir().unwrap();
    for file in listed.stdout.split(|b| *b == 0).filter(|f| !f.is_empty()) {
        let file = Path::new(std::str::from_utf8(file).unwrap());
        let to = copy.path().join(file);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(repo.join(file), &to).unwrap();
    }
    copy
}

/// A command line as a shell in the checkout runs it, `cargo run --` being the binary.
fn shell(line: &str, dir: &Path) -> Command {
    let line = line.replace("cargo run --", BIN);
    let mut command = Command::new("bash");
    command.args(["-c", &line]).current_dir(dir);
    // A newcomer's shell: no Port account, nothing of this runner's configured.
    for (name, _) in std::env::vars() {
        if name.starts_with("PORT_") || name == "LISTEN_ADDR" || name == "DATABASE_URL" {
            command.env_remove(name);
        }
    }
    command
}

/// What a background command of a demo is: stopped (and its group) when the demo ends.
struct Background(Child);

impl Background {
    fn start(line: &str, dir: &Path) -> Self {
        use std::os::unix::process::CommandExt as _;
        let mut command = shell(line.trim_end_matches('&').trim(), dir);
        command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0);
        Self(command.spawn().expect("spawn"))
    }

    /// Ctrl-C, as in its terminal; then it must end.
    fn interrupt(mut self) -> std::process::ExitStatus {
        // SAFETY: a signal to the process group this test started.
        unsafe { libc::kill(-(self.0.id() as i32), libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.0.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "serve did not stop on Ctrl-C");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        // SAFETY: as above; the group may be gone already.
        unsafe { libc::kill(-(self.0.id() as i32), libc::SIGKILL) };
        let _ = self.0.wait();
    }
}

/// Waits until `serve` answers on the README's address.
fn until_serving(serve: &mut Background, line: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = serve.0.try_wait().unwrap() {
            panic!("`{line}` ended ({status}) instead of serving");
        }
        let answered = std::net::TcpStream::connect("127.0.0.1:8080").is_ok();
        if answered {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "`{line}` never listened on 127.0.0.1:8080"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_readme_demos_run_as_written_one_after_another() {
    let readme =
        std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("README.md"))
            .unwrap();
    let blocks = demo_blocks(&readme);
    let demos = blocks.iter().filter(|(t, _)| *t == 1).count();
    assert!(demos >= 3, "the echo, S3 and Pulumi demos: {blocks:#?}");
    let dir = checkout();
    let mut serve: Option<Background> = None;
    let mut helpers: Vec<Background> = Vec::new();
    let mut ran = Vec::new();
    for (terminal, lines) in &blocks {
        assert!(
            matches!(terminal, 1 | 2),
            "each demo block says its terminal: {lines:#?}"
        );
        if *terminal == 1 {
            if let Some(previous) = serve.take() {
                assert!(
                    previous.interrupt().success(),
                    "serve stops cleanly on Ctrl-C"
                );
            }
            helpers.clear();
        }
        for line in lines {
            if line.contains("cargo run -- serve") {
                let mut started = Background::start(line, dir.path());
                until_serving(&mut started, line);
                serve = Some(started);
            } else if line.trim_end().ends_with('&') {
                helpers.push(Background::start(line, dir.path()));
                // What it serves (moto on :5000) is up before the next line needs it.
                std::thread::sleep(Duration::from_secs(2));
            } else {
                let out = shell(line, dir.path()).output().unwrap();
                let text = format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
                assert!(out.status.success(), "`{line}` failed:\n{text}");
                ran.push((line.clone(), text));
            }
        }
    }
    if let Some(last) = serve.take() {
        assert!(last.interrupt().success());
    }
    drop(helpers);
    // What each demo promises, beyond its commands succeeding.
    let said = |needle: &str| ran.iter().any(|(_, text)| text.contains(needle));
    assert!(said("SUCCESS: echoed"), "{ran:#?}");
    assert!(
        said("port-runner-demo-bucket"),
        "s3 ls lists the bucket: {ran:#?}"
    );
    assert!(
        said("stack port-runner-demo-bucket: 1 updated"),
        "the ACL change says what changed: {ran:#?}"
    );
}
