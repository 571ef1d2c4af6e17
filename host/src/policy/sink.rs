//! `[actions] sink`: where the outbox delivers recorded actions (a file,
//! stdout, or an HTTP endpoint with `[actions.http]`). Parsed with the rest
//! of the config (see [`super::config`]); delivered by [`crate::outbox`].

use super::outbound::Endpoint;
use super::secrets::SecretDef;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::Spanned;

/// Where the outbox dispatcher delivers actions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkConfig {
    /// A JSON-lines file; each idempotency key is written at most once.
    File(PathBuf),
    /// Standard output, one JSON line per delivery.
    Stdout,
    /// An HTTP endpoint, POSTed each action (see [`crate::coord::webhook`]).
    Http(HttpSinkConfig),
}

/// `[actions] sink = "http(s)://…"`, with `[actions.http]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpSinkConfig {
    /// Where each action is POSTed, as checked.
    pub endpoint: Endpoint,
    /// A secret whose header goes with each POST.
    pub secret: Option<String>,
    /// Failures before the dead letter.
    pub max_attempts: u32,
    /// The first wait after a failure, doubling after each.
    pub backoff_ms: u64,
    /// One POST, from the connection to the answer.
    pub timeout: Duration,
}

/// `[actions.http]`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHttpSink {
    secret: Option<String>,
    max_attempts: Option<u64>,
    backoff_ms: Option<u64>,
    timeout_ms: Option<u64>,
}

/// A bad value: the span it came from (if any), and what is wrong.
type Bad = (Option<std::ops::Range<usize>>, String);

/// Reads `[actions] sink` (with `[actions.http]`); `base` resolves a file.
pub(super) fn parse(
    sink: &str,
    http: Option<Spanned<RawHttpSink>>,
    base: &Path,
    secrets: &BTreeMap<String, SecretDef>,
) -> Result<SinkConfig, Bad> {
    let span = http.as_ref().map(Spanned::span);
    match sink {
        "stdout" if http.is_none() => Ok(SinkConfig::Stdout),
        url if url.starts_with("http://") || url.starts_with("https://") => {
            let raw = http.map(Spanned::into_inner).unwrap_or_default();
            raw.parse(url, secrets).map(SinkConfig::Http).map_err(|why| (span, why))
        }
        _ if http.is_some() => {
            Err((span, "[actions.http] is for an HTTP sink: set actions.sink to the URL to POST to".into()))
        }
        path => Ok(SinkConfig::File(base.join(path))),
    }
}

impl RawHttpSink {
    /// The HTTP sink for `url`, checked against the secrets declared.
    fn parse(self, url: &str, secrets: &BTreeMap<String, SecretDef>) -> Result<HttpSinkConfig, String> {
        let endpoint = Endpoint::parse(url).map_err(|why| format!("actions.sink {why}"))?;
        if let Some(s) = &self.secret {
            SecretDef::check_use(secrets, s, "actions.http.secret", &endpoint.target)?;
        }
        let in_range = |v: Option<u64>, key: &str, range: std::ops::RangeInclusive<u64>, default: u64| match v {
            Some(n) if !range.contains(&n) => {
                Err(format!("actions.http.{key} is {} to {}", range.start(), range.end()))
            }
            Some(n) => Ok(n),
            None => Ok(default),
        };
        Ok(HttpSinkConfig {
            endpoint,
            secret: self.secret,
            max_attempts: u32::try_from(in_range(self.max_attempts, "max_attempts", 1..=100, 5)?).unwrap_or(5),
            backoff_ms: in_range(self.backoff_ms, "backoff_ms", 1..=300_000, 1_000)?,
            timeout: Duration::from_millis(in_range(self.timeout_ms, "timeout_ms", 1..=600_000, 10_000)?),
        })
    }
}
