//! The hub page at `/` in a real browser: Debian's headless Chromium, driven through
//! ChromeDriver's WebDriver protocol (plain HTTP and JSON, so reqwest is the client). A
//! person's first hour is pressing buttons there: the test presses them, fills the forms
//! made from `userInputs`, and follows the runs to SUCCESS with their live logs, then
//! checks the screenshot of the page.

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine as _;
use serde_json::{json, Value};

use crate::helpers::Served;

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A ChromeDriver process and one browser session.
struct Browser {
    driver: Child,
    base: String,
    session: String,
    http: reqwest::Client,
    _profile: tempfile::TempDir,
}

fn installed(program: &str) -> PathBuf {
    for dir in ["/usr/bin", "/usr/local/bin"] {
        let path = Path::new(dir).join(program);
        if path.exists() {
            return path;
        }
    }
    panic!("{program} is not installed: `bash .ci/setup` installs Debian's chromium and chromium-driver");
}

impl Browser {
    async fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = Command::new(installed("chromedriver"))
            .arg(format!("--port={port}"))
            // Its own process group: the browser it starts is stopped with it.
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let mut ready = false;
        for _ in 0..200 {
            let status = http.get(format!("{base}/status")).send().await;
            if let Ok(answer) = status {
                let body: Value = answer.json().await.unwrap_or_default();
                if body["value"]["ready"] == true {
                    ready = true;
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(ready, "chromedriver never became ready");
        let profile = tempfile::tempdir().unwrap();
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--window-size=1200,900",
        ]
        .iter()
        .map(|a| a.to_string())
        .chain([format!("--user-data-dir={}", profile.path().display())])
        .collect::<Vec<_>>();
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": installed("chromium"), "args": args},
        }}});
        let answer: Value = http
            .post(format!("{base}/session"))
            .json(&caps)
            .send()
            .await
            .expect("chromedriver reachable")
            .json()
            .await
            .unwrap();
        let session = answer["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no browser session: {answer}"))
            .to_owned();
        Self {
            driver,
            base,
            session,
            http,
            _profile: profile,
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let mut request = self.http.request(method, url);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let answer: Value = request.send().await.unwrap().json().await.unwrap();
        answer["value"].clone()
    }

    async fn open(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", Some(json!({ "url": url })))
            .await;
    }

    /// The browser's Back button.
    async fn back(&self) {
        self.call(reqwest::Method::POST, "/back", Some(json!({})))
            .await;
    }

    async fn find(&self, css: &str) -> Option<String> {
        let found = self
            .call(
                reqwest::Method::POST,
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        found[ELEMENT].as_str().map(str::to_owned)
    }

    /// The element, once the page shows it.
    async fn wait(&self, css: &str) -> String {
        for _ in 0..200 {
            if let Some(id) = self.find(css).await {
                return id;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "the page never showed {css}; it shows: {}",
            self.text("body").await
        );
    }

    async fn click(&self, css: &str) {
        let id = self.wait(css).await;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{id}/click"),
            Some(json!({})),
        )
        .await;
    }

    async fn fill(&self, css: &str, text: &str) {
        let id = self.wait(css).await;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{id}/clear"),
            Some(json!({})),
        )
        .await;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{id}/value"),
            Some(json!({ "text": text })),
        )
        .await;
    }

    async fn text(&self, css: &str) -> String {
        match self.find(css).await {
            Some(id) => self
                .call(reqwest::Method::GET, &format!("/element/{id}/text"), None)
                .await
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            None => String::new(),
        }
    }

    /// Waits until the element's text contains `expected`.
    async fn wait_text(&self, css: &str, expected: &str) -> String {
        let mut last = String::new();
        for _ in 0..300 {
            last = self.text(css).await;
            if last.contains(expected) {
                return last;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{css} never showed {expected:?}; last: {last:?}");
    }

    async fn screenshot(&self) -> Vec<u8> {
        let png = self.call(reqwest::Method::GET, "/screenshot", None).await;
        base64::engine::general_purpose::STANDARD
            .decode(png.as_str().unwrap())
            .unwrap()
    }
}

impl Browser {
    /// Ends the session (the browser exits), then the driver.
    async fn quit(self) {
        let url = format!("{}/session/{}", self.base, self.session);
        let _ = self.http.delete(url).send().await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the process group of our own child.
        unsafe {
            libc::kill(-(self.driver.id() as i32), libc::SIGKILL);
        }
        let _ = self.driver.wait();
    }
}

/// An actions folder with echo, a CREATE that makes an entity, and a DAY-2 on it.
fn hub_actions() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    std::fs::copy(repo.join("actions/echo.json"), dir.path().join("echo.json")).unwrap();
    let action = |id: &str, title: &str, operation: &str, inputs: Value| {
        json!({
            "identifier": id, "title": title, "description": format!("{title} (test action)"),
            "trigger": {"type": "self-service", "operation": operation, "blueprintIdentifier": "thing", "userInputs": inputs},
            "invocationMethod": {"type": "WEBHOOK", "url": "${PORT_RUNNER_PUBLIC_URL}/webhook", "synchronized": false, "method": "POST", "body": {}}
        })
    };
    let make = action(
        "make_thing",
        "Make a thing",
        "CREATE",
        json!({
            "properties": {
                "name": {"type": "string", "title": "Name", "pattern": "^[a-z]+$"},
                "size": {"type": "string", "title": "Size", "enum": ["small", "large"], "default": "small"},
                "count": {"type": "integer", "title": "Count", "minimum": 1, "maximum": 5, "default": 1},
                "tags": {"type": "array", "title": "Tags"}
            },
            "required": ["name"],
            "order": ["name", "size", "count", "tags"]
        }),
    );
    let poke = action(
        "poke_thing",
        "Poke the thing",
        "DAY-2",
        json!({"properties": {"note": {"type": "string", "title": "Note"}}, "required": ["note"]}),
    );
    let needs = action(
        "needs_tool",
        "Needs a tool",
        "CREATE",
        json!({"properties": {}}),
    );
    std::fs::write(dir.path().join("needs_tool.json"), needs.to_string()).unwrap();
    // A shipped Pulumi action, on a runner without the Pulumi CLI.
    std::fs::copy(
        repo.join("actions/create_bucket.json"),
        dir.path().join("create_bucket.json"),
    )
    .unwrap();
    std::fs::write(dir.path().join("make_thing.json"), make.to_string()).unwrap();
    std::fs::write(dir.path().join("poke_thing.json"), poke.to_string()).unwrap();
    std::fs::create_dir(dir.path().join("handlers")).unwrap();
    std::fs::write(
        dir.path().join("handlers/make_thing.yaml"),
        r#"action: make_thing
handler: command
operations: [CREATE]
steps:
  - name: make
    program: echo
    args: ['"making"', .inputs.name, .inputs.size, '.inputs.count | tostring', '.inputs.tags // [] | join(",")']
entity:
  blueprint: thing
  identifier: .inputs.name
  title: '"Thing " + .inputs.name'
  properties: {size: .inputs.size, count: .inputs.count}
"#,
    )
    .unwrap();
    let bucket = std::fs::read_to_string(repo.join("actions/handlers/create_bucket.yaml"))
        .unwrap()
        .replace(
            "../pulumi/s3_bucket",
            repo.join("actions/pulumi/s3_bucket").to_str().unwrap(),
        );
    std::fs::write(dir.path().join("handlers/create_bucket.yaml"), bucket).unwrap();
    std::fs::write(
        dir.path().join("handlers/needs_tool.yaml"),
        "action: needs_tool\nhandler: command\noperations: [CREATE]\nsteps:\n  - name: go\n    program: no-such-tool-on-this-runner\n    args: []\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("handlers/poke_thing.yaml"),
        r#"action: poke_thing
handler: command
operations: [DAY-2]
steps:
  - name: poke
    program: echo
    args: ['"poking"', .entity.identifier, '.entity.properties.size', .inputs.note]
entity:
  blueprint: thing
  identifier: .entity.identifier
  properties: {note: .inputs.note}
"#,
    )
    .unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hub_page_presses_buttons_fills_forms_and_follows_runs_to_success() {
    let actions = hub_actions();
    let data = tempfile::tempdir().unwrap();
    let served = Served::local(actions.path(), data.path());
    let hub = format!("http://{}/", served.addr);
    let browser = Browser::start().await;
    browser.open(&hub).await;

    // The buttons, and a screenshot that shows them.
    browser.wait("button[data-action=make_thing]").await;
    let shot = browser.screenshot().await;
    assert_eq!(&shot[..8], b"\x89PNG\r\n\x1a\n", "a PNG");
    let (width, height) = (
        u32::from_be_bytes(shot[16..20].try_into().unwrap()),
        u32::from_be_bytes(shot[20..24].try_into().unwrap()),
    );
    assert!(width >= 1000 && height >= 600, "{width}x{height}");
    // A blank or unstyled page compresses to a few KB; three cards of text and colour do not.
    assert!(shot.len() > 15_000, "{} bytes", shot.len());
    let _ = std::fs::write(
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("hub.png"),
        &shot,
    );
    let cards = browser.text("main").await;
    for title in [
        "Make a thing",
        "Poke the thing",
        "Echo (check the port-runner wiring)",
    ] {
        assert!(cards.contains(title), "{cards}");
    }
    // A card says what the runner lacks to run its action, and its form still opens.
    let needs = browser.text("[data-card=needs_tool]").await;
    assert!(needs.contains("not ready here"), "{needs}");
    assert!(
        needs.contains("needs no-such-tool-on-this-runner (not found on this runner's PATH)"),
        "{needs}"
    );
    assert!(browser
        .text("[data-card=make_thing]")
        .await
        .contains("ready"));
    let pulumi = browser.text("[data-card=create_bucket]").await;
    assert!(
        pulumi.contains("needs the Pulumi CLI: `pulumi` is not on this runner's PATH"),
        "{pulumi}"
    );
    let _ = std::fs::write(
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("hub-cards.png"),
        browser.screenshot().await,
    );
    // Back from a page with an open form closes it.
    browser.open(&format!("{hub}#/runs")).await;
    browser.wait("#runs, .empty").await;
    browser.open(&hub).await;
    browser.click("button[data-action=needs_tool]").await;
    browser.wait("#action-form").await;
    browser.back().await;
    browser.wait("#runs, .empty").await;
    assert_eq!(browser.find(".modal").await, None, "the form closed");
    browser.open(&hub).await;
    browser.wait("button[data-action=make_thing]").await;

    // CREATE: the form made from userInputs (defaults filled, enum as a choice, JSON for arrays).
    browser.click("button[data-action=make_thing]").await;
    browser.wait("#action-form input[name=name]").await;
    assert_eq!(
        browser.text("#action-form").await.matches('*').count(),
        1,
        "one required input"
    );
    browser.fill("input[name=name]", "widget").await;
    browser
        .click(r#"select[name=size] option[value='"large"']"#)
        .await;
    browser.fill("input[name=count]", "3").await;
    browser.fill("textarea[name=tags]", r#"["a", "b"]"#).await;
    let _ = std::fs::write(
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("hub-form.png"),
        browser.screenshot().await,
    );
    browser.click("#submit").await;
    browser.wait_text("#run-state", "SUCCESS").await;
    let log = browser
        .wait_text("#run-log", "making widget large 3 a,b")
        .await;
    assert!(log.contains("SUCCESS"), "{log}");
    browser.wait_text("#run-entities", "thing/widget").await;
    // The run page says when it was accepted, started and ended, how long it took, and
    // what it changed under a heading.
    let history = browser.wait_text("#run-history", "Ended").await;
    for part in ["Accepted", "Started", "Ended SUCCESS at", "(ran "] {
        assert!(history.contains(part), "{history}");
    }
    assert!(browser.text("#run-duration").await.starts_with("took "));
    assert_eq!(
        browser.text("#run-entities-title").await,
        "Affected entities"
    );
    assert!(browser
        .text("#run-entities")
        .await
        .contains("thing/widget created or updated"));
    let _ = std::fs::write(
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("hub-run.png"),
        browser.screenshot().await,
    );

    // The local catalog has it, its properties as a table.
    browser.open(&format!("{hub}#/catalog")).await;
    let catalog = browser.wait_text("#catalog", "widget").await;
    assert!(catalog.contains("Thing widget"), "{catalog}");
    let properties = browser.text("#catalog table.props").await;
    assert!(
        properties.contains("size") && properties.contains("large"),
        "{properties}"
    );
    assert!(!catalog.contains("{\"size\""), "no raw JSON: {catalog}");
    let _ = std::fs::write(
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("hub-catalog.png"),
        browser.screenshot().await,
    );

    // DAY-2: the entity is chosen from the catalog; a missing required input is refused
    // with the server's message, then the run goes through.
    browser.open(&hub).await;
    browser.click("button[data-action=poke_thing]").await;
    browser
        .click("select[name=__entity] option[value=widget]")
        .await;
    browser.click("#submit").await;
    browser
        .wait_text("#form-problems", "input 'note' is required")
        .await;
    browser.fill("input[name=note]", "hello").await;
    browser.click("#submit").await;
    browser.wait_text("#run-state", "SUCCESS").await;
    browser
        .wait_text("#run-log", "poking widget large hello")
        .await;

    // Echo with its defaults, then the runs list shows all three.
    browser.open(&hub).await;
    browser.click("button[data-action=echo]").await;
    browser.click("#submit").await;
    browser.wait_text("#run-log", "hello from Port").await;
    browser.open(&format!("{hub}#/runs")).await;
    let runs = browser.wait_text("#runs", "echo").await;
    assert_eq!(runs.matches("SUCCESS").count(), 3, "{runs}");
    for action in ["make_thing", "poke_thing"] {
        assert!(runs.contains(action), "{runs}");
    }
    browser.quit().await;
}
