//! What `concord.toml` grants one agent beyond the knowledge base
//! (`[agents.NAME]`), the secrets it may be granted (`[secrets.NAME]`),
//! and the language models it may call (`[models.NAME]`).
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
//! [models.default]
//! url = "https://api.openai.com/v1"   # an OpenAI-compatible API; the host POSTs to …/chat/completions
//! model = "gpt-4o-mini"
//! secret = "openai"
//!
//! [agents.support]
//! http = ["https://api.openai.com", "http://127.0.0.1:11434"]
//! secrets = ["openai"]
//! models = ["default"]
//! tokens_per_invocation = 20_000
//! tokens_per_day = 1_000_000
//! ```

use super::outbound::{Endpoint, HttpGrant, Origin};
use super::secrets::SecretDef;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use toml::Spanned;

/// One agent's grants. An agent without a stanza has none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentGrant {
    /// The origins it may reach over HTTP.
    pub http: HttpGrant,
    /// The secrets the host adds to its requests (to their hosts).
    pub secrets: Vec<String>,
    /// The models it may call.
    pub models: Vec<String>,
    /// Model tokens (prompt and completion) one invocation may spend.
    pub tokens_per_invocation: u64,
    /// Model tokens the agent may spend in a UTC day, on this host.
    pub tokens_per_day: u64,
    /// This agent's own sandbox limits, over `[limits]` (a Python or
    /// JavaScript component needs more memory than a Rust one).
    pub memory_bytes: Option<usize>,
    pub fuel: Option<u64>,
    pub timeout: Option<std::time::Duration>,
}

/// `tokens_per_invocation` when not given.
pub const DEFAULT_TOKENS_PER_INVOCATION: u64 = 20_000;
/// `tokens_per_day` when not given.
pub const DEFAULT_TOKENS_PER_DAY: u64 = 1_000_000;

impl Default for AgentGrant {
    fn default() -> Self {
        AgentGrant {
            http: HttpGrant::default(),
            secrets: vec![],
            models: vec![],
            tokens_per_invocation: DEFAULT_TOKENS_PER_INVOCATION,
            tokens_per_day: DEFAULT_TOKENS_PER_DAY,
            memory_bytes: None,
            fuel: None,
            timeout: None,
        }
    }
}

/// `[models.NAME]`: an OpenAI-compatible chat-completions endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelDef {
    /// Where the host POSTs: the configured URL, ending in
    /// `/chat/completions`.
    pub endpoint: Endpoint,
    /// The model name sent to the server.
    pub model: String,
    /// A secret whose header goes with each request (its hosts must cover
    /// the endpoint).
    pub secret: Option<String>,
    /// From the request to the last byte of the answer.
    pub timeout: std::time::Duration,
}

/// A model's `timeout_ms` when not given.
pub const DEFAULT_MODEL_TIMEOUT_MS: u64 = 60_000;

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
    #[serde(default)]
    models: Vec<String>,
    tokens_per_invocation: Option<u64>,
    tokens_per_day: Option<u64>,
    memory_mib: Option<u64>,
    fuel: Option<u64>,
    timeout_ms: Option<u64>,
}

/// `[models.NAME]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawModel {
    url: String,
    model: String,
    secret: Option<String>,
    timeout_ms: Option<u64>,
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
    pub(super) cache_dir: Option<String>,
    pub(super) stanzas: Vec<(Spanned<String>, Spanned<toml::Value>)>,
}

impl<'de> Deserialize<'de> for RawAgents {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = RawAgents;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("the [agents] table: `dir`, `watch`, `settle_ms`, `cache_dir`, and a table per agent ([agents.NAME])")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<RawAgents, A::Error> {
                let mut out = RawAgents::default();
                while let Some(key) = map.next_key::<Spanned<String>>()? {
                    match key.get_ref().as_str() {
                        "dir" => out.dir = Some(map.next_value()?),
                        "watch" => out.watch = Some(map.next_value()?),
                        "settle_ms" => out.settle_ms = Some(map.next_value()?),
                        "cache_dir" => out.cache_dir = Some(map.next_value()?),
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

/// Checks the models: an http(s) URL with no user, a model name, a secret
/// that is declared and goes to the model's host, a timeout.
pub(super) fn parse_models(
    raw: BTreeMap<Spanned<String>, Spanned<RawModel>>,
    secrets: &BTreeMap<String, SecretDef>,
) -> Result<BTreeMap<String, ModelDef>, Bad> {
    let mut out = BTreeMap::new();
    for (name, model) in raw {
        let span = model.span();
        let (name, model) = (name.into_inner(), model.into_inner());
        let bad = |why: String| (span.clone(), format!("models.{name}: {why}"));
        let url = model.url.trim_end_matches('/');
        if url.contains('?') {
            return Err(bad(format!("`url` `{url}` has a query: write the API's base URL")));
        }
        let url = if url.ends_with("/chat/completions") { url.to_string() } else { format!("{url}/chat/completions") };
        let endpoint = Endpoint::parse(&url).map_err(|why| bad(format!("`url` {why}")))?;
        if model.model.trim().is_empty() {
            return Err(bad("`model` names the model the server runs, such as `llama3.2` or `gpt-4o-mini`".into()));
        }
        if let Some(s) = &model.secret {
            SecretDef::check_use(secrets, s, "secret", &endpoint.target).map_err(bad)?;
        }
        let timeout_ms = match model.timeout_ms {
            Some(ms) if ms == 0 || ms > 600_000 => return Err(bad("`timeout_ms` is 1 to 600000".into())),
            Some(ms) => ms,
            None => DEFAULT_MODEL_TIMEOUT_MS,
        };
        out.insert(
            name,
            ModelDef {
                endpoint,
                model: model.model,
                secret: model.secret,
                timeout: std::time::Duration::from_millis(timeout_ms),
            },
        );
    }
    Ok(out)
}

/// Checks each agent's stanza against the secrets and models declared.
pub(super) fn parse_grants(
    stanzas: Vec<(Spanned<String>, Spanned<toml::Value>)>,
    secrets: &BTreeMap<String, SecretDef>,
    models: &BTreeMap<String, ModelDef>,
) -> Result<BTreeMap<String, AgentGrant>, Bad> {
    let mut out = BTreeMap::new();
    for (name, value) in stanzas {
        let span = value.span();
        let name = name.into_inner();
        let bad = |why: String| (span.clone(), format!("agents.{name}: {why}"));
        let value = value.into_inner();
        if !value.is_table() {
            return Err(bad(
                "is not a key of [agents] (`dir`, `watch`, `settle_ms`, `cache_dir`) nor an agent's table: write `[agents.NAME]` with `http` and `secrets`"
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
        if let Some(m) = raw.models.iter().find(|m| !models.contains_key(*m)) {
            return Err(bad(format!("models: no model `{m}` is declared; add [models.{m}] with `url` and `model`")));
        }
        let positive = |v: Option<u64>, key: &str, default: u64| match v {
            Some(0) => Err(bad(format!("{key} must be greater than 0 (take the model away instead)"))),
            Some(n) => Ok(n),
            None => Ok(default),
        };
        let tokens_per_invocation =
            positive(raw.tokens_per_invocation, "tokens_per_invocation", DEFAULT_TOKENS_PER_INVOCATION)?;
        let tokens_per_day = positive(raw.tokens_per_day, "tokens_per_day", DEFAULT_TOKENS_PER_DAY)?;
        let memory_bytes = match raw.memory_mib {
            Some(mib) if mib == 0 || mib > 4096 => {
                return Err(bad("memory_mib is 1 to 4096 (a wasm32 memory cannot grow past 4 GiB)".into()));
            }
            Some(mib) => {
                Some(usize::try_from(mib << 20).map_err(|_| bad("memory_mib is too large for this machine".into()))?)
            }
            None => None,
        };
        let fuel = match raw.fuel {
            Some(0) => return Err(bad("fuel must be greater than 0".into())),
            other => other,
        };
        let timeout = match raw.timeout_ms {
            Some(0) => return Err(bad("timeout_ms must be greater than 0".into())),
            other => other.map(std::time::Duration::from_millis),
        };
        out.insert(
            name,
            AgentGrant {
                http,
                secrets: raw.secrets,
                models: raw.models,
                tokens_per_invocation,
                tokens_per_day,
                memory_bytes,
                fuel,
                timeout,
            },
        );
    }
    Ok(out)
}
