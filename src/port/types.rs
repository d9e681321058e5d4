//! Wire types of Port's API that the rest of the crate uses.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Terminal run statuses; Port accepts only these two in `PATCH /actions/runs/{id}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RunStatus {
    Success,
    Failure,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "SUCCESS",
            Self::Failure => "FAILURE",
        }
    }
}

/// Body of `PATCH /v1/actions/runs/{id}`; absent fields are left as they are.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RunPatch {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<RunStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_label: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct TokenRequest<'a> {
    pub client_id: &'a str,
    pub client_secret: &'a str,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct TokenResponse {
    pub access_token: String,
    #[serde(default)]
    pub expires_in: Option<u64>,
}

#[derive(Deserialize)]
pub(crate) struct BulkResponse {
    #[serde(default)]
    pub entities: Vec<BulkOk>,
    #[serde(default)]
    pub errors: Vec<BulkErr>,
}

#[derive(Deserialize)]
pub(crate) struct BulkOk {
    pub index: usize,
    #[serde(default)]
    pub identifier: String,
    #[serde(default)]
    pub created: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct BulkErr {
    pub index: usize,
    #[serde(default)]
    pub identifier: Option<String>,
    #[serde(default)]
    pub status_code: Option<u16>,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub error: Option<String>,
}

/// Port's error body: `{"ok": false, "error": "...", "message": "..."}`.
#[derive(Deserialize)]
pub(crate) struct ErrorBody {
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
}

/// Entities returned by a search.
#[derive(Deserialize)]
pub(crate) struct SearchResponse {
    #[serde(default)]
    pub entities: Vec<Value>,
}

/// A run as Port's runs API lists it (`GET /actions/runs?version=v2`) or `claim-pending`
/// hands it out, the fields this runner reads; unknown fields are ignored.
#[derive(Debug, Clone, Deserialize)]
pub struct ActiveRun {
    pub id: String,
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub payload: Option<RunPayload>,
}

/// How Port invoked (or would have invoked) the run's backend.
#[derive(Debug, Clone, Deserialize)]
pub struct RunPayload {
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub agent: Option<bool>,
    #[serde(default)]
    pub headers: Option<serde_json::Map<String, Value>>,
    #[serde(default)]
    pub body: Option<Value>,
}
