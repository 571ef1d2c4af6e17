//! The web console: plain assets (HTML, CSS and JavaScript modules, in
//! `host/console/`) compiled into the binary and served at `/`, so that it
//! works offline, with no build step and no CDN.
//!
//! The assets hold no data and need no token. Everything the console shows
//! it reads from the API, with the token the person gives it, so it sees
//! and may do exactly what that token may: there is no second way in and
//! no second source of truth.
//!
//! The pages render every value as text (never as markup), and the
//! Content-Security-Policy allows scripts, styles and connections from this
//! origin only: a field value that holds `<script>` stays a string.

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

/// One embedded file.
struct Asset {
    name: &'static str,
    mime: &'static str,
    body: &'static str,
}

macro_rules! asset {
    ($name:literal, $mime:expr) => {
        Asset { name: $name, mime: $mime, body: include_str!(concat!("../../console/", $name)) }
    };
}

const JS: &str = "text/javascript; charset=utf-8";

/// Every file of the console. `index.html` is the page; the rest are
/// under `/console/`.
const ASSETS: &[Asset] = &[
    asset!("index.html", "text/html; charset=utf-8"),
    asset!("console.css", "text/css; charset=utf-8"),
    asset!("app.js", JS),
    asset!("api.js", JS),
    asset!("ui.js", JS),
    asset!("feed.js", JS),
    asset!("entity.js", JS),
    asset!("conflicts.js", JS),
    asset!("trace.js", JS),
    asset!("agents.js", JS),
    asset!("trust.js", JS),
];

/// Only this origin, for everything; no inline script, no framing.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The console's routes: `/` and `/console/{file}`.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(|| async { serve("index.html") }))
        .route("/console/{file}", get(|Path(file): Path<String>| async move { serve(&file) }))
}

fn serve(name: &str) -> Response {
    let Some(asset) = ASSETS.iter().find(|a| a.name == name) else {
        return super::error::ApiError::new(
            StatusCode::NOT_FOUND,
            "no_such_asset",
            format!("the console has no file `{name}`; open / for the console"),
        )
        .into_response();
    };
    let mut r = asset.body.into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(asset.mime));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    // A new binary may bring new assets: revalidate rather than cache.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every module a page imports is served: a missing one would break
    /// the console in the browser only.
    #[test]
    fn every_imported_module_is_embedded() {
        for a in ASSETS {
            for line in a.body.lines() {
                let Some(rest) = line.split(" from \"./").nth(1) else { continue };
                let name = rest.split('"').next().unwrap_or_default();
                assert!(ASSETS.iter().any(|b| b.name == name), "{} imports {name}, which is not embedded", a.name);
            }
            if a.name == "index.html" {
                for part in a.body.split("/console/").skip(1) {
                    let name = part.split('"').next().unwrap_or_default();
                    assert!(ASSETS.iter().any(|b| b.name == name), "index.html links {name}, which is not embedded");
                }
            }
        }
    }

    #[test]
    fn unknown_files_are_refused_by_name() {
        let r = serve("../Cargo.toml");
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        let r = serve("app.js");
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()[header::CONTENT_TYPE], JS);
        assert!(
            r.headers()[header::CONTENT_SECURITY_POLICY].to_str().unwrap_or_default().contains("script-src 'self'")
        );
    }
}
