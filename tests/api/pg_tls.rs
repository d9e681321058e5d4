//! TLS to PostgreSQL against the real server, switched to `ssl = on` and refusing
//! unencrypted connections, with a certificate made for the test.

use std::time::Duration;

use port_runner::store::Journal;

use crate::pg::{start_tls_server, start_tls_server_with};

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_self_signed_server_certificate_given_as_sslrootcert_is_trusted_as_libpq_trusts_it() {
    // `openssl req -x509 -subj /CN=127.0.0.1`: a CA certificate, no subject alternative name.
    let server = tokio::task::spawn_blocking(|| start_tls_server_with(true))
        .await
        .unwrap();
    let with = |query: String| format!("{}?{query}", server.url);
    let (own, wrong) = (server.ca.display(), server.wrong_ca.display());
    let deadline = crate::helpers::Deadline::after(Duration::from_secs(30));
    loop {
        match connect(&with(format!("sslmode=verify-full&sslrootcert={own}"))).await {
            Ok(_) => break,
            Err(e) if e.contains("57P03") => deadline.wait(|| format!("the server: {e}")).await,
            Err(e) => panic!("verify-full with the server's own certificate connects: {e}"),
        }
    }
    connect(&with(format!("sslmode=verify-ca&sslrootcert={own}")))
        .await
        .expect("verify-ca with the server's own certificate connects");
    // By a name it does not carry: refused, saying so.
    let by_name = server.url.replace("127.0.0.1", "localhost");
    let err = connect(&format!("{by_name}?sslmode=verify-full&sslrootcert={own}"))
        .await
        .err()
        .expect("a host name the certificate does not name is refused");
    assert!(
        err.contains("does not name") && err.contains("CN=127.0.0.1"),
        "{err}"
    );
    // Another certificate: refused, naming both.
    let err = connect(&with(format!("sslmode=verify-full&sslrootcert={wrong}")))
        .await
        .err()
        .expect("another certificate is refused");
    assert!(
        err.contains("the server presented CN=127.0.0.1")
            && err.contains("CN=other CA")
            && err.contains("check sslrootcert"),
        "{err}"
    );
}
