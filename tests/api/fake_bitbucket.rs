//! A stand-in for Bitbucket Server's REST API 1.0, with repositories held in memory.
//!
//! Shapes follow the real server: paged `values` with `size/limit/start/isLastPage/
//! nextPageStart` (the server caps `limit`), `browse` lines paging, `raw` files, the default
//! branch with `latestCommit`, 401 and 404 bodies `{"errors": [{message, exceptionName}]}`.
//! Latency and faults can be injected; every request is counted. Also used by the bench.
//!
//! Pull requests: files at other commits (`?at=`), the file listing (`files`, paged), and
//! what a check publishes, recorded as Atlassian's REST docs shape it and refused the same
//! way: Code Insights reports (`PUT …/reports/{key}`: title, result PASS|FAIL, at most six
//! data fields, details ≤ 2000), their annotations (`DELETE`/`POST …/annotations`: path,
//! line, message ≤ 2000, severity LOW|MEDIUM|HIGH, unique externalId; the report must
//! exist) and build statuses (`POST /rest/api/latest/…/commits/{c}/builds`: key, state,
//! url).

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::dev::ServerHandle;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use serde_json::{json, Value};

pub const USER: &str = "port-bot";
pub const PASSWORD: &str = "bb-password-42";

#[derive(Default, Clone)]
struct Repo {
    files: BTreeMap<String, String>,
    /// Whole file sets at other commits (a pull request's source branch).
    at: BTreeMap<String, BTreeMap<String, String>>,
    /// Bumped on every change; the default branch's head is derived from it.
    commits: u64,
}

#[derive(Clone)]
struct Fault {
    path_contains: String,
    status: u16,
    remaining: usize,
    retry_after: Option<String>,
}

#[derive(Default)]
struct State {
    projects: BTreeMap<String, BTreeMap<String, Repo>>,
    requests: Vec<String>,
    faults: Vec<Fault>,
    latency: Duration,
    page_max: usize,
    lines_page_max: usize,
    bucket: Option<Bucket>,
    /// Requests answered 429 by the bucket.
    limited: usize,
    /// `(project/slug, commit, key)` → report.
    reports: BTreeMap<(String, String, String), Value>,
    annotations: BTreeMap<(String, String, String), Vec<Value>>,
    /// `(project/slug, commit)` → every build status posted, in order.
    builds: BTreeMap<(String, String), Vec<Value>>,
    /// Insights and build statuses answer 403 (the account may only read).
    read_only: bool,
    /// How `commits` answers for a repository without a commit.
    empty_answer: EmptyAnswer,
    /// A server before 7.14: no build capabilities, no repository-scoped builds API.
    before_7_14: bool,
    /// Build statuses posted to the legacy API, by commit.
    legacy_builds: BTreeMap<String, Vec<Value>>,
    /// Who created each report (`reports`' key): only they may replace it.
    report_creators: BTreeMap<(String, String, String), String>,
    /// Every request checked against Bitbucket's API description.
    contract: crate::contract::Ledger,
}

/// What a server answers `GET …/commits` with for an empty repository (not documented;
/// the client takes each).
#[derive(Default, Clone, Copy, Debug)]
pub enum EmptyAnswer {
    #[default]
    EmptyPage,
    NoContent,
    NoSuchCommit,
}

/// Data Center's per-user rate limit: a token bucket; an empty one answers 429.
struct Bucket {
    capacity: f64,
    refill_per_sec: f64,
    tokens: f64,
    at: std::time::Instant,
    /// Whether 429s carry `Retry-After` (Data Center does not document it either way).
    retry_after: bool,
}

impl Bucket {
    fn take(&mut self) -> bool {
        let now = std::time::Instant::now();
        self.tokens = (self.tokens
            + now.duration_since(self.at).as_secs_f64() * self.refill_per_sec)
            .min(self.capacity);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

pub struct FakeBitbucket {
    pub url: String,
    state: Arc<Mutex<State>>,
    handle: ServerHandle,
}

impl FakeBitbucket {
    pub async fn start() -> Self {
        Self::start_with(Duration::ZERO, 2).await
    }

    /// `latency` is added to every request; `workers` HTTP workers serve them.
    pub async fn start_with(latency: Duration, workers: usize) -> Self {
        let state = Arc::new(Mutex::new(State {
            latency,
            page_max: 1000,
            lines_page_max: 500,
            ..State::default()
        }));
        let data = web::Data::from(state.clone());
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .default_service(web::to(handle))
        })
        .workers(workers)
        .backlog(4096)
        .max_connection_rate(4096)
        .disable_signals()
        .bind("127.0.0.1:0")
        .expect("bind fake Bitbucket");
        let addr = server.addrs()[0];
        let server = server.run();
        let handle = server.handle();
        tokio::spawn(server);
        Self {
            url: format!("http://{addr}"),
            state,
            handle,
        }
    }

    /// The largest page of listings the server returns, whatever `limit` asks for.
    pub fn set_page_max(&self, n: usize) {
        self.state.lock().unwrap().page_max = n;
    }

    pub fn set_lines_page_max(&self, n: usize) {
        self.state.lock().unwrap().lines_page_max = n;
    }

    /// A repository nothing was ever pushed to: no commit, no branch.
    pub fn add_empty_repo(&self, project: &str, slug: &str) {
        let mut st = self.state.lock().unwrap();
        st.projects
            .entry(project.to_owned())
            .or_default()
            .insert(slug.to_owned(), Repo::default());
    }

    pub fn set_empty_answer(&self, answer: EmptyAnswer) {
        self.state.lock().unwrap().empty_answer = answer;
    }

    pub fn add_repo(&self, project: &str, slug: &str) {
        let mut st = self.state.lock().unwrap();
        st.projects
            .entry(project.to_owned())
            .or_default()
            .entry(slug.to_owned())
            .or_insert_with(|| Repo {
                commits: 1,
                ..Repo::default()
            });
    }

    /// Commits `content` as `name` in the repository (creating it if needed).
    pub fn put_file(&self, project: &str, slug: &str, name: &str, content: &str) {
        self.add_repo(project, slug);
        let mut st = self.state.lock().unwrap();
        let repo = st.projects.get_mut(project).unwrap().get_mut(slug).unwrap();
        repo.files.insert(name.to_owned(), content.to_owned());
        repo.commits += 1;
    }

    /// A commit (of a pull request's source branch) whose files are exactly `files`.
    pub fn put_commit(&self, project: &str, slug: &str, commit: &str, files: &[(&str, &str)]) {
        self.add_repo(project, slug);
        let mut st = self.state.lock().unwrap();
        let repo = st.projects.get_mut(project).unwrap().get_mut(slug).unwrap();
        repo.at.insert(
            commit.to_owned(),
            files
                .iter()
                .map(|(n, c)| ((*n).to_owned(), (*c).to_owned()))
                .collect(),
        );
    }

    /// The requests checked against Bitbucket's API description, and any violation.
    pub fn contract(&self) -> crate::contract::Ledger {
        self.state.lock().unwrap().contract.clone()
    }

    /// A server older than 7.14: the repository-scoped builds API and the build capabilities
    /// answer 404; build statuses go to `/rest/build-status/1.0/commits/{c}`.
    pub fn set_before_7_14(&self, old: bool) {
        self.state.lock().unwrap().before_7_14 = old;
    }

    /// Build statuses posted to the legacy API on `commit`, oldest first.
    pub fn legacy_builds(&self, commit: &str) -> Vec<Value> {
        let st = self.state.lock().unwrap();
        st.legacy_builds.get(commit).cloned().unwrap_or_default()
    }

    /// A report another account created on the commit (only it may replace the report).
    pub fn put_foreign_report(&self, repo: &str, commit: &str, key: &str) {
        let mut st = self.state.lock().unwrap();
        let id = (repo.to_owned(), commit.to_owned(), key.to_owned());
        st.reports
            .insert(id.clone(), json!({"title": "someone else's", "data": []}));
        st.report_creators.insert(id, "someone-else".into());
    }

    /// The account may read but not publish insights or build statuses.
    pub fn set_read_only(&self, read_only: bool) {
        self.state.lock().unwrap().read_only = read_only;
    }

    pub fn report(&self, repo: &str, commit: &str, key: &str) -> Option<Value> {
        let st = self.state.lock().unwrap();
        st.reports
            .get(&(repo.to_owned(), commit.to_owned(), key.to_owned()))
            .cloned()
    }

    pub fn annotations(&self, repo: &str, commit: &str, key: &str) -> Vec<Value> {
        let st = self.state.lock().unwrap();
        st.annotations
            .get(&(repo.to_owned(), commit.to_owned(), key.to_owned()))
            .cloned()
            .unwrap_or_default()
    }

    /// Every build status posted on the commit, oldest first.
    pub fn builds(&self, repo: &str, commit: &str) -> Vec<Value> {
        let st = self.state.lock().unwrap();
        st.builds
            .get(&(repo.to_owned(), commit.to_owned()))
            .cloned()
            .unwrap_or_default()
    }

    pub fn remove_file(&self, project: &str, slug: &str, name: &str) {
        let mut st = self.state.lock().unwrap();
        let repo = st.projects.get_mut(project).unwrap().get_mut(slug).unwrap();
        repo.files.remove(name);
        repo.commits += 1;
    }

    /// A commit that does not touch the root files.
    pub fn commit_elsewhere(&self, project: &str, slug: &str) {
        let mut st = self.state.lock().unwrap();
        st.projects
            .get_mut(project)
            .unwrap()
            .get_mut(slug)
            .unwrap()
            .commits += 1;
    }

    pub fn remove_repo(&self, project: &str, slug: &str) {
        let mut st = self.state.lock().unwrap();
        st.projects.get_mut(project).unwrap().remove(slug);
    }

    /// The next `times` requests whose path contains `path_contains` get `status`.
    pub fn fail(&self, path_contains: &str, status: u16, times: usize, retry_after: Option<&str>) {
        self.state.lock().unwrap().faults.push(Fault {
            path_contains: path_contains.to_owned(),
            status,
            remaining: times,
            retry_after: retry_after.map(str::to_owned),
        });
    }

    pub fn request_count(&self) -> usize {
        self.state.lock().unwrap().requests.len()
    }

    pub fn requests(&self) -> Vec<String> {
        self.state.lock().unwrap().requests.clone()
    }

    /// Turns on Data Center's rate limiting: `capacity` tokens, `refill_per_sec` back each
    /// second, 429 when empty (with `Retry-After: 1` or without any header).
    pub fn rate_limit(&self, capacity: f64, refill_per_sec: f64, retry_after: bool) {
        self.state.lock().unwrap().bucket = Some(Bucket {
            capacity,
            refill_per_sec,
            tokens: capacity,
            at: std::time::Instant::now(),
            retry_after,
        });
    }

    /// Requests the rate limit answered 429.
    pub fn limited(&self) -> usize {
        self.state.lock().unwrap().limited
    }

    pub fn reset_requests(&self) {
        self.state.lock().unwrap().requests.clear();
    }

    pub async fn stop(&self) {
        self.handle.stop(false).await;
    }
}

fn errors(status: u16, message: &str, exception: &str) -> HttpResponse {
    HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap()).json(json!({
        "errors": [{"context": null, "message": message, "exceptionName": exception}]
    }))
}

fn page(values: Vec<Value>, start: usize, limit: usize) -> HttpResponse {
    let total = values.len();
    let slice: Vec<Value> = values.into_iter().skip(start).take(limit).collect();
    let size = slice.len();
    let last = start + size >= total;
    let mut body =
        json!({"size": size, "limit": limit, "start": start, "isLastPage": last, "values": slice});
    if !last {
        body["nextPageStart"] = json!(start + size);
    }
    HttpResponse::Ok().json(body)
}

fn commit_id(commits: u64) -> String {
    format!("{commits:040x}")
}

async fn handle(
    req: HttpRequest,
    body: web::Bytes,
    state: web::Data<Mutex<State>>,
) -> HttpResponse {
    let path = req.path().to_owned();
    let query: BTreeMap<String, String> =
        web::Query::<BTreeMap<String, String>>::from_query(req.query_string())
            .map(|q| q.into_inner())
            .unwrap_or_default();
    let (latency, ledger) = {
        let mut st = state.lock().unwrap();
        st.requests.push(format!("{path}?{}", req.query_string()));
        (st.latency, st.contract.clone())
    };
    let checked = ledger.check(
        crate::contract::bitbucket(),
        req.method().as_str(),
        &path,
        req.query_string(),
        &body,
    );
    if let Err(violation) = checked {
        // What the real server does with a request its API does not describe or allow.
        return errors(
            400,
            &violation,
            "com.atlassian.bitbucket.validation.ArgumentValidationException",
        );
    }
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let mut st = state.lock().unwrap();
    if let Some(bucket) = st.bucket.as_mut() {
        if !bucket.take() {
            let with_header = bucket.retry_after;
            st.limited += 1;
            let mut response = HttpResponse::TooManyRequests();
            if with_header {
                response.insert_header(("retry-after", "1"));
            }
            return response.json(json!({"errors": [{"message": "Rate limit exceeded", "exceptionName": "com.atlassian.bitbucket.ratelimit.RateLimitedException"}]}));
        }
    }

    let authorized = match req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
    {
        Some(value) => {
            use base64::Engine as _;
            let expected =
                base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"));
            value == format!("Basic {expected}") || value == "Bearer bb-token-42"
        }
        None => false,
    };
    if !authorized {
        return errors(
            401,
            "Authentication failed. Please check your credentials and try again.",
            "com.atlassian.bitbucket.auth.IncorrectPasswordAuthenticationException",
        );
    }
    if let Some(fault) = st
        .faults
        .iter_mut()
        .find(|f| f.remaining > 0 && path.contains(&f.path_contains))
    {
        fault.remaining -= 1;
        let mut response =
            HttpResponse::build(actix_web::http::StatusCode::from_u16(fault.status).unwrap());
        if let Some(after) = &fault.retry_after {
            response.insert_header(("retry-after", after.as_str()));
        }
        return response
            .json(json!({"errors": [{"message": format!("injected {}", fault.status)}]}));
    }

    let who = if req
        .headers()
        .get("authorization")
        .is_some_and(|v| v.as_bytes().starts_with(b"Bearer"))
    {
        "token"
    } else {
        USER
    };
    if let Some(rest) = path.strip_prefix("/rest/build-status/1.0/") {
        let segs: Vec<&str> = rest.split('/').collect();
        return publish(&mut st, who, "LEGACY", &segs, &body);
    }
    if let Some(rest) = path
        .strip_prefix("/rest/insights/latest/")
        .or_else(|| path.strip_prefix("/rest/api/latest/"))
    {
        let segs: Vec<&str> = rest.split('/').collect();
        return publish(&mut st, who, req.method().as_str(), &segs, &body);
    }
    let start: usize = query.get("start").and_then(|s| s.parse().ok()).unwrap_or(0);
    let limit: usize = query
        .get("limit")
        .and_then(|s| s.parse().ok())
        .unwrap_or(25)
        .min(st.page_max);
    let Some(rest) = path.strip_prefix("/rest/api/1.0/") else {
        return HttpResponse::NotFound().body("not a REST path");
    };
    let segs: Vec<&str> = rest.split('/').collect();
    let no_repo = |project: &str, slug: &str| {
        errors(
            404,
            &format!("Repository {project}/{slug} does not exist."),
            "com.atlassian.bitbucket.repository.NoSuchRepositoryException",
        )
    };
    let no_project = |project: &str| {
        errors(
            404,
            &format!("Project {project} does not exist."),
            "com.atlassian.bitbucket.project.NoSuchProjectException",
        )
    };
    match segs.as_slice() {
        ["projects"] => {
            let values = st
                .projects
                .keys()
                .map(|k| json!({"key": k, "id": 1, "name": k, "public": false, "type": "NORMAL"}))
                .collect();
            page(values, start, limit)
        }
        ["projects", project] => match st.projects.get(*project) {
            Some(_) => HttpResponse::Ok().json(json!({"key": project, "name": project})),
            None => no_project(project),
        },
        ["projects", project, "repos"] => match st.projects.get(*project) {
            Some(repos) => {
                let values = repos
                    .keys()
                    .map(|slug| json!({"slug": slug, "name": slug, "scmId": "git", "state": "AVAILABLE", "project": {"key": project}}))
                    .collect();
                page(values, start, limit)
            }
            None => no_project(project),
        },
        ["projects", project, "repos", slug, "commits"] => {
            let Some(repo) = st.projects.get(*project).and_then(|r| r.get(*slug)) else {
                return no_repo(project, slug);
            };
            if repo.commits == 0 {
                return match st.empty_answer {
                    EmptyAnswer::EmptyPage => page(Vec::new(), start, limit),
                    EmptyAnswer::NoContent => HttpResponse::NoContent().finish(),
                    EmptyAnswer::NoSuchCommit => no_commit("refs/heads/main"),
                };
            }
            // Newest first: the tip of the default branch, then its parents.
            let values = (1..=repo.commits)
                .rev()
                .map(|n| {
                    json!({"id": commit_id(n), "displayId": &commit_id(n)[..11],
                                "message": format!("commit {n}"), "parents": []})
                })
                .collect();
            page(values, start, limit)
        }
        // Deprecated (and no longer used by the runner): 204 and no body for an empty one.
        ["projects", project, "repos", slug, "branches", "default"] => {
            match st.projects.get(*project).and_then(|r| r.get(*slug)) {
                Some(repo) if repo.commits == 0 => HttpResponse::NoContent().finish(),
                Some(repo) => HttpResponse::Ok().json(json!({
                    "id": "refs/heads/main", "displayId": "main", "type": "BRANCH",
                    "latestCommit": commit_id(repo.commits), "latestChangeset": commit_id(repo.commits),
                    "isDefault": true
                })),
                None => no_repo(project, slug),
            }
        }
        ["projects", project, "repos", slug, "files"] => {
            let Some(repo) = st.projects.get(*project).and_then(|r| r.get(*slug)) else {
                return no_repo(project, slug);
            };
            if repo.commits == 0 {
                return no_commit(query.get("at").map_or("HEAD", String::as_str));
            }
            let Some(files) = files_at(repo, query.get("at")) else {
                return no_commit(query.get("at").unwrap());
            };
            page(files.keys().map(|k| json!(k)).collect(), start, limit)
        }
        ["projects", project, "repos", slug, kind @ ("raw" | "browse"), file @ ..] => {
            let Some(repo) = st.projects.get(*project).and_then(|r| r.get(*slug)) else {
                return no_repo(project, slug);
            };
            if repo.commits == 0 {
                return no_commit(query.get("at").map_or("HEAD", String::as_str));
            }
            let name = file.join("/");
            let Some(files) = files_at(repo, query.get("at")) else {
                return no_commit(query.get("at").unwrap());
            };
            let Some(content) = files.get(&name) else {
                return errors(
                    404,
                    &format!(
                        "The path \"{name}\" does not exist at revision \"{}\"",
                        commit_id(repo.commits)
                    ),
                    "com.atlassian.bitbucket.content.NoSuchPathException",
                );
            };
            if *kind == "raw" {
                return HttpResponse::Ok()
                    .content_type("text/plain; charset=UTF-8")
                    .body(content.clone());
            }
            let lines: Vec<Value> = content.lines().map(|l| json!({"text": l})).collect();
            let limit = query
                .get("limit")
                .and_then(|s| s.parse().ok())
                .unwrap_or(500)
                .min(st.lines_page_max);
            let total = lines.len();
            let slice: Vec<Value> = lines.into_iter().skip(start).take(limit).collect();
            let size = slice.len();
            let last = start + size >= total;
            let mut body =
                json!({"lines": slice, "start": start, "size": size, "isLastPage": last});
            if !last {
                body["nextPageStart"] = json!(start + size);
            }
            HttpResponse::Ok().json(body)
        }
        _ => HttpResponse::NotFound().body(format!("no route {path}")),
    }
}

fn no_commit(at: &str) -> HttpResponse {
    errors(
        404,
        &format!("Commit '{at}' does not exist in this repository"),
        "com.atlassian.bitbucket.commit.NoSuchCommitException",
    )
}

/// The files at `at`: the default branch (by name, ref or head), or a commit put there.
fn files_at<'a>(repo: &'a Repo, at: Option<&String>) -> Option<&'a BTreeMap<String, String>> {
    match at.map(String::as_str) {
        None | Some("main" | "refs/heads/main") => Some(&repo.files),
        Some(at) if at == commit_id(repo.commits) => Some(&repo.files),
        Some(at) => repo.at.get(at),
    }
}

/// Code Insights and build statuses: validated as Bitbucket does, then recorded.
fn publish(st: &mut State, who: &str, method: &str, segs: &[&str], body: &[u8]) -> HttpResponse {
    let no_route = || HttpResponse::NotFound().body("Not Found");
    match (method, segs) {
        ("GET", ["build", "capabilities"]) if st.before_7_14 => return no_route(),
        ("GET", ["build", "capabilities"]) => {
            return HttpResponse::Ok().json(json!({"buildStatus": ["richBuildStatus"]}))
        }
        ("POST", [.., "builds"]) if st.before_7_14 => return no_route(),
        _ => {}
    }
    if st.read_only {
        return errors(
            403,
            "You are not permitted to access this resource",
            "com.atlassian.bitbucket.AuthorisationException",
        );
    }
    let body: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let bad = |message: String| {
        errors(
            400,
            &message,
            "com.atlassian.bitbucket.validation.ArgumentValidationException",
        )
    };
    match (method, segs) {
        ("PUT", ["projects", p, "repos", s, "commits", c, "reports", key]) => {
            let title_ok = body["title"]
                .as_str()
                .is_some_and(|t| !t.is_empty() && t.len() <= 450);
            let result_ok = matches!(body["result"].as_str(), None | Some("PASS" | "FAIL"));
            let data = body["data"].as_array().cloned().unwrap_or_default();
            let details = body["details"].as_str().unwrap_or("");
            if !title_ok || !result_ok || data.len() > 6 || details.chars().count() > 2000 {
                return bad(format!("invalid report: {body}"));
            }
            for d in &data {
                let typed = matches!(
                    d["type"].as_str(),
                    Some(
                        "BOOLEAN" | "DATE" | "DURATION" | "LINK" | "NUMBER" | "PERCENTAGE" | "TEXT"
                    )
                );
                if !typed || d["title"].as_str().is_none() {
                    return bad(format!("invalid data field: {d}"));
                }
            }
            let id = (format!("{p}/{s}"), c.to_string(), key.to_string());
            if st
                .report_creators
                .get(&id)
                .is_some_and(|creator| creator != who)
            {
                return errors(
                    401,
                    "You are not permitted to replace this report: it was created by another user",
                    "com.atlassian.bitbucket.AuthorisationException",
                );
            }
            st.report_creators.insert(id.clone(), who.to_owned());
            st.reports.insert(id, body.clone());
            HttpResponse::Ok().json(body)
        }
        ("DELETE", ["projects", p, "repos", s, "commits", c, "reports", key, "annotations"]) => {
            st.annotations
                .remove(&(format!("{p}/{s}"), c.to_string(), key.to_string()));
            HttpResponse::NoContent().finish()
        }
        ("POST", ["projects", p, "repos", s, "commits", c, "reports", key, "annotations"]) => {
            let id = (format!("{p}/{s}"), c.to_string(), key.to_string());
            if !st.reports.contains_key(&id) {
                return errors(
                    404,
                    "No report with this key",
                    "com.atlassian.bitbucket.codeinsights.report.NoSuchReportException",
                );
            }
            let list = st.annotations.entry(id).or_default();
            for a in body["annotations"].as_array().cloned().unwrap_or_default() {
                let ok = a["path"].as_str().is_some()
                    && a["line"].as_u64().is_some()
                    && a["message"]
                        .as_str()
                        .is_some_and(|m| !m.is_empty() && m.chars().count() <= 2000)
                    && matches!(a["severity"].as_str(), Some("LOW" | "MEDIUM" | "HIGH"))
                    && matches!(
                        a["type"].as_str(),
                        None | Some("VULNERABILITY" | "CODE_SMELL" | "BUG")
                    );
                let long_id = a["externalId"]
                    .as_str()
                    .is_some_and(|id| id.chars().count() > 450);
                let duplicate = long_id
                    || a["externalId"].as_str().is_some()
                        && list.iter().any(|b| b["externalId"] == a["externalId"]);
                if !ok || duplicate {
                    return bad(format!("invalid annotation: {a}"));
                }
                list.push(a);
            }
            if list.len() > 1000 {
                return bad("a report has at most 1000 annotations".into());
            }
            HttpResponse::NoContent().finish()
        }
        ("LEGACY", ["commits", c]) => {
            // The legacy API: state, key and url, every field at most 255 (url 450).
            let short = |k: &str| body[k].as_str().is_none_or(|v| v.chars().count() <= 255);
            let ok = body["key"].as_str().is_some()
                && body["url"]
                    .as_str()
                    .is_some_and(|u| u.starts_with("http") && u.len() <= 450)
                && matches!(
                    body["state"].as_str(),
                    Some("INPROGRESS" | "SUCCESSFUL" | "FAILED")
                )
                && ["key", "name", "description"].into_iter().all(short);
            if !ok {
                return bad(format!("invalid build status: {body}"));
            }
            st.legacy_builds
                .entry(c.to_string())
                .or_default()
                .push(body);
            HttpResponse::NoContent().finish()
        }
        ("POST", ["projects", p, "repos", s, "commits", c, "builds"]) => {
            let ok = body["key"].as_str().is_some()
                && body["url"].as_str().is_some_and(|u| u.starts_with("http"))
                && matches!(
                    body["state"].as_str(),
                    Some("INPROGRESS" | "SUCCESSFUL" | "FAILED" | "CANCELLED" | "UNKNOWN")
                );
            if !ok {
                return bad(format!("invalid build status: {body}"));
            }
            st.builds
                .entry((format!("{p}/{s}"), c.to_string()))
                .or_default()
                .push(body);
            HttpResponse::NoContent().finish()
        }
        _ => HttpResponse::NotFound().body(format!("no route {method} {}", segs.join("/"))),
    }
}

/// A request Bitbucket's API description does not allow fails the test that sent it, even when
/// the test went on past the fake's 400.
impl Drop for FakeBitbucket {
    fn drop(&mut self) {
        let violations = self.contract().violations();
        if !violations.is_empty() && !std::thread::panicking() {
            panic!("requests Bitbucket's API description does not allow: {violations:#?}");
        }
    }
}
