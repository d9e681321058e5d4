//! Port's string formats, the one list of them: which names Port knows, and how the ones
//! this runner can judge are checked (the others are Port's to judge).
//!
//! From Port's blueprint reference: `url`, `email`, `user`, `date-time`, `ipv4`, `ipv6`,
//! `yaml`, `markdown`; from its current docs also `team` and `timer`; and the action-input
//! formats `entity` and `proto` that Port accepts in `userInputs`.

/// Every format Port knows, in the order the docs list them.
pub const PORT_FORMATS: [&str; 12] = [
    "url",
    "email",
    "user",
    "team",
    "date-time",
    "ipv4",
    "ipv6",
    "yaml",
    "markdown",
    "timer",
    "proto",
    "entity",
];

/// Checks `s` against `format`; the error says why it is not one. Formats this runner does
/// not judge (`user`, `team`, `markdown`, `timer`, `proto`, `entity`, unknown names) pass.
pub fn check(format: &str, s: &str) -> Result<(), String> {
    match format {
        "url" => match reqwest::Url::parse(s) {
            Ok(url) if url.has_host() => Ok(()),
            Ok(_) => Err(format!("{s:?} has no host")),
            Err(e) => Err(format!("{s:?}: {e}")),
        },
        "email" => {
            let ok = match s.split_once('@') {
                Some((local, domain)) => {
                    !local.is_empty()
                        && domain.contains('.')
                        && !domain.starts_with('.')
                        && !domain.ends_with('.')
                        && !s.chars().any(char::is_whitespace)
                        && !domain.contains('@')
                }
                None => false,
            };
            if ok {
                Ok(())
            } else {
                Err(format!("{s:?}"))
            }
        }
        "date-time" => {
            time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
                .map(|_| ())
                .map_err(|_| format!("{s:?} (expected RFC 3339, e.g. 2026-11-22T10:00:00Z)"))
        }
        "ipv4" => s
            .parse::<std::net::Ipv4Addr>()
            .map(|_| ())
            .map_err(|_| format!("{s:?}")),
        "ipv6" => s
            .parse::<std::net::Ipv6Addr>()
            .map(|_| ())
            .map_err(|_| format!("{s:?}")),
        "yaml" => serde_yaml_ng::from_str::<serde_yaml_ng::Value>(s)
            .map(|_| ())
            .map_err(|e| format!("not YAML: {e}")),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_formats_this_runner_judges_accept_good_values_and_refuse_bad_ones() {
        let cases = [
            ("url", "https://example.com/x", "example.com"),
            ("email", "bob@example.com", "bob"),
            ("date-time", "2026-11-22T10:00:00Z", "yesterday"),
            ("ipv4", "10.0.0.1", "300.1.1.1"),
            ("ipv6", "::1", "::g"),
            ("yaml", "a: [1, 2]", "a: [unclosed"),
        ];
        for (format, good, bad) in cases {
            assert!(check(format, good).is_ok(), "{format} {good}");
            assert!(check(format, bad).is_err(), "{format} {bad}");
        }
        for format in ["user", "team", "markdown", "timer", "proto", "entity"] {
            assert!(check(format, "anything").is_ok(), "{format}");
        }
    }
}
