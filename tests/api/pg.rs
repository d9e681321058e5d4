//! A throwaway PostgreSQL server for the tests: one per test binary, started on first use
//! on a free loopback port in a temporary folder (Debian's `postgresql` package provides the
//! binaries; `.ci/setup` installs it), stopped when the tests exit. Each test gets its own
//! database. `PORT_RUNNER_TEST_DATABASE_URL` points the tests at an existing server instead.

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

static SERVER: OnceLock<String> = OnceLock::new();

/// A `bin` of the PostgreSQL server: on PATH, or in Debian's versioned folder.
fn pg_bin(name: &str) -> PathBuf {
    let on_path = std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .map(|dir| Path::new(dir).join(name))
        .find(|p| p.is_file());
    if let Some(path) = on_path {
        return path;
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.path().join("bin").join(name))
                .collect()
        })
        .unwrap_or_default();
    versions.retain(|p| p.is_file());
    versions.sort();
    versions.pop().unwrap_or_else(|| {
        panic!("PostgreSQL's {name} not found: install Debian's postgresql (bash .ci/setup does), or set PORT_RUNNER_TEST_DATABASE_URL")
    })
}

/// PostgreSQL refuses to run as root: as root, the server runs as the `postgres` user.
fn server_user() -> Option<(u32, u32)> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let line = passwd
        .lines()
        .find(|l| l.starts_with("postgres:"))
        .expect("running as root needs the postgres user (Debian's postgresql package creates it)");
    let fields: Vec<&str> = line.split(':').collect();
    Some((fields[2].parse().unwrap(), fields[3].parse().unwrap()))
}

fn as_server_user(command: &mut Command, user: Option<(u32, u32)>) -> &mut Command {
    if let Some((uid, gid)) = user {
        command.uid(uid).gid(gid).env("HOME", "/tmp");
    }
    command
}

fn start() -> String {
    if let Ok(url) = std::env::var("PORT_RUNNER_TEST_DATABASE_URL") {
        return url;
    }
    // Tests need no durability: no fsync at all.
    start_server(&["fsync=off", "synchronous_commit=off"])
}

/// Starts a server with these `-c` settings; its URL (database `postgres`).
pub fn start_server(settings: &[&str]) -> String {
    remove_stale_servers();
    let user = server_user();
    let dir = tempfile::Builder::new()
        .prefix("port-runner-pg-")
        .tempdir()
        .unwrap()
        .keep();
    let data = dir.join("data");
    if let Some((uid, gid)) = user {
        std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).unwrap();
    }
    let out = as_server_user(&mut Command::new(pg_bin("initdb")), user)
        .args([
            "-D",
            data.to_str().unwrap(),
            "-A",
            "trust",
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--no-sync",
        ])
        .output()
        .expect("initdb runs");
    assert!(
        out.status.success(),
        "initdb failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let postgres = pg_bin("postgres");
    let settings: Vec<String> = settings.iter().map(|c| c.to_string()).collect();
    let (socket_dir, data_dir) = (dir.clone(), data.clone());
    // The server's parent is a thread that lives as long as the test process, so the
    // parent-death signal stops the server when the tests end.
    std::thread::spawn(move || {
        let mut command = Command::new(postgres);
        as_server_user(&mut command, user)
            .args(["-D", data_dir.to_str().unwrap(), "-p", &port.to_string()])
            .args([
                "-k",
                socket_dir.to_str().unwrap(),
                "-c",
                "listen_addresses=127.0.0.1",
            ])
            .args(["-c", "max_connections=300"])
            .args(settings.iter().flat_map(|c| ["-c", c.as_str()]))
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: prctl in the child between fork and exec, async-signal-safe.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let mut child = command.spawn().expect("postgres starts");
        let _ = child.wait();
    });
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "postgres did not start on port {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    format!("postgres://postgres@127.0.0.1:{port}/postgres")
}

/// Removes the folders of earlier test servers that are no longer running.
fn remove_stale_servers() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for dir in entries.flatten().map(|e| e.path()) {
        let is_ours = dir
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("port-runner-pg-"));
        if !is_ours {
            continue;
        }
        let pid = std::fs::read_to_string(dir.join("data/postmaster.pid"))
            .ok()
            .and_then(|s| s.lines().next()?.trim().parse::<i32>().ok());
        // A standalone backend (initdb's bootstrap) writes its pid negated.
        // SAFETY: kill with signal 0 only checks whether the process exists.
        let alive = pid.is_some_and(|pid| unsafe { libc::kill(pid.abs(), 0) } == 0);
        // A young folder may be a server of this test process starting right now (the TLS
        // one starts beside the shared one; initdb runs several short backends one after
        // the other): only an old one is stale.
        let young = std::fs::metadata(&dir)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age < Duration::from_secs(600));
        if !alive && !young {
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}

/// A new, empty database on the test server; its connection URL.
pub async fn fresh_database() -> String {
    fresh_database_on(&SERVER.get_or_init(start).clone()).await
}

/// A new, empty database on the server at `server`; its connection URL.
pub async fn fresh_database_on(server: &str) -> String {
    let server = server.to_owned();
    let name = format!("t_{}", uuid::Uuid::new_v4().simple());
    let (client, connection) = loop {
        match tokio_postgres::connect(&server, tokio_postgres::NoTls).await {
            Ok(pair) => break pair,
            // The server accepts connections a moment after it listens.
            Err(e)
                if e.as_db_error().is_some_and(|d| {
                    d.code() == &tokio_postgres::error::SqlState::CANNOT_CONNECT_NOW
                }) =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => panic!(
                "cannot connect to the test PostgreSQL: {e} {:?}",
                e.as_db_error().map(|d| d.message())
            ),
        }
    };
    tokio::spawn(connection);
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
    let base = server.rsplit_once('/').unwrap().0;
    format!("{base}/{name}")
}

/// A test server that takes only TLS connections (`hostssl` alone in its `pg_hba.conf`),
/// with a certificate for 127.0.0.1 signed by a CA made here with `openssl`.
pub struct TlsServer {
    /// `postgres://postgres@127.0.0.1:PORT/postgres`, without `sslmode`.
    pub url: String,
    /// The CA that signed the server's certificate.
    pub ca: PathBuf,
    /// A CA that did not.
    pub wrong_ca: PathBuf,
}

pub fn start_tls_server() -> TlsServer {
    start_tls_server_with(false)
}

/// `self_signed`: the server's certificate is made the usual way, `openssl req -x509` with
/// only a common name (OpenSSL marks it a CA, and gives it no subject alternative name), and
/// `ca` is that certificate itself.
pub fn start_tls_server_with(self_signed: bool) -> TlsServer {
    let dir = tempfile::Builder::new()
        .prefix("port-runner-tls-")
        .tempdir()
        .unwrap()
        .keep();
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(&dir)
            .output()
            .expect("openssl runs (Debian's openssl package)");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    for (key, cert, cn) in [
        ("ca.key", "ca.crt", "test CA"),
        ("wrong.key", "wrong.crt", "other CA"),
    ] {
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            key,
            "-out",
            cert,
            "-days",
            "2",
            "-subj",
            &format!("/CN={cn}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]);
    }
    if self_signed {
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.crt",
            "-days",
            "2",
            "-subj",
            "/CN=127.0.0.1",
        ]);
    } else {
        server_certificate(&openssl, &dir);
    }
    start_with_certificate(dir, self_signed)
}

/// `server.key` and `server.crt` for 127.0.0.1 (and localhost), signed by `ca.crt`.
fn server_certificate(openssl: &dyn Fn(&[&str]), dir: &std::path::Path) {
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.crt",
        "-days",
        "2",
        "-extfile",
        "san.ext",
    ]);
}

fn start_with_certificate(dir: PathBuf, self_signed: bool) -> TlsServer {
    std::fs::write(
        dir.join("hba.conf"),
        "local all all trust\nhostssl all all 127.0.0.1/32 trust\n",
    )
    .unwrap();
    // The server (as the postgres user, when we are root) reads its key only if it owns it.
    if let Some((uid, gid)) = server_user() {
        for file in ["server.key", "server.crt", "hba.conf"] {
            std::os::unix::fs::chown(dir.join(file), Some(uid), Some(gid)).unwrap();
        }
    }
    std::fs::set_permissions(
        dir.join("server.key"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let path = |f: &str| dir.join(f).display().to_string();
    let url = start_server(&[
        "fsync=off",
        "ssl=on",
        &format!("ssl_cert_file={}", path("server.crt")),
        &format!("ssl_key_file={}", path("server.key")),
        &format!("hba_file={}", path("hba.conf")),
    ]);
    TlsServer {
        url,
        ca: dir.join(if self_signed { "server.crt" } else { "ca.crt" }),
        wrong_ca: dir.join("wrong.crt"),
    }
}

/// A plain client of `url`, for a test to look at or arrange rows itself.
pub async fn client(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
}
