//! Talking to a running host: while `concord serve` holds the knowledge
//! base, the CLI's verbs go through its API. Its address is in the server
//! file beside the store ([`crate::server::server_file_path`]); the token
//! comes from `CONCORD_TOKEN`, or the file `CONCORD_TOKEN_FILE` names, or
//! `~/.config/concord/token`.

use crate::server::error::ErrorBody;
use crate::server::wire::ServerFile;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client as Hyper;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::path::Path;
use std::time::Duration;

/// An answer the API refused, with the exit code it maps to.
#[derive(Debug, thiserror::Error)]
#[error("{detail}")]
pub struct Refused {
    pub status: StatusCode,
    pub error: String,
    pub detail: String,
}

impl Refused {
    /// The CLI's exit code for it: 4 not found, 3 bad input (a refusal, a
    /// token problem), 1 a fault of the host.
    pub fn code(&self) -> u8 {
        match self.status {
            StatusCode::NOT_FOUND => 4,
            s if s.is_client_error() => 3,
            _ => 1,
        }
    }
}

/// Why a call to the running host gave no answer the CLI can use.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The host answered, with a refusal.
    #[error(transparent)]
    Refused(#[from] Refused),
    /// The host could not be reached, or its answer could not be read.
    #[error(transparent)]
    Unreachable(#[from] anyhow::Error),
}

/// The API of a running host.
#[derive(Debug)]
pub struct Client {
    base: String,
    token: Option<String>,
    http: Hyper<HttpConnector, Full<Bytes>>,
    runtime: tokio::runtime::Runtime,
}

/// The token to send, if one is set.
fn token() -> anyhow::Result<Option<String>> {
    if let Ok(t) = std::env::var("CONCORD_TOKEN") {
        return Ok(Some(t.trim().to_string()));
    }
    let file = match std::env::var_os("CONCORD_TOKEN_FILE") {
        Some(f) => Some(std::path::PathBuf::from(f)),
        None => std::env::var_os("HOME").map(|h| Path::new(&h).join(".config/concord/token")).filter(|p| p.exists()),
    };
    match file {
        Some(f) => {
            let t = std::fs::read_to_string(&f)
                .map_err(|e| anyhow::anyhow!("cannot read the token file {}: {e}", f.display()))?;
            Ok(Some(t.trim().to_string()))
        }
        None => Ok(None),
    }
}

/// Percent-encodes one path segment (an entity id may hold `/`).
pub fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Client {
    /// The running host that holds the store at `kb`, if there is one and
    /// it answers. A server file left by a host that was killed is not one.
    pub fn find(kb: &Path) -> anyhow::Result<Option<Client>> {
        let path = crate::server::server_file_path(kb);
        let Ok(text) = std::fs::read_to_string(&path) else { return Ok(None) };
        let Ok(file) = serde_json::from_str::<ServerFile>(&text) else { return Ok(None) };
        if !Path::new(&format!("/proc/{}", file.pid)).exists() {
            return Ok(None);
        }
        let client = Client::new(&format!("http://{}", file.address))?;
        let answered =
            client.runtime.block_on(async { tokio::time::timeout(Duration::from_secs(3), client.health()).await });
        match answered {
            // The pid in the server file may since have been reused by
            // another process, and the address by another host: only the
            // host that wrote the file answers with its pid.
            Ok(Ok((status, pid))) if status.is_success() && pid == Some(file.pid) => Ok(Some(client)),
            _ => Ok(None),
        }
    }

    pub fn new(base: &str) -> anyhow::Result<Client> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(3)));
        connector.set_nodelay(true);
        let http = Hyper::builder(TokioExecutor::new()).build(connector);
        Ok(Client { base: base.trim_end_matches('/').to_string(), token: token()?, http, runtime })
    }

    /// `/healthz`: its status and the pid the host answers with.
    async fn health(&self) -> anyhow::Result<(StatusCode, Option<u32>)> {
        let response = self.http.request(self.request(Method::GET, "/healthz", None)?).await?;
        let pid = response.headers().get("concord-pid").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
        Ok((response.status(), pid))
    }

    /// Where it is.
    pub fn base(&self) -> &str {
        &self.base
    }

    fn request(&self, method: Method, path: &str, body: Option<Vec<u8>>) -> anyhow::Result<Request<Full<Bytes>>> {
        let mut req = Request::builder().method(method).uri(format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        Ok(req.body(Full::new(Bytes::from(body.unwrap_or_default())))?)
    }

    async fn send(&self, method: Method, path: &str, body: Option<Vec<u8>>) -> anyhow::Result<(StatusCode, Bytes)> {
        let response = self.http.request(self.request(method, path, body)?).await.map_err(|e| {
            anyhow::anyhow!("cannot reach the running host at {}: {e} (is `concord serve` still running?)", self.base)
        })?;
        let status = response.status();
        let bytes = response.into_body().collect().await?.to_bytes();
        Ok((status, bytes))
    }

    fn call<T: DeserializeOwned>(&self, method: Method, path: &str, body: Option<Vec<u8>>) -> Result<T, ClientError> {
        let (status, bytes) = self.runtime.block_on(self.send(method, path, body))?;
        if !status.is_success() {
            let body: Option<ErrorBody> = serde_json::from_slice(&bytes).ok();
            let (error, mut detail) = match body {
                Some(b) => {
                    let mut detail = b.detail;
                    // The rows, unless the detail lists them already.
                    if !detail.contains("line ") {
                        for r in &b.rows {
                            detail.push_str(&format!("\n  line {}: {}", r.line, r.problem));
                        }
                    }
                    (b.error, detail)
                }
                None => (String::new(), String::from_utf8_lossy(&bytes).into_owned()),
            };
            if status == StatusCode::UNAUTHORIZED && self.token.is_none() {
                detail.push_str(" (set CONCORD_TOKEN to a token of the running host)");
            }
            return Err(Refused { status, error, detail }.into());
        }
        serde_json::from_slice(&bytes)
            .map_err(|e| anyhow::anyhow!("the host's answer to {path} does not decode: {e}").into())
    }

    pub fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.call(Method::GET, path, None)
    }

    pub fn post<T: DeserializeOwned>(&self, path: &str, body: &impl Serialize) -> Result<T, ClientError> {
        self.call(Method::POST, path, Some(serde_json::to_vec(body).map_err(anyhow::Error::from)?))
    }

    /// Follows a Server-Sent Events stream from `after`, calling `each`
    /// with every item's data, in order, until it returns false. A broken
    /// connection (a host restart) is retried with `Last-Event-ID`, so no
    /// item is missed or seen twice.
    pub fn follow(&self, path: &str, mut after: u64, mut each: impl FnMut(&str) -> bool) -> Result<(), ClientError> {
        self.runtime.block_on(async {
            let mut failures = 0u32;
            loop {
                let mut req = self.request(Method::GET, path, None)?;
                req.headers_mut().insert("last-event-id", after.into());
                req.headers_mut().insert("accept", hyper::header::HeaderValue::from_static("text/event-stream"));
                let response = match self.http.request(req).await {
                    Ok(r) => r,
                    Err(e) => {
                        failures += 1;
                        if failures == 1 {
                            eprintln!("concord: lost the host at {} ({e}); reconnecting", self.base);
                        }
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        continue;
                    }
                };
                if !response.status().is_success() {
                    let status = response.status();
                    let bytes = response.into_body().collect().await.map_err(anyhow::Error::from)?.to_bytes();
                    let body: Option<ErrorBody> = serde_json::from_slice(&bytes).ok();
                    let (error, detail) = body
                        .map_or((String::new(), String::from_utf8_lossy(&bytes).into_owned()), |b| (b.error, b.detail));
                    return Err(Refused { status, error, detail }.into());
                }
                if failures > 0 {
                    eprintln!("concord: reconnected; going on after {after}");
                    failures = 0;
                }
                let mut body = response.into_body();
                let (mut buf, mut id, mut data) = (Vec::new(), None::<u64>, String::new());
                while let Some(frame) = body.frame().await {
                    let Ok(frame) = frame else { break };
                    let Ok(chunk) = frame.into_data() else { continue };
                    buf.extend_from_slice(&chunk);
                    while let Some(pos) = buf.iter().position(|&b| b == b'\n') {
                        let line: Vec<u8> = buf.drain(..=pos).collect();
                        let line = String::from_utf8_lossy(&line[..line.len() - 1]).trim_end_matches('\r').to_string();
                        if line.is_empty() {
                            if let Some(seq) = id.take().filter(|_| !data.is_empty()) {
                                after = seq;
                                if !each(&data) {
                                    return Ok(());
                                }
                            }
                            data.clear();
                        } else if let Some(v) = line.strip_prefix("id:") {
                            id = v.trim().parse().ok();
                        } else if let Some(v) = line.strip_prefix("data:") {
                            data.push_str(v.strip_prefix(' ').unwrap_or(v));
                        }
                    }
                }
                // The stream ended: the host is stopping. Reconnect (to its
                // next start) from where it left off.
                failures += 1;
                eprintln!("concord: the host at {} closed the stream; reconnecting", self.base);
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
    }
}
