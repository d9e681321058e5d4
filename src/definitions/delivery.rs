//! How an action sent to this runner reaches it, as `apply` writes it: the public URL in
//! `invocationMethod.url`, and `agent: true` when the runner pulls its runs.

use serde_json::{Map, Value};

use super::PUBLIC_URL_PLACEHOLDER;

/// The runner's public base URL, without a trailing slash or `/webhook`.
fn public_base(public_url: &str) -> &str {
    let base = public_url.trim_end_matches('/');
    base.strip_suffix("/webhook").unwrap_or(base)
}

/// The webhook URL the shipped actions get from `public_url` (`${PORT_RUNNER_PUBLIC_URL}/webhook`).
pub fn webhook_url(public_url: &str) -> String {
    format!("{}/webhook", public_base(public_url))
}

/// How the actions sent to this runner reach it, as `apply` writes them.
#[derive(Debug, Clone, Copy, Default)]
pub struct Delivery<'a> {
    /// The runner's public URL (`--webhook-url`).
    pub public_url: Option<&'a str>,
    /// The runner claims its runs from Port (transport `pull` or `both`): `agent: true`.
    pub pulled: bool,
}

/// What a pulled action's URL says when no public URL is given: Port requires one, and
/// nothing calls it (the runner claims the runs).
pub const PULLED_URL: &str = "https://pulled-by-port-runner.invalid";

/// Fills in how an action sent to this runner (its URL holds the placeholder) reaches it:
/// the public URL, and `agent: true` when the runner pulls. Other actions are left as they are.
pub fn for_runner(
    action: &Map<String, Value>,
    delivery: Delivery<'_>,
) -> Result<Map<String, Value>, String> {
    let mut action = action.clone();
    let url = action
        .get("invocationMethod")
        .and_then(|m| m.get("url"))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    if !url.contains(PUBLIC_URL_PLACEHOLDER) {
        return Ok(action);
    }
    let base = match (delivery.public_url, delivery.pulled) {
        (Some(base), _) => public_base(base),
        (None, true) => PULLED_URL,
        (None, false) => {
            return Err(format!(
                "invocationMethod.url is {url:?}: give --webhook-url (or PORT_RUNNER_PUBLIC_URL), e.g. https://ab12.ngrok.app/webhook, or --transport pull for a runner Port cannot reach"
            ))
        }
    };
    let method = &mut action["invocationMethod"];
    method["url"] = Value::String(url.replace(PUBLIC_URL_PLACEHOLDER, base));
    if delivery.pulled {
        method["agent"] = Value::Bool(true);
    }
    Ok(action)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn the_public_url_is_put_in_with_or_without_the_webhook_suffix() {
        let action = obj(
            json!({"invocationMethod": {"url": "${PORT_RUNNER_PUBLIC_URL}/webhook", "agent": false}}),
        );
        let at = |url| Delivery {
            public_url: Some(url),
            pulled: false,
        };
        for given in [
            "https://ab.ngrok.app/webhook",
            "https://ab.ngrok.app/",
            "https://ab.ngrok.app",
        ] {
            let out = for_runner(&action, at(given)).unwrap();
            assert_eq!(
                out["invocationMethod"]["url"], "https://ab.ngrok.app/webhook",
                "{given}"
            );
            assert_eq!(out["invocationMethod"]["agent"], false);
        }
        let err = for_runner(&action, Delivery::default()).unwrap_err();
        assert!(
            err.contains("--webhook-url") && err.contains("--transport pull"),
            "{err}"
        );
        let fixed = obj(json!({"invocationMethod": {"url": "https://elsewhere/hook"}}));
        assert_eq!(for_runner(&fixed, Delivery::default()).unwrap(), fixed);
        // Pulled: agent runs, the URL needed by Port's schema but never called.
        let pulled = Delivery {
            public_url: None,
            pulled: true,
        };
        let out = for_runner(&action, pulled).unwrap();
        assert_eq!(out["invocationMethod"]["agent"], true);
        assert_eq!(
            out["invocationMethod"]["url"],
            format!("{PULLED_URL}/webhook")
        );
        assert_eq!(for_runner(&fixed, pulled).unwrap(), fixed);
    }
}
