//! `[server]` in `concord.toml`: how `concord serve` listens, who may use
//! it, and how much it takes on. Parsed with the rest of the config (see
//! [`super::config`]), so a bad value stops the start with its line.

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::Spanned;

/// The address `concord serve` listens on by default.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7700";

/// How `concord serve` runs. Every value has a default; the defaults are
/// written where they are set, in [`ServerConfig::default`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// Where the API listens (`--listen` overrides it).
    pub listen: SocketAddr,
    /// The bearer tokens file (see `concord token add`). `None`: no tokens,
    /// which is allowed on a loopback address only, for a demo.
    pub tokens: Option<PathBuf>,
    /// How long a shutdown waits for invocations in flight before it stops
    /// them (audited as stopped).
    pub drain: Duration,
    /// Triggers that may wait for a pool slot, past the ones running; past
    /// it a trigger is answered 503 with `Retry-After`.
    pub queue: usize,
    /// The largest request body, in bytes (413 past it).
    pub max_body_bytes: usize,
    /// A request's head must arrive within this; so must the next request
    /// on a kept-alive connection.
    pub header_timeout: Duration,
    /// A request body may pause this long between two pieces.
    pub body_timeout: Duration,
    /// How long an idempotency key is remembered.
    pub idempotency_retention: Duration,
    /// Whether triggers may carry `pause_before` (for tests and exact
    /// scenarios). Off: such a trigger is refused.
    pub breakpoints: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN.parse().unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 7700))),
            tokens: None,
            drain: Duration::from_secs(10),
            queue: 256,
            max_body_bytes: 1 << 20,
            header_timeout: Duration::from_secs(5),
            body_timeout: Duration::from_secs(10),
            idempotency_retention: Duration::from_secs(24 * 3600),
            breakpoints: false,
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServer {
    listen: Option<Spanned<String>>,
    tokens: Option<String>,
    drain_ms: Option<Spanned<u64>>,
    queue: Option<Spanned<u64>>,
    max_body_bytes: Option<Spanned<u64>>,
    header_timeout_ms: Option<Spanned<u64>>,
    body_timeout_ms: Option<Spanned<u64>>,
    idempotency_retention_ms: Option<Spanned<u64>>,
    #[serde(default)]
    breakpoints: bool,
}

/// A bad `[server]` value: the byte span it came from, and what is wrong.
pub(super) type Bad = (std::ops::Range<usize>, String);

impl RawServer {
    pub(super) fn parse(self, base: &Path) -> Result<ServerConfig, Bad> {
        let mut c = ServerConfig::default();
        if let Some(listen) = self.listen {
            c.listen = listen.get_ref().parse().map_err(|_| {
                (
                    listen.span(),
                    format!(
                        "server.listen `{}` is not an address: use IP:PORT, such as `{DEFAULT_LISTEN}` or `0.0.0.0:7700`",
                        listen.get_ref()
                    ),
                )
            })?;
        }
        c.tokens = self.tokens.map(|t| base.join(t));
        let positive = |v: Option<Spanned<u64>>, name: &str, max: u64| -> Result<Option<u64>, Bad> {
            match v {
                Some(s) if *s.get_ref() == 0 => Err((s.span(), format!("server.{name} must be greater than 0"))),
                Some(s) if *s.get_ref() > max => Err((s.span(), format!("server.{name} is at most {max}"))),
                Some(s) => Ok(Some(*s.get_ref())),
                None => Ok(None),
            }
        };
        const DAY_MS: u64 = 24 * 3600 * 1000;
        if let Some(ms) = positive(self.drain_ms, "drain_ms", DAY_MS)? {
            c.drain = Duration::from_millis(ms);
        }
        if let Some(n) = positive(self.queue, "queue", 1 << 20)? {
            c.queue = n as usize;
        }
        if let Some(n) = positive(self.max_body_bytes, "max_body_bytes", 1 << 30)? {
            c.max_body_bytes = n as usize;
        }
        if let Some(ms) = positive(self.header_timeout_ms, "header_timeout_ms", DAY_MS)? {
            c.header_timeout = Duration::from_millis(ms);
        }
        if let Some(ms) = positive(self.body_timeout_ms, "body_timeout_ms", DAY_MS)? {
            c.body_timeout = Duration::from_millis(ms);
        }
        if let Some(ms) = positive(self.idempotency_retention_ms, "idempotency_retention_ms", 365 * DAY_MS)? {
            c.idempotency_retention = Duration::from_millis(ms);
        }
        c.breakpoints = self.breakpoints;
        Ok(c)
    }
}
