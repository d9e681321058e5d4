//! TLS to PostgreSQL against the real server, switched to `ssl = on` and refusing
//! unencrypted connections, with a certificate made for the test.

use std::time::Duration;

use port_runner::store::Journal;

use crate::pg::start_tls_server;

async fn connect(url: &str) -> Result<Journal, String> {
    Journal::connect(url, "tls-test", Duration::from_secs(30))
        .await
        .map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_to_postgresql_follows_sslmode() {
    let server = tokio::task::spawn_blocking(start_tls_server).await.unwrap();
    let with = |query: String| format!("{}?{query}", server.url);
    let (ca, wrong) = (server.ca.display(), server.wrong_ca.display());

    // prefer (the default) and require encrypt; this server takes nothing else. (The server
    // answers "starting up" for a moment after it listens.)
    let deadline = crate::helpers::Deadline::after(Duration::from_secs(30));
    loop {
        match connect(&server.url).await {
            Ok(_) => break,
            Err(e) if e.contains("57P03") => deadline.wait(|| format!("the server: {e}")).await,
            Err(e) => panic!("prefer connects over TLS: {e}"),
        }
    }
    connect(&with("sslmode=require".into()))
        .await
        .expect("require connects");
    connect(&with(format!("sslmode=verify-full&sslrootcert={ca}")))
        .await
        .expect("verify-full with the right CA connects");
    connect(&with(format!("sslmode=verify-ca&sslrootcert={ca}")))
        .await
        .expect("verify-ca with the right CA connects");

    let err = connect(&with(format!("sslmode=verify-full&sslrootcert={wrong}")))
        .await
        .err()
        .expect("the wrong CA is refused");
    assert!(
        err.contains("sslmode=verify-full") && err.contains("check sslrootcert"),
        "{err}"
    );
    let err = connect(&with("sslmode=disable".into()))
        .await
        .err()
        .expect("a server that demands TLS refuses sslmode=disable");
    assert!(
        err.contains("sslmode=disable") && err.contains("accepts only encrypted connections"),
        "{err}"
    );
}
