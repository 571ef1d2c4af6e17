//! The routes, who may call each, and the OpenAPI document generated from
//! them (utoipa): the document and the router are built from the same
//! list, so a route cannot be served without being documented. The
//! console's assets ([`super::console`]) are the one undocumented part:
//! they are files, not API.

use super::state::App;
use super::tokens::Role;
use super::{auth, invoke, observe, operator, reads, streams};
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::middleware::{from_fn_with_state, map_response};
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use utoipa::OpenApi;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Concord",
        description = "A host where sandboxed WebAssembly agents share one versioned, owned, audited knowledge base: triggers, reads, streams and operator actions. Every answer is durable before it is sent.",
        license(name = "Apache-2.0", identifier = "Apache-2.0")
    ),
    modifiers(&Bearer),
    tags(
        (name = "invoke", description = "Trigger agents and follow their invocations"),
        (name = "read", description = "The knowledge base, the audit and the reports"),
        (name = "stream", description = "Server-Sent Events, resumable by seq"),
        (name = "operator", description = "Human actions, recorded under the token's name"),
        (name = "observe", description = "Health and metrics"),
    )
)]
struct Doc;

struct Bearer;

impl utoipa::Modify for Bearer {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The router, with its state, and the document that describes it.
pub fn router(app: Arc<App>) -> (Router, utoipa::openapi::OpenApi) {
    let role = |r: Role| from_fn_with_state((app.clone(), r), auth::require);
    let read = OpenApiRouter::<Arc<App>>::new()
        .routes(routes!(reads::entities))
        .routes(routes!(reads::entity))
        .routes(routes!(reads::history))
        .routes(routes!(reads::audit))
        .routes(routes!(reads::verify, reads::verify_checkpoint))
        .routes(routes!(reads::trace))
        .routes(routes!(reads::conflicts))
        .routes(routes!(reads::actions))
        .routes(routes!(reads::agents))
        .routes(routes!(reads::schema))
        .routes(routes!(reads::whoami))
        .routes(routes!(reads::change_requests))
        .routes(routes!(reads::schedules))
        .routes(routes!(reads::replay))
        .routes(routes!(streams::events))
        .routes(routes!(streams::audit))
        .routes(routes!(invoke::status))
        .routes(routes!(observe::metrics))
        .route_layer(role(Role::Read));
    let invoke = OpenApiRouter::<Arc<App>>::new()
        .routes(routes!(invoke::invoke))
        .routes(routes!(invoke::resume))
        .route_layer(role(Role::Invoke));
    let operator = OpenApiRouter::<Arc<App>>::new()
        .routes(routes!(operator::pin))
        .routes(routes!(operator::unpin))
        .routes(routes!(operator::break_lease))
        .routes(routes!(operator::retry_action))
        .routes(routes!(operator::revert))
        .routes(routes!(operator::import_rows))
        .routes(routes!(operator::checkpoint))
        .routes(routes!(operator::key))
        .route_layer(role(Role::Operator));
    let open = OpenApiRouter::<Arc<App>>::new().routes(routes!(observe::healthz)).routes(routes!(observe::readyz));
    let (router, doc) = OpenApiRouter::with_openapi(Doc::openapi())
        .merge(read)
        .merge(invoke)
        .merge(operator)
        .merge(open)
        .split_for_parts();
    let document = doc.clone();
    let router = router
        .route("/v1/openapi.json", axum::routing::get(move || async move { axum::Json(document) }))
        .merge(super::console::routes())
        .fallback(|| async {
            super::error::ApiError::not_found("no_such_route", "no such route: see /v1/openapi.json for the API")
        })
        .layer(map_response(json_405))
        .layer(DefaultBodyLimit::max(app.config.max_body_bytes))
        .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(app.config.body_timeout))
        .layer(from_fn_with_state(app.clone(), observe::log))
        .with_state(app);
    (router, doc)
}

/// axum answers a known path with a wrong method 405 and no body: give it
/// the API's error body.
async fn json_405(response: Response) -> Response {
    if response.status() != StatusCode::METHOD_NOT_ALLOWED || response.headers().contains_key("content-type") {
        return response;
    }
    let allow = response.headers().get("allow").cloned();
    let mut r = super::error::ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!(
            "this route takes {}; see /v1/openapi.json",
            allow.as_ref().and_then(|a| a.to_str().ok()).unwrap_or("another method")
        ),
    )
    .into_response();
    if let Some(a) = allow {
        r.headers_mut().insert("allow", a);
    }
    r
}
