//! Input rules shared by the API and the portal.

use super::DomainError;

pub const MAX_NAME: usize = 200;

/// A display name: trimmed, 1 to 200 characters, no control characters.
pub fn name(field: &str, value: &str) -> Result<String, DomainError> {
    let v = value.trim();
    if v.is_empty() {
        return Err(DomainError::validation(
            field,
            format!("{field} must not be empty"),
        ));
    }
    if v.chars().count() > MAX_NAME {
        return Err(DomainError::validation(
            field,
            format!("{field} is longer than {MAX_NAME} characters"),
        ));
    }
    if v.chars().any(char::is_control) {
        return Err(DomainError::validation(
            field,
            format!("{field} must not contain control characters"),
        ));
    }
    Ok(v.to_owned())
}

/// An e-mail address, lower-cased.
pub fn email(value: &str) -> Result<String, DomainError> {
    let v = value.trim().to_ascii_lowercase();
    let ok = v.len() <= 254
        && v.split_once('@').is_some_and(|(user, host)| {
            !user.is_empty() && !host.is_empty() && !host.starts_with('.') && !host.ends_with('.')
        })
        && !v.chars().any(|c| c.is_whitespace() || c.is_control());
    if ok {
        Ok(v)
    } else {
        Err(DomainError::validation("email", "not an e-mail address"))
    }
}

pub fn password(value: &str) -> Result<(), DomainError> {
    let n = value.chars().count();
    if !(10..=256).contains(&n) {
        return Err(DomainError::validation(
            "password",
            "a password is 10 to 256 characters",
        ));
    }
    Ok(())
}

/// A seat quantity: 1 to 1,000,000.
pub fn quantity(field: &str, value: i64) -> Result<i64, DomainError> {
    if !(1..=1_000_000).contains(&value) {
        return Err(DomainError::validation(
            field,
            format!("{field} must be between 1 and 1000000"),
        ));
    }
    Ok(value)
}

/// The latest time the API accepts: 9999-12-31T23:59:59Z, in Unix seconds. A larger number
/// is almost always milliseconds sent where seconds are meant.
pub const MAX_UNIX_SECONDS: i64 = 253_402_300_799;

/// A point in time in Unix seconds (the API's one time unit): 0 to [`MAX_UNIX_SECONDS`].
pub fn unix_seconds(field: &str, value: i64) -> Result<i64, DomainError> {
    if (0..=MAX_UNIX_SECONDS).contains(&value) {
        return Ok(value);
    }
    let hint = if value > MAX_UNIX_SECONDS && value / 1000 <= MAX_UNIX_SECONDS {
        format!(
            "; it looks like milliseconds: send {} instead",
            value / 1000
        )
    } else {
        String::new()
    };
    Err(DomainError::validation(
        field,
        format!(
            "{field} is {value}, which is not a time in Unix seconds (seconds since \
             1970-01-01T00:00:00Z, at most {MAX_UNIX_SECONDS}){hint}"
        ),
    ))
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

    #[test]
    fn times_are_unix_seconds_and_milliseconds_are_refused() {
        assert_eq!(unix_seconds("starts_at", 1_798_366_799), Ok(1_798_366_799));
        let e = unix_seconds("line_items.starts_at", 1_798_366_799_000).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("line_items.starts_at"));
        assert!(e.message.contains("Unix seconds"), "{}", e.message);
        assert!(e.message.contains("milliseconds"), "{}", e.message);
        assert!(e.message.contains("1798366799 instead"), "{}", e.message);
        assert!(unix_seconds("expires_at", -1).is_err());
        assert!(unix_seconds("expires_at", MAX_UNIX_SECONDS).is_ok());
    }
}
