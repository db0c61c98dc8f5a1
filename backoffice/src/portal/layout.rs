//! The page frame every portal page is drawn in (`base.html`), rendering, and the
//! stylesheet.

use std::sync::LazyLock;

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse};

use super::cookies::{self, Flash};

/// The portal's stylesheet, compiled in.
pub const CSS: &str = include_str!("../../../portal/static/portal.css");

/// The stylesheet's URL, versioned by its content so that it can be cached for a year.
pub static CSS_URL: LazyLock<String> = LazyLock::new(|| {
    let h = crate::store::sha256_hex(CSS);
    format!("/portal/static/portal.css?v={}", &h[..12])
});

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
    pub fn page(req: &HttpRequest, user: UserBar, title: &str, nav: &'static str) -> Layout {
        Layout {
            title: title.to_owned(),
            user: Some(user),
            flash: cookies::flash_of(req),
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
) -> Result<HttpResponse, askama::Error> {
    let body = page.render()?;
    let mut r = HttpResponse::build(status);
    r.content_type("text/html; charset=utf-8");
    if req.cookie(cookies::FLASH_COOKIE).is_some() {
        r.cookie(cookies::removal(cookies::FLASH_COOKIE));
    }
    Ok(r.body(body))
}

/// The stylesheet, cached for a year (its URL changes with it).
pub async fn css() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/css; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "public, max-age=31536000, immutable"))
        .body(CSS)
}
