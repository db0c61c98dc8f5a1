//! Typed settings: a TOML file, overridden by environment variables of the same names.

use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};
use shared::secret::Secret;

/// The names users set (contract: LISTEN, DATA_DIR, DATABASE_URL, SIGNING_KEY).
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
    "SESSION_LIFETIME",
    "SERVER_TIMEOUT",
    "DB_POOL_SIZE",
    "WORKERS",
    "LOG_FORMAT",
];

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE", deny_unknown_fields)]
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
    #[serde(with = "shared::duration::serde_str")]
    pub poll_interval: Duration,
    /// How far a license server's clock may be off.
    #[serde(with = "shared::duration::serde_str")]
    pub clock_skew: Duration,
    /// How long a signed capability response is valid for.
    #[serde(with = "shared::duration::serde_str")]
    pub response_lifetime: Duration,
    /// How long a sign-in lasts.
    #[serde(with = "shared::duration::serde_str")]
    pub session_lifetime: Duration,
    /// A server not heard from this long is `inaccessible`; unset means three poll intervals.
    #[serde(default, with = "opt_duration")]
    pub server_timeout: Option<Duration>,
    /// Database connections.
    pub db_pool_size: u32,
    /// HTTP worker threads; unset means one per core.
    pub workers: Option<usize>,
    /// `text` or `json`.
    pub log_format: String,
}

mod opt_duration {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|s| shared::duration::parse(&s).map_err(serde::de::Error::custom))
            .transpose()
    }
}

#[derive(Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
struct Defaults {
    listen: &'static str,
    data_dir: &'static str,
    admin_email: &'static str,
    poll_interval: &'static str,
    clock_skew: &'static str,
    response_lifetime: &'static str,
    session_lifetime: &'static str,
    db_pool_size: u32,
    log_format: &'static str,
}

impl Settings {
    /// Defaults, then the TOML file (if given), then the environment.
    pub fn load(file: Option<&Path>) -> Result<Settings, Box<figment::Error>> {
        let mut fig = Figment::from(Serialized::defaults(Defaults {
            listen: "127.0.0.1:8080",
            data_dir: "data",
            admin_email: "admin@localhost",
            poll_interval: "10m",
            clock_skew: "5m",
            response_lifetime: "5m",
            session_lifetime: "12h",
            db_pool_size: 8,
            log_format: "text",
        }));
        if let Some(f) = file {
            fig = fig.merge(Toml::file_exact(f));
        }
        fig.merge(Env::raw().only(NAMES).lowercase(false))
            .extract()
            .map_err(Box::new)
    }

    pub fn database_url(&self) -> String {
        match &self.database_url {
            Some(u) if !u.is_empty() => u.expose().to_owned(),
            _ => format!("sqlite://{}", self.data_dir.join("backoffice.db").display()),
        }
    }

    pub fn signing_key_path(&self) -> PathBuf {
        self.signing_key
            .clone()
            .unwrap_or_else(|| self.data_dir.join("signing-key.pem"))
    }

    pub fn server_timeout(&self) -> Duration {
        self.server_timeout.unwrap_or(self.poll_interval * 3)
    }
}
