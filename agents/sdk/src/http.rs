//! Outbound HTTP through the host (`wasi:http`).
//!
//! The host checks every request against the agent's grant
//! (`[agents.NAME] http` in `concord.toml`; nothing is granted by default),
//! adds the agent's secrets to their own hosts (the agent never sees them),
//! audits it, and reads the response whole, within
//! `limits.max_http_response_bytes` and `limits.http_timeout_ms`.
//!
//! ```ignore
//! use concord_agent::http;
//!
//! let answer = http::get("http://127.0.0.1:11434/api/tags")?;
//! let models = answer.json()?;
//! let created = http::Request::post("https://api.example.com/v1/notes")
//!     .json(&serde_json::json!({ "text": "hello" }))
//!     .send()?;
//! ```
//!
//! Redirects are followed (at most [`MAX_REDIRECTS`] hops) by making each
//! hop a request of its own, which the host checks again: a redirect to an
//! origin the agent is not granted is refused like any other request.

use wasip2::http::outgoing_handler;
use wasip2::http::types::{ErrorCode, Fields, IncomingBody, Method, OutgoingBody, OutgoingRequest, Scheme};
use wasip2::io::streams::StreamError;

/// The most redirects one [`Request::send`] follows.
pub const MAX_REDIRECTS: u32 = 5;

/// Why a request got no response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpError {
    /// The host refused it before any connection: the origin is not
    /// granted, or a limit was reached. The audit entry names the rule.
    Refused(String),
    /// The URL is not one the SDK can send (`scheme://host[:port]/path`).
    BadUrl(String),
    /// It was sent and failed: no connection, a timeout, a response over
    /// the limit, or more than [`MAX_REDIRECTS`] redirects.
    Failed(String),
}

impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HttpError::Refused(why) => write!(f, "refused by the host: {why}"),
            HttpError::BadUrl(why) => write!(f, "bad URL: {why}"),
            HttpError::Failed(why) => write!(f, "request failed: {why}"),
        }
    }
}

impl std::error::Error for HttpError {}

impl From<ErrorCode> for HttpError {
    fn from(e: ErrorCode) -> Self {
        match e {
            ErrorCode::HttpRequestDenied => {
                HttpError::Refused("the origin is not granted, or a limit was reached (see the audit entry)".into())
            }
            ErrorCode::HttpRequestUriInvalid => HttpError::BadUrl("the host could not read the URL".into()),
            e => HttpError::Failed(format!("{e:?}")),
        }
    }
}

/// A response, read whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// Header names are lowercase.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The URL that answered (after any redirects).
    pub url: String,
}

impl Response {
    /// The first value of a header.
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str())
    }

    /// The body as text (invalid UTF-8 replaced).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON.
    pub fn json(&self) -> Result<serde_json::Value, HttpError> {
        serde_json::from_slice(&self.body)
            .map_err(|e| HttpError::Failed(format!("the response from {} is not JSON: {e}", self.url)))
    }

    /// Whether the status is 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// `GET url`.
pub fn get(url: &str) -> Result<Response, HttpError> {
    Request::get(url).send()
}

/// `POST url` with a JSON body.
pub fn post_json(url: &str, body: &serde_json::Value) -> Result<Response, HttpError> {
    Request::post(url).json(body).send()
}

/// `POST url` with a body of this content type.
pub fn post(url: &str, content_type: &str, body: impl Into<Vec<u8>>) -> Result<Response, HttpError> {
    Request::post(url).header("content-type", content_type).body(body).send()
}

/// A request being built.
#[derive(Debug, Clone)]
pub struct Request {
    method: String,
    url: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    follow: bool,
}

impl Request {
    pub fn new(method: &str, url: &str) -> Self {
        Request { method: method.to_ascii_uppercase(), url: url.into(), headers: vec![], body: vec![], follow: true }
    }

    pub fn get(url: &str) -> Self {
        Self::new("GET", url)
    }

    pub fn post(url: &str) -> Self {
        Self::new("POST", url)
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_ascii_lowercase(), value.into()));
        self
    }

    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    pub fn json(self, body: &serde_json::Value) -> Self {
        self.header("content-type", "application/json").body(body.to_string())
    }

    /// Return a redirect as it is, instead of following it.
    pub fn no_redirects(mut self) -> Self {
        self.follow = false;
        self
    }

    /// Sends it, following redirects unless told not to. A 303, and a 301
    /// or 302 to a POST, become a GET without a body, as browsers do.
    pub fn send(self) -> Result<Response, HttpError> {
        let mut request = self;
        let mut hops = 0;
        loop {
            let response = request.send_once()?;
            if !request.follow || !matches!(response.status, 301 | 302 | 303 | 307 | 308) {
                return Ok(response);
            }
            let Some(location) = response.header("location") else { return Ok(response) };
            hops += 1;
            if hops > MAX_REDIRECTS {
                return Err(HttpError::Failed(format!("more than {MAX_REDIRECTS} redirects, the last to {location}")));
            }
            let next = resolve(&request.url, location)?;
            if response.status == 303 || (matches!(response.status, 301 | 302) && request.method == "POST") {
                request.method = "GET".into();
                request.body.clear();
                request.headers.retain(|(n, _)| n != "content-type" && n != "content-length");
            }
            request.url = next;
        }
    }

    fn send_once(&self) -> Result<Response, HttpError> {
        let url = Url::parse(&self.url)?;
        let headers = Fields::new();
        for (name, value) in &self.headers {
            headers
                .append(name, value.as_bytes())
                .map_err(|e| HttpError::BadUrl(format!("header `{name}` cannot be sent: {e:?}")))?;
        }
        let out = OutgoingRequest::new(headers);
        let method = match self.method.as_str() {
            "GET" => Method::Get,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "DELETE" => Method::Delete,
            "PATCH" => Method::Patch,
            "HEAD" => Method::Head,
            "OPTIONS" => Method::Options,
            other => Method::Other(other.into()),
        };
        let invalid = |what: &str| HttpError::BadUrl(format!("{what} of {} is not valid", self.url));
        out.set_method(&method).map_err(|()| invalid("the method"))?;
        out.set_scheme(Some(&url.scheme)).map_err(|()| invalid("the scheme"))?;
        out.set_authority(Some(&url.authority)).map_err(|()| invalid("the host"))?;
        out.set_path_with_query(Some(&url.path)).map_err(|()| invalid("the path"))?;
        let body = out.body().map_err(|()| HttpError::Failed("the request's body was taken".into()))?;
        // The request goes first, then its body: the host reads the body
        // as the agent writes it.
        let pending = outgoing_handler::handle(out, None)?;
        {
            let stream = body.write().map_err(|()| HttpError::Failed("the request's body stream was taken".into()))?;
            for chunk in self.body.chunks(4096) {
                stream.blocking_write_and_flush(chunk).map_err(|e| stream_error("writing the body", e))?;
            }
        }
        OutgoingBody::finish(body, None)?;
        pending.subscribe().block();
        let response = match pending.get() {
            Some(Ok(Ok(r))) => r,
            Some(Ok(Err(e))) => return Err(e.into()),
            Some(Err(())) => return Err(HttpError::Failed("the response was already taken".into())),
            None => return Err(HttpError::Failed("the response was not ready after waiting for it".into())),
        };
        let status = response.status();
        let headers = response
            .headers()
            .entries()
            .into_iter()
            .map(|(n, v)| (n.to_ascii_lowercase(), String::from_utf8_lossy(&v).into_owned()))
            .collect();
        let incoming = response.consume().map_err(|()| HttpError::Failed("the response body was taken".into()))?;
        let mut bytes = vec![];
        {
            let stream =
                incoming.stream().map_err(|()| HttpError::Failed("the response body stream was taken".into()))?;
            loop {
                match stream.blocking_read(64 << 10) {
                    Ok(chunk) => bytes.extend_from_slice(&chunk),
                    Err(StreamError::Closed) => break,
                    Err(e) => return Err(stream_error("reading the response", e)),
                }
            }
        }
        drop(IncomingBody::finish(incoming));
        Ok(Response { status, headers, body: bytes, url: self.url.clone() })
    }
}

fn stream_error(what: &str, e: StreamError) -> HttpError {
    match e {
        StreamError::Closed => HttpError::Failed(format!("{what}: the stream closed")),
        StreamError::LastOperationFailed(e) => match wasip2::http::types::http_error_code(&e) {
            Some(code) => code.into(),
            None => HttpError::Failed(format!("{what}: {}", e.to_debug_string())),
        },
    }
}

/// `scheme://authority/path?query`, split; the host reads it again
/// (normalised) before it checks it.
struct Url {
    scheme: Scheme,
    authority: String,
    path: String,
}

impl Url {
    fn parse(url: &str) -> Result<Url, HttpError> {
        let bad = |why: &str| HttpError::BadUrl(format!("`{url}` {why}"));
        let (scheme, rest) = url.split_once("://").ok_or_else(|| bad("has no scheme: write http:// or https://"))?;
        let scheme = match scheme.to_ascii_lowercase().as_str() {
            "http" => Scheme::Http,
            "https" => Scheme::Https,
            _ => return Err(bad("is not http or https")),
        };
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(end);
        if authority.is_empty() {
            return Err(bad("names no host"));
        }
        let path = path.split('#').next().unwrap_or_default();
        let path = if path.starts_with('/') { path.to_string() } else { format!("/{path}") };
        Ok(Url { scheme, authority: authority.into(), path })
    }
}

/// A redirect's `Location`, made absolute against the URL that sent it.
fn resolve(base: &str, location: &str) -> Result<String, HttpError> {
    if location.contains("://") {
        return Ok(location.into());
    }
    let (scheme, rest) = base.split_once("://").ok_or_else(|| HttpError::BadUrl(base.into()))?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if let Some(path) = location.strip_prefix("//") {
        return Ok(format!("{scheme}://{path}"));
    }
    if location.starts_with('/') {
        return Ok(format!("{scheme}://{authority}{location}"));
    }
    let path = &rest[authority.len()..];
    let path = path.split(['?', '#']).next().unwrap_or_default();
    let dir = path.rfind('/').map_or("/", |i| &path[..=i]);
    Ok(format!("{scheme}://{authority}{dir}{location}"))
}
