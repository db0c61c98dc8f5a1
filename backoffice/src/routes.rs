//! Every route of the back office, in one place: the JSON API, the portal under `/portal`,
//! and what answers everything else (from the API's document: `404 NOT_FOUND` for a path no
//! operation has, `405` with `NOT_FOUND` and `Allow` for a method a path does not take; the
//! portal answers its own unknown pages with a page).
//!
//! The API's handlers document themselves (`#[utoipa::path]`), and utoipa-actix-web builds
//! the OpenAPI document from the very calls that register them, so a route cannot be
//! served undocumented or documented without being served. The portal's HTML pages are not
//! part of the API and not in its document.

use std::sync::Arc;
use std::time::Duration;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceFactory, ServiceRequest, ServiceResponse};
use actix_web::{App, web};
use http_kit::extract;
use http_kit::observe::observe;
use http_kit::openapi::{RouteTable, fallback};
use http_kit::serve::{ConnectionGate, body_deadline};
use utoipa::OpenApi;
use utoipa_actix_web::AppExt;
use utoipa_actix_web::service_config::ServiceConfig;

use crate::api::doc::ApiDoc;
use crate::api::system::ApiDocument;
use crate::api::{account, admins, auth, capability, producer, system};
use crate::http::{self, MAX_BODY, Metrics};
use crate::portal::layout;
use crate::portal::pages::{clusters, entitlements, home, pairs, servers, signin, tokens};
use crate::state::State;

/// The JSON API.
pub fn api(cfg: &mut ServiceConfig) {
    cfg.service(system::healthz)
        .service(system::metrics)
        .service(system::openapi)
        .service(system::signing_key)
        .service(auth::login)
        .service(auth::logout)
        .service(auth::change_password)
        .service(admins::list_admins)
        .service(admins::add_admin)
        .service(capability::capability)
        .service(producer::list_products)
        .service(producer::create_product)
        .service(producer::get_product)
        .service(producer::update_product)
        .service(producer::delete_product)
        .service(producer::add_feature)
        .service(producer::update_feature)
        .service(producer::delete_feature)
        .service(producer::list_accounts)
        .service(producer::create_account)
        .service(producer::get_account)
        .service(producer::update_account)
        .service(producer::delete_account)
        .service(producer::list_users)
        .service(producer::create_user)
        .service(producer::update_user)
        .service(producer::delete_user)
        .service(producer::list_entitlements)
        .service(producer::create_entitlement)
        .service(producer::update_entitlement)
        .service(producer::delete_entitlement)
        .service(producer::update_line_item)
        .service(producer::delete_line_item)
        .service(producer::list_servers)
        .service(producer::list_tokens)
        .service(producer::create_token)
        .service(producer::revoke_token)
        .service(account::me)
        .service(account::list_servers)
        .service(account::view_server)
        .service(account::usage)
        .service(account::usage_intervals)
        .service(account::entitlement_usage)
        .service(account::register_pair)
        .service(account::register_cluster)
        .service(account::replace_member)
        .service(account::remove_backup)
        .service(account::entitlements)
        .service(account::map_rights)
        .service(account::unmap)
        .service(account::list_tokens)
        .service(account::create_token)
        .service(account::revoke_token);
}

/// The end-user portal.
pub fn portal(cfg: &mut web::ServiceConfig) {
    use web::{get, post};
    cfg.service(
        web::scope("/portal")
            .wrap(crate::portal::security_headers())
            .app_data(crate::portal::form_config())
            .app_data(crate::portal::query_config())
            .route("", get().to(home))
            .route("/", get().to(home))
            .route("/static/portal.css", get().to(layout::css))
            .route("/signin", get().to(signin::signin_form))
            .route("/signin", post().to(signin::signin))
            .route("/signout", post().to(signin::signout))
            .route("/servers", get().to(servers::servers))
            .route("/servers/{id}", get().to(servers::server))
            .route("/servers/{id}/mappings", post().to(servers::map_rights))
            .route(
                "/servers/{id}/mappings/{mapping_id}/unmap",
                post().to(servers::unmap),
            )
            .route(
                "/servers/{id}/remove-backup",
                post().to(servers::remove_backup),
            )
            .route(
                "/servers/{id}/replace-member",
                post().to(servers::replace_member),
            )
            .route("/pairs/new", get().to(pairs::pair_form))
            .route("/pairs", post().to(pairs::register_pair))
            .route("/clusters/new", get().to(clusters::cluster_form))
            .route("/clusters", post().to(clusters::register_cluster))
            .route("/entitlements", get().to(entitlements::entitlements))
            .route("/tokens", get().to(tokens::tokens))
            .route("/tokens", post().to(tokens::create_token))
            .route("/tokens/{id}/revoke", get().to(tokens::revoke_form))
            .route("/tokens/{id}/revoke", post().to(tokens::revoke_token))
            .default_service(web::to(crate::portal::not_found)),
    );
}

/// The API's OpenAPI document, collected from the handlers.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let (_, doc) = App::new()
        .into_utoipa_app()
        .openapi(ApiDoc::openapi())
        .configure(api)
        .split_for_parts();
    doc
}

/// Routes served on the connections beyond the cap: health and metrics.
pub fn is_priority(path: &str) -> bool {
    matches!(path, "/healthz" | "/metrics")
}

/// What every worker serves.
#[derive(Clone)]
pub struct Shared {
    pub state: State,
    pub metrics: web::Data<Metrics>,
    pub document: web::Data<ApiDocument>,
    /// The document's paths and methods: what answers a request no route takes.
    pub routes: Arc<RouteTable>,
    pub gate: Arc<ConnectionGate>,
    /// How long a body may take once the request's head is in.
    pub body_timeout: Duration,
}

/// The application of one worker: every route; the request span, its log line and the
/// metrics; the contract's answers to bad input, unknown paths and wrong methods (the
/// portal answers its own with pages); the connection gate and the body deadline.
pub fn app(
    shared: Shared,
) -> App<
    impl ServiceFactory<
        ServiceRequest,
        Config = (),
        Response = ServiceResponse<impl MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    let observe = observe(shared.metrics.http.clone())
        .span(http::request_span)
        .quiet(http::QUIET);
    App::new()
        .app_data(shared.state)
        .app_data(shared.metrics)
        .app_data(shared.document)
        .app_data(extract::json_config(MAX_BODY))
        .app_data(extract::path_config())
        .app_data(extract::query_config())
        .app_data(extract::payload_config(MAX_BODY))
        .into_utoipa_app()
        .configure(api)
        .into_app()
        .configure(portal)
        .default_service(fallback(shared.routes))
        .wrap(body_deadline(shared.body_timeout))
        .wrap(shared.gate.middleware())
        .wrap(observe)
}
