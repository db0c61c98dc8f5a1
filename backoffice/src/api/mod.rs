//! The JSON API: thin handlers over the store.

pub mod account;
pub mod auth;
pub mod capability;
pub mod producer;

use actix_web::{HttpRequest, HttpResponse, web};
use shared::ErrorCode;

use crate::app::AppState;
use crate::db::DbConn;
use crate::error::{AppError, AppResult};
use crate::writer::Committed;

/// Largest request body accepted.
pub const MAX_BODY: usize = 64 * 1024;

pub type State = web::Data<AppState>;

/// Runs storage work on the blocking pool with a pooled connection.
pub async fn run<T, F>(state: &State, f: F) -> AppResult<T>
where
    T: Send + 'static,
    F: FnOnce(&mut DbConn) -> AppResult<T> + Send + 'static,
{
    let pool = state.pool.clone();
    web::block(move || {
        let mut conn = pool.get()?;
        f(&mut conn)
    })
    .await?
}

/// Like [`run`], for the capability requests, which all write: on SQLite they go to its
/// writer thread (one writer at a time, committed in batches; see [`crate::writer`]). The
/// result comes with what tells when it is committed: answer only after that.
pub async fn run_write<T, F>(state: &State, f: F) -> AppResult<(AppResult<T>, Committed)>
where
    T: Send + 'static,
    F: FnOnce(&mut DbConn) -> AppResult<T> + Send + 'static,
{
    match &state.writer {
        Some(w) => w.run(f).await,
        None => Ok((run(state, f).await, Committed::done())),
    }
}

pub fn json_config() -> web::JsonConfig {
    web::JsonConfig::default()
        .limit(MAX_BODY)
        .error_handler(|err, _req| {
            let msg = match &err {
                actix_web::error::JsonPayloadError::OverflowKnownLength { .. }
                | actix_web::error::JsonPayloadError::Overflow { .. } => {
                    format!("the body is larger than {MAX_BODY} bytes")
                }
                actix_web::error::JsonPayloadError::ContentType => {
                    "send the body as application/json".to_owned()
                }
                other => format!("malformed JSON body: {other}"),
            };
            AppError::validation("body", msg).into()
        })
}

pub fn path_config() -> web::PathConfig {
    web::PathConfig::default()
        .error_handler(|err, _req| AppError::validation("path", err.to_string()).into())
}

pub fn query_config() -> web::QueryConfig {
    web::QueryConfig::default()
        .error_handler(|err, _req| AppError::validation("query", err.to_string()).into())
}

/// Reads a body of at most [`MAX_BODY`] bytes.
pub async fn read_body(mut payload: web::Payload) -> AppResult<web::BytesMut> {
    use futures_util::StreamExt;
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk
            .map_err(|e| AppError::validation("body", format!("cannot read the body: {e}")))?;
        if body.len() + chunk.len() > MAX_BODY {
            return Err(AppError::validation(
                "body",
                format!("the body is larger than {MAX_BODY} bytes"),
            ));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Parses a JSON body taken as bytes (used where authentication must come first).
pub fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> AppResult<T> {
    if body.len() > MAX_BODY {
        return Err(AppError::validation(
            "body",
            format!("the body is larger than {MAX_BODY} bytes"),
        ));
    }
    serde_json::from_slice(body)
        .map_err(|e| AppError::validation("body", format!("malformed JSON body: {e}")))
}

pub async fn not_found(req: HttpRequest) -> HttpResponse {
    actix_web::ResponseError::error_response(&AppError::new(
        ErrorCode::NotFound,
        format!("no such endpoint: {} {}", req.method(), req.path()),
    ))
}

async fn method_not_allowed(req: HttpRequest) -> HttpResponse {
    HttpResponse::MethodNotAllowed().json(shared::ErrorBody::new(
        ErrorCode::ValidationError,
        format!("{} is not allowed on {}", req.method(), req.path()),
    ))
}

async fn healthz(state: State) -> AppResult<HttpResponse> {
    run(&state, |c| {
        use diesel::connection::SimpleConnection;
        c.batch_execute("SELECT 1").map_err(AppError::from)
    })
    .await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({"status": "ok"})))
}

async fn metrics(state: State) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/openmetrics-text; version=1.0.0; charset=utf-8")
        .body(state.metrics.render())
}

pub const OPENAPI: &str = include_str!("../../openapi.json");

async fn openapi() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(OPENAPI)
}

async fn signing_key(state: State) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/x-pem-file")
        .body(state.public_pem.clone())
}

/// A resource whose other methods answer 405 with the contract's error JSON.
fn resource(path: &str) -> actix_web::Resource {
    web::resource(path).default_service(web::to(method_not_allowed))
}

/// Every route of the API. (The OpenAPI document lists the same; a test keeps them in step.)
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/healthz"),
    ("GET", "/metrics"),
    ("GET", "/api/v1/openapi.json"),
    ("GET", "/api/v1/signing-key"),
    ("POST", "/api/v1/auth/login"),
    ("POST", "/api/v1/auth/logout"),
    ("POST", "/api/v1/capability"),
    ("GET", "/api/v1/products"),
    ("POST", "/api/v1/products"),
    ("GET", "/api/v1/products/{id}"),
    ("POST", "/api/v1/products/{id}/features"),
    ("GET", "/api/v1/accounts"),
    ("POST", "/api/v1/accounts"),
    ("GET", "/api/v1/accounts/{id}"),
    ("GET", "/api/v1/accounts/{id}/users"),
    ("POST", "/api/v1/accounts/{id}/users"),
    ("GET", "/api/v1/accounts/{id}/entitlements"),
    ("POST", "/api/v1/accounts/{id}/entitlements"),
    ("GET", "/api/v1/accounts/{id}/servers"),
    ("GET", "/api/v1/accounts/{id}/device-tokens"),
    ("POST", "/api/v1/accounts/{id}/device-tokens"),
    ("DELETE", "/api/v1/accounts/{id}/device-tokens/{token_id}"),
    ("GET", "/api/v1/account"),
    ("GET", "/api/v1/account/servers"),
    ("GET", "/api/v1/account/servers/{id}"),
    ("GET", "/api/v1/account/servers/{id}/usage"),
    ("POST", "/api/v1/account/pairs"),
    ("DELETE", "/api/v1/account/pairs/{id}/backup"),
    ("GET", "/api/v1/account/entitlements"),
    ("POST", "/api/v1/account/mappings"),
    ("DELETE", "/api/v1/account/mappings/{id}"),
    ("GET", "/api/v1/account/device-tokens"),
    ("POST", "/api/v1/account/device-tokens"),
    ("DELETE", "/api/v1/account/device-tokens/{id}"),
];

pub fn routes(cfg: &mut web::ServiceConfig) {
    use web::{delete, get, post};
    cfg.service(resource("/healthz").route(get().to(healthz)))
        .service(resource("/metrics").route(get().to(metrics)))
        .service(resource("/api/v1/openapi.json").route(get().to(openapi)))
        .service(resource("/api/v1/signing-key").route(get().to(signing_key)))
        .service(resource("/api/v1/auth/login").route(post().to(auth::login)))
        .service(resource("/api/v1/auth/logout").route(post().to(auth::logout)))
        .service(resource("/api/v1/capability").route(post().to(capability::capability)))
        .service(
            resource("/api/v1/products")
                .route(get().to(producer::list_products))
                .route(post().to(producer::create_product)),
        )
        .service(resource("/api/v1/products/{id}").route(get().to(producer::get_product)))
        .service(resource("/api/v1/products/{id}/features").route(post().to(producer::add_feature)))
        .service(
            resource("/api/v1/accounts")
                .route(get().to(producer::list_accounts))
                .route(post().to(producer::create_account)),
        )
        .service(resource("/api/v1/accounts/{id}").route(get().to(producer::get_account)))
        .service(
            resource("/api/v1/accounts/{id}/users")
                .route(get().to(producer::list_users))
                .route(post().to(producer::create_user)),
        )
        .service(
            resource("/api/v1/accounts/{id}/entitlements")
                .route(get().to(producer::list_entitlements))
                .route(post().to(producer::create_entitlement)),
        )
        .service(resource("/api/v1/accounts/{id}/servers").route(get().to(producer::list_servers)))
        .service(
            resource("/api/v1/accounts/{id}/device-tokens")
                .route(get().to(producer::list_tokens))
                .route(post().to(producer::create_token)),
        )
        .service(
            resource("/api/v1/accounts/{id}/device-tokens/{token_id}")
                .route(delete().to(producer::revoke_token)),
        )
        .service(resource("/api/v1/account").route(get().to(account::me)))
        .service(resource("/api/v1/account/servers").route(get().to(account::list_servers)))
        .service(resource("/api/v1/account/servers/{id}").route(get().to(account::view_server)))
        .service(resource("/api/v1/account/servers/{id}/usage").route(get().to(account::usage)))
        .service(resource("/api/v1/account/pairs").route(post().to(account::register_pair)))
        .service(
            resource("/api/v1/account/pairs/{id}/backup")
                .route(delete().to(account::remove_backup)),
        )
        .service(resource("/api/v1/account/entitlements").route(get().to(account::entitlements)))
        .service(resource("/api/v1/account/mappings").route(post().to(account::map_rights)))
        .service(resource("/api/v1/account/mappings/{id}").route(delete().to(account::unmap)))
        .service(
            resource("/api/v1/account/device-tokens")
                .route(get().to(account::list_tokens))
                .route(post().to(account::create_token)),
        )
        .service(
            resource("/api/v1/account/device-tokens/{id}")
                .route(delete().to(account::revoke_token)),
        );
}

#[cfg(test)]
mod tests {
    #[test]
    fn openapi_lists_every_route() {
        let doc: serde_json::Value = serde_json::from_str(super::OPENAPI).unwrap();
        let paths = doc["paths"].as_object().unwrap();
        for (method, path) in super::ROUTES {
            let item = paths
                .get(*path)
                .unwrap_or_else(|| panic!("{path} missing from openapi.json"));
            assert!(
                item.get(method.to_ascii_lowercase()).is_some(),
                "{method} {path} missing from openapi.json"
            );
        }
        // And nothing documented that does not exist.
        let documented: usize = paths.values().map(|v| v.as_object().unwrap().len()).sum();
        assert_eq!(documented, super::ROUTES.len());
    }
}
