//! The end-user portal: server-rendered pages under `/portal` for account users.
//!
//! Templates (askama, auto-escaped) live in `portal/templates`, the stylesheet in
//! `portal/static`. Handlers are thin: they take the signed-in user's account ID from the
//! session and pass it to the same store functions the account API uses, which filter by it.
//! Every POST form carries a CSRF token; every success answers with a redirect (PRG) and a
//! flash message.

pub mod chart;
mod pages;
pub mod session;
pub mod view;

use std::sync::LazyLock;

use actix_web::http::header;
use actix_web::middleware::DefaultHeaders;
use actix_web::{HttpRequest, HttpResponse, web};

pub use session::{Flash, PortalError, PortalUser};

/// The portal's stylesheet, compiled in.
pub const CSS: &str = include_str!("../../../portal/static/portal.css");

/// The stylesheet's URL, versioned by its content so that it can be cached for a year.
pub static CSS_URL: LazyLock<String> = LazyLock::new(|| {
    let h = crate::store::sha256_hex(CSS);
    format!("/portal/static/portal.css?v={}", &h[..12])
});

pub const SIGNIN: &str = "/portal/signin";

/// `Content-Security-Policy` of every portal page: nothing but this origin, no framing,
/// no inline scripts or styles.
pub const CSP: &str = "default-src 'self'; img-src 'self' data:; form-action 'self'; \
                       frame-ancestors 'none'; base-uri 'none'; object-src 'none'";

/// What the page frame (`base.html`) shows.
#[derive(Clone, Debug)]
pub struct Layout {
    pub title: String,
    pub user: Option<UserBar>,
    pub flash: Option<Flash>,
    /// Which navigation entry is current: `servers`, `entitlements`, `tokens` or empty.
    pub nav: &'static str,
    pub css: &'static str,
}

#[derive(Clone, Debug)]
pub struct UserBar {
    pub email: String,
    pub csrf: String,
}

impl Layout {
    /// A frame without a signed-in user (sign-in and error pages).
    pub fn bare(title: &str) -> Layout {
        Layout {
            title: title.to_owned(),
            user: None,
            flash: None,
            nav: "",
            css: CSS_URL.as_str(),
        }
    }

    /// The frame of a signed-in page, with the flash message of the request if any.
    pub fn page(req: &HttpRequest, user: &PortalUser, title: &str, nav: &'static str) -> Layout {
        Layout {
            title: title.to_owned(),
            user: Some(UserBar {
                email: user.email.clone(),
                csrf: user.csrf_token.clone(),
            }),
            flash: session::flash_of(req),
            nav,
            css: CSS_URL.as_str(),
        }
    }
}

/// Renders a page; a flash message shown on it is deleted.
pub fn html<T: askama::Template>(
    req: &HttpRequest,
    status: actix_web::http::StatusCode,
    page: &T,
) -> Result<HttpResponse, PortalError> {
    let body = page.render()?;
    let mut r = HttpResponse::build(status);
    r.content_type("text/html; charset=utf-8");
    if req.cookie(session::FLASH_COOKIE).is_some() {
        r.cookie(session::removal(session::FLASH_COOKIE));
    }
    Ok(r.body(body))
}

async fn css() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/css; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "public, max-age=31536000, immutable"))
        .body(CSS)
}

async fn not_found() -> Result<HttpResponse, PortalError> {
    Err(PortalError::NotFound)
}

fn security_headers() -> DefaultHeaders {
    DefaultHeaders::new()
        .add((header::CONTENT_SECURITY_POLICY, CSP))
        .add((header::X_FRAME_OPTIONS, "DENY"))
        .add((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .add((header::REFERRER_POLICY, "same-origin"))
        // Pages hold account data and one-time secrets: never cached. (The stylesheet sets
        // its own long cache, which DefaultHeaders leaves alone.)
        .add((header::CACHE_CONTROL, "no-store"))
}

fn form_config() -> web::FormConfig {
    web::FormConfig::default()
        .limit(16 * 1024)
        .error_handler(|err, _req| {
            PortalError::BadRequest(format!("The form could not be read: {err}")).into()
        })
}

fn query_config() -> web::QueryConfig {
    web::QueryConfig::default().error_handler(|err, _req| {
        PortalError::BadRequest(format!("The address could not be read: {err}")).into()
    })
}

/// Every portal route.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/portal"),
    ("GET", "/portal/static/portal.css"),
    ("GET", "/portal/signin"),
    ("POST", "/portal/signin"),
    ("POST", "/portal/signout"),
    ("GET", "/portal/servers"),
    ("GET", "/portal/servers/{id}"),
    ("POST", "/portal/servers/{id}/mappings"),
    ("POST", "/portal/servers/{id}/mappings/{mapping_id}/unmap"),
    ("POST", "/portal/servers/{id}/remove-backup"),
    ("GET", "/portal/pairs/new"),
    ("POST", "/portal/pairs"),
    ("GET", "/portal/entitlements"),
    ("GET", "/portal/tokens"),
    ("POST", "/portal/tokens"),
    ("GET", "/portal/tokens/{id}/revoke"),
    ("POST", "/portal/tokens/{id}/revoke"),
];

pub fn routes(cfg: &mut web::ServiceConfig) {
    use web::{get, post};
    cfg.service(
        web::scope("/portal")
            .wrap(security_headers())
            .app_data(form_config())
            .app_data(query_config())
            .route("", get().to(pages::home))
            .route("/", get().to(pages::home))
            .route("/static/portal.css", get().to(css))
            .route("/signin", get().to(pages::signin_form))
            .route("/signin", post().to(pages::signin))
            .route("/signout", post().to(pages::signout))
            .route("/servers", get().to(pages::servers))
            .route("/servers/{id}", get().to(pages::server))
            .route("/servers/{id}/mappings", post().to(pages::map_rights))
            .route(
                "/servers/{id}/mappings/{mapping_id}/unmap",
                post().to(pages::unmap),
            )
            .route(
                "/servers/{id}/remove-backup",
                post().to(pages::remove_backup),
            )
            .route("/pairs/new", get().to(pages::pair_form))
            .route("/pairs", post().to(pages::register_pair))
            .route("/entitlements", get().to(pages::entitlements))
            .route("/tokens", get().to(pages::tokens))
            .route("/tokens", post().to(pages::create_token))
            .route("/tokens/{id}/revoke", get().to(pages::revoke_form))
            .route("/tokens/{id}/revoke", post().to(pages::revoke_token))
            .default_service(web::to(not_found)),
    );
}
