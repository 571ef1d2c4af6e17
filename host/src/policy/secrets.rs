//! Secrets the host holds and adds to an agent's outbound requests
//! (`[secrets.NAME]` in `concord.toml`, granted by `[agents.NAME] secrets`).
//!
//! A secret's value comes from an environment variable, read when the host
//! starts (and again at a config reload), never from the file. The host
//! adds it as a header to the requests of the agents granted it, to the
//! secret's own hosts only, after the request has left the guest: the agent
//! never holds the value. [`Secrets`] prints names only, the header values
//! are marked sensitive, and [`Secrets::scrub`] takes any copy of a value
//! out of a text before it is audited or logged.

use super::outbound::{Origin, Target};
use http::{HeaderName, HeaderValue};
use std::collections::BTreeMap;
use std::fmt;

/// `[secrets.NAME]`, as configured: where the value comes from, and where
/// and how it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretDef {
    /// The environment variable holding the value.
    pub env: String,
    /// The origins the header is added for; each must be granted to every
    /// agent granted the secret.
    pub hosts: Vec<Origin>,
    /// The header it goes in, such as `authorization`.
    pub header: HeaderName,
    /// The header's value, with `{}` where the secret goes (`Bearer {}`).
    pub format: String,
}

impl SecretDef {
    /// Whether this secret is sent to requests to `target`.
    pub fn goes_to(&self, target: &Target) -> bool {
        self.hosts.iter().any(|h| h.matches(target))
    }

    /// Checks that the secret `name` is declared and sent to `target`;
    /// `key` names where it was asked for (`secret`, `actions.http.secret`).
    pub fn check_use<'a>(
        secrets: &'a BTreeMap<String, SecretDef>,
        name: &str,
        key: &str,
        target: &Target,
    ) -> Result<&'a SecretDef, String> {
        let def = secrets.get(name).ok_or_else(|| format!("{key} `{name}` is not declared; add [secrets.{name}]"))?;
        if !def.goes_to(target) {
            return Err(format!("{key} `{name}` does not go to {target}: add it to secrets.{name}.hosts"));
        }
        Ok(def)
    }

    /// Checks a header name and a format (`{}` exactly once).
    pub fn header_and_format(header: &str, format: &str) -> Result<(HeaderName, String), String> {
        let name = HeaderName::from_bytes(header.as_bytes())
            .map_err(|_| format!("`{header}` is not a header name (letters, digits and `-`)"))?;
        if wasmtime_wasi_http::DEFAULT_FORBIDDEN_HEADERS.contains(&name)
            || name == http::header::CONTENT_LENGTH
            || name == http::header::CONTENT_TYPE
        {
            return Err(format!("`{header}` frames or routes the request; a secret goes in a header of its own"));
        }
        if format.matches("{}").count() != 1 {
            return Err(format!("the format `{format}` must hold `{{}}` once, where the value goes (`Bearer {{}}`)"));
        }
        Ok((name, format.to_string()))
    }
}

/// A secret that could not be read at start or reload. Names the secret and
/// the variable, never the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SecretError {
    #[error("secret `{secret}`: the environment variable {env} is not set (or empty); set it before starting the host")]
    Missing { secret: String, env: String },
    #[error(
        "secret `{secret}`: the value of {env} cannot go in an HTTP header (it holds a line break or another control character)"
    )]
    NotAHeader { secret: String, env: String },
}

struct Resolved {
    env: String,
    hosts: Vec<Origin>,
    header: HeaderName,
    /// The whole header value, marked sensitive.
    value: HeaderValue,
    /// The raw value, for [`Secrets::scrub`].
    raw: String,
}

/// The secrets in force, with their values. Shows names only.
#[derive(Default)]
pub struct Secrets {
    by_name: BTreeMap<String, Resolved>,
}

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.by_name.iter().map(|(name, r)| (name, format!("from {}", r.env)))).finish()
    }
}

impl Secrets {
    /// Reads the value of every secret in `used` (the ones some agent is
    /// granted) from the environment, through `var`.
    pub fn resolve<'a>(
        defs: &BTreeMap<String, SecretDef>,
        used: impl IntoIterator<Item = &'a String>,
        var: impl Fn(&str) -> Option<String>,
    ) -> Result<Secrets, SecretError> {
        let mut by_name = BTreeMap::new();
        for name in used {
            let Some(def) = defs.get(name) else { continue };
            if by_name.contains_key(name) {
                continue;
            }
            let missing = || SecretError::Missing { secret: name.clone(), env: def.env.clone() };
            let raw = var(&def.env).filter(|v| !v.is_empty()).ok_or_else(missing)?;
            let mut value = HeaderValue::from_str(&def.format.replacen("{}", &raw, 1))
                .map_err(|_| SecretError::NotAHeader { secret: name.clone(), env: def.env.clone() })?;
            value.set_sensitive(true);
            by_name.insert(
                name.clone(),
                Resolved { env: def.env.clone(), hosts: def.hosts.clone(), header: def.header.clone(), value, raw },
            );
        }
        Ok(Secrets { by_name })
    }

    /// The headers to add to a request to `target` by an agent granted
    /// `granted`, with the secrets' names.
    pub fn headers_for<'a, 't>(
        &'a self,
        granted: &'a [String],
        target: &'t Target,
    ) -> impl Iterator<Item = (&'a str, &'a HeaderName, &'a HeaderValue)> + use<'a, 't> {
        granted.iter().filter_map(move |name| {
            let r = self.by_name.get(name)?;
            r.hosts.iter().any(|o| o.matches(target)).then_some((name.as_str(), &r.header, &r.value))
        })
    }

    /// The header of the secret `name`, if it is in force.
    pub fn header(&self, name: &str) -> Option<(&HeaderName, &HeaderValue)> {
        self.by_name.get(name).map(|r| (&r.header, &r.value))
    }

    /// `body` with any copy of the values of the secrets `names` replaced
    /// by the secret's name (a response that echoes what the host added).
    pub fn scrub_bytes(&self, names: &[String], body: bytes::Bytes) -> bytes::Bytes {
        let mut out: Option<Vec<u8>> = None;
        for name in names {
            let Some(r) = self.by_name.get(name) else { continue };
            let current = out.as_deref().unwrap_or(&body);
            if let Some(replaced) = replace_all(current, r.raw.as_bytes(), format!("[secret {name}]").as_bytes()) {
                out = Some(replaced);
            }
        }
        out.map_or(body, bytes::Bytes::from)
    }

    /// `value` scrubbed like [`Secrets::scrub_bytes`], if it held a secret.
    pub fn scrub_header(&self, names: &[String], value: &HeaderValue) -> Option<HeaderValue> {
        let scrubbed = self.scrub_bytes(names, bytes::Bytes::copy_from_slice(value.as_bytes()));
        (scrubbed.as_ref() != value.as_bytes()).then(|| HeaderValue::from_bytes(&scrubbed).ok()).flatten()
    }

    /// Replaces any copy of a secret's value in `text` with its name, so
    /// that what a server echoes back never reaches the audit or a log.
    pub fn scrub(&self, text: &mut String) {
        for (name, r) in &self.by_name {
            if text.contains(&r.raw) {
                *text = text.replace(&r.raw, &format!("[secret {name}]"));
            }
        }
    }
}

/// `haystack` with every `needle` replaced, if there was one.
fn replace_all(haystack: &[u8], needle: &[u8], with: &[u8]) -> Option<Vec<u8>> {
    if needle.is_empty() || haystack.len() < needle.len() {
        return None;
    }
    let mut out = Vec::with_capacity(haystack.len());
    let (mut i, mut found) = (0, false);
    while i < haystack.len() {
        if haystack[i..].starts_with(needle) {
            out.extend_from_slice(with);
            i += needle.len();
            found = true;
        } else {
            out.push(haystack[i]);
            i += 1;
        }
    }
    found.then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def(env: &str) -> SecretDef {
        let (header, format) = SecretDef::header_and_format("Authorization", "Bearer {}").expect("valid");
        SecretDef {
            env: env.into(),
            hosts: vec![Origin::parse("https://api.openai.com").expect("valid")],
            header,
            format,
        }
    }

    fn target(scheme: &str, authority: &str) -> Target {
        Target::parse(scheme, authority).expect("parses")
    }

    #[test]
    fn a_secret_goes_to_its_hosts_for_the_agents_granted_it() {
        let defs = BTreeMap::from([("openai".to_string(), def("OPENAI_KEY"))]);
        let used = ["openai".to_string()];
        let secrets = Secrets::resolve(&defs, &used, |v| (v == "OPENAI_KEY").then(|| "sk-123".into())).expect("set");
        let granted = vec!["openai".to_string()];
        let headers: Vec<_> = secrets.headers_for(&granted, &target("https", "api.openai.com")).collect();
        assert_eq!(headers.len(), 1);
        assert_eq!(headers[0].1, "authorization");
        assert_eq!(headers[0].2, "Bearer sk-123");
        assert!(headers[0].2.is_sensitive());
        assert_eq!(secrets.headers_for(&granted, &target("https", "evil.example.com")).count(), 0);
        assert_eq!(secrets.headers_for(&granted, &target("http", "api.openai.com")).count(), 0);
        assert_eq!(secrets.headers_for(&[], &target("https", "api.openai.com")).count(), 0);
    }

    #[test]
    fn a_missing_variable_names_it_and_no_value_is_ever_printed() {
        let defs = BTreeMap::from([("openai".to_string(), def("OPENAI_KEY"))]);
        let used = ["openai".to_string()];
        let err = Secrets::resolve(&defs, &used, |_| None).expect_err("missing");
        assert_eq!(
            err.to_string(),
            "secret `openai`: the environment variable OPENAI_KEY is not set (or empty); set it before starting the host"
        );
        let err = Secrets::resolve(&defs, &used, |_| Some("a\nb".into())).expect_err("not a header");
        assert!(err.to_string().contains("OPENAI_KEY") && !err.to_string().contains("a\nb"), "{err}");
        let secrets = Secrets::resolve(&defs, &used, |_| Some("sk-123".into())).expect("set");
        assert!(!format!("{secrets:?}").contains("sk-123"));
        let mut echoed = "the server said: Bearer sk-123".to_string();
        secrets.scrub(&mut echoed);
        assert_eq!(echoed, "the server said: Bearer [secret openai]");
        let names = vec!["openai".to_string()];
        let body = secrets.scrub_bytes(&names, bytes::Bytes::from_static(b"authorization: Bearer sk-123; sk-123"));
        assert_eq!(&body[..], b"authorization: Bearer [secret openai]; [secret openai]");
        let clean = bytes::Bytes::from_static(b"nothing here");
        assert_eq!(secrets.scrub_bytes(&names, clean.clone()), clean);
        let header = secrets.scrub_header(&names, &HeaderValue::from_static("Bearer sk-123")).expect("scrubbed");
        assert_eq!(header, "Bearer [secret openai]");
    }

    #[test]
    fn unused_secrets_are_not_read() {
        let defs = BTreeMap::from([("openai".to_string(), def("OPENAI_KEY"))]);
        let secrets = Secrets::resolve(&defs, &[], |_| None).expect("nothing to read");
        assert!(format!("{secrets:?}") == "{}");
    }

    #[test]
    fn headers_that_frame_a_request_are_refused() {
        for bad in ["Host", "content-length", "Transfer-Encoding", "connection"] {
            assert!(SecretDef::header_and_format(bad, "{}").is_err(), "{bad}");
        }
        assert!(SecretDef::header_and_format("bad header", "{}").is_err());
        assert!(SecretDef::header_and_format("x-api-key", "no placeholder").is_err());
        assert!(SecretDef::header_and_format("x-api-key", "{}{}").is_err());
        assert!(SecretDef::header_and_format("x-api-key", "{}").is_ok());
    }
}
