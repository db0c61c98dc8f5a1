//! Input rules shared by the API and the portal.

use crate::error::AppError;

pub const MAX_NAME: usize = 200;

/// A display name: trimmed, 1 to 200 characters, no control characters.
pub fn name(field: &str, value: &str) -> Result<String, AppError> {
    let v = value.trim();
    if v.is_empty() {
        return Err(AppError::validation(
            field,
            format!("{field} must not be empty"),
        ));
    }
    if v.chars().count() > MAX_NAME {
        return Err(AppError::validation(
            field,
            format!("{field} is longer than {MAX_NAME} characters"),
        ));
    }
    if v.chars().any(char::is_control) {
        return Err(AppError::validation(
            field,
            format!("{field} must not contain control characters"),
        ));
    }
    Ok(v.to_owned())
}

/// An e-mail address, lower-cased.
pub fn email(value: &str) -> Result<String, AppError> {
    let v = value.trim().to_ascii_lowercase();
    let ok = v.len() <= 254
        && v.split_once('@').is_some_and(|(user, host)| {
            !user.is_empty() && !host.is_empty() && !host.starts_with('.') && !host.ends_with('.')
        })
        && !v.chars().any(|c| c.is_whitespace() || c.is_control());
    if ok {
        Ok(v)
    } else {
        Err(AppError::validation("email", "not an e-mail address"))
    }
}

pub fn password(value: &str) -> Result<(), AppError> {
    let n = value.chars().count();
    if !(10..=256).contains(&n) {
        return Err(AppError::validation(
            "password",
            "a password is 10 to 256 characters",
        ));
    }
    Ok(())
}

/// A seat quantity: 1 to 1,000,000.
pub fn quantity(field: &str, value: i64) -> Result<i64, AppError> {
    if !(1..=1_000_000).contains(&value) {
        return Err(AppError::validation(
            field,
            format!("{field} must be between 1 and 1000000"),
        ));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_emails() {
        assert_eq!(name("name", "  CAD Suite ").unwrap(), "CAD Suite");
        assert!(name("name", " ").is_err());
        assert!(name("name", &"x".repeat(201)).is_err());
        assert!(name("name", "a\u{0}b").is_err());
        assert_eq!(email("Ops@Example.COM").unwrap(), "ops@example.com");
        assert!(email("nope").is_err());
        assert!(email("a@").is_err());
        assert!(password("short").is_err());
        assert!(password("long enough pw").is_ok());
        assert!(quantity("quantity", 0).is_err());
        assert!(quantity("quantity", 5).is_ok());
    }
}
