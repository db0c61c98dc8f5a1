//! Input rules shared by the API and the portal, and what a capability request may carry.

use shared::capability::{CapabilityRequest, MAX_REPORTED_INTERVALS, Role, UsageInterval};
use shared::signing;

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

/// A license server's Ed25519 public key, checked, as it is stored and bound: base64url
/// (no padding) of its 32 bytes, and its key ID.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerKey {
    pub key: String,
    pub id: String,
}

/// `server_key` of a capability request: base64url of 32 bytes that are a point of the
/// Ed25519 curve.
pub fn server_key(value: &str) -> Result<ServerKey, DomainError> {
    let key = signing::decode_public_key(value).map_err(|e| {
        DomainError::validation(
            "server_key",
            format!(
                "server_key must be the server's Ed25519 public key, base64url (without \
                 padding) of its 32 bytes: {e}"
            ),
        )
    })?;
    if key.is_weak() {
        return Err(DomainError::validation(
            "server_key",
            "server_key is an Ed25519 point of small order, for which signatures prove \
             nothing; generate the server's key anew",
        ));
    }
    Ok(ServerKey {
        key: signing::encode_public_key(&key),
        id: signing::key_id(&key),
    })
}

/// Everything of a capability request that can be checked without storage; its server key,
/// if it sent one.
pub fn capability_request(req: &CapabilityRequest) -> Result<Option<ServerKey>, DomainError> {
    unix_seconds("sent_at", req.sent_at)?;
    if req.role != Role::Main && req.backup_hostid.is_some() {
        return Err(DomainError::validation(
            "backup_hostid",
            "only a main server names a backup",
        ));
    }
    if req.rights.len() > 100 {
        return Err(DomainError::validation(
            "rights",
            "at most 100 rights IDs per request",
        ));
    }
    if let Some(r) = &req.report {
        if r.usage.len() > 1000 {
            return Err(DomainError::validation(
                "report.usage",
                "at most 1000 features",
            ));
        }
        if r.usage
            .iter()
            .any(|u| u.feature.len() > 64 || u.version.len() > 32)
        {
            return Err(DomainError::validation(
                "report.usage",
                "feature names are at most 64 characters, versions at most 32",
            ));
        }
        usage_intervals(&r.intervals)?;
    }
    req.server_key.as_deref().map(server_key).transpose()
}

/// A report's closed usage intervals: at most [`MAX_REPORTED_INTERVALS`], each a part of
/// an interval of at most a day, with names and codes of sane lengths.
fn usage_intervals(intervals: &[UsageInterval]) -> Result<(), DomainError> {
    const FIELD: &str = "report.intervals";
    if intervals.len() > MAX_REPORTED_INTERVALS {
        return Err(DomainError::validation(
            FIELD,
            format!("at most {MAX_REPORTED_INTERVALS} intervals per request"),
        ));
    }
    for i in intervals {
        for t in [i.starts_at, i.ends_at, i.served_from, i.served_until] {
            unix_seconds(FIELD, t)?;
        }
        let ordered = i.starts_at < i.ends_at
            && i.ends_at - i.starts_at <= 86_400
            && i.starts_at <= i.served_from
            && i.served_from <= i.served_until
            && i.served_until <= i.ends_at;
        if !ordered {
            return Err(DomainError::validation(
                FIELD,
                format!(
                    "the interval of `{}` from {} to {} (served {} to {}) is not a part of an \
                     interval of at most a day",
                    i.feature.chars().take(64).collect::<String>(),
                    i.starts_at,
                    i.ends_at,
                    i.served_from,
                    i.served_until
                ),
            ));
        }
        if i.feature.is_empty() || i.feature.len() > 64 || i.version.len() > 32 {
            return Err(DomainError::validation(
                FIELD,
                "feature names are 1 to 64 characters, versions at most 32",
            ));
        }
        let code_ok = |c: &str| {
            (1..=32).contains(&c.len()) && c.bytes().all(|b| b.is_ascii_uppercase() || b == b'_')
        };
        if i.denials.len() > 32 || !i.denials.keys().all(|c| code_ok(c)) {
            return Err(DomainError::validation(
                FIELD,
                "denials are counted by at most 32 error codes (A-Z and _, up to 32 characters)",
            ));
        }
        if i64::try_from(i.seat_secs).is_err() {
            return Err(DomainError::validation(FIELD, "seat_secs is out of range"));
        }
    }
    Ok(())
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

    #[test]
    fn a_server_key_is_32_bytes_of_the_curve_in_base64url() {
        let signer = signing::Signer::generate();
        let k = server_key(&signer.public_key()).unwrap();
        assert_eq!(k.key, signer.public_key());
        assert_eq!(k.id, signer.kid());
        // Surrounding blanks are dropped; the stored form is the canonical one.
        assert_eq!(
            server_key(&format!(" {} ", signer.public_key())).unwrap(),
            k
        );
        let pem = signer.public_pem();
        let padded = format!("{}=", signer.public_key());
        let short = &signer.public_key()[..20];
        for bad in ["", "not a key", short, &padded, &pem] {
            let e = server_key(bad).unwrap_err();
            assert_eq!(e.field.as_deref(), Some("server_key"), "{bad}");
            assert!(e.message.contains("Ed25519 public key"), "{}", e.message);
        }
        // The identity point (y = 1): a "key" every signature could be forged for.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        let weak =
            base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, identity);
        let e = server_key(&weak).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("server_key"));
        assert!(e.message.contains("small order"), "{}", e.message);
    }

    #[test]
    fn usage_intervals_out_of_shape_are_refused_by_field() {
        let good = UsageInterval {
            feature: "cad".into(),
            version: String::new(),
            starts_at: 1_795_737_600,
            ends_at: 1_795_737_900,
            served_by: shared::HostId::parse("string:m").unwrap(),
            served_from: 1_795_737_600,
            served_until: 1_795_737_900,
            count: 1,
            peak: 1,
            seat_secs: 300,
            grants: 1,
            denials: [("NO_LICENSE".to_owned(), 1)].into(),
            true_denials: 0,
            borrowed: 0,
            overdraft: 0,
            queued: 0,
        };
        assert!(usage_intervals(std::slice::from_ref(&good)).is_ok());
        let bad = [
            UsageInterval {
                ends_at: good.starts_at,
                ..good.clone()
            },
            UsageInterval {
                served_until: good.ends_at + 1,
                ..good.clone()
            },
            UsageInterval {
                ends_at: good.starts_at + 86_401,
                served_until: good.starts_at + 86_401,
                ..good.clone()
            },
            UsageInterval {
                feature: String::new(),
                ..good.clone()
            },
            UsageInterval {
                denials: [("no license<script>".to_owned(), 1)].into(),
                ..good.clone()
            },
            UsageInterval {
                seat_secs: u64::MAX,
                ..good.clone()
            },
        ];
        for b in bad {
            let e = usage_intervals(&[b]).unwrap_err();
            assert_eq!(e.field.as_deref(), Some("report.intervals"));
        }
        let many = vec![good; MAX_REPORTED_INTERVALS + 1];
        assert!(usage_intervals(&many).is_err());
    }
}
