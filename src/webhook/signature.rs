//! Port's webhook signature: `x-port-signature: v1,<base64 HMAC-SHA256(secret, "{ts}.{body}")>`.
//!
//! Checked on the raw bytes before anything parses them. Port signs the compact JSON it
//! sends, so the raw body matches for direct webhooks; the Port agent signs a compact,
//! ASCII-escaped re-serialization but sends `requests`' spaced form, so that is the
//! fallback (key order is kept by serde_json's `preserve_order`).

use std::io;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Header that carries the signature.
pub const SIGNATURE_HEADER: &str = "x-port-signature";
/// Header that carries the timestamp that is part of the signed content.
pub const TIMESTAMP_HEADER: &str = "x-port-timestamp";

/// Why a request's signature was refused. Each maps to 401; the text is safe to return.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("missing {0} header")]
    Missing(&'static str),
    #[error("{header} header is malformed: {reason}")]
    Malformed {
        header: &'static str,
        reason: &'static str,
    },
    #[error("x-port-timestamp is {skew_secs}s away from this server's clock (allowed: {tolerance_secs}s)")]
    Stale { skew_secs: u64, tolerance_secs: u64 },
    #[error("the signature does not match: the body was signed with another key than this runner's (Port's client secret, or the local secret in local mode)")]
    Mismatch,
}

/// Verifies webhook signatures with one shared secret and a clock tolerance.
#[derive(Clone)]
pub struct SignatureVerifier {
    key: Vec<u8>,
    tolerance: Duration,
}

impl SignatureVerifier {
    pub fn new(secret: &str, tolerance: Duration) -> Self {
        Self {
            key: secret.as_bytes().to_vec(),
            tolerance,
        }
    }

    /// Checks headers and body against the secret at time `now`.
    pub fn verify(
        &self,
        timestamp: Option<&str>,
        signature: Option<&str>,
        body: &[u8],
        now: SystemTime,
    ) -> Result<(), SignatureError> {
        let timestamp = timestamp
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(SignatureError::Missing(TIMESTAMP_HEADER))?;
        let signature = signature
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .ok_or(SignatureError::Missing(SIGNATURE_HEADER))?;
        self.check_freshness(timestamp, now)?;

        // Rotation may one day put several `v1,` entries in one header: any match is enough.
        let candidates: Vec<Vec<u8>> = signature
            .split_whitespace()
            .filter_map(|part| part.strip_prefix("v1,"))
            .filter_map(|b64| BASE64.decode(b64).ok())
            .collect();
        if candidates.is_empty() {
            return Err(SignatureError::Malformed {
                header: SIGNATURE_HEADER,
                reason: "expected 'v1,<base64 HMAC-SHA256>'",
            });
        }

        if self.matches(timestamp, body, &candidates) {
            return Ok(());
        }
        if let Some(compact) = agent_canonical_form(body) {
            if compact != body && self.matches(timestamp, &compact, &candidates) {
                return Ok(());
            }
        }
        Err(SignatureError::Mismatch)
    }

    fn check_freshness(&self, timestamp: &str, now: SystemTime) -> Result<(), SignatureError> {
        let value: u64 = timestamp.parse().map_err(|_| SignatureError::Malformed {
            header: TIMESTAMP_HEADER,
            reason: "expected seconds since the epoch",
        })?;
        // Port's docs say seconds; one of Port's own examples used milliseconds.
        let secs = if value > 1_000_000_000_000 {
            value / 1000
        } else {
            value
        };
        let now_secs = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        let skew = now_secs.abs_diff(secs);
        if skew > self.tolerance.as_secs() {
            return Err(SignatureError::Stale {
                skew_secs: skew,
                tolerance_secs: self.tolerance.as_secs(),
            });
        }
        Ok(())
    }

    fn matches(&self, timestamp: &str, body: &[u8], candidates: &[Vec<u8>]) -> bool {
        // `verify_slice` compares in constant time.
        candidates
            .iter()
            .any(|expected| self.mac(timestamp, body).verify_slice(expected).is_ok())
    }

    fn mac(&self, timestamp: &str, body: &[u8]) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.key).expect("HMAC takes keys of any length");
        mac.update(timestamp.as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }
}

/// The value of `x-port-signature` for `body` sent at `timestamp` (used by `invoke` and tests).
pub fn sign(secret: &str, timestamp: &str, body: &[u8]) -> String {
    let verifier = SignatureVerifier::new(secret, Duration::ZERO);
    let digest = verifier.mac(timestamp, body).finalize().into_bytes();
    format!("v1,{}", BASE64.encode(digest))
}

/// Seconds since the epoch, as `x-port-timestamp` carries them.
pub fn timestamp_now() -> String {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
        .to_string()
}

/// What Python's `json.dumps(body, separators=(",", ":"))` produces: compact, with
/// every non-ASCII character escaped as `\uXXXX` (lower-case hex, surrogate pairs).
fn agent_canonical_form(body: &[u8]) -> Option<Vec<u8>> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let mut out = Vec::with_capacity(body.len());
    let mut ser = serde_json::Serializer::with_formatter(&mut out, AsciiCompact);
    serde::Serialize::serialize(&value, &mut ser).ok()?;
    Some(out)
}

struct AsciiCompact;

impl serde_json::ser::Formatter for AsciiCompact {
    fn write_string_fragment<W: ?Sized + io::Write>(
        &mut self,
        writer: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        let mut units = [0u16; 2];
        for ch in fragment.chars() {
            if ch.is_ascii() {
                writer.write_all(&[ch as u8])?;
            } else {
                for unit in ch.encode_utf16(&mut units) {
                    write!(writer, "\\u{unit:04x}")?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "s3cr3t";

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn verifier() -> SignatureVerifier {
        SignatureVerifier::new(SECRET, Duration::from_secs(300))
    }

    #[test]
    fn a_signature_made_with_the_secret_verifies() {
        let body = br#"{"a":1}"#;
        let sig = sign(SECRET, "1700000000", body);
        assert!(sig.starts_with("v1,"));
        verifier()
            .verify(Some("1700000000"), Some(&sig), body, at(1_700_000_100))
            .unwrap();
    }

    #[test]
    fn a_known_vector_matches_an_independent_hmac() {
        // printf '1.{}' | openssl dgst -sha256 -hmac key -binary | base64
        assert_eq!(
            sign("key", "1", b"{}"),
            "v1,G6a4FxGG78YT6LzAy9qydI8kmE18WoT6omN6+g5A0iQ="
        );
    }

    #[test]
    fn a_changed_body_or_wrong_secret_is_a_mismatch() {
        let sig = sign(SECRET, "1700000000", br#"{"a":1}"#);
        let err = verifier()
            .verify(
                Some("1700000000"),
                Some(&sig),
                br#"{"a":2}"#,
                at(1_700_000_000),
            )
            .unwrap_err();
        assert_eq!(err, SignatureError::Mismatch);
        let other = sign("other", "1700000000", br#"{"a":1}"#);
        assert_eq!(
            verifier()
                .verify(
                    Some("1700000000"),
                    Some(&other),
                    br#"{"a":1}"#,
                    at(1_700_000_000)
                )
                .unwrap_err(),
            SignatureError::Mismatch
        );
    }

    #[test]
    fn stale_timestamps_are_refused_in_seconds_and_milliseconds() {
        let body = b"{}";
        let sig = sign(SECRET, "1700000000", body);
        let err = verifier()
            .verify(Some("1700000000"), Some(&sig), body, at(1_700_000_301))
            .unwrap_err();
        assert!(matches!(err, SignatureError::Stale { skew_secs: 301, .. }));

        let ms = "1700000000123";
        let sig = sign(SECRET, ms, body);
        verifier()
            .verify(Some(ms), Some(&sig), body, at(1_700_000_010))
            .unwrap();
        assert!(verifier()
            .verify(Some(ms), Some(&sig), body, at(1_700_001_000))
            .is_err());
    }

    #[test]
    fn missing_and_malformed_headers_are_named() {
        let v = verifier();
        assert_eq!(
            v.verify(None, Some("v1,AA=="), b"{}", at(0)).unwrap_err(),
            SignatureError::Missing(TIMESTAMP_HEADER)
        );
        assert_eq!(
            v.verify(Some("0"), None, b"{}", at(0)).unwrap_err(),
            SignatureError::Missing(SIGNATURE_HEADER)
        );
        assert!(matches!(
            v.verify(Some("0"), Some("sha256=abc"), b"{}", at(0))
                .unwrap_err(),
            SignatureError::Malformed { .. }
        ));
        assert!(matches!(
            v.verify(Some("soon"), Some("v1,AA=="), b"{}", at(0))
                .unwrap_err(),
            SignatureError::Malformed { .. }
        ));
    }

    #[test]
    fn any_matching_entry_of_several_is_accepted() {
        let body = b"{}";
        let good = sign(SECRET, "100", body);
        let header = format!("v1,AAAA {good}");
        verifier()
            .verify(Some("100"), Some(&header), body, at(100))
            .unwrap();
    }

    #[test]
    fn an_agent_signed_body_sent_with_spaces_verifies_through_the_fallback() {
        // The agent signs json.dumps(body, separators=(",", ":")) and sends requests' json= form.
        let signed = br#"{"b":1,"a":"caf\u00e9 \ud83d\ude80","n":[1,2.5,null]}"#;
        let sent = "{\"b\": 1, \"a\": \"caf\u{e9} \u{1F680}\", \"n\": [1, 2.5, null]}";
        let sig = sign(SECRET, "100", signed);
        verifier()
            .verify(Some("100"), Some(&sig), sent.as_bytes(), at(100))
            .unwrap();
    }
}
