//! The hub's routes over HTTP with the real binary: who may see and press what, how a bad
//! press is refused, and the live log (server-sent events) with secrets masked.

use std::path::PathBuf;

use serde_json::{json, Value};

use crate::fake_port::{FakePort, CLIENT_ID, CLIENT_SECRET};
use crate::helpers::Served;

/// echo, with a secret input added.
fn echo_actions() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut echo: Value =
        serde_json::from_slice(&std::fs::read(repo.join("actions/echo.json")).unwrap()).unwrap();
    echo["trigger"]["userInputs"]["properties"]["token"] =
        json!({"type": "string", "title": "Token", "encryption": "aes256-gcm"});
    std::fs::write(dir.path().join("echo.json"), echo.to_string()).unwrap();
    dir
}

fn url(served: &Served, path: &str) -> String {
    format!("http://{}{path}", served.addr)
}

async fn press(served: &Served, body: Value, token: Option<&str>) -> (u16, Value) {
    let mut request = reqwest::Client::new()
        .post(url(served, "/hub/runs"))
        .json(&body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let answer = request.send().await.unwrap();
    (answer.status().as_u16(), answer.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_local_mode_the_hub_presses_buttons_refuses_bad_inputs_and_streams_masked_logs() {
    let actions = echo_actions();
    let data = tempfile::tempdir().unwrap();
    let served = Served::local(actions.path(), data.path());
    let page = reqwest::get(url(&served, "/")).await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("local hub"));
    let listed: Value = reqwest::get(url(&served, "/hub/actions"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["local"], true);
    assert_eq!(listed["actions"][0]["identifier"], "echo");
    assert_eq!(listed["actions"][0]["operation"], "CREATE");

    // Every bad input named at once, in the runner's words; an unknown action is a 404.
    let (status, body) = press(
        &served,
        json!({"action": "echo", "inputs": {"sleep_secs": 9000, "fail": "yes"}}),
        None,
    )
    .await;
    assert_eq!(status, 422, "{body}");
    let problems = body["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 2, "{body}");
    let (status, body) = press(&served, json!({"action": "nope"}), None).await;
    assert_eq!(status, 404, "{body}");
    assert!(body["message"].as_str().unwrap().contains("'nope'"));

    // A run pressed here, followed live: its secret input never shows.
    let (status, body) = press(
        &served,
        json!({"action": "echo", "inputs": {"message": "from the hub", "token": "s3cr3t-value-42"}}),
        None,
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let run_id = body["runId"].as_str().unwrap().to_owned();
    let answer = reqwest::get(url(&served, &format!("/runs/{run_id}/events")))
        .await
        .unwrap();
    assert_eq!(
        answer.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    // The stream ends after the `end` event.
    let stream = answer.text().await.unwrap();
    assert!(stream.contains("event: log"), "{stream}");
    assert!(
        stream.contains("input message = \\\"from the hub\\\""),
        "{stream}"
    );
    assert!(stream.contains("event: end"), "{stream}");
    assert!(stream.contains(r#""state":"SUCCESS""#), "{stream}");
    assert!(!stream.contains("s3cr3t-value-42"), "{stream}");
    let unknown = reqwest::get(url(&served, "/runs/r_unknown/events"))
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_port_the_hub_needs_the_admin_token_and_leaves_pressing_to_port() {
    let fake = FakePort::start().await;
    let actions = echo_actions();
    let envs = |token: Option<&'static str>| {
        let mut envs = vec![
            ("PORT_CLIENT_ID", CLIENT_ID),
            ("PORT_CLIENT_SECRET", CLIENT_SECRET),
        ];
        if let Some(token) = token {
            envs.push(("PORT_RUNNER_ADMIN_TOKEN", token));
        }
        envs
    };
    let args = |data: &tempfile::TempDir| {
        vec![
            "--actions-dir".to_owned(),
            actions.path().display().to_string(),
            "--data-dir".to_owned(),
            data.path().display().to_string(),
            "--port-api-url".to_owned(),
            fake.api_url.clone(),
        ]
    };
    let start = |token, data: &tempfile::TempDir| {
        let args = args(data);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Served::start(&envs(token), &args)
    };

    let data = tempfile::tempdir().unwrap();
    let closed = start(None, &data);
    let page = reqwest::get(url(&closed, "/")).await.unwrap();
    assert_eq!(page.status(), 403);
    assert!(page
        .text()
        .await
        .unwrap()
        .contains("PORT_RUNNER_ADMIN_TOKEN"));
    drop(closed);

    let data = tempfile::tempdir().unwrap();
    let open = start(Some("hub-token-0123456789"), &data);
    assert_eq!(
        reqwest::get(url(&open, "/")).await.unwrap().status(),
        200,
        "the page itself holds no data"
    );
    let anonymous = reqwest::get(url(&open, "/hub/actions")).await.unwrap();
    assert_eq!(anonymous.status(), 401);
    let listed: Value = reqwest::Client::new()
        .get(url(&open, "/hub/actions"))
        .bearer_auth("hub-token-0123456789")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["local"], false);
    let (status, body) = press(
        &open,
        json!({"action": "echo", "inputs": {}}),
        Some("hub-token-0123456789"),
    )
    .await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("Port's hub"),
        "{body}"
    );
    assert!(fake.requests_to("PATCH", "/actions/runs/").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_only_this_machine_may_press_buttons() {
    let actions = echo_actions();
    let data = tempfile::tempdir().unwrap();
    // Loopback, but a page of another site (a DNS name rebound to 127.0.0.1).
    let served = Served::local(actions.path(), data.path());
    let answer = reqwest::Client::new()
        .post(url(&served, "/hub/runs"))
        .header("host", "evil.example.com")
        .json(&json!({"action": "echo", "inputs": {}}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 403);
    let body: Value = answer.json().await.unwrap();
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("evil.example.com"),
        "{body}"
    );
    drop(served);

    // Listening on every address without a token: the network may look, not press.
    let port = std::net::TcpListener::bind("0.0.0.0:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = std::process::Command::new(crate::helpers::BIN)
        .args(["serve", "--listen", &format!("0.0.0.0:{port}")])
        .arg("--actions-dir")
        .arg(actions.path())
        .arg("--data-dir")
        .arg(data.path())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let mut up = false;
    for _ in 0..100 {
        if reqwest::get(format!("{base}/healthz")).await.is_ok() {
            up = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(up, "serve on 0.0.0.0 answers");
    let answer = reqwest::Client::new()
        .post(format!("{base}/hub/runs"))
        .json(&json!({"action": "echo", "inputs": {}}))
        .send()
        .await
        .unwrap();
    let status = answer.status();
    let body: Value = answer.json().await.unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(status, 403, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("PORT_RUNNER_ADMIN_TOKEN"),
        "{body}"
    );
}
