//! Who may call what: every route under `/v1` (and `/metrics`) asks for a
//! role, and a request without a valid bearer token (401) or with a role
//! too low (403) is refused and audited (who, what, from where). The token
//! itself is in no audit entry and no log line: only its name is.
//!
//! An open server (no `[server] tokens`, allowed on loopback only) lets
//! every request in as an operator; the start says so loudly.

use super::state::App;
use super::tokens::{Principal, Role};
use crate::audit::{AuditDraft, Decision, calls};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Refusals audited per client address per window; past it they are
/// counted, and the next audited one says how many were not.
const REFUSALS_PER_WINDOW: u32 = 20;
const WINDOW: Duration = Duration::from_secs(10);
/// Client addresses the limiter tells apart.
const MAX_SOURCES: usize = 10_000;

/// Keeps one client that hammers the API with bad tokens from filling the
/// audit log: at most [`REFUSALS_PER_WINDOW`] entries per address per
/// [`WINDOW`].
#[derive(Debug, Default)]
pub struct RefusalLimiter {
    by_ip: Mutex<HashMap<IpAddr, (Instant, u32, u64)>>,
}

impl RefusalLimiter {
    /// Whether to audit this refusal, and how many from this address went
    /// unaudited before it.
    fn admit(&self, ip: IpAddr) -> Option<u64> {
        let mut map = self.by_ip.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        // Bounded: past MAX_SOURCES addresses the stale ones go (their
        // unaudited counts with them), and if all are fresh, new ones share
        // one slot.
        let ip = if map.len() >= MAX_SOURCES && !map.contains_key(&ip) {
            map.retain(|_, (since, _, _)| since.elapsed() < WINDOW);
            if map.len() >= MAX_SOURCES { IpAddr::from([0, 0, 0, 0]) } else { ip }
        } else {
            ip
        };
        let slot = map.entry(ip).or_insert((Instant::now(), 0, 0));
        if slot.0.elapsed() >= WINDOW {
            slot.0 = Instant::now();
            slot.1 = 0;
        }
        slot.1 += 1;
        if slot.1 > REFUSALS_PER_WINDOW {
            slot.2 += 1;
            return None;
        }
        Some(std::mem::take(&mut slot.2))
    }
}

/// Whether the request's `Host` names this machine's loopback (any port).
fn addressed_to_loopback(request: &Request) -> bool {
    let host = request.headers().get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or_default();
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host.split(':').next().unwrap_or_default(),
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The request's `Authorization: Bearer …` token, if it has one.
fn bearer(request: &Request) -> Option<&str> {
    let value = request.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// The middleware: lets the request in with its [`Principal`] as an
/// extension, or refuses it.
pub async fn require(State((app, role)): State<(Arc<App>, Role)>, mut request: Request, next: Next) -> Response {
    let from = request.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0);
    if app.tokens.is_open() && !addressed_to_loopback(&request) {
        // Without tokens the server trusts whoever reaches it on loopback;
        // a web page elsewhere can reach it too, by rebinding its own name
        // to 127.0.0.1, but its requests then name that host, not this one.
        return super::error::ApiError::new(
            StatusCode::FORBIDDEN,
            "not_loopback",
            "this server runs without tokens and answers only requests addressed to localhost, 127.0.0.1 or [::1]; configure `tokens` under [server] to serve other names",
        )
        .into_response();
    }
    let principal = match bearer(&request) {
        _ if app.tokens.is_open() => Some(Principal::open()),
        Some(token) => app.tokens.identify(token),
        None => None,
    };
    let refusal = match &principal {
        None => Some((
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            match bearer(&request) {
                Some(_) => "the bearer token is not one of the server's tokens; ask an operator for one (`concord token add NAME --role ROLE`)".to_string(),
                None => "this needs a bearer token (`Authorization: Bearer …`; the CLI reads CONCORD_TOKEN); ask an operator for one (`concord token add NAME --role ROLE`)".to_string(),
            },
        )),
        Some(p) if p.role < role => Some((
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "token `{}` has the role `{}`; {} {} needs `{role}`",
                p.name.as_deref().unwrap_or("-"),
                p.role,
                request.method(),
                request.uri().path()
            ),
        )),
        Some(_) => None,
    };
    if let Some(info) = request.extensions().get::<super::observe::RequestLog>() {
        info.set_token(principal.as_ref().and_then(|p| p.name.clone()));
    }
    let Some((status, error, detail)) = refusal else {
        if let Some(p) = principal {
            request.extensions_mut().insert(p);
        }
        return next.run(request).await;
    };
    audit_refusal(&app, &request, from, principal.as_ref(), role, status, &detail);
    let mut response = super::error::ApiError::new(status, error, detail).into_response();
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    response
}

/// Audits a refused request: who (the token's name, if it has a valid
/// one), what (method and path) and from where. Never the token.
fn audit_refusal(
    app: &App,
    request: &Request,
    from: Option<SocketAddr>,
    principal: Option<&Principal>,
    needed: Role,
    status: StatusCode,
    detail: &str,
) {
    let ip = from.map_or(IpAddr::from([0, 0, 0, 0]), |a| a.ip());
    let Some(skipped) = app.refusals.admit(ip) else { return };
    let who = principal.and_then(|p| p.name.clone());
    let args = serde_json::json!({
        "method": request.method().as_str(),
        "path": request.uri().path(),
        "from": from.map(|a| a.to_string()),
        "token": who,
        "needs": needed.as_str(),
        "status": status.as_u16(),
        "unaudited_before": skipped,
    })
    .to_string();
    let mut outcome = detail.to_string();
    if skipped > 0 {
        outcome
            .push_str(&format!(" ({skipped} more refusals from {ip} were not audited, within {} s)", WINDOW.as_secs()));
    }
    let draft = AuditDraft {
        agent: crate::audit::API.into(),
        digest: String::new(),
        invocation: None,
        call: calls::API_REFUSED.into(),
        entities: vec![],
        arg_bytes: args.len(),
        args,
        decision: Decision::Forbidden,
        rule: Some(if status == StatusCode::UNAUTHORIZED {
            "auth: no valid token".into()
        } else {
            format!("auth: role {needed}")
        }),
        peer: who,
        fields: vec![],
        causation: None,
        outcome,
        duration_us: 0,
    };
    if let Err(e) = app.host.store().append_read_audit(draft) {
        tracing::error!("could not audit a refused request: {e}");
    }
}

/// Who acts as a human for an operator request: the token's name; on an
/// open server, the `by` the request gives (self-declared), or `local`.
pub fn acting_human(principal: &Principal, by: Option<&str>) -> Result<String, super::error::ApiError> {
    match (&principal.name, by) {
        (Some(name), Some(by)) if by != name => Err(super::error::ApiError::new(
            StatusCode::FORBIDDEN,
            "by_mismatch",
            format!(
                "this server records operators by their token: you act as `{name}`; drop `by` (or `--by`), or use {by}'s token"
            ),
        )),
        (Some(name), _) => Ok(name.clone()),
        (None, Some(by)) => {
            super::tokens::check_name(by).map_err(|e| super::error::ApiError::unprocessable("invalid_by", e))?;
            Ok(by.to_string())
        }
        (None, None) => Ok("local".into()),
    }
}
