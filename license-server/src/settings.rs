//! Settings: a TOML file, then environment variables of the same names (the contract).
//! Every one is checked here, at start: a bad one stops the server with one line naming
//! the setting, its value and what is expected.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use figment::value::Dict;
use serde::{Deserialize, Deserializer};
use shared::HostId;
use shared::capability::{RightsRequest, Role, parse_rights_ids};
use shared::secret::Secret;

use crate::access::{AdminAccess, OperatorAccess, check_token};
use crate::mail::{MailRaw, MailSettings};

/// Every setting name; environment variables outside this list are ignored.
pub const NAMES: &[&str] = &[
    "HOSTID",
    "LISTEN",
    "DATA_DIR",
    "BACKOFFICE_URL",
    "BACKOFFICE_TOKEN",
    "BACKOFFICE_PUBLIC_KEY",
    "BACKUP_SERVER_HOSTID",
    "LICENSING_BACKUP_URI",
    "LICENSING_MAIN_URI",
    "RIGHTS_IDS",
    "CAPABILITY_POLL_INTERVAL",
    "LIVE_LINK",
    "FAILOVER_MAINTENANCE_INTERVAL",
    "BACKUP_ABSENCE_LIMIT",
    "LEASE_DURATION",
    "QUEUE_MAX_WAIT",
    "ADMIN_TOKEN",
    "ADMIN_READONLY_TOKEN",
    "ADMIN_ACCESS",
    "ADMIN_SESSION_IDLE",
    "PUBLIC_URL",
    "CLOCK_LEEWAY",
    "BACKOFF_MAX",
    "FAILOVER_TIMEOUT",
    "HEARTBEAT_INTERVAL",
    "PAIR_TOKEN",
    "TLS_CERT",
    "TLS_KEY",
    "BACKOFFICE_CA",
    "MAX_CONNECTIONS",
    "WORKERS",
    "CLUSTER_MEMBER_HOSTIDS",
    "CLUSTER_MEMBER_URIS",
    "CLUSTER_HEARTBEAT_INTERVAL",
    "CLUSTER_MEMBER_TIMEOUT",
    "LICENSING_OPTIONS_FILE",
    "USAGE_INTERVAL",
    "USAGE_RETRY_WINDOW",
    "MAIL_SMTP_HOST",
    "MAIL_SMTP_PORT",
    "MAIL_SMTP_TLS",
    "MAIL_SMTP_CA",
    "MAIL_FROM",
    "MAIL_TO",
    "MAIL_EVENTS",
    "MAIL_DISK_THRESHOLD",
    "MAIL_ISOLATED_AFTER",
    "MAIL_EXPIRY_DAYS",
    "USAGE_RECYCLE_AFTER",
];

pub const DEFAULT_LISTEN: &str = "127.0.0.1:7070";

/// The settings as read, before checking.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    hostid: Option<String>,
    listen: Option<String>,
    data_dir: Option<PathBuf>,
    backoffice_url: Option<String>,
    #[serde(default, deserialize_with = "secret_like")]
    backoffice_token: Option<Secret>,
    backoffice_public_key: Option<PathBuf>,
    backup_server_hostid: Option<String>,
    licensing_backup_uri: Option<String>,
    licensing_main_uri: Option<String>,
    #[serde(default, deserialize_with = "string_like")]
    rights_ids: Option<String>,
    #[serde(default, deserialize_with = "duration_like")]
    capability_poll_interval: Option<Duration>,
    live_link: Option<bool>,
    #[serde(default, deserialize_with = "duration_like")]
    failover_maintenance_interval: Option<Duration>,
    #[serde(default, deserialize_with = "duration_like")]
    backup_absence_limit: Option<Duration>,
    #[serde(default, deserialize_with = "duration_like")]
    lease_duration: Option<Duration>,
    #[serde(default, deserialize_with = "duration_like")]
    queue_max_wait: Option<Duration>,
    #[serde(default, deserialize_with = "secret_like")]
    admin_token: Option<Secret>,
    #[serde(default, deserialize_with = "secret_like")]
    admin_readonly_token: Option<Secret>,
    admin_access: Option<String>,
    #[serde(default, deserialize_with = "duration_like")]
    admin_session_idle: Option<Duration>,
    public_url: Option<String>,
    #[serde(default, deserialize_with = "duration_like")]
    clock_leeway: Option<Duration>,
    #[serde(default, deserialize_with = "duration_like")]
    backoff_max: Option<Duration>,
    #[serde(default, deserialize_with = "duration_like")]
    failover_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "duration_like")]
    heartbeat_interval: Option<Duration>,
    #[serde(default, deserialize_with = "secret_like")]
    pair_token: Option<Secret>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    backoffice_ca: Option<PathBuf>,
    #[serde(default, deserialize_with = "string_like")]
    max_connections: Option<String>,
    #[serde(default, deserialize_with = "string_like")]
    workers: Option<String>,
    #[serde(default, deserialize_with = "string_like")]
    cluster_member_hostids: Option<String>,
    #[serde(default, deserialize_with = "string_like")]
    cluster_member_uris: Option<String>,
    #[serde(default, deserialize_with = "duration_like")]
    cluster_heartbeat_interval: Option<Duration>,
    #[serde(default, deserialize_with = "duration_like")]
    cluster_member_timeout: Option<Duration>,
    licensing_options_file: Option<PathBuf>,
    #[serde(default, deserialize_with = "duration_like")]
    usage_interval: Option<Duration>,
    #[serde(default, deserialize_with = "duration_like")]
    usage_retry_window: Option<Duration>,
    mail_smtp_host: Option<String>,
    #[serde(default, deserialize_with = "string_like")]
    mail_smtp_port: Option<String>,
    mail_smtp_tls: Option<String>,
    mail_smtp_ca: Option<PathBuf>,
    mail_from: Option<String>,
    mail_to: Option<String>,
    mail_events: Option<String>,
    #[serde(default, deserialize_with = "string_like")]
    mail_disk_threshold: Option<String>,
    #[serde(default, deserialize_with = "duration_like")]
    mail_isolated_after: Option<Duration>,
    #[serde(default, deserialize_with = "string_like")]
    mail_expiry_days: Option<String>,
    #[serde(default, deserialize_with = "duration_like")]
    usage_recycle_after: Option<Duration>,
}

/// Checked settings of `license-server serve`.
#[derive(Debug, Clone)]
pub struct Settings {
    pub hostid: HostId,
    pub listen: String,
    pub data_dir: PathBuf,
    pub backoffice_url: String,
    pub backoffice_token: Secret,
    pub backoffice_public_key: PathBuf,
    pub backup_server_hostid: Option<HostId>,
    pub licensing_backup_uri: Option<String>,
    pub licensing_main_uri: Option<String>,
    /// The options file (`RESERVE`, `MAX`, `INCLUDE`, `EXCLUDE`…), if any.
    pub licensing_options_file: Option<PathBuf>,
    pub rights_ids: Vec<RightsRequest>,
    /// `None`: use the interval the back office sends.
    pub capability_poll_interval: Option<Duration>,
    /// `LIVE_LINK` (default true): hold the live link to the back office besides the
    /// polls; false where something between cuts long requests (the polls alone then).
    pub live_link: bool,
    pub failover_maintenance_interval: Duration,
    pub backup_absence_limit: Duration,
    pub lease_duration: Duration,
    /// `QUEUE_MAX_WAIT` (default 1h, 1s to 7 days): the longest `queue_secs` a checkout
    /// may ask to wait in line.
    pub queue_max_wait: Duration,
    /// `ADMIN_TOKEN`, the full operator token; `None`: read or generate
    /// `DATA_DIR/admin.token`.
    pub admin_token: Option<Secret>,
    /// `ADMIN_READONLY_TOKEN`: the restricted (read-only) operator token, if any.
    pub admin_readonly_token: Option<Secret>,
    /// `ADMIN_ACCESS`: full (default), restricted or none.
    pub admin_access: AdminAccess,
    /// `ADMIN_SESSION_IDLE` (30m): an operator's full session lapses after this long
    /// without a request carrying its key.
    pub admin_session_idle: Duration,
    /// This server's URL as clients reach it (`served_by` in leases).
    pub public_url: Option<String>,
    /// How far the back office's clock may differ from ours.
    pub clock_leeway: Duration,
    /// Longest wait between retries while the back office is unreachable.
    pub backoff_max: Duration,
    /// Backup: how long the main may be silent before the backup takes over.
    pub failover_timeout: Duration,
    /// Main: how often it sends a heartbeat to its backup when nothing changes.
    pub heartbeat_interval: Duration,
    /// `PAIR_TOKEN`: the secret the two servers of a pair authenticate each other with;
    /// `None`: the one the back office issues to the pair (never `BACKOFFICE_TOKEN`).
    pub pair_token: Option<Secret>,
    /// `TLS_CERT` and `TLS_KEY`: serve HTTPS with this certificate chain and key.
    pub tls: Option<TlsFiles>,
    /// `BACKOFFICE_CA`: a PEM bundle trusted besides the system's roots for the back
    /// office and the other server of the pair.
    pub backoffice_ca: Option<PathBuf>,
    /// `MAX_CONNECTIONS`: client connections served at once (more wait; a few more
    /// serve health, metrics, status, operators and the pair only).
    pub max_connections: Option<usize>,
    /// `WORKERS`: HTTP worker threads (default: one per core).
    pub workers: Option<usize>,
    /// `CLUSTER_MEMBER_HOSTIDS` and friends: this server is a member of a three-member
    /// cluster.
    pub cluster: Option<ClusterSettings>,
    /// `USAGE_INTERVAL` (5m): the length of a usage report's interval; intervals are
    /// aligned to the clock, so both servers of a pair cut the same ones.
    pub usage_interval: Duration,
    /// `USAGE_RETRY_WINDOW` (1m): a denied client that gets no seat within this is a
    /// true denial.
    pub usage_retry_window: Duration,
    /// `MAIL_*`: notifications by mail, when `MAIL_SMTP_HOST` is set.
    pub mail: Option<MailSettings>,
    /// `USAGE_RECYCLE_AFTER`: named users not seen this long leave the usage statistics
    /// at the next 00:00 UTC (30d).
    pub usage_recycle_after: Duration,
}

/// A member of a three-member cluster: the other two and how they are watched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSettings {
    /// The other two members: hostid (`CLUSTER_MEMBER_HOSTIDS`) and the URL this member
    /// reaches it at (`CLUSTER_MEMBER_URIS`, in the same order).
    pub members: Vec<(HostId, String)>,
    /// `CLUSTER_HEARTBEAT_INTERVAL`: how often each member checks the others (1s).
    pub heartbeat_interval: Duration,
    /// `CLUSTER_MEMBER_TIMEOUT`: a member that has not answered for this long counts as
    /// down (5s).
    pub member_timeout: Duration,
    /// `PAIR_TOKEN`: the secret the members authenticate each other with (required: the
    /// back office issues none to a cluster yet; never `BACKOFFICE_TOKEN`).
    pub token: Secret,
}

/// The PEM files HTTPS is served with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Longest URL accepted in a setting or from an operator.
pub const MAX_URL: usize = 512;

/// An `http://` or `https://` URL with a host (no credentials, query or fragment),
/// without its trailing `/`; else what is expected.
pub fn check_url(value: &str) -> Result<String, String> {
    const EXPECTED: &str = "is not an http:// or https:// URL such as https://host.example:7070";
    let value = value.trim();
    if value.len() > MAX_URL {
        return Err(format!("is longer than {MAX_URL} characters"));
    }
    let url = reqwest::Url::parse(value).map_err(|e| format!("{EXPECTED} ({e})"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("{EXPECTED} (the scheme is {}://)", url.scheme()));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("{EXPECTED} (it names no host)"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!("{EXPECTED} (credentials do not belong in it)"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!("{EXPECTED} (no ?query or #fragment)"));
    }
    Ok(value.trim_end_matches('/').to_owned())
}

/// Whether a URL's host is this machine (`localhost` or a loopback address).
pub fn is_loopback(url: &str) -> bool {
    let Some(url) = reqwest::Url::parse(url).ok() else {
        return false;
    };
    let host = url.host_str().unwrap_or_default();
    host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// `value` checked as the URL setting `name`.
fn url_setting(name: &str, value: Option<String>) -> anyhow::Result<Option<String>> {
    non_empty(value)
        .map(|v| check_url(&v).map_err(|why| anyhow::anyhow!("{name} `{v}` {why}")))
        .transpose()
}

/// A count from 1 to `max`.
fn count_setting(name: &str, value: Option<String>, max: usize) -> anyhow::Result<Option<usize>> {
    non_empty(value)
        .map(|v| match v.parse::<usize>() {
            Ok(n) if (1..=max).contains(&n) => Ok(n),
            _ if max == usize::MAX => bail!("{name} `{v}` is not a number (1 or more)"),
            _ => bail!("{name} `{v}` is not a number from 1 to {max}"),
        })
        .transpose()
}

/// A file a setting names, which must exist.
fn file_setting(name: &str, path: Option<PathBuf>) -> anyhow::Result<Option<PathBuf>> {
    let Some(p) = path.filter(|p| !p.as_os_str().is_empty()) else {
        return Ok(None);
    };
    match std::fs::metadata(&p) {
        Ok(m) if m.is_file() => Ok(Some(p)),
        Ok(_) => bail!(
            "{name} `{}` is not a file (expected a PEM file)",
            p.display()
        ),
        Err(e) => bail!(
            "{name} `{}` cannot be read ({e}); expected a PEM file",
            p.display()
        ),
    }
}

impl Settings {
    /// Reads `file` (if any), then the environment.
    pub fn load(file: Option<&Path>) -> anyhow::Result<Settings> {
        let mut fig = Figment::new();
        if let Some(f) = file {
            if !f.exists() {
                bail!("the settings file {} does not exist", f.display());
            }
            // Keys are matched without regard to case (`LISTEN` or `listen`).
            let data: Dict = Figment::from(Toml::file(f))
                .extract()
                .with_context(|| format!("reading the settings file {}", f.display()))?;
            let lowered: Dict = data
                .into_iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v))
                .collect();
            fig = fig.merge(Serialized::defaults(lowered));
        }
        fig = fig.merge(Env::raw().only(NAMES));
        let raw: Raw = fig.extract().context("reading the settings")?;
        Settings::from_raw(raw)
    }

    fn from_raw(raw: Raw) -> anyhow::Result<Settings> {
        let hostid = match raw.hostid {
            Some(h) => HostId::parse(&h).with_context(|| format!("HOSTID `{h}`"))?,
            None => default_hostid().context(
                "HOSTID is not set and no network interface with a MAC address was found",
            )?,
        };
        let backup_server_hostid = raw
            .backup_server_hostid
            .filter(|s| !s.trim().is_empty())
            .map(|h| HostId::parse(&h).with_context(|| format!("BACKUP_SERVER_HOSTID `{h}`")))
            .transpose()?;
        if let Some(b) = &backup_server_hostid {
            if b.kind() != hostid.kind() {
                bail!(
                    "BACKUP_SERVER_HOSTID {b} and HOSTID {hostid} must be of the same type (HOSTID_TYPE_MISMATCH)"
                );
            }
            if *b == hostid {
                bail!("BACKUP_SERVER_HOSTID must differ from this server's HOSTID {hostid}");
            }
        }
        let licensing_main_uri = url_setting("LICENSING_MAIN_URI", raw.licensing_main_uri)?;
        if backup_server_hostid.is_some() && licensing_main_uri.is_some() {
            bail!(
                "set BACKUP_SERVER_HOSTID (this server is the main) or LICENSING_MAIN_URI (this server is the backup), not both"
            );
        }
        let rights_ids = match raw.rights_ids {
            Some(r) => parse_rights_ids(&r)
                .map_err(anyhow::Error::msg)
                .context("RIGHTS_IDS")?,
            None => Vec::new(),
        };
        let listen = raw.listen.unwrap_or_else(|| DEFAULT_LISTEN.to_owned());
        if listen
            .rsplit_once(':')
            .is_none_or(|(host, port)| host.is_empty() || port.parse::<u16>().is_err())
        {
            bail!("LISTEN `{listen}` is not an address such as 127.0.0.1:7070");
        }
        let backoffice_url = url_setting("BACKOFFICE_URL", raw.backoffice_url)?
            .context("BACKOFFICE_URL is required: the back office's base URL, e.g. https://backoffice.example.com")?;
        let backoffice_token = raw
            .backoffice_token
            .filter(|s| !s.is_empty())
            .context("BACKOFFICE_TOKEN is required: the token this server authenticates with")?;
        let backoffice_public_key = raw.backoffice_public_key.context(
            "BACKOFFICE_PUBLIC_KEY is required: the PEM file with the back office's public key",
        )?;
        let lease_duration = raw.lease_duration.unwrap_or(Duration::from_secs(300));
        if lease_duration < Duration::from_secs(1) {
            bail!("LEASE_DURATION must be at least 1s");
        }
        let queue_max_wait = raw.queue_max_wait.unwrap_or(Duration::from_secs(3600));
        if !(Duration::from_secs(1)..=Duration::from_secs(7 * 86_400)).contains(&queue_max_wait) {
            bail!(
                "QUEUE_MAX_WAIT must be between 1s and 7 days (the longest a client may wait in line)"
            );
        }
        if let Some(p) = raw.capability_poll_interval
            && p < Duration::from_millis(100)
        {
            bail!("CAPABILITY_POLL_INTERVAL must be at least 100ms");
        }
        let failover_timeout = raw.failover_timeout.unwrap_or(Duration::from_secs(1));
        let heartbeat_interval = raw.heartbeat_interval.unwrap_or(Duration::from_millis(250));
        if heartbeat_interval < Duration::from_millis(10) {
            bail!("HEARTBEAT_INTERVAL must be at least 10ms");
        }
        if failover_timeout < heartbeat_interval * 2 {
            bail!(
                "FAILOVER_TIMEOUT ({}) must be at least twice HEARTBEAT_INTERVAL ({})",
                shared::duration::format(failover_timeout),
                shared::duration::format(heartbeat_interval)
            );
        }
        let pair_token = raw.pair_token.filter(|s| !s.is_empty());

        if pair_token.as_ref().is_some_and(|p| {
            http_kit::auth::constant_time_eq(
                p.expose().as_bytes(),
                backoffice_token.expose().as_bytes(),
            )
        }) {
            bail!(
                "PAIR_TOKEN must not be BACKOFFICE_TOKEN: the pair's secret lets its holder change \
                 the backup's copy, and the device token is known to more than the two servers; \
                 set a secret of its own on both servers, or leave PAIR_TOKEN unset to use the \
                 one the back office issues to the pair"
            );
        }
        let admin_token = raw.admin_token.filter(|s| !s.is_empty());
        let admin_readonly_token = raw.admin_readonly_token.filter(|s| !s.is_empty());
        let admin_access = match non_empty(raw.admin_access) {
            Some(v) => AdminAccess::parse(&v).map_err(anyhow::Error::msg)?,
            None => AdminAccess::Full,
        };
        for (name, token) in [
            ("ADMIN_TOKEN", &admin_token),
            ("ADMIN_READONLY_TOKEN", &admin_readonly_token),
        ] {
            let Some(t) = token else { continue };
            check_token(name, t).map_err(anyhow::Error::msg)?;
            for (other, secret) in [
                ("BACKOFFICE_TOKEN", Some(&backoffice_token)),
                ("PAIR_TOKEN", pair_token.as_ref()),
            ] {
                if secret.is_some_and(|s| {
                    http_kit::auth::constant_time_eq(s.expose().as_bytes(), t.expose().as_bytes())
                }) {
                    bail!("{name} must not be {other}: give the operators a secret of their own");
                }
            }
        }
        let cluster = cluster_settings(
            ClusterRaw {
                hostids: raw.cluster_member_hostids,
                uris: raw.cluster_member_uris,
                heartbeat_interval: raw.cluster_heartbeat_interval,
                member_timeout: raw.cluster_member_timeout,
            },
            &hostid,
            backup_server_hostid.is_some(),
            raw.licensing_backup_uri
                .as_deref()
                .is_some_and(|u| !u.trim().is_empty()),
            pair_token.as_ref(),
        )?;
        if cluster.is_some()
            && raw
                .licensing_options_file
                .as_ref()
                .is_some_and(|p| !p.as_os_str().is_empty())
        {
            bail!(
                "LICENSING_OPTIONS_FILE is for a standalone server or a pair: the members of a three-member cluster decide from their shared log alone and apply no options file"
            );
        }
        if cluster.is_some() && admin_token.is_none() {
            bail!(
                "a cluster member (CLUSTER_MEMBER_HOSTIDS) needs ADMIN_TOKEN: the operators' \
                 token of the cluster, the same on the three members (each member would \
                 generate a token of its own otherwise)"
            );
        }
        if cluster.is_some() && licensing_main_uri.is_some() {
            bail!(
                "set CLUSTER_MEMBER_HOSTIDS (a member of a three-member cluster) or LICENSING_MAIN_URI (the backup of a pair), not both"
            );
        }
        let tls = match (
            file_setting("TLS_CERT", raw.tls_cert)?,
            file_setting("TLS_KEY", raw.tls_key)?,
        ) {
            (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
            (None, None) => None,
            (Some(_), None) => {
                bail!("TLS_CERT is set but TLS_KEY is not: set both to serve HTTPS, or neither")
            }
            (None, Some(_)) => {
                bail!("TLS_KEY is set but TLS_CERT is not: set both to serve HTTPS, or neither")
            }
        };
        let usage_interval = raw.usage_interval.unwrap_or(Duration::from_secs(300));
        if !(Duration::from_secs(1)..=Duration::from_secs(86_400)).contains(&usage_interval) {
            bail!(
                "USAGE_INTERVAL ({}) must be from 1s to 1 day",
                shared::duration::format(usage_interval)
            );
        }
        let usage_retry_window = raw.usage_retry_window.unwrap_or(Duration::from_secs(60));
        if !(Duration::from_secs(1)..=Duration::from_secs(3_600)).contains(&usage_retry_window) {
            bail!(
                "USAGE_RETRY_WINDOW ({}) must be from 1s to 1h",
                shared::duration::format(usage_retry_window)
            );
        }
        let max_connections = count_setting("MAX_CONNECTIONS", raw.max_connections, usize::MAX)?;
        let workers = count_setting("WORKERS", raw.workers, 512)?;
        let usage_recycle_after = raw
            .usage_recycle_after
            .unwrap_or(Duration::from_secs(30 * 86_400));
        if usage_recycle_after < Duration::from_secs(3600) {
            bail!("USAGE_RECYCLE_AFTER must be at least 1h (default 30d)");
        }
        let admin_session_idle = raw
            .admin_session_idle
            .unwrap_or(Duration::from_secs(30 * 60));
        if admin_session_idle < Duration::from_secs(1)
            || admin_session_idle > Duration::from_secs(86_400)
        {
            bail!("ADMIN_SESSION_IDLE must be between 1s and 1d (default 30m)");
        }
        let mail = MailSettings::from_raw(MailRaw {
            host: raw.mail_smtp_host,
            port: raw.mail_smtp_port,
            tls: raw.mail_smtp_tls,
            ca: file_setting("MAIL_SMTP_CA", raw.mail_smtp_ca)?,
            from: raw.mail_from,
            to: raw.mail_to,
            events: raw.mail_events,
            disk_threshold: raw.mail_disk_threshold,
            isolated_after: raw.mail_isolated_after,
            expiry_days: raw.mail_expiry_days,
        })?;
        Ok(Settings {
            hostid,
            listen,
            data_dir: raw
                .data_dir
                .unwrap_or_else(|| PathBuf::from("license-server-data")),
            backoffice_url,
            backoffice_token,
            backoffice_public_key,
            backup_server_hostid,
            licensing_backup_uri: url_setting("LICENSING_BACKUP_URI", raw.licensing_backup_uri)?,
            licensing_main_uri,
            licensing_options_file: raw
                .licensing_options_file
                .filter(|p| !p.as_os_str().is_empty()),
            rights_ids,
            capability_poll_interval: raw.capability_poll_interval,
            live_link: raw.live_link.unwrap_or(true),
            failover_maintenance_interval: raw
                .failover_maintenance_interval
                .unwrap_or(Duration::from_secs(21 * 86_400)),
            backup_absence_limit: raw
                .backup_absence_limit
                .unwrap_or(Duration::from_secs(7 * 86_400)),
            lease_duration,
            queue_max_wait,
            admin_token,
            admin_readonly_token,
            admin_access,
            public_url: url_setting("PUBLIC_URL", raw.public_url)?,
            clock_leeway: raw.clock_leeway.unwrap_or(Duration::from_secs(60)),
            backoff_max: raw.backoff_max.unwrap_or(Duration::from_secs(60)),
            failover_timeout,
            heartbeat_interval,
            pair_token,
            tls,
            backoffice_ca: file_setting("BACKOFFICE_CA", raw.backoffice_ca)?,
            max_connections,
            workers,
            cluster,
            usage_interval,
            usage_retry_window,
            mail,
            usage_recycle_after,
            admin_session_idle,
        })
    }

    /// Who may do what on the operator API: `ADMIN_TOKEN` (else `DATA_DIR/admin.token`,
    /// generated at the first start), `ADMIN_READONLY_TOKEN` and `ADMIN_ACCESS`.
    pub fn operator_access(&self) -> anyhow::Result<OperatorAccess> {
        let full = match &self.admin_token {
            Some(t) => t.clone(),
            None => {
                let t = admin_token_file(&self.data_dir)?;
                check_token("DATA_DIR/admin.token", &t).map_err(anyhow::Error::msg)?;
                t
            }
        };
        if let Some(r) = &self.admin_readonly_token
            && http_kit::auth::constant_time_eq(r.expose().as_bytes(), full.expose().as_bytes())
        {
            bail!(
                "ADMIN_READONLY_TOKEN must differ from the full operator token (ADMIN_TOKEN or DATA_DIR/admin.token)"
            );
        }
        Ok(OperatorAccess::new(
            &full,
            self.admin_readonly_token.as_ref(),
            self.admin_access,
        ))
    }

    /// main when a backup is named, backup when a main is named, else standalone.
    pub fn role(&self) -> Role {
        if self.backup_server_hostid.is_some() {
            Role::Main
        } else if self.licensing_main_uri.is_some() {
            Role::Backup
        } else {
            Role::Standalone
        }
    }
}

/// Longest a member's clock may differ from the others' (the seed's rule): a member
/// further off is refused by the others and the cluster does not form with it.
pub const CLUSTER_MAX_CLOCK_SKEW: Duration = Duration::from_secs(3600);

/// The cluster settings as read.
struct ClusterRaw {
    hostids: Option<String>,
    uris: Option<String>,
    heartbeat_interval: Option<Duration>,
    member_timeout: Option<Duration>,
}

/// The cluster settings, checked: two other members, neither this server nor each
/// other, of this server's hostid type, each with a URL; no pair settings besides.
fn cluster_settings(
    raw: ClusterRaw,
    hostid: &HostId,
    has_backup: bool,
    has_backup_uri: bool,
    pair_token: Option<&Secret>,
) -> anyhow::Result<Option<ClusterSettings>> {
    let hostids = non_empty(raw.hostids);
    let uris = non_empty(raw.uris);
    let heartbeat_interval = raw.heartbeat_interval.unwrap_or(Duration::from_secs(1));
    let member_timeout = raw.member_timeout.unwrap_or(Duration::from_secs(5));
    if heartbeat_interval < Duration::from_millis(100) {
        bail!("CLUSTER_HEARTBEAT_INTERVAL must be at least 100ms");
    }
    if member_timeout < heartbeat_interval * 2 {
        bail!(
            "CLUSTER_MEMBER_TIMEOUT ({}) must be at least twice CLUSTER_HEARTBEAT_INTERVAL ({})",
            shared::duration::format(member_timeout),
            shared::duration::format(heartbeat_interval)
        );
    }
    let Some(list) = hostids else {
        if let Some(u) = uris {
            bail!(
                "CLUSTER_MEMBER_URIS `{u}` is set but CLUSTER_MEMBER_HOSTIDS is not: name the other two members' hostids"
            );
        }
        return Ok(None);
    };
    if has_backup {
        bail!(
            "set CLUSTER_MEMBER_HOSTIDS (a member of a three-member cluster) or BACKUP_SERVER_HOSTID (the main of a pair), not both"
        );
    }
    if has_backup_uri {
        bail!(
            "LICENSING_BACKUP_URI belongs to the main of a pair; a cluster member names its members in CLUSTER_MEMBER_URIS"
        );
    }
    let mut members: Vec<HostId> = Vec::new();
    for item in list.split(',').map(str::trim) {
        let h = HostId::parse(item)
            .with_context(|| format!("CLUSTER_MEMBER_HOSTIDS `{list}`: `{item}`"))?;
        if h == *hostid {
            bail!(
                "CLUSTER_MEMBER_HOSTIDS `{list}` names this server's own HOSTID {hostid}: name the other two members"
            );
        }
        if members.contains(&h) {
            bail!("CLUSTER_MEMBER_HOSTIDS `{list}` names {h} twice: name the other two members");
        }
        if h.kind() != hostid.kind() {
            bail!(
                "CLUSTER_MEMBER_HOSTIDS: {h} and HOSTID {hostid} must be of the same type (HOSTID_TYPE_MISMATCH)"
            );
        }
        members.push(h);
    }
    if members.len() != 2 {
        bail!(
            "CLUSTER_MEMBER_HOSTIDS `{list}` names {} member(s): a cluster has three members, name the other two",
            members.len()
        );
    }
    let Some(token) = pair_token.cloned() else {
        bail!(
            "a cluster member (CLUSTER_MEMBER_HOSTIDS) needs PAIR_TOKEN: the secret the three \
             members authenticate each other with, the same on all three and not \
             BACKOFFICE_TOKEN (the back office issues none to a cluster yet)"
        );
    };
    let Some(uris) = uris else {
        bail!(
            "CLUSTER_MEMBER_HOSTIDS is set but CLUSTER_MEMBER_URIS is not: give the other two members' URLs, in the same order"
        );
    };
    let mut urls: Vec<String> = Vec::new();
    for item in uris.split(',').map(str::trim) {
        let u = check_url(item)
            .map_err(|why| anyhow::anyhow!("CLUSTER_MEMBER_URIS `{uris}`: `{item}` {why}"))?;
        if urls.contains(&u) {
            bail!("CLUSTER_MEMBER_URIS `{uris}` names {u} twice: give each other member's URL");
        }
        urls.push(u);
    }
    if urls.len() != members.len() {
        bail!(
            "CLUSTER_MEMBER_URIS `{uris}` names {} URL(s): give one for each of the {} members of CLUSTER_MEMBER_HOSTIDS, in the same order",
            urls.len(),
            members.len()
        );
    }
    Ok(Some(ClusterSettings {
        members: members.into_iter().zip(urls).collect(),
        heartbeat_interval,
        member_timeout,
        token,
    }))
}

fn non_empty(s: Option<String>) -> Option<String> {
    s.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty())
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Scalar {
    Text(String),
    Int(i64),
    Float(f64),
    Bool(bool),
}

impl Scalar {
    fn into_string(self) -> String {
        match self {
            Scalar::Text(s) => s,
            Scalar::Int(i) => i.to_string(),
            Scalar::Float(f) => f.to_string(),
            Scalar::Bool(b) => b.to_string(),
        }
    }
}

/// Environment values that look like numbers arrive as numbers; take them as text.
fn string_like<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(Option::<Scalar>::deserialize(d)?.map(Scalar::into_string))
}

fn secret_like<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Secret>, D::Error> {
    Ok(string_like(d)?.map(Secret::new))
}

/// `90s`, `5m`, `21d`, or a number of seconds.
fn duration_like<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    match Option::<Scalar>::deserialize(d)? {
        None => Ok(None),
        Some(Scalar::Int(i)) if i >= 0 => Ok(Some(Duration::from_secs(i as u64))),
        Some(Scalar::Text(t)) => shared::duration::parse(&t)
            .map(Some)
            .map_err(serde::de::Error::custom),
        Some(other) => Err(serde::de::Error::custom(format!(
            "`{}` is not a duration such as 90s, 5m or 21d",
            other.into_string()
        ))),
    }
}

/// `ethernet:<MAC>` of the first non-loopback interface (by name) with a real MAC.
pub fn default_hostid() -> Option<HostId> {
    let mut names: Vec<_> = std::fs::read_dir("/sys/class/net")
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "lo")
        .collect();
    names.sort();
    names.into_iter().find_map(|name| {
        let addr = std::fs::read_to_string(format!("/sys/class/net/{name}/address")).ok()?;
        let addr = addr.trim();
        if addr.is_empty() || addr == "00:00:00:00:00:00" {
            return None;
        }
        HostId::parse(&format!("ethernet:{addr}")).ok()
    })
}

/// Reads `DATA_DIR/admin.token`, creating it (mode 0600) with a random token if absent.
pub fn admin_token_file(data_dir: &Path) -> anyhow::Result<Secret> {
    let path = data_dir.join("admin.token");
    match std::fs::read_to_string(&path) {
        Ok(s) if !s.trim().is_empty() => return Ok(Secret::new(s.trim())),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    }
    let token = shared::random_token::<32>();
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    std::io::Write::write_all(&mut f, format!("{token}\n").as_bytes())?;
    f.sync_all()?;
    tracing::info!(path = %path.display(), "generated an operator token (ADMIN_TOKEN)");
    Ok(Secret::new(token))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw_min() -> Raw {
        Raw {
            hostid: Some("string:lls-1".into()),
            backoffice_url: Some("http://bo/".into()),
            backoffice_token: Some(Secret::new("t")),
            backoffice_public_key: Some("k.pem".into()),
            ..Raw::default()
        }
    }

    #[test]
    fn defaults_and_roles() {
        let s = Settings::from_raw(raw_min()).unwrap();
        assert_eq!(s.listen, DEFAULT_LISTEN);
        assert_eq!(s.backoffice_url, "http://bo");
        assert_eq!(s.role(), Role::Standalone);
        assert_eq!(
            s.failover_maintenance_interval,
            Duration::from_secs(21 * 86400)
        );
        assert_eq!(s.backup_absence_limit, Duration::from_secs(7 * 86400));
        assert_eq!(s.usage_interval, Duration::from_secs(300));
        assert_eq!(s.usage_retry_window, Duration::from_secs(60));
        for bad in [Duration::ZERO, Duration::from_secs(86_401)] {
            let e = Settings::from_raw(Raw {
                usage_interval: Some(bad),
                ..raw_min()
            })
            .unwrap_err();
            assert!(e.to_string().starts_with("USAGE_INTERVAL"), "{e}");
        }
        let main = Settings::from_raw(Raw {
            backup_server_hostid: Some("string:lls-2".into()),
            ..raw_min()
        })
        .unwrap();
        assert_eq!(main.role(), Role::Main);
        let backup = Settings::from_raw(Raw {
            licensing_main_uri: Some("http://main:7070".into()),
            ..raw_min()
        })
        .unwrap();
        assert_eq!(backup.role(), Role::Backup);
        assert!(
            Settings::from_raw(Raw {
                backup_server_hostid: Some("ethernet:001122334455".into()),
                ..raw_min()
            })
            .is_err()
        );
        assert!(
            Settings::from_raw(Raw {
                backoffice_url: None,
                ..raw_min()
            })
            .is_err()
        );
    }

    #[test]
    fn the_pair_secret_is_never_the_device_token() {
        let s = Settings::from_raw(raw_min()).unwrap();
        assert!(s.pair_token.is_none(), "unset: the back office's");
        let e = Settings::from_raw(Raw {
            pair_token: Some(Secret::new("t")),
            ..raw_min()
        })
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("PAIR_TOKEN must not be BACKOFFICE_TOKEN"),
            "{e}"
        );
        let ok = Settings::from_raw(Raw {
            pair_token: Some(Secret::new("a secret of the pair's own")),
            ..raw_min()
        })
        .unwrap();
        assert_eq!(
            ok.pair_token.unwrap().expose(),
            "a secret of the pair's own"
        );
    }

    #[test]
    #[expect(clippy::result_large_err, reason = "figment::Jail's closure type")]
    fn toml_then_environment() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("s.toml");
        std::fs::write(
            &file,
            "HOSTID = \"string:from-file\"\nBACKOFFICE_URL = \"http://bo\"\nBACKOFFICE_TOKEN = \"t\"\nBACKOFFICE_PUBLIC_KEY = \"k.pem\"\nLEASE_DURATION = \"90s\"\nRIGHTS_IDS = \"A-1:5, A-2:2\"\nCAPABILITY_POLL_INTERVAL = 30\n",
        )
        .unwrap();
        // The environment overrides the file (set for this process only in this test).
        let mut loaded = None;
        figment::Jail::expect_with(|jail| {
            jail.set_env("LEASE_DURATION", "5m");
            jail.set_env("LIVE_LINK", "false");
            jail.set_env("UNRELATED_VARIABLE", "ignored");
            loaded = Some(Settings::load(Some(&file)).map_err(|e| e.to_string()));
            Ok(())
        });
        let s = loaded.unwrap().unwrap();
        assert_eq!(s.hostid.to_string(), "string:from-file");
        assert_eq!(s.lease_duration, Duration::from_secs(300));
        assert_eq!(s.rights_ids.len(), 2);
        assert_eq!(s.capability_poll_interval, Some(Duration::from_secs(30)));
        assert!(!s.live_link, "LIVE_LINK=false: the polls alone");
        // Unknown names in the file are refused (typos must not pass silently).
        std::fs::write(&file, "HOSTID = \"string:a\"\nLEASE_DURATON = \"5m\"\n").unwrap();
        assert!(Settings::load(Some(&file)).is_err());
    }

    #[test]
    fn url_settings_take_only_http_and_https_urls_with_a_host() {
        assert_eq!(
            check_url("https://bo.example/").unwrap(),
            "https://bo.example"
        );
        assert_eq!(
            check_url(" http://127.0.0.1:8080 ").unwrap(),
            "http://127.0.0.1:8080"
        );
        for bad in [
            "not a url",
            "ftp://x",
            "bo.example:8080",
            "http://",
            "https://user:pw@bo.example",
            "https://bo.example/?a=1",
            "file:///etc/passwd",
        ] {
            assert!(check_url(bad).is_err(), "{bad}");
        }
        assert!(check_url(&format!("https://{}.example", "a".repeat(600))).is_err());
        for (setting, raw) in [
            (
                "BACKOFFICE_URL",
                Raw {
                    backoffice_url: Some("ftp://x".into()),
                    ..raw_min()
                },
            ),
            (
                "LICENSING_MAIN_URI",
                Raw {
                    licensing_main_uri: Some("not a url".into()),
                    ..raw_min()
                },
            ),
            (
                "LICENSING_BACKUP_URI",
                Raw {
                    licensing_backup_uri: Some("main:7070".into()),
                    ..raw_min()
                },
            ),
            (
                "PUBLIC_URL",
                Raw {
                    public_url: Some("//x".into()),
                    ..raw_min()
                },
            ),
            (
                "MAX_CONNECTIONS",
                Raw {
                    max_connections: Some("0".into()),
                    ..raw_min()
                },
            ),
            (
                "TLS_CERT",
                Raw {
                    tls_cert: Some("Cargo.toml".into()),
                    ..raw_min()
                },
            ),
        ] {
            let e = Settings::from_raw(raw).unwrap_err().to_string();
            assert!(e.starts_with(setting), "{setting}: {e}");
        }
    }

    fn cluster_raw(hostids: &str, uris: &str) -> Raw {
        Raw {
            cluster_member_hostids: Some(hostids.into()),
            cluster_member_uris: Some(uris.into()),
            pair_token: Some(Secret::new("the members' own secret")),
            admin_token: Some(Secret::new("the cluster's operator token")),
            ..raw_min()
        }
    }

    #[test]
    fn operator_tokens_are_long_distinct_secrets_and_the_access_mode_one_of_three() {
        let s = Settings::from_raw(raw_min()).unwrap();
        assert_eq!(s.admin_access, AdminAccess::Full);
        assert!(s.admin_readonly_token.is_none());
        let full = || Some(Secret::new("a long full operator token"));
        for (raw, says) in [
            (
                Raw {
                    admin_token: Some(Secret::new("0123456789abcde")),
                    ..raw_min()
                },
                "ADMIN_TOKEN is too short (15 characters)",
            ),
            (
                Raw {
                    admin_token: full(),
                    admin_readonly_token: Some(Secret::new("short")),
                    ..raw_min()
                },
                "ADMIN_READONLY_TOKEN is too short",
            ),
            (
                Raw {
                    admin_access: Some("read-only".into()),
                    ..raw_min()
                },
                "ADMIN_ACCESS `read-only` is not one of full, restricted, none",
            ),
            (
                Raw {
                    admin_token: full(),
                    pair_token: full(),
                    ..raw_min()
                },
                "ADMIN_TOKEN must not be PAIR_TOKEN",
            ),
            (
                Raw {
                    admin_token: None,
                    ..cluster_raw("string:lls-2,string:lls-3", "http://b,http://c")
                },
                "needs ADMIN_TOKEN",
            ),
        ] {
            let e = Settings::from_raw(raw).unwrap_err().to_string();
            assert!(e.starts_with(says) || e.contains(says), "{says}: {e}");
        }
        let same = Settings::from_raw(Raw {
            admin_token: full(),
            admin_readonly_token: full(),
            ..raw_min()
        })
        .unwrap();
        let e = same.operator_access().unwrap_err().to_string();
        assert!(e.starts_with("ADMIN_READONLY_TOKEN must differ"), "{e}");
        let s = Settings::from_raw(Raw {
            admin_token: full(),
            admin_readonly_token: Some(Secret::new("a long read-only operator token")),
            admin_access: Some("Restricted".into()),
            ..raw_min()
        })
        .unwrap();
        assert_eq!(s.admin_access, AdminAccess::Restricted);
        assert_eq!(s.operator_access().unwrap().mode(), AdminAccess::Restricted);
        // A token file an operator shortened by hand is refused too.
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("admin.token"), "short\n").unwrap();
        let s = Settings {
            data_dir: dir.path().to_owned(),
            ..Settings::from_raw(raw_min()).unwrap()
        };
        let e = s.operator_access().unwrap_err().to_string();
        assert!(e.starts_with("DATA_DIR/admin.token is too short"), "{e}");
    }

    #[test]
    fn cluster_settings_name_two_other_members_with_their_urls() {
        let s = Settings::from_raw(cluster_raw(
            "string:lls-2, string:lls-3",
            "http://b:7070/,https://c:7070",
        ))
        .unwrap();
        let c = s.cluster.clone().unwrap();
        assert_eq!(c.members[0].0.to_string(), "string:lls-2");
        assert_eq!(c.members[1].1, "https://c:7070");
        assert_eq!(c.heartbeat_interval, Duration::from_secs(1));
        assert_eq!(c.member_timeout, Duration::from_secs(5));
        assert_eq!(s.role(), Role::Standalone);
        for (hostids, uris, says) in [
            ("string:lls-2,string:lls-2", "http://b,http://c", "twice"),
            (
                "string:lls-1,string:lls-3",
                "http://b,http://c",
                "own HOSTID",
            ),
            ("string:lls-2", "http://b", "three members"),
            (
                "string:a,string:b,string:c",
                "http://a,http://b,http://c",
                "three members",
            ),
            (
                "string:lls-2,ethernet:001122334455",
                "http://b,http://c",
                "HOSTID_TYPE_MISMATCH",
            ),
            ("string:lls-2,string:lls-3", "http://b", "one for each"),
            (
                "string:lls-2,string:lls-3",
                "http://b,ftp://c",
                "CLUSTER_MEMBER_URIS",
            ),
            ("string:lls-2,string:lls-3", "http://b,http://b/", "twice"),
            (
                "string:lls-2,nonsense",
                "http://b,http://c",
                "CLUSTER_MEMBER_HOSTIDS",
            ),
        ] {
            let e = Settings::from_raw(cluster_raw(hostids, uris))
                .unwrap_err()
                .to_string();
            assert!(e.contains(says), "{hostids} / {uris}: {e}");
        }
        let e = Settings::from_raw(Raw {
            cluster_member_hostids: None,
            ..cluster_raw("", "http://b,http://c")
        })
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("CLUSTER_MEMBER_URIS"), "{e}");
        let e = Settings::from_raw(Raw {
            backup_server_hostid: Some("string:lls-9".into()),
            ..cluster_raw("string:lls-2,string:lls-3", "http://b,http://c")
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("not both"), "{e}");
        let e = Settings::from_raw(Raw {
            cluster_member_timeout: Some(Duration::from_secs(1)),
            ..cluster_raw("string:lls-2,string:lls-3", "http://b,http://c")
        })
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("CLUSTER_MEMBER_TIMEOUT"), "{e}");
        // The members' secret: required, and never the device token.
        let e = Settings::from_raw(Raw {
            pair_token: None,
            ..cluster_raw("string:lls-2,string:lls-3", "http://b,http://c")
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("needs PAIR_TOKEN"), "{e}");
        let device = raw_min().backoffice_token.unwrap();
        let e = Settings::from_raw(Raw {
            pair_token: Some(device),
            ..cluster_raw("string:lls-2,string:lls-3", "http://b,http://c")
        })
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("PAIR_TOKEN must not be BACKOFFICE_TOKEN"),
            "{e}"
        );
        assert_eq!(c.token.expose(), "the members' own secret");
    }

    #[test]
    fn loopback_urls_are_told_from_remote_ones() {
        for url in [
            "http://localhost:8080",
            "http://127.0.0.1",
            "http://[::1]:80",
        ] {
            assert!(is_loopback(url), "{url}");
        }
        for url in ["http://bo.example", "http://10.0.0.1", "not a url"] {
            assert!(!is_loopback(url), "{url}");
        }
    }

    #[test]
    fn admin_token_is_generated_once() {
        let dir = tempfile::tempdir().unwrap();
        let a = admin_token_file(dir.path()).unwrap();
        let b = admin_token_file(dir.path()).unwrap();
        assert_eq!(a, b);
        assert!(a.expose().len() >= 32);
    }
}
