//! What the HTTP clients (Port, Bitbucket) share: when and how long to wait before a retry.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::header::HeaderMap;

/// How persistent a client is with a failing server.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub max_retries: u32,
    /// First backoff; doubles each retry.
    pub base: Duration,
    /// Largest computed backoff.
    pub cap: Duration,
    /// Largest wait a `Retry-After` may ask for.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_retries: 5,
            base: Duration::from_millis(250),
            cap: Duration::from_secs(20),
            max_retry_after: Duration::from_secs(120),
        }
    }
}

impl RetryPolicy {
    /// Exponential backoff with "equal jitter": half fixed, half random, so the retries of
    /// many concurrent callers spread out.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let exp = self
            .base
            .saturating_mul(1u32 << attempt.min(16))
            .min(self.cap);
        exp.mul_f64(0.5 + fastrand::f64() * 0.5)
    }

    /// The wait before retry number `attempt + 1`, or `None` when the answer is final.
    /// `status` is `None` for a network error (no answer at all).
    pub fn delay(
        &self,
        attempt: u32,
        status: Option<u16>,
        retry_after: Option<Duration>,
    ) -> Option<Duration> {
        if attempt >= self.max_retries {
            return None;
        }
        match status {
            None => Some(self.backoff(attempt)),
            Some(408 | 429 | 500..=599) => Some(
                retry_after
                    .map(|d| d.min(self.max_retry_after))
                    .unwrap_or_else(|| self.backoff(attempt)),
            ),
            Some(_) => None,
        }
    }
}

/// An answer read whole: what the retry rule and the error mapping look at.
pub struct Raw {
    pub status: u16,
    pub retry_after: Option<Duration>,
    pub body: Vec<u8>,
}

/// Sends `request` and reads the whole answer.
pub async fn send(request: reqwest::RequestBuilder) -> Result<Raw, reqwest::Error> {
    let response = request.send().await?;
    let status = response.status().as_u16();
    let retry_after = retry_after(response.headers());
    let body = response.bytes().await?.to_vec();
    Ok(Raw {
        status,
        retry_after,
        body,
    })
}

/// `Retry-After` (seconds or HTTP date), else `x-ratelimit-reset` (a delta below 1e9,
/// else epoch seconds: Port's docs and its Terraform provider disagree).
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    if let Some(value) = header("retry-after") {
        if let Ok(secs) = value.parse::<u64>() {
            return Some(Duration::from_secs(secs));
        }
        if let Ok(at) = httpdate::parse_http_date(value) {
            return Some(at.duration_since(SystemTime::now()).unwrap_or_default());
        }
    }
    let reset: u64 = header("x-ratelimit-reset")?.parse().ok()?;
    if reset < 1_000_000_000 {
        Some(Duration::from_secs(reset))
    } else {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        Some(Duration::from_secs(reset.saturating_sub(now)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn retry_after_reads_seconds_dates_and_ratelimit_reset() {
        let mut h = HeaderMap::new();
        h.insert("retry-after", HeaderValue::from_static("7"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));

        let mut h = HeaderMap::new();
        let later = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(30));
        h.insert("retry-after", HeaderValue::from_str(&later).unwrap());
        let d = retry_after(&h).unwrap();
        assert!(
            d > Duration::from_secs(25) && d <= Duration::from_secs(30),
            "{d:?}"
        );

        let mut h = HeaderMap::new();
        h.insert("x-ratelimit-reset", HeaderValue::from_static("2"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(2)));
        assert_eq!(retry_after(&HeaderMap::new()), None);
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let policy = RetryPolicy {
            base: Duration::from_millis(100),
            cap: Duration::from_millis(1000),
            ..RetryPolicy::default()
        };
        for attempt in 0..10 {
            let d = policy.backoff(attempt);
            let full = Duration::from_millis(100 * (1 << attempt)).min(Duration::from_millis(1000));
            assert!(d >= full / 2 && d <= full, "attempt {attempt}: {d:?}");
        }
    }

    #[test]
    fn only_transient_answers_are_retried_and_retry_after_is_capped() {
        let p = RetryPolicy {
            max_retries: 3,
            max_retry_after: Duration::from_secs(30),
            ..RetryPolicy::default()
        };
        assert_eq!(
            p.delay(0, Some(429), Some(Duration::from_secs(600))),
            Some(Duration::from_secs(30))
        );
        assert!(p.delay(0, None, None).is_some());
        assert_eq!(p.delay(0, Some(404), None), None);
        assert_eq!(p.delay(3, Some(503), None), None);
    }
}
