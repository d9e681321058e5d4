//! Typed client for Bitbucket Server.
//!
//! Listings are paged until `isLastPage` at the largest page size the server allows;
//! retries follow [`RetryPolicy`] (429 `Retry-After`, 5xx backoff); 401/403 are final.
//! A permit of the shared semaphore is held only while a request is in flight, never
//! while waiting to retry.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use reqwest::{Method, Url};
use serde_json::Value;
use tokio::sync::Semaphore;

use super::error::BitbucketError;
use super::pacer::{Pacer, Rate};
use super::types::{ErrorBody, LinesPage, Page, ProjectKey, RepoSlug};
use crate::http::{Raw, RetryPolicy};
use crate::secret::Secret;

/// How Bitbucket authenticates us (the secrets show as `<secret>` in `Debug`).
#[derive(Clone, Debug)]
pub enum BitbucketAuth {
    Basic {
        username: String,
        password: Secret,
    },
    /// A personal or HTTP access token, sent as `Authorization: Bearer`.
    Bearer(Secret),
}

/// How file contents are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileApi {
    /// `raw/{path}`: the whole file in one request.
    Raw,
    /// `browse/{path}`: JSON lines, paged (for servers whose raw endpoint is unavailable).
    Browse,
}

#[derive(Debug, Clone)]
pub struct BitbucketConfig {
    /// Base URL of the server, e.g. `https://bitbucket.example.com` (the REST path is added).
    pub host: String,
    pub auth: BitbucketAuth,
    /// Requests in flight at once, across everything.
    pub concurrency: usize,
    pub retry: RetryPolicy,
    pub request_timeout: Duration,
    pub file_api: FileApi,
    /// Page size asked for in listings (the server may answer with less and says so).
    pub page_limit: usize,
    /// `--bitbucket-rate`: pace requests at this rate from the start (else learnt from 429s).
    pub rate: Option<Rate>,
    /// How long one request keeps waiting out 429s before it fails (the sync's time budget).
    pub rate_limit_patience: Duration,
}

pub struct BitbucketClient {
    http: reqwest::Client,
    base: Url,
    auth: BitbucketAuth,
    permits: Semaphore,
    concurrency: usize,
    retry: RetryPolicy,
    file_api: FileApi,
    page_limit: String,
    requests: AtomicU64,
    pacer: Pacer,
    patience: Duration,
    /// Which build-status API the server has, once asked (`insights.rs`).
    pub(super) builds_api: tokio::sync::OnceCell<super::types::BuildsApi>,
}

impl BitbucketClient {
    pub fn new(config: BitbucketConfig) -> Result<Self, BitbucketError> {
        let host = config.host.trim_end_matches('/');
        // `/rest` under the host (which may have a context path): REST API 1.0, its
        // `latest` alias (build statuses) and Code Insights all live beneath it.
        let base = Url::parse(&format!("{host}/rest")).map_err(|e| BitbucketError::Config {
            message: format!("BITBUCKET_HOST {:?} is not a URL: {e}", config.host),
        })?;
        if base.cannot_be_a_base() || !matches!(base.scheme(), "http" | "https") {
            return Err(BitbucketError::Config {
                message: format!(
                    "BITBUCKET_HOST {:?} must be an http(s) URL such as https://bitbucket.example.com",
                    config.host
                ),
            });
        }
        let http = reqwest::Client::builder()
            .user_agent(concat!("port-runner/", env!("CARGO_PKG_VERSION")))
            .timeout(config.request_timeout)
            .connect_timeout(Duration::from_secs(5))
            .pool_max_idle_per_host(config.concurrency.max(1))
            .build()
            .map_err(|e| BitbucketError::Unexpected {
                message: format!("cannot build HTTP client: {e}"),
            })?;
        Ok(Self {
            http,
            base,
            auth: config.auth,
            permits: Semaphore::new(config.concurrency.max(1)),
            concurrency: config.concurrency.max(1),
            retry: config.retry,
            file_api: config.file_api,
            page_limit: config.page_limit.max(1).to_string(),
            requests: AtomicU64::new(0),
            pacer: Pacer::new(config.rate),
            patience: config.rate_limit_patience,
            builds_api: tokio::sync::OnceCell::new(),
        })
    }

    /// HTTP requests sent so far (retries included).
    pub fn request_count(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// The pacer every request goes through (429s seen, the current rate).
    /// How many requests go to Bitbucket at once.
    pub fn concurrency(&self) -> usize {
        self.concurrency
    }

    /// The server requests go to (`BITBUCKET_HOST`'s REST root).
    pub fn server(&self) -> &str {
        self.base.as_str()
    }

    pub fn pacer(&self) -> &Pacer {
        &self.pacer
    }

    /// Every project's key.
    pub async fn project_keys(&self) -> Result<Vec<String>, BitbucketError> {
        let values: Vec<ProjectKey> = self.paged(&["projects"]).await?;
        Ok(values.into_iter().map(|p| p.key).collect())
    }

    /// The slugs of a project's repositories.
    pub async fn repo_slugs(&self, project: &str) -> Result<Vec<String>, BitbucketError> {
        let values: Vec<RepoSlug> = self.paged(&["projects", project, "repos"]).await?;
        Ok(values.into_iter().map(|r| r.slug).collect())
    }

    /// The head commit of the default branch, `None` for an empty repository.
    ///
    /// `GET …/commits?limit=1`: "if no explicit commit is specified, the tip of the
    /// repository's default branch is assumed". (The deprecated `branches/default` answers an
    /// empty repository with 204 and no body; `default-branch`, its replacement, names the
    /// configured branch but not its head.) An empty repository comes back as an empty page,
    /// a 204, or a 404 naming a missing commit or branch (versions differ: all are taken); a
    /// 404 without Bitbucket's own exception (a proxy's page) is an error, never "empty".
    pub async fn head(&self, project: &str, slug: &str) -> Result<Option<String>, BitbucketError> {
        let segments = ["projects", project, "repos", slug, "commits"];
        let raw = match self.get(&segments, &[("limit", "1")]).await {
            Ok(raw) => raw,
            Err(e) if e.is_missing_path() => return Ok(None),
            Err(e) => return Err(e),
        };
        if raw.status == 204 || raw.body.iter().all(u8::is_ascii_whitespace) {
            return Ok(None);
        }
        let page: Page =
            serde_json::from_slice(&raw.body).map_err(|e| BitbucketError::Unexpected {
                message: format!("commits of {project}/{slug}: not a page: {e}"),
            })?;
        Ok(page
            .values
            .first()
            .and_then(|c| c.get("id"))
            .and_then(Value::as_str)
            .map(str::to_owned))
    }

    /// A file of the default branch (or of `at`), whole; `None` if there is no such path.
    pub async fn file(
        &self,
        project: &str,
        slug: &str,
        path: &str,
        at: Option<&str>,
    ) -> Result<Option<String>, BitbucketError> {
        let result = match self.file_api {
            FileApi::Raw => self.raw_file(project, slug, path, at).await,
            FileApi::Browse => self.browse_file(project, slug, path, at).await,
        };
        match result {
            Ok(text) => Ok(Some(text)),
            Err(e) if e.is_missing_path() => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn raw_file(
        &self,
        project: &str,
        slug: &str,
        path: &str,
        at: Option<&str>,
    ) -> Result<String, BitbucketError> {
        let segments = file_segments(project, slug, "raw", path);
        let query: Vec<(&str, &str)> = at.map(|at| ("at", at)).into_iter().collect();
        let raw = self.get(&segments, &query).await?;
        String::from_utf8(raw.body).map_err(|_| BitbucketError::Unexpected {
            message: format!("{project}/{slug}:{path} is not UTF-8 text"),
        })
    }

    async fn browse_file(
        &self,
        project: &str,
        slug: &str,
        path: &str,
        at: Option<&str>,
    ) -> Result<String, BitbucketError> {
        let segments = file_segments(project, slug, "browse", path);
        let mut text = String::new();
        let mut start = 0u64;
        loop {
            let start_text = start.to_string();
            let mut query = vec![
                ("start", start_text.as_str()),
                ("limit", self.page_limit.as_str()),
            ];
            if let Some(at) = at {
                query.push(("at", at));
            }
            let value = self.get_json(&segments, &query).await?;
            let page: LinesPage =
                serde_json::from_value(value).map_err(|e| BitbucketError::Unexpected {
                    message: format!("browse {project}/{slug}:{path}: {e}"),
                })?;
            for line in page.lines {
                text.push_str(&line.text);
                text.push('\n');
            }
            match (page.is_last_page, page.next_page_start) {
                (true, _) => return Ok(text),
                (false, Some(next)) if next > start => start = next,
                _ => {
                    return Err(BitbucketError::Unexpected {
                        message: format!("browse {project}/{slug}:{path}: paging does not advance"),
                    })
                }
            }
        }
    }

    /// Every file path of the repository at `at` (a commit or a ref), paged.
    pub async fn files(
        &self,
        project: &str,
        slug: &str,
        at: &str,
    ) -> Result<Vec<String>, BitbucketError> {
        self.paged_with(
            &["projects", project, "repos", slug, "files"],
            &[("at", at)],
        )
        .await
    }

    /// All values of a paged listing.
    async fn paged<T: serde::de::DeserializeOwned>(
        &self,
        segments: &[&str],
    ) -> Result<Vec<T>, BitbucketError> {
        self.paged_with(segments, &[]).await
    }

    async fn paged_with<T: serde::de::DeserializeOwned>(
        &self,
        segments: &[&str],
        extra: &[(&str, &str)],
    ) -> Result<Vec<T>, BitbucketError> {
        let mut values = Vec::new();
        let mut start = 0u64;
        loop {
            let start_text = start.to_string();
            let mut query = vec![
                ("start", start_text.as_str()),
                ("limit", self.page_limit.as_str()),
            ];
            query.extend_from_slice(extra);
            let raw = self.get(segments, &query).await?;
            let page: Page<T> =
                serde_json::from_slice(&raw.body).map_err(|e| BitbucketError::Unexpected {
                    message: format!("{}: not a page: {e}", segments.join("/")),
                })?;
            values.extend(page.values);
            match (page.is_last_page, page.next_page_start) {
                (true, _) => return Ok(values),
                // A server that does not advance would make us loop forever (the reference
                // script's failure mode); stop with a clear error instead.
                (false, Some(next)) if next > start => start = next,
                _ => {
                    return Err(BitbucketError::Unexpected {
                        message: format!("{}: paging does not advance", segments.join("/")),
                    })
                }
            }
        }
    }

    async fn get_json(
        &self,
        segments: &[&str],
        query: &[(&str, &str)],
    ) -> Result<Value, BitbucketError> {
        let raw = self.get(segments, query).await?;
        serde_json::from_slice(&raw.body).map_err(|e| BitbucketError::Unexpected {
            message: format!("{}: not JSON: {e}", segments.join("/")),
        })
    }

    /// One GET of REST API 1.0 with retries; returns a 2xx answer or a classified error.
    async fn get(&self, segments: &[&str], query: &[(&str, &str)]) -> Result<Raw, BitbucketError> {
        let mut path = vec!["api", "1.0"];
        path.extend_from_slice(segments);
        self.call(Method::GET, &path, query, None).await
    }

    /// One request under `/rest` with retries (writes are idempotent: a report is replaced,
    /// a build status is keyed, annotations are deleted before they are posted).
    pub(super) async fn call(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, &str)],
        body: Option<&Value>,
    ) -> Result<Raw, BitbucketError> {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .expect("checked in new()")
            .extend(segments);
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        let mut attempt = 0;
        let started = tokio::time::Instant::now();
        loop {
            let outcome = match self.send(method.clone(), url.clone(), body).await {
                Ok(raw) if (200..300).contains(&raw.status) => {
                    self.pacer.succeeded();
                    return Ok(raw);
                }
                other => other,
            };
            let (status, wait) = match &outcome {
                Ok(raw) => (Some(raw.status), raw.retry_after),
                Err(_) => (None, None),
            };
            // Rate limited: not a failure while patience lasts; the pacer slows everyone.
            if status == Some(429) && started.elapsed() < self.patience {
                self.pacer.rate_limited(wait);
                continue;
            }
            match self.retry.delay(attempt, status, wait) {
                Some(delay) => {
                    tracing::debug!(
                        path = url.path(),
                        attempt,
                        ?delay,
                        "retrying Bitbucket request"
                    );
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                None => return Err(classify(outcome, &url)),
            }
        }
    }

    async fn send(
        &self,
        method: Method,
        url: Url,
        body: Option<&Value>,
    ) -> Result<Raw, reqwest::Error> {
        let _permit = self
            .permits
            .acquire()
            .await
            .expect("semaphore never closed");
        // Paced right before sending: a request that waited for a slot while a 429 paused
        // everyone must not go out on the old pace.
        self.pacer.acquire().await;
        self.requests.fetch_add(1, Ordering::Relaxed);
        let mut request = self.http.request(method, url);
        if let Some(body) = body {
            request = request.json(body);
        }
        request = match &self.auth {
            BitbucketAuth::Basic { username, password } => {
                request.basic_auth(username, Some(password.expose()))
            }
            BitbucketAuth::Bearer(token) => request.bearer_auth(token.expose()),
        };
        crate::http::send(request).await
    }
}

/// `projects/{p}/repos/{s}/{raw|browse}/{path…}`, each path component its own segment.
fn file_segments<'a>(project: &'a str, slug: &'a str, api: &'a str, path: &'a str) -> Vec<&'a str> {
    let mut segments = vec!["projects", project, "repos", slug, api];
    segments.extend(path.split('/'));
    segments
}

fn classify(outcome: Result<Raw, reqwest::Error>, url: &Url) -> BitbucketError {
    let raw = match outcome {
        Ok(raw) => raw,
        Err(e) => {
            return BitbucketError::Transient {
                message: format!("{}: {}", url.path(), e.without_url()),
            }
        }
    };
    let (message, exception) = match serde_json::from_slice::<ErrorBody>(&raw.body) {
        Ok(body) if !body.errors.is_empty() => {
            let first = &body.errors[0];
            (
                first.message.clone().unwrap_or_else(|| "no message".into()),
                first.exception_name.clone(),
            )
        }
        _ => (
            String::from_utf8_lossy(&raw.body)
                .chars()
                .take(200)
                .collect(),
            None,
        ),
    };
    match raw.status {
        401 | 403 => BitbucketError::Unauthorized {
            status: raw.status,
            message,
        },
        404 => BitbucketError::NotFound { message, exception },
        408 | 429 | 500..=599 => BitbucketError::Transient {
            message: format!("{} answered {}: {message}", url.path(), raw.status),
        },
        status => BitbucketError::Invalid { status, message },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(status: u16, body: &str) -> Result<Raw, reqwest::Error> {
        Ok(Raw {
            status,
            retry_after: None,
            body: body.as_bytes().to_vec(),
        })
    }

    #[test]
    fn errors_are_classified_by_status_and_exception_name() {
        let url = Url::parse("http://bb/rest/api/1.0/x").unwrap();
        let missing = classify(
            raw(
                404,
                r#"{"errors":[{"context":null,"message":"The path \"port.yaml\" does not exist at revision \"abc\"","exceptionName":"com.atlassian.bitbucket.content.NoSuchPathException"}]}"#,
            ),
            &url,
        );
        assert!(missing.is_missing_path());
        assert!(!missing.is_gone());
        let gone = classify(
            raw(
                404,
                r#"{"errors":[{"message":"Repository PRJ/x does not exist.","exceptionName":"com.atlassian.bitbucket.repository.NoSuchRepositoryException"}]}"#,
            ),
            &url,
        );
        assert!(gone.is_gone());
        assert!(!gone.is_missing_path());
        // A 404 that is not Bitbucket's (a proxy, a missing route) is neither: never a deletion.
        let odd = classify(raw(404, "<html>Not Found</html>"), &url);
        assert!(!odd.is_missing_path() && !odd.is_gone());
        assert!(matches!(
            classify(
                raw(401, r#"{"errors":[{"message":"Authentication failed"}]}"#),
                &url
            ),
            BitbucketError::Unauthorized { status: 401, .. }
        ));
        assert!(matches!(
            classify(raw(503, ""), &url),
            BitbucketError::Transient { .. }
        ));
    }

    #[test]
    fn the_host_must_be_an_http_url() {
        let config = |host: &str| BitbucketConfig {
            host: host.into(),
            auth: BitbucketAuth::Bearer("t".into()),
            concurrency: 4,
            retry: RetryPolicy::default(),
            request_timeout: Duration::from_secs(5),
            file_api: FileApi::Raw,
            page_limit: 1000,
            rate: None,
            rate_limit_patience: Duration::from_secs(60),
        };
        assert!(BitbucketClient::new(config("https://bb.example.com/")).is_ok());
        assert!(BitbucketClient::new(config("bb.example.com")).is_err());
        assert!(BitbucketClient::new(config("ftp://bb")).is_err());
    }

    #[test]
    fn secrets_do_not_show_in_debug_output() {
        let auth = BitbucketAuth::Basic {
            username: "bot".into(),
            password: "hunter2".into(),
        };
        let shown = format!("{auth:?}");
        assert!(
            !shown.contains("hunter2") && shown.contains("<secret>"),
            "{shown}"
        );
    }
}
