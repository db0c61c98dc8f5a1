//! Settings: a TOML file (`--config`), each name overridden by the environment variable of
//! the same name. Every setting is checked before anything starts; a bad one is refused in
//! one line that names the setting, the value and what is expected.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use http_kit::telemetry::LogFormat;
use http_kit::tls::TlsFiles;
use shared::secret::Secret;

use crate::domain::validate;

/// Every setting there is (the contract's and the back office's own).
pub const NAMES: &[&str] = &[
    "LISTEN",
    "DATA_DIR",
    "DATABASE_URL",
    "SIGNING_KEY",
    "ADMIN_EMAIL",
    "ADMIN_PASSWORD",
    "POLL_INTERVAL",
    "CLOCK_SKEW",
    "RESPONSE_LIFETIME",
    "RIGHTS_VALIDITY",
    "SESSION_LIFETIME",
    "SERVER_TIMEOUT",
    "MAX_LINKS",
    "MAX_LINKS_PER_ACCOUNT",
    "DB_POOL_SIZE",
    "WORKERS",
    "LOG_FORMAT",
    "TLS_CERT",
    "TLS_KEY",
];

#[derive(Debug, Clone)]
pub struct Settings {
    /// Address to listen on.
    pub listen: String,
    /// Where the SQLite file and the signing key live when nothing else is named.
    pub data_dir: PathBuf,
    /// `sqlite://PATH` or `postgres://…`; unset means `DATA_DIR/backoffice.db`.
    pub database_url: Option<Secret>,
    /// Ed25519 private key (PKCS#8 PEM); generated into DATA_DIR on first start when absent.
    pub signing_key: Option<PathBuf>,
    /// The first producer administrator, created on first start.
    pub admin_email: String,
    /// Its password; generated and printed once when unset.
    pub admin_password: Option<Secret>,
    /// How often license servers poll (sent to them in every answer).
    pub poll_interval: Duration,
    /// How far a license server's clock may be off.
    pub clock_skew: Duration,
    /// How long a signed capability response is valid for.
    pub response_lifetime: Duration,
    /// How long a license server may serve the rights of one answer without a newer one
    /// (the answer's `serve_until`, and its binding's end); longer than `poll_interval`.
    pub rights_validity: Duration,
    /// How long a sign-in lasts.
    pub session_lifetime: Duration,
    /// A server whose live link has been down this long (nothing heard from it) is
    /// `inaccessible`; a link is held for a third of it, so a live server is heard from
    /// three times as often.
    pub server_timeout: Duration,
    /// Live links held open at once, in all (`MAX_LINKS`) and per account
    /// (`MAX_LINKS_PER_ACCOUNT`); one more is refused with `TOO_MANY_REQUESTS`.
    pub max_links: usize,
    pub max_links_per_account: usize,
    /// Database connections.
    pub db_pool_size: u32,
    /// HTTP worker threads; unset means one per core.
    pub workers: Option<usize>,
    pub log_format: LogFormat,
    /// `TLS_CERT` and `TLS_KEY`: serve HTTPS only, with this certificate chain and key.
    pub tls: Option<TlsFiles>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingsError {
    #[error("{name}={value} is not valid: expected {expected}")]
    Invalid {
        name: &'static str,
        /// As shown: quoted, secrets hidden.
        value: String,
        expected: String,
    },
    #[error("{name} in {file} is not a setting; the settings are {}", NAMES.join(", "))]
    Unknown { name: String, file: String },
    #[error("cannot read the settings file {file}: {reason}")]
    File { file: String, reason: String },
}

/// The raw values by name, as read from the file and the environment.
pub type Raw = BTreeMap<&'static str, String>;

impl Settings {
    /// The file (if given), then the environment; then every value checked.
    pub fn load(file: Option<&Path>) -> Result<Settings, SettingsError> {
        let mut raw = match file {
            Some(f) => read_file(f)?,
            None => Raw::new(),
        };
        for name in NAMES {
            if let Some(v) = std::env::var_os(name) {
                raw.insert(name, v.to_string_lossy().into_owned());
            }
        }
        Settings::from_raw(&raw)
    }

    /// Checks every value; absent ones take their defaults.
    pub fn from_raw(raw: &Raw) -> Result<Settings, SettingsError> {
        let get = |name: &'static str| raw.get(name).map(|v| Value { name, raw: v });
        let text = |name: &'static str, default: &str| {
            get(name).map_or_else(|| default.to_owned(), |v| v.raw.trim().to_owned())
        };
        let listen = text("LISTEN", "127.0.0.1:8080");
        check_listen(&listen)?;
        let data_dir = text("DATA_DIR", "data");
        if data_dir.is_empty() {
            return Err(invalid("DATA_DIR", "\"\"", "a directory"));
        }
        let database_url = match get("DATABASE_URL") {
            Some(v) if !v.raw.trim().is_empty() => Some(v.database_url()?),
            _ => None,
        };
        let signing_key = match get("SIGNING_KEY") {
            Some(v) if v.raw.trim().is_empty() => {
                return Err(v.invalid("the path of an Ed25519 private key file (PEM)"));
            }
            Some(v) => Some(PathBuf::from(v.raw.trim())),
            None => None,
        };
        let admin_email = text("ADMIN_EMAIL", "admin@localhost");
        let admin_email = validate::email(&admin_email).map_err(|_| {
            invalid(
                "ADMIN_EMAIL",
                &quoted(&admin_email),
                "an e-mail address such as admin@example.com",
            )
        })?;
        let admin_password = match get("ADMIN_PASSWORD") {
            Some(v) if !v.raw.is_empty() => {
                if validate::password(v.raw).is_err() {
                    return Err(invalid(
                        "ADMIN_PASSWORD",
                        &format!("(hidden, {} characters)", v.raw.chars().count()),
                        "a password of 10 to 256 characters",
                    ));
                }
                Some(Secret::new(v.raw))
            }
            _ => None,
        };
        let duration = |name: &'static str, default: &str, min: u64, max: u64| {
            let v = get(name).unwrap_or(Value { name, raw: default });
            v.duration(Duration::from_secs(min), Duration::from_secs(max))
        };
        const DAY: u64 = 86_400;
        let poll_interval = duration("POLL_INTERVAL", "10m", 1, 7 * DAY)?;
        let clock_skew = duration("CLOCK_SKEW", "5m", 1, DAY)?;
        let response_lifetime = duration("RESPONSE_LIFETIME", "5m", 10, 7 * DAY)?;
        let rights_validity = duration("RIGHTS_VALIDITY", "30d", 60, 365 * DAY)?;
        if rights_validity <= poll_interval {
            let v = get("RIGHTS_VALIDITY").unwrap_or(Value {
                name: "RIGHTS_VALIDITY",
                raw: "30d",
            });
            return Err(v.invalid(&format!(
                "a duration longer than POLL_INTERVAL ({}), so that a server's next poll \
                 comes before its rights end",
                shared::duration::format(poll_interval)
            )));
        }
        let session_lifetime = duration("SESSION_LIFETIME", "12h", 60, 90 * DAY)?;
        let server_timeout = duration("SERVER_TIMEOUT", "60s", 1, 90 * DAY)?;
        let max_links = match get("MAX_LINKS") {
            Some(v) => v.number(1, 1_000_000)? as usize,
            None => 10_000,
        };
        let max_links_per_account = match get("MAX_LINKS_PER_ACCOUNT") {
            Some(v) => v.number(1, 1_000_000)? as usize,
            None => 1_000,
        };
        let db_pool_size = match get("DB_POOL_SIZE") {
            Some(v) => v.number(1, 1000)? as u32,
            None => 8,
        };
        let workers = match get("WORKERS") {
            Some(v) => Some(v.number(1, 1024)? as usize),
            None => None,
        };
        let log_format = match get("LOG_FORMAT") {
            None => LogFormat::Text,
            Some(v) => match v.raw.trim() {
                "text" => LogFormat::Text,
                "json" => LogFormat::Json,
                _ => return Err(v.invalid("text or json")),
            },
        };
        let path = |name: &'static str| match get(name) {
            Some(v) if v.raw.trim().is_empty() => Err(v.invalid("the path of a PEM file")),
            Some(v) => Ok(Some(PathBuf::from(v.raw.trim()))),
            None => Ok(None),
        };
        let tls = match (path("TLS_CERT")?, path("TLS_KEY")?) {
            (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
            (None, None) => None,
            (Some(_), None) => {
                return Err(invalid(
                    "TLS_KEY",
                    "(unset)",
                    "the private key's PEM file too, since TLS_CERT is set (both serve HTTPS, neither plain HTTP)",
                ));
            }
            (None, Some(_)) => {
                return Err(invalid(
                    "TLS_CERT",
                    "(unset)",
                    "the certificate chain's PEM file too, since TLS_KEY is set (both serve HTTPS, neither plain HTTP)",
                ));
            }
        };
        Ok(Settings {
            listen,
            data_dir: PathBuf::from(data_dir),
            database_url,
            signing_key,
            admin_email,
            admin_password,
            poll_interval,
            clock_skew,
            response_lifetime,
            rights_validity,
            session_lifetime,
            server_timeout,
            max_links,
            max_links_per_account,
            db_pool_size,
            workers,
            log_format,
            tls,
        })
    }

    pub fn database_url(&self) -> String {
        match &self.database_url {
            Some(u) => u.expose().to_owned(),
            None => format!("sqlite://{}", self.data_dir.join("backoffice.db").display()),
        }
    }

    pub fn signing_key_path(&self) -> PathBuf {
        self.signing_key
            .clone()
            .unwrap_or_else(|| self.data_dir.join("signing-key.pem"))
    }

    pub fn server_timeout(&self) -> Duration {
        self.server_timeout
    }

    /// How long a live link is held when nothing changes: a third of `SERVER_TIMEOUT`
    /// (within 1 s and 60 s), so that a live server is heard from well within it.
    pub fn link_hold(&self) -> Duration {
        (self.server_timeout() / 3).clamp(Duration::from_secs(1), Duration::from_secs(60))
    }
}

/// One value as it was given.
struct Value<'a> {
    name: &'static str,
    raw: &'a str,
}

impl Value<'_> {
    fn invalid(&self, expected: &str) -> SettingsError {
        invalid(self.name, &quoted(self.raw), expected)
    }

    fn duration(&self, min: Duration, max: Duration) -> Result<Duration, SettingsError> {
        let expected = || {
            format!(
                "a duration such as 90s, 5m or 12h, from {} to {}",
                shared::duration::format(min),
                shared::duration::format(max)
            )
        };
        match shared::duration::parse(self.raw) {
            Ok(d) if (min..=max).contains(&d) => Ok(d),
            _ => Err(self.invalid(&expected())),
        }
    }

    fn number(&self, min: u64, max: u64) -> Result<u64, SettingsError> {
        match self.raw.trim().parse::<u64>() {
            Ok(n) if (min..=max).contains(&n) => Ok(n),
            _ => Err(self.invalid(&format!("a whole number from {min} to {max}"))),
        }
    }

    fn database_url(&self) -> Result<Secret, SettingsError> {
        let url = self.raw.trim();
        // Shown without its password.
        let shown = quoted(&redact_url(url));
        let err = || {
            invalid(
                "DATABASE_URL",
                &shown,
                "sqlite://PATH or postgres://USER:PASSWORD@HOST[:PORT]/DATABASE",
            )
        };
        let ok = if let Some(path) = url.strip_prefix("sqlite://") {
            !path.is_empty()
        } else if let Some(rest) = url
            .strip_prefix("postgres://")
            .or_else(|| url.strip_prefix("postgresql://"))
        {
            // A host (or a socket given in the query) and no whitespace.
            !rest.is_empty() && !rest.chars().any(char::is_whitespace)
        } else {
            false
        };
        if ok { Ok(Secret::new(url)) } else { Err(err()) }
    }
}

fn invalid(name: &'static str, value: &str, expected: &str) -> SettingsError {
    SettingsError::Invalid {
        name,
        value: value.to_owned(),
        expected: expected.to_owned(),
    }
}

/// A value as shown in an error: quoted, control characters escaped, at most 200 characters.
fn quoted(v: &str) -> String {
    let cut: String = v.chars().take(200).collect();
    format!("{cut:?}")
}

/// `postgres://user:secret@host/db` → `postgres://user:***@host/db`.
fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    match rest.split_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

fn check_listen(listen: &str) -> Result<(), SettingsError> {
    let ok = listen.parse::<std::net::SocketAddr>().is_ok()
        || listen.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty()
                && host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-'))
                && port.parse::<u16>().is_ok()
        });
    if ok {
        Ok(())
    } else {
        Err(invalid(
            "LISTEN",
            &quoted(listen),
            "an address and port such as 127.0.0.1:8080, [::]:8080 or localhost:8080",
        ))
    }
}

/// The settings file: a flat TOML table of known names.
fn read_file(path: &Path) -> Result<Raw, SettingsError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| SettingsError::File {
        file: file.clone(),
        reason: e.to_string(),
    })?;
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| SettingsError::File {
            file: file.clone(),
            reason: e.message().to_owned(),
        })?;
    let mut raw = Raw::new();
    for (key, value) in table {
        let Some(name) = NAMES.iter().copied().find(|n| *n == key) else {
            return Err(SettingsError::Unknown { name: key, file });
        };
        let v = match value {
            toml::Value::String(s) => s,
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            other => {
                return Err(invalid(
                    name,
                    &quoted(&other.to_string()),
                    "a single value (a string or a number)",
                ));
            }
        };
        raw.insert(name, v);
    }
    Ok(raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(pairs: &[(&'static str, &str)]) -> Result<Settings, SettingsError> {
        Settings::from_raw(&pairs.iter().map(|(k, v)| (*k, (*v).to_owned())).collect())
    }

    #[test]
    fn defaults_are_valid() {
        let s = with(&[]).unwrap();
        assert_eq!(s.listen, "127.0.0.1:8080");
        assert_eq!(s.db_pool_size, 8);
        assert_eq!(s.log_format, LogFormat::Text);
        assert_eq!(s.server_timeout(), Duration::from_secs(60));
        assert_eq!(s.link_hold(), Duration::from_secs(20));
        assert_eq!((s.max_links, s.max_links_per_account), (10_000, 1_000));
        assert!(s.database_url().ends_with("data/backoffice.db"));
    }

    #[test]
    fn every_bad_value_is_named_with_what_is_expected() {
        for (name, value, expected) in [
            ("LISTEN", "not an address", "127.0.0.1:8080"),
            ("LISTEN", "127.0.0.1:99999", "127.0.0.1:8080"),
            ("DATABASE_URL", "mysql://x", "sqlite://PATH"),
            ("DATABASE_URL", "sqlite://", "sqlite://PATH"),
            ("ADMIN_EMAIL", "nobody", "e-mail"),
            ("POLL_INTERVAL", "soon", "duration"),
            ("POLL_INTERVAL", "0s", "duration"),
            ("CLOCK_SKEW", "30d", "duration"),
            ("SESSION_LIFETIME", "5s", "duration"),
            ("RIGHTS_VALIDITY", "30s", "duration"),
            ("RIGHTS_VALIDITY", "2y", "duration"),
            ("SERVER_TIMEOUT", "-1s", "duration"),
            ("MAX_LINKS", "0", "whole number"),
            ("MAX_LINKS_PER_ACCOUNT", "many", "whole number"),
            ("DB_POOL_SIZE", "0", "whole number"),
            ("DB_POOL_SIZE", "eight", "whole number"),
            ("WORKERS", "-2", "whole number"),
            ("LOG_FORMAT", "xml", "text or json"),
            ("SIGNING_KEY", "", "private key"),
        ] {
            let e = with(&[(name, value)]).unwrap_err().to_string();
            assert!(e.starts_with(&format!("{name}=")), "{e}");
            assert!(e.contains(&format!("{value:?}")), "{e}");
            assert!(e.contains(expected), "{e}");
            assert!(!e.contains('\n'), "one line: {e}");
        }
    }

    #[test]
    fn rights_outlive_the_poll_interval() {
        let s = with(&[]).unwrap();
        assert_eq!(s.rights_validity, Duration::from_secs(30 * 86_400));
        let s = with(&[("RIGHTS_VALIDITY", "2h"), ("POLL_INTERVAL", "1h")]).unwrap();
        assert_eq!(s.rights_validity, Duration::from_secs(7200));
        // Not longer than the poll interval, whichever of the two was set.
        for pairs in [
            &[("RIGHTS_VALIDITY", "1h"), ("POLL_INTERVAL", "1h")][..],
            &[("POLL_INTERVAL", "7d"), ("RIGHTS_VALIDITY", "2d")][..],
        ] {
            let e = with(pairs).unwrap_err().to_string();
            assert!(e.starts_with("RIGHTS_VALIDITY="), "{e}");
            assert!(e.contains("longer than POLL_INTERVAL"), "{e}");
        }
    }

    #[test]
    fn tls_takes_a_certificate_and_its_key_together() {
        assert_eq!(with(&[]).unwrap().tls, None);
        let s = with(&[("TLS_CERT", "cert.pem"), ("TLS_KEY", "key.pem")]).unwrap();
        assert_eq!(
            s.tls,
            Some(TlsFiles {
                cert: "cert.pem".into(),
                key: "key.pem".into()
            })
        );
        let e = with(&[("TLS_CERT", "cert.pem")]).unwrap_err().to_string();
        assert!(e.starts_with("TLS_KEY=(unset)"), "{e}");
        let e = with(&[("TLS_KEY", "key.pem")]).unwrap_err().to_string();
        assert!(e.starts_with("TLS_CERT=(unset)"), "{e}");
        let e = with(&[("TLS_CERT", " "), ("TLS_KEY", "key.pem")])
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("TLS_CERT="), "{e}");
    }

    #[test]
    fn secrets_are_not_shown() {
        let e = with(&[("ADMIN_PASSWORD", "short")])
            .unwrap_err()
            .to_string();
        assert!(!e.contains("short"), "{e}");
        assert!(e.contains("ADMIN_PASSWORD=(hidden, 5 characters)"), "{e}");
        let e = with(&[("DATABASE_URL", "postgres://u:hunter2@db host/x")])
            .unwrap_err()
            .to_string();
        assert!(!e.contains("hunter2"), "{e}");
        assert!(e.contains("postgres://u:***@db host/x"), "{e}");
    }

    #[test]
    fn the_file_takes_known_names_only() {
        let dir = std::env::temp_dir().join(format!("cfg-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("bo.toml");
        std::fs::write(&f, "LISTEN = \"0.0.0.0:9000\"\nDB_POOL_SIZE = 4\n").unwrap();
        let raw = read_file(&f).unwrap();
        let s = Settings::from_raw(&raw).unwrap();
        assert_eq!((s.listen.as_str(), s.db_pool_size), ("0.0.0.0:9000", 4));
        std::fs::write(&f, "LISTEN = \"0.0.0.0:9000\"\nPOOL = 4\n").unwrap();
        let e = read_file(&f).unwrap_err().to_string();
        assert!(e.starts_with("POOL in "), "{e}");
        std::fs::write(&f, "LISTEN = [").unwrap();
        assert!(matches!(read_file(&f), Err(SettingsError::File { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
