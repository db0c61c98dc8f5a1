//! The portal's cookies (session, sign-in form, flash message), its redirects, and the
//! small rules about them: constant-time secret comparison, which `next` paths are followed.

use actix_web::cookie::{Cookie, SameSite, time::Duration as CookieDuration};
use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse};
use base64::Engine;

pub const SIGNIN: &str = "/portal/signin";
pub const SESSION_COOKIE: &str = "portal_session";
pub const SIGNIN_COOKIE: &str = "portal_signin";
pub const FLASH_COOKIE: &str = "portal_flash";
pub const COOKIE_PATH: &str = "/portal";

/// Compares two secrets in time independent of where they differ.
pub fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && !a.is_empty()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// Whether the request came over HTTPS (directly or through a proxy that says so), so that
/// cookies get the `Secure` flag there.
fn is_https(req: &HttpRequest) -> bool {
    req.connection_info().scheme() == "https"
}

/// A cookie for the portal's path: HttpOnly, SameSite=Strict, Secure over HTTPS.
pub fn cookie(
    req: &HttpRequest,
    name: &'static str,
    value: String,
    max_age: i64,
) -> Cookie<'static> {
    Cookie::build(name, value)
        .path(COOKIE_PATH)
        .http_only(true)
        .same_site(SameSite::Strict)
        .secure(is_https(req))
        .max_age(CookieDuration::seconds(max_age))
        .finish()
}

/// A cookie that deletes `name`.
pub fn removal(name: &'static str) -> Cookie<'static> {
    let mut c = Cookie::build(name, "")
        .path(COOKIE_PATH)
        .http_only(true)
        .same_site(SameSite::Strict)
        .finish();
    c.make_removal();
    c
}

/// A one-time message shown on the next page.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Flash {
    /// `ok` or `error`.
    pub kind: &'static str,
    pub text: String,
}

pub fn encode_flash(kind: &str, text: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{kind}\n{text}"))
}

pub fn decode_flash(value: &str) -> Option<Flash> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(value)
        .ok()?;
    let s = String::from_utf8(bytes).ok()?;
    let (kind, text) = s.split_once('\n')?;
    let kind = match kind {
        "ok" => "ok",
        "error" => "error",
        _ => return None,
    };
    Some(Flash {
        kind,
        text: text.chars().take(500).collect(),
    })
}

pub fn flash_of(req: &HttpRequest) -> Option<Flash> {
    req.cookie(FLASH_COOKIE)
        .and_then(|c| decode_flash(c.value()))
}

/// 303 See Other to `location` (Post/Redirect/Get), carrying a flash message.
pub fn redirect_with(req: &HttpRequest, location: &str, kind: &str, text: &str) -> HttpResponse {
    HttpResponse::SeeOther()
        .insert_header((header::LOCATION, location.to_owned()))
        .cookie(cookie(req, FLASH_COOKIE, encode_flash(kind, text), 60))
        .finish()
}

pub fn redirect(location: &str) -> HttpResponse {
    HttpResponse::SeeOther()
        .insert_header((header::LOCATION, location.to_owned()))
        .finish()
}

/// Only portal paths (no query, nothing odd) are followed after sign-in.
pub fn safe_next(next: &str) -> Option<&str> {
    let ok = next.starts_with("/portal/")
        && !next.contains("//")
        && next
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '-' | '_'));
    ok.then_some(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flash_round_trips_and_rejects_junk() {
        let v = encode_flash("ok", "Pair registered; <b>ok</b>");
        assert_eq!(
            decode_flash(&v),
            Some(Flash {
                kind: "ok",
                text: "Pair registered; <b>ok</b>".into()
            })
        );
        assert_eq!(decode_flash(&encode_flash("evil", "x")), None);
        assert_eq!(decode_flash("%%%"), None);
    }

    #[test]
    fn only_portal_paths_are_followed() {
        assert_eq!(
            safe_next("/portal/servers/abc-1"),
            Some("/portal/servers/abc-1")
        );
        assert_eq!(safe_next("https://evil.example/"), None);
        assert_eq!(safe_next("/portal//evil.example"), None);
        assert_eq!(safe_next("/portal/x?y=1"), None);
        assert_eq!(safe_next("/api/v1/account"), None);
    }
}
