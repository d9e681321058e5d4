//! One action invocation, whatever shape it arrived in.
//!
//! The webhook builds it from the legacy envelope or our v2 body; `sync` and tests build it
//! directly. Everything in it has been validated, so handlers trust it as it is.

pub mod body;
pub mod event;
pub mod job;
pub mod payload;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::domain::{ActionId, BlueprintId, DomainError, EntityId, Identifier, Operation, RunId};
pub use job::Job;

/// The entity a DAY-2 or DELETE run acts on, as Port sent it.
#[derive(Debug, Clone, Serialize)]
pub struct EntityRef {
    pub identifier: EntityId,
    pub blueprint: Option<BlueprintId>,
    /// The whole entity object (title, properties, relations, …) as received.
    pub raw: Map<String, Value>,
}

/// Who pressed the button.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TriggeredBy {
    pub user_id: Option<String>,
    pub email: Option<String>,
    pub origin: Option<String>,
}

/// A validated action invocation.
#[derive(Debug, Clone, Serialize)]
pub struct Invocation {
    pub run_id: RunId,
    pub action: ActionId,
    pub operation: Operation,
    pub blueprint: Option<BlueprintId>,
    pub entity: Option<EntityRef>,
    /// User inputs keyed by input identifier.
    pub inputs: Map<String, Value>,
    /// Identifiers of inputs Port marked as secret (`censoredProperties` / `encryptedProperties`).
    pub secret_inputs: Vec<String>,
    pub triggered_by: TriggeredBy,
    /// Started by the runner itself (a Bitbucket push, a pull request, the scheduled sync),
    /// not by Port: Port knows no such run, so its status and log stay here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<Job>,
    /// Port's automation event type, when the body was the event itself (no template):
    /// the action is then the blueprint's DELETE action, chosen by the runner.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
}

impl Invocation {
    /// A CREATE of `echo` with no inputs, for unit tests.
    #[cfg(test)]
    pub(crate) fn for_tests(run_id: &str) -> Self {
        Self {
            run_id: RunId::parse("id", run_id).unwrap(),
            action: Identifier::schema("a", "echo").unwrap(),
            operation: Operation::Create,
            blueprint: None,
            entity: None,
            inputs: Map::new(),
            secret_inputs: vec![],
            triggered_by: TriggeredBy::default(),
            job: None,
            event: None,
        }
    }

    /// A run the runner starts itself: its job, run as a CREATE of the job's action.
    pub fn internal(run_id: RunId, job: Job) -> Self {
        Self {
            run_id,
            action: Identifier::schema("action", job.action()).expect("a job's action is valid"),
            operation: Operation::Create,
            blueprint: None,
            entity: None,
            inputs: Map::new(),
            secret_inputs: vec![],
            triggered_by: TriggeredBy {
                origin: Some("port-runner".into()),
                ..TriggeredBy::default()
            },
            job: Some(job),
            event: None,
        }
    }

    /// Rebuilds an invocation from its stored (serialized) form, re-validating every field.
    /// Takes the value so that the inputs and the entity move out of it instead of being
    /// copied (a queued run is read back this way when its turn comes).
    pub fn from_stored(mut value: Value) -> Result<Self, DomainError> {
        let text = |key: &str| value.get(key).and_then(Value::as_str);
        let run_id = RunId::parse("run_id", text("run_id").unwrap_or_default())?;
        let action = Identifier::schema("action", text("action").unwrap_or_default())?;
        let operation = Operation::parse("operation", text("operation").unwrap_or_default())?;
        let blueprint = text("blueprint")
            .map(|b| Identifier::schema("blueprint", b))
            .transpose()?;
        let entity = match value.get("entity") {
            Some(Value::Object(e)) => Some(EntityRef {
                identifier: Identifier::entity(
                    "entity.identifier",
                    e.get("identifier")
                        .and_then(Value::as_str)
                        .unwrap_or_default(),
                )?,
                blueprint: e
                    .get("blueprint")
                    .and_then(Value::as_str)
                    .map(|b| Identifier::schema("entity.blueprint", b))
                    .transpose()?,
                raw: Map::new(),
            }),
            _ => None,
        };
        let job = match value.get("job") {
            Some(job) => {
                Some(Job::deserialize(job).map_err(|e| DomainError::new("job", e.to_string()))?)
            }
            // Journaled before jobs were typed: the job is in the action's inputs.
            None if value.get("internal").and_then(Value::as_bool) == Some(true) => {
                let inputs = value.get("inputs").and_then(Value::as_object);
                Some(Job::from_inputs(
                    action.as_str(),
                    inputs.unwrap_or(&Map::new()),
                )?)
            }
            None => None,
        };
        let by = value.get("triggered_by");
        let by_text = |key: &str| {
            by.and_then(|b| b.get(key))
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        let mut invocation = Self {
            run_id,
            action,
            operation,
            blueprint,
            entity,
            inputs: Map::new(),
            secret_inputs: value
                .get("secret_inputs")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default(),
            triggered_by: TriggeredBy {
                user_id: by_text("user_id"),
                email: by_text("email"),
                origin: by_text("origin"),
            },
            job,
            event: text("event").map(str::to_owned),
        };
        let mut take_object = |pointer: &str| match value.pointer_mut(pointer).map(Value::take) {
            Some(Value::Object(object)) => object,
            _ => Map::new(),
        };
        invocation.inputs = take_object("/inputs");
        if let Some(entity) = invocation.entity.as_mut() {
            entity.raw = take_object("/entity/raw");
        }
        Ok(invocation)
    }

    /// Whether the runner started this run itself (Port knows nothing of it).
    pub fn is_internal(&self) -> bool {
        self.job.is_some()
    }

    /// Whether the run asks only to see what it would change (the `preview_only` input).
    pub fn preview_only(&self) -> bool {
        self.inputs.get("preview_only").and_then(Value::as_bool) == Some(true)
    }

    /// Values that must never appear in a log line: the string forms of secret inputs.
    pub fn secret_values(&self) -> Vec<String> {
        let mut out = Vec::new();
        for key in &self.secret_inputs {
            if let Some(value) = self.inputs.get(key) {
                collect_strings(value, &mut out);
            }
        }
        out
    }
}

/// The key of Port's secret inputs: the first 32 bytes of the client secret (the webhook
/// key in local mode). Debug output never shows it.
#[derive(Clone)]
pub struct InputKey([u8; 32]);

impl std::fmt::Debug for InputKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InputKey(<secret>)")
    }
}

impl InputKey {
    /// `None` when the secret is shorter than a key.
    pub fn from_secret(secret: &str) -> Option<Self> {
        secret.as_bytes().get(..32)?.try_into().ok().map(Self)
    }
}

/// Bytes of the nonce and of the tag around the ciphertext.
const NONCE_LEN: usize = 16;
const TAG_LEN: usize = 16;

impl Invocation {
    /// Decrypts the secret inputs Port encrypted (`"encryption": "aes256-gcm"`): base64 of a
    /// 16-byte nonce, the ciphertext and a 16-byte tag. A value that is not such a blob (a
    /// secret typed into a local invocation) stays as it is; one that is, but does not
    /// authenticate with this key, is refused. Decrypted JSON text becomes its value.
    /// Done when the run starts, so the journal only ever holds the encrypted form.
    pub fn decrypt_secret_inputs(&mut self, key: Option<&InputKey>) -> Result<(), DomainError> {
        use aes_gcm::aead::{consts::U16, Aead, KeyInit};
        use aes_gcm::aes::Aes256;
        use base64::Engine as _;
        for name in &self.secret_inputs {
            let Some(Value::String(text)) = self.inputs.get(name) else {
                continue;
            };
            let Ok(blob) = base64::engine::general_purpose::STANDARD.decode(text.trim()) else {
                continue;
            };
            if blob.len() <= NONCE_LEN + TAG_LEN {
                continue;
            }
            let field = format!("inputs.{name}");
            let Some(key) = key else {
                return Err(DomainError::new(
                    field,
                    "is encrypted, but this runner has no key to decrypt it (the client secret is shorter than 32 bytes)",
                ));
            };
            let cipher = aes_gcm::AesGcm::<Aes256, U16>::new((&key.0).into());
            let (nonce, sealed) = blob.split_at(NONCE_LEN);
            let plain = cipher
                .decrypt(nonce.into(), sealed)
                .map_err(|_| DomainError::new(
                    field.clone(),
                    "could not be decrypted with this runner's client secret (aes256-gcm): was it encrypted by the same Port organization?",
                ))?;
            let plain = String::from_utf8(plain).map_err(|_| {
                DomainError::new(field.clone(), "decrypted to bytes that are not text")
            })?;
            // Port encrypts the input's JSON value as text: a string stays that text.
            let value = match serde_json::from_str::<Value>(&plain) {
                Ok(Value::String(s)) => Value::String(s),
                Ok(
                    v @ (Value::Object(_) | Value::Array(_) | Value::Number(_) | Value::Bool(_)),
                ) => v,
                _ => Value::String(plain),
            };
            self.inputs.insert(name.clone(), value);
        }
        Ok(())
    }
}

/// The string forms of every scalar in `value` (what must be masked of a secret value).
pub(crate) fn collect_strings(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::String(s) => out.push(s.clone()),
        Value::Number(n) => out.push(n.to_string()),
        Value::Array(items) => items.iter().for_each(|v| collect_strings(v, out)),
        Value::Object(map) => map.values().for_each(|v| collect_strings(v, out)),
        Value::Bool(_) | Value::Null => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn encrypt(secret: &str, nonce: [u8; 16], plain: &str) -> String {
        use aes_gcm::aead::{consts::U16, Aead, KeyInit};
        use base64::Engine as _;
        let key = InputKey::from_secret(secret).unwrap();
        let cipher = aes_gcm::AesGcm::<aes_gcm::aes::Aes256, U16>::new((&key.0).into());
        let mut blob = nonce.to_vec();
        blob.extend(cipher.encrypt((&nonce).into(), plain.as_bytes()).unwrap());
        base64::engine::general_purpose::STANDARD.encode(blob)
    }

    fn with_secrets(inputs: Value, secret: &[&str]) -> Invocation {
        Invocation::from_stored(json!({
            "run_id": "r_1", "action": "a", "operation": "CREATE",
            "inputs": inputs, "secret_inputs": secret,
        }))
        .unwrap()
    }

    #[test]
    fn secret_inputs_are_decrypted_with_the_first_32_bytes_of_the_client_secret() {
        let secret = "0123456789abcdef0123456789abcdef-and-the-rest-of-the-secret";
        let mut inv = with_secrets(
            json!({
                "password": encrypt(secret, [7; 16], "hunter2-is-long"),
                "config": encrypt(secret, [9; 16], r#"{"a": 1}"#),
                "typed": "not-encrypted",
                "plain": encrypt(secret, [1; 16], "visible"),
            }),
            &["password", "config", "typed"],
        );
        inv.decrypt_secret_inputs(InputKey::from_secret(secret).as_ref())
            .unwrap();
        assert_eq!(inv.inputs["password"], "hunter2-is-long");
        assert_eq!(inv.inputs["config"], json!({"a": 1}));
        assert_eq!(inv.inputs["typed"], "not-encrypted");
        // Only inputs Port marked secret are touched.
        assert_ne!(inv.inputs["plain"], "visible");
        assert!(inv.secret_values().contains(&"hunter2-is-long".to_owned()));
    }

    #[test]
    fn a_secret_input_encrypted_with_another_key_is_refused_naming_it() {
        let mut inv = with_secrets(
            json!({"password": encrypt("another-organisations-secret-0123456789", [7; 16], "x")}),
            &["password"],
        );
        let key = InputKey::from_secret("0123456789abcdef0123456789abcdef");
        let err = inv.decrypt_secret_inputs(key.as_ref()).unwrap_err();
        assert_eq!(err.field, "inputs.password");
        assert!(err.reason.contains("could not be decrypted"), "{err}");
        assert!(InputKey::from_secret("short").is_none());
        assert_eq!(format!("{:?}", key.unwrap()), "InputKey(<secret>)");
    }

    #[test]
    fn an_invocation_survives_being_stored() {
        let body = json!({
            "action": "echo", "trigger": {"by": {"userId": "u1", "user": {"email": "a@b.c"}}, "origin": "UI"},
            "context": {"runId": "r_1", "blueprint": "service"},
            "payload": {"entity": {"identifier": "svc", "blueprint": "service", "title": "S"},
                        "action": {"trigger": "DAY-2"}, "properties": {"x": [1, 2]}, "censoredProperties": ["x"]}
        });
        let inv = crate::invocation::body::parse(body.to_string().as_bytes(), None).unwrap();
        let stored = serde_json::to_value(&inv).unwrap();
        let back = Invocation::from_stored(stored.clone()).unwrap();
        assert_eq!(serde_json::to_value(&back).unwrap(), stored);
        let mut tampered = stored.clone();
        tampered["run_id"] = json!("r/../x");
        assert!(Invocation::from_stored(tampered).is_err());
    }
}
