//! What `concord.toml` grants one agent beyond the knowledge base
//! (`[agents.NAME]`), and the secrets it may be granted (`[secrets.NAME]`).
//! Parsed with the rest of the config (see [`super::config`]), so a bad
//! grant stops the start, or a reload, with its line.
//!
//! ```toml
//! [secrets.openai]
//! env = "OPENAI_API_KEY"
//! hosts = ["https://api.openai.com"]
//! header = "Authorization"
//! format = "Bearer {}"
//!
//! [agents.support]
//! http = ["https://api.openai.com", "http://127.0.0.1:11434"]
//! secrets = ["openai"]
//! ```

use super::outbound::{HttpGrant, Origin};
use super::secrets::SecretDef;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use toml::Spanned;

/// One agent's grants. An agent without a stanza has none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentGrant {
    /// The origins it may reach over HTTP.
    pub http: HttpGrant,
    /// The secrets the host adds to its requests (to their hosts).
    pub secrets: Vec<String>,
}

/// A bad value: the byte span it came from, and what is wrong.
pub(super) type Bad = (std::ops::Range<usize>, String);

/// `[agents.NAME]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGrant {
    #[serde(default)]
    http: Vec<String>,
    #[serde(default)]
    secrets: Vec<String>,
}

/// `[secrets.NAME]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSecret {
    env: String,
    hosts: Vec<String>,
    header: String,
    format: Option<String>,
}

/// The `[agents]` table: its own keys, and a table per agent. (A stanza
/// is any key that is not one of the table's own.)
#[derive(Default)]
pub(super) struct RawAgents {
    pub(super) dir: Option<String>,
    pub(super) watch: Option<bool>,
    pub(super) settle_ms: Option<Spanned<u64>>,
    pub(super) stanzas: Vec<(Spanned<String>, Spanned<toml::Value>)>,
}

impl<'de> Deserialize<'de> for RawAgents {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = RawAgents;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("the [agents] table: `dir`, `watch`, `settle_ms`, and a table per agent ([agents.NAME])")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<RawAgents, A::Error> {
                let mut out = RawAgents::default();
                while let Some(key) = map.next_key::<Spanned<String>>()? {
                    match key.get_ref().as_str() {
                        "dir" => out.dir = Some(map.next_value()?),
                        "watch" => out.watch = Some(map.next_value()?),
                        "settle_ms" => out.settle_ms = Some(map.next_value()?),
                        _ => out.stanzas.push((key, map.next_value()?)),
                    }
                }
                Ok(out)
            }
        }
        d.deserialize_map(Visit)
    }
}

/// Checks the secrets: each has a variable, hosts, and a header it may go
/// in.
pub(super) fn parse_secrets(
    raw: BTreeMap<Spanned<String>, Spanned<RawSecret>>,
) -> Result<BTreeMap<String, SecretDef>, Bad> {
    let mut out = BTreeMap::new();
    for (name, secret) in raw {
        let span = secret.span();
        let (name, secret) = (name.into_inner(), secret.into_inner());
        let bad = |why: String| (span.clone(), format!("secrets.{name}: {why}"));
        if secret.env.trim().is_empty() || secret.env.contains('=') {
            return Err(bad(
                "`env` names the environment variable that holds the value, such as `OPENAI_API_KEY`".into()
            ));
        }
        if secret.hosts.is_empty() {
            return Err(bad(
                "`hosts` lists the origins it is sent to, such as [\"https://api.openai.com\"]; it goes nowhere else"
                    .into(),
            ));
        }
        let hosts = secret.hosts.iter().map(|h| Origin::parse(h)).collect::<Result<Vec<_>, _>>().map_err(bad)?;
        let (header, format) =
            SecretDef::header_and_format(&secret.header, secret.format.as_deref().unwrap_or("{}")).map_err(bad)?;
        out.insert(name, SecretDef { env: secret.env, hosts, header, format });
    }
    Ok(out)
}

/// Checks each agent's stanza against the secrets declared.
pub(super) fn parse_grants(
    stanzas: Vec<(Spanned<String>, Spanned<toml::Value>)>,
    secrets: &BTreeMap<String, SecretDef>,
) -> Result<BTreeMap<String, AgentGrant>, Bad> {
    let mut out = BTreeMap::new();
    for (name, value) in stanzas {
        let span = value.span();
        let name = name.into_inner();
        let bad = |why: String| (span.clone(), format!("agents.{name}: {why}"));
        let value = value.into_inner();
        if !value.is_table() {
            return Err(bad(
                "is not a key of [agents] (`dir`, `watch`, `settle_ms`) nor an agent's table: write `[agents.NAME]` with `http` and `secrets`"
                    .into(),
            ));
        }
        let raw = RawGrant::deserialize(value).map_err(|e| bad(e.message().trim_end().to_string()))?;
        let origins = raw
            .http
            .iter()
            .map(|o| Origin::parse(o).map_err(|why| bad(format!("http: {why}"))))
            .collect::<Result<Vec<_>, _>>()?;
        let http = HttpGrant { origins };
        for s in &raw.secrets {
            let Some(def) = secrets.get(s) else {
                return Err(bad(format!(
                    "secrets: no secret `{s}` is declared; add [secrets.{s}] with `env`, `hosts` and `header`"
                )));
            };
            if let Some(host) = def.hosts.iter().find(|h| !http.origins.iter().any(|o| o.covers(h))) {
                return Err(bad(format!(
                    "secrets: `{s}` goes to {host}, which agents.{name}.http does not grant; add it there, or take the secret away"
                )));
            }
        }
        out.insert(name, AgentGrant { http, secrets: raw.secrets });
    }
    Ok(out)
}
