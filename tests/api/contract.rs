//! Every request a fake receives, checked against the service's own API description.
//!
//! `tests/contract/{port,bitbucket}.json`, committed with the tests, are extracts of Port's and
//! Bitbucket Data Center 9.2's published OpenAPI descriptions, made by
//! `tests/contract/extract.py` (each names its source file and SHA-256): the operations the runner uses, each with its method, path
//! template, query parameters and request-body schema. A request is a violation when no
//! operation has its method and path, when it sends a query parameter the operation does not
//! declare (or leaves out a required one, or one breaks its schema), or when its JSON body
//! breaks the operation's schema. The fakes answer a violation 400, as the real service would
//! refuse it, and keep it, so the test that made the request fails.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};

use serde_json::Value;

/// One operation of a description.
struct Operation {
    method: String,
    /// The description's path (`/api/latest/projects/{projectKey}`).
    path: String,
    /// Path segments on the wire after the prefix; `None` is a parameter. A last parameter
    /// named `path` takes the rest (a file path has slashes).
    segments: Vec<Option<String>>,
    greedy: bool,
    deprecated: bool,
    query: Vec<(String, bool, jsonschema::Validator)>,
    body: Option<jsonschema::Validator>,
    body_required: bool,
    /// Outside the published description (Port's agent protocol), checked by our own schema.
    undescribed: bool,
}

/// A service's description, as the tests hold it.
pub struct Description {
    pub name: &'static str,
    /// Description prefix → the prefixes it has on the wire.
    prefixes: Vec<(String, Vec<String>)>,
    operations: Vec<Operation>,
}

/// What a fake saw: requests checked per operation, and the violations.
#[derive(Default, Clone)]
pub struct Ledger {
    inner: Arc<Mutex<LedgerInner>>,
}

#[derive(Default)]
struct LedgerInner {
    /// `METHOD path` of the description → requests that matched it.
    used: BTreeMap<String, usize>,
    /// Of those, to routes outside the published description.
    undescribed: usize,
    violations: Vec<String>,
}

impl Ledger {
    /// Checks a request against `description`; `Err` is the violation (also kept).
    pub fn check(
        &self,
        description: &Description,
        method: &str,
        path: &str,
        query: &str,
        body: &[u8],
    ) -> Result<(), String> {
        let mut inner = self.inner.lock().unwrap();
        match description.check(method, path, query, body) {
            Ok(op) => {
                *inner
                    .used
                    .entry(format!("{} {}", op.method, op.path))
                    .or_default() += 1;
                if op.undescribed {
                    inner.undescribed += 1;
                }
                Ok(())
            }
            Err(e) => {
                let e = format!("{}: {method} {path}?{query}: {e}", description.name);
                inner.violations.push(e.clone());
                Err(e)
            }
        }
    }

    pub fn checked(&self) -> usize {
        self.inner.lock().unwrap().used.values().sum()
    }

    pub fn undescribed(&self) -> usize {
        self.inner.lock().unwrap().undescribed
    }

    /// `METHOD path` → requests, for each operation used.
    pub fn used(&self) -> BTreeMap<String, usize> {
        self.inner.lock().unwrap().used.clone()
    }

    pub fn violations(&self) -> Vec<String> {
        self.inner.lock().unwrap().violations.clone()
    }
}

fn compile(schema: &Value) -> jsonschema::Validator {
    jsonschema::options()
        .with_draft(jsonschema::Draft::Draft202012)
        .build(schema)
        .unwrap_or_else(|e| panic!("a schema of the extract does not compile: {e}"))
}

fn load(file: &str, name: &'static str) -> Description {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/contract")
        .join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (made by tests/contract/extract.py)",
            path.display()
        )
    });
    let extract: Value = serde_json::from_str(&text).expect("the extract is JSON");
    let prefixes: Vec<(String, Vec<String>)> = extract["prefixes"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| {
            let wire = v
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p.as_str().unwrap().to_owned())
                .collect();
            (k.clone(), wire)
        })
        .collect();
    let mut operations = Vec::new();
    let listed = extract["operations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| (o, false));
    let undescribed = extract["undescribed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| (o, true));
    for (op, undescribed) in listed.chain(undescribed) {
        let path = op["path"].as_str().unwrap().to_owned();
        let (prefix, _) = prefixes
            .iter()
            .find(|(p, _)| path.starts_with(p.as_str()))
            .unwrap_or_else(|| panic!("{path}: no prefix"));
        let rest = &path[prefix.len()..];
        let mut segments: Vec<Option<String>> = rest
            .split('/')
            .map(|s| (!s.starts_with('{')).then(|| s.to_owned()))
            .collect();
        let greedy = rest.ends_with("{path}");
        if greedy {
            segments.pop();
        }
        let query = op["query"]
            .as_array()
            .unwrap()
            .iter()
            .map(|q| {
                (
                    q["name"].as_str().unwrap().to_owned(),
                    q["required"].as_bool().unwrap_or(false),
                    compile(&q["schema"]),
                )
            })
            .collect();
        operations.push(Operation {
            method: op["method"].as_str().unwrap().to_owned(),
            path: format!("{prefix}{rest}"),
            segments,
            greedy,
            deprecated: op["deprecated"].as_bool().unwrap_or(false),
            query,
            body: op["body"].is_object().then(|| compile(&op["body"])),
            body_required: op["bodyRequired"].as_bool().unwrap_or(false),
            undescribed,
        });
    }
    Description {
        name,
        prefixes,
        operations,
    }
}

/// Port's API description (and the agent routes it leaves out).
pub fn port() -> &'static Description {
    static PORT: OnceLock<Description> = OnceLock::new();
    PORT.get_or_init(|| load("port.json", "Port"))
}

/// Bitbucket Data Center 9.2's API description.
pub fn bitbucket() -> &'static Description {
    static BITBUCKET: OnceLock<Description> = OnceLock::new();
    BITBUCKET.get_or_init(|| load("bitbucket.json", "Bitbucket"))
}

/// A query value as the operation's schema sees it: a number or boolean where it says so.
fn typed(schema: &jsonschema::Validator, value: &str) -> Value {
    let text = Value::String(value.to_owned());
    if schema.is_valid(&text) {
        return text;
    }
    serde_json::from_str(value).unwrap_or(text)
}

impl Description {
    fn check(
        &self,
        method: &str,
        path: &str,
        query: &str,
        body: &[u8],
    ) -> Result<&Operation, String> {
        let candidates = self.operations.iter().filter(|op| {
            let Some((prefix, wires)) = self
                .prefixes
                .iter()
                .find(|(p, _)| op.path.starts_with(p.as_str()))
            else {
                return false;
            };
            let _ = prefix;
            wires.iter().any(|wire| {
                path.strip_prefix(wire.as_str())
                    .is_some_and(|rest| op.matches(rest))
            })
        });
        // A literal segment beats a parameter (`runs/ack` is not `runs/{run_id}`).
        let mut candidates: Vec<&Operation> = candidates.collect();
        candidates.sort_by_key(|op| std::cmp::Reverse(op.segments.iter().flatten().count()));
        let mut routed = false;
        let mut found = None;
        for op in candidates {
            routed = true;
            if op.method.eq_ignore_ascii_case(method) {
                found = Some(op);
                break;
            }
        }
        let Some(op) = found else {
            return Err(if routed {
                "the description has no such method on this route".into()
            } else {
                "no route of the description (or not one the runner is known to use)".into()
            });
        };
        let pairs: Vec<(String, String)> = url_pairs(query);
        for (name, value) in &pairs {
            let Some((_, _, schema)) = op.query.iter().find(|(n, _, _)| n == name) else {
                return Err(format!(
                    "query parameter {name:?} is not one of {}",
                    op.path
                ));
            };
            let value = typed(schema, value);
            if let Err(e) = schema.validate(&value) {
                return Err(format!("query parameter {name}={value}: {e}"));
            }
        }
        if let Some((name, _, _)) = op
            .query
            .iter()
            .find(|(n, required, _)| *required && !pairs.iter().any(|(p, _)| p == n))
        {
            return Err(format!("required query parameter {name:?} is missing"));
        }
        match (&op.body, body.is_empty()) {
            (Some(_), true) if op.body_required => return Err("the request body is missing".into()),
            (Some(schema), false) => {
                let value: Value = serde_json::from_slice(body)
                    .map_err(|e| format!("the body is not JSON: {e}"))?;
                let problems: Vec<String> = schema
                    .iter_errors(&value)
                    .take(5)
                    .map(|e| format!("{} at {}", e, e.instance_path()))
                    .collect();
                if !problems.is_empty() {
                    return Err(format!(
                        "the body breaks the description's schema: {}",
                        problems.join("; ")
                    ));
                }
            }
            (None, false) if method != "GET" && method != "DELETE" => {
                return Err("the description takes no body here".into())
            }
            _ => {}
        }
        Ok(op)
    }
}

impl Operation {
    fn matches(&self, rest: &str) -> bool {
        let parts: Vec<&str> = rest.split('/').collect();
        if self.greedy {
            parts.len() > self.segments.len()
                && self.segments.iter().zip(&parts).all(|(s, p)| seg(s, p))
        } else {
            parts.len() == self.segments.len()
                && self.segments.iter().zip(&parts).all(|(s, p)| seg(s, p))
        }
    }
}

fn seg(template: &Option<String>, part: &str) -> bool {
    match template {
        Some(literal) => literal == part,
        None => !part.is_empty(),
    }
}

fn url_pairs(query: &str) -> Vec<(String, String)> {
    reqwest::Url::parse(&format!("http://x/?{query}"))
        .map(|u| {
            u.query_pairs()
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn the_extracts_route_what_the_runner_sends_and_refuse_the_rest() {
    let ledger = Ledger::default();
    let bb = bitbucket();
    let ok = |m: &str, p: &str, q: &str, b: &str| ledger.check(bb, m, p, q, b.as_bytes());
    ok(
        "GET",
        "/rest/api/1.0/projects/P/repos/r/raw/a/b/port.yaml",
        "at=abc",
        "",
    )
    .unwrap();
    ok(
        "GET",
        "/rest/api/1.0/projects/P/repos/r/commits",
        "limit=1",
        "",
    )
    .unwrap();
    assert!(ok(
        "GET",
        "/rest/api/1.0/projects/P/repos/r/raw/x",
        "bogus=1",
        ""
    )
    .is_err());
    assert!(ok("GET", "/rest/api/1.0/nowhere", "", "").is_err());
    let annotation = |id: &str| {
        format!(
            r#"{{"annotations": [{{"path": "port.yaml", "line": 1, "message": "m", "severity": "LOW", "externalId": "{id}"}}]}}"#
        )
    };
    let post = |body: &str| {
        ledger.check(
            bb,
            "POST",
            "/rest/insights/latest/projects/P/repos/r/commits/c/reports/k/annotations",
            "",
            body.as_bytes(),
        )
    };
    post(&annotation("short")).unwrap();
    let long = post(&annotation(&"x".repeat(451))).unwrap_err();
    assert!(long.contains("externalId"), "{long}");
    assert_eq!(ledger.violations().len(), 3);
    let port = port();
    ledger
        .check(
            port,
            "PATCH",
            "/v1/actions/runs/r_1",
            "version=v2",
            br#"{"status": "SUCCESS"}"#,
        )
        .unwrap();
    assert!(ledger
        .check(
            port,
            "PATCH",
            "/v1/actions/runs/r_1",
            "",
            br#"{"status": "DONE"}"#
        )
        .is_err());
}
