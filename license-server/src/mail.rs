//! Mail notifications over SMTP (lettre, on tokio), as DS's license server sends them:
//! the server started or stopped, its `DATA_DIR` partition filling past a percentage, a
//! cluster member cut off from the other two for a while (sent by that member, once while
//! it is cut off), and licenses nearing their end (one mail for all of them, once a day
//! while any is).
//!
//! Each event is queued once (its key: `start`, `disk:83`, `isolated:<since>`,
//! `expiry:<date>`…) and sent in order by one task, which retries a mail the mail server
//! did not take with a doubling wait (1 s to 1 min) until it does; every send and every
//! failure is logged. At shutdown the stop mail is given [`STOP_GRACE`] to go.
//!
//! With `MAIL_SMTP_TLS` `starttls` (the default) or `tls` the mail server's certificate is
//! checked against the system's roots and `MAIL_SMTP_CA`'s, for the name in
//! `MAIL_SMTP_HOST`; a mail server that does not offer STARTTLS, or whose certificate does
//! not check, gets nothing (never plain text instead): the mail waits and is retried, the
//! cause logged at WARN.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use lettre::message::header::ContentType;
use lettre::message::{Mailbox, Mailboxes};
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use parking_lot::Mutex;
use tokio::sync::{mpsc, watch};

use crate::service::Service;

/// How long the stop mail may take at shutdown.
pub const STOP_GRACE: Duration = Duration::from_secs(10);
/// The longest wait between two tries of a mail.
const RETRY_MAX: Duration = Duration::from_secs(60);
/// How often the watched conditions are looked at.
const WATCH_EVERY: Duration = Duration::from_secs(1);

/// `MAIL_SMTP_TLS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MailTls {
    /// Plain SMTP (a relay on this machine or its network).
    None,
    /// SMTP, then STARTTLS, required (default).
    StartTls,
    /// TLS from the first byte (SMTPS).
    Tls,
}

/// What can be notified (`MAIL_EVENTS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Event {
    Start,
    Stop,
    Disk,
    Isolated,
    Expiry,
}

impl Event {
    const ALL: [Event; 5] = [
        Event::Start,
        Event::Stop,
        Event::Disk,
        Event::Isolated,
        Event::Expiry,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Event::Start => "start",
            Event::Stop => "stop",
            Event::Disk => "disk",
            Event::Isolated => "isolated",
            Event::Expiry => "expiry",
        }
    }
}

/// The mail settings as read.
#[derive(Debug, Default)]
pub struct MailRaw {
    pub host: Option<String>,
    pub port: Option<String>,
    pub tls: Option<String>,
    /// `MAIL_SMTP_CA`, checked to be a file.
    pub ca: Option<PathBuf>,
    pub from: Option<String>,
    pub to: Option<String>,
    pub events: Option<String>,
    pub disk_threshold: Option<String>,
    pub isolated_after: Option<Duration>,
    pub expiry_days: Option<String>,
}

/// Checked mail settings.
#[derive(Debug, Clone)]
pub struct MailSettings {
    pub host: String,
    pub port: u16,
    pub tls: MailTls,
    /// `MAIL_SMTP_CA`: a PEM bundle trusted besides the system's roots for the mail
    /// server's certificate.
    pub ca: Option<PathBuf>,
    pub from: Mailbox,
    pub to: Vec<Mailbox>,
    pub events: Vec<Event>,
    /// `MAIL_DISK_THRESHOLD`: percent of the `DATA_DIR` partition used (80).
    pub disk_threshold: u8,
    /// `MAIL_ISOLATED_AFTER`: how long a member is cut off before it says so (5m).
    pub isolated_after: Duration,
    /// `MAIL_EXPIRY_DAYS`: licenses ending within this many days are announced (14).
    pub expiry_days: u32,
}

fn set(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|v| !v.is_empty())
}

impl MailSettings {
    /// The settings checked, every one whether mail is on or not: `None` when
    /// `MAIL_SMTP_HOST` is unset (then neither `MAIL_FROM` nor `MAIL_TO` may be set), or
    /// an error naming the setting.
    pub fn from_raw(raw: MailRaw) -> anyhow::Result<Option<MailSettings>> {
        let tls = match set(&raw.tls).map(str::to_ascii_lowercase).as_deref() {
            None | Some("starttls") => MailTls::StartTls,
            Some("none") => MailTls::None,
            Some("tls") => MailTls::Tls,
            Some(_) => bail!(
                "MAIL_SMTP_TLS `{}` is not one of none, starttls, tls",
                raw.tls.unwrap_or_default()
            ),
        };
        let port = match set(&raw.port) {
            None if tls == MailTls::Tls => 465,
            None => 25,
            Some(p) => match p.parse::<u16>() {
                Ok(n) if n > 0 => n,
                _ => bail!("MAIL_SMTP_PORT `{p}` is not a port (1 to 65535)"),
            },
        };
        let events = match set(&raw.events) {
            None => Event::ALL.to_vec(),
            Some(list) => {
                let mut events = Vec::new();
                for item in list.split(',').map(str::trim) {
                    let e = Event::ALL
                        .into_iter()
                        .find(|e| e.name().eq_ignore_ascii_case(item))
                        .with_context(|| {
                            format!(
                                "MAIL_EVENTS `{list}`: `{item}` is not one of start, stop, disk, isolated, expiry"
                            )
                        })?;
                    if !events.contains(&e) {
                        events.push(e);
                    }
                }
                events
            }
        };
        let disk_threshold = match set(&raw.disk_threshold) {
            None => 80,
            Some(v) => match v.parse::<u8>() {
                Ok(n) if (1..=99).contains(&n) => n,
                _ => bail!("MAIL_DISK_THRESHOLD `{v}` is not a percentage from 1 to 99"),
            },
        };
        let isolated_after = raw.isolated_after.unwrap_or(Duration::from_secs(300));
        if !(Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&isolated_after) {
            bail!("MAIL_ISOLATED_AFTER must be from 1s to 60m");
        }
        let expiry_days = match set(&raw.expiry_days) {
            None => 14,
            Some(v) => match v.parse::<u32>() {
                Ok(n) if (1..=30).contains(&n) => n,
                _ => bail!("MAIL_EXPIRY_DAYS `{v}` is not a number of days from 1 to 30"),
            },
        };
        let Some(host) = set(&raw.host) else {
            for (name, v) in [("MAIL_FROM", &raw.from), ("MAIL_TO", &raw.to)] {
                if set(v).is_some() {
                    bail!(
                        "{name} is set but MAIL_SMTP_HOST is not: name the mail server to send notifications through, or unset {name}"
                    );
                }
            }
            if raw.ca.is_some() {
                bail!(
                    "MAIL_SMTP_CA is set but MAIL_SMTP_HOST is not: name the mail server to send notifications through, or unset MAIL_SMTP_CA"
                );
            }
            return Ok(None);
        };
        if tls == MailTls::None && raw.ca.is_some() {
            bail!(
                "MAIL_SMTP_CA is set but MAIL_SMTP_TLS is none: a CA is only used over TLS (starttls or tls)"
            );
        }
        if host.contains([' ', '/', ':']) && !host.starts_with('[') {
            bail!(
                "MAIL_SMTP_HOST `{host}` is not a host name or address (the port goes in MAIL_SMTP_PORT)"
            );
        }
        let from = set(&raw.from).context(
            "MAIL_FROM is required with MAIL_SMTP_HOST: the address notifications come from",
        )?;
        let from: Mailbox = from
            .parse()
            .map_err(|e| anyhow::anyhow!("MAIL_FROM `{from}` is not a mail address ({e})"))?;
        let to_list = set(&raw.to).context(
            "MAIL_TO is required with MAIL_SMTP_HOST: one or more addresses, separated by commas",
        )?;
        let mut to = Vec::new();
        for item in to_list.split(',').map(str::trim) {
            if item.is_empty() {
                bail!("MAIL_TO `{to_list}` has an empty address between its commas");
            }
            let m: Mailbox = item.parse().map_err(|e| {
                anyhow::anyhow!("MAIL_TO `{to_list}`: `{item}` is not a mail address ({e})")
            })?;
            if !to.contains(&m) {
                to.push(m);
            }
        }
        Ok(Some(MailSettings {
            host: host.to_owned(),
            port,
            tls,
            ca: raw.ca,
            from,
            to,
            events,
            disk_threshold,
            isolated_after,
            expiry_days,
        }))
    }
}

/// A mail waiting to go.
struct Outgoing {
    key: String,
    message: Message,
}

/// The notifications of one server: what was queued, and the queue.
pub struct Notifier {
    settings: MailSettings,
    /// `hostid` of this server, in every subject.
    server: String,
    queued: Mutex<HashSet<String>>,
    tx: mpsc::UnboundedSender<Outgoing>,
    /// Mails queued and not sent yet.
    pending: watch::Sender<usize>,
}

impl Notifier {
    /// The notifier and its sending task (which ends when the notifier is dropped).
    pub fn start(
        settings: MailSettings,
        server: String,
    ) -> anyhow::Result<(Arc<Notifier>, tokio::task::JoinHandle<()>)> {
        let transport = transport(&settings)?;
        let (tx, rx) = mpsc::unbounded_channel();
        let (pending, _) = watch::channel(0);
        let notifier = Arc::new(Notifier {
            settings,
            server,
            queued: Mutex::new(HashSet::new()),
            tx,
            pending,
        });
        let task = tokio::spawn(send_all(transport, rx, notifier.pending.clone()));
        Ok((notifier, task))
    }

    pub fn settings(&self) -> &MailSettings {
        &self.settings
    }

    /// Queues a mail for `event` unless `key` was queued before or the event is not
    /// wanted; whether it was queued.
    pub fn notify(&self, event: Event, key: &str, subject: &str, body: &str) -> bool {
        if !self.settings.events.contains(&event) || !self.queued.lock().insert(key.to_owned()) {
            return false;
        }
        let mut to = Mailboxes::new();
        for m in &self.settings.to {
            to.push(m.clone());
        }
        let message = Message::builder()
            .from(self.settings.from.clone())
            .mailbox(lettre::message::header::To::from(to))
            .subject(format!("[license-server {}] {subject}", self.server))
            .header(ContentType::TEXT_PLAIN)
            .body(format!(
                "{body}\n\n-- \nlicense-server {} ({event} notification; MAIL_EVENTS chooses which are sent)\n",
                self.server,
                event = event.name()
            ));
        let message = match message {
            Ok(m) => m,
            Err(e) => {
                tracing::error!(event = event.name(), error = %e, "a notification could not be written");
                return false;
            }
        };
        tracing::info!(event = event.name(), key, subject, "notification queued");
        self.pending.send_modify(|n| *n += 1);
        self.tx
            .send(Outgoing {
                key: key.to_owned(),
                message,
            })
            .is_ok()
    }

    /// Waits until every queued mail is sent, at most `grace`; whether they all were.
    pub async fn flush(&self, grace: Duration) -> bool {
        let mut rx = self.pending.subscribe();
        tokio::time::timeout(grace, rx.wait_for(|n| *n == 0))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

/// The transport the settings describe: what [`Notifier::start`] sends through, and the
/// check at start that `MAIL_SMTP_CA` holds certificates.
pub fn transport(s: &MailSettings) -> anyhow::Result<AsyncSmtpTransport<Tokio1Executor>> {
    let tls = match s.tls {
        MailTls::None => Tls::None,
        MailTls::StartTls => Tls::Required(tls_parameters(s)?),
        MailTls::Tls => Tls::Wrapper(tls_parameters(s)?),
    };
    Ok(
        AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&s.host)
            .port(s.port)
            .tls(tls)
            .timeout(Some(Duration::from_secs(10)))
            .build(),
    )
}

/// The mail server's certificate checked for `MAIL_SMTP_HOST` against the system's roots
/// and `MAIL_SMTP_CA`'s.
fn tls_parameters(s: &MailSettings) -> anyhow::Result<TlsParameters> {
    let mut params = TlsParameters::builder(s.host.trim_matches(['[', ']']).to_owned());
    if let Some(path) = &s.ca {
        params = params.add_root_certificate(ca_bundle(path)?);
    }
    params
        .build_rustls()
        .with_context(|| format!("TLS for MAIL_SMTP_HOST `{}`", s.host))
}

/// `MAIL_SMTP_CA`'s certificates: a PEM bundle holding at least one.
fn ca_bundle(path: &Path) -> anyhow::Result<Certificate> {
    let pem = std::fs::read(path)
        .with_context(|| format!("MAIL_SMTP_CA `{}` cannot be read", path.display()))?;
    licensing_client::ca_certificates(&pem)
        .map_err(|e| anyhow::anyhow!("MAIL_SMTP_CA `{}`: {e}", path.display()))?;
    Certificate::from_pem(&pem).map_err(|e| {
        anyhow::anyhow!(
            "MAIL_SMTP_CA `{}` is not a PEM bundle ({e})",
            path.display()
        )
    })
}

/// Sends the queue in order, each mail until the mail server takes it.
async fn send_all(
    transport: AsyncSmtpTransport<Tokio1Executor>,
    mut rx: mpsc::UnboundedReceiver<Outgoing>,
    pending: watch::Sender<usize>,
) {
    while let Some(mail) = rx.recv().await {
        let mut wait = Duration::from_secs(1);
        let mut tries = 1u32;
        loop {
            match transport.send(mail.message.clone()).await {
                Ok(_) => {
                    tracing::info!(key = %mail.key, tries, "notification sent");
                    break;
                }
                Err(e) => {
                    tracing::warn!(
                        key = %mail.key,
                        tries,
                        error = %licensing_client::describe_error(&e),
                        "the mail server did not take a notification; retrying in {}",
                        shared::duration::format(wait)
                    );
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(RETRY_MAX);
                    tries += 1;
                }
            }
        }
        pending.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// Percent used of the partition holding `dir`, as `df` counts it.
pub fn disk_used_percent(dir: &std::path::Path) -> Option<u8> {
    let st = rustix::fs::statvfs(dir).ok()?;
    let used = st.f_blocks.saturating_sub(st.f_bfree);
    let usable = used + st.f_bavail;
    (usable > 0).then(|| ((used * 100).div_ceil(usable)).min(100) as u8)
}

/// The licenses ending within `days` of `now` (Unix seconds): one line each.
pub fn ending_soon(features: &[shared::lease::FeatureInfo], now: i64, days: u32) -> Vec<String> {
    let until = now + i64::from(days) * 86_400;
    let mut lines = Vec::new();
    for f in features {
        for r in &f.rights {
            if let Some(end) = r.expires_at
                && end > now
                && end <= until
            {
                lines.push(format!(
                    "{}: {} seat(s) of {} end on {}",
                    f.name(),
                    r.count,
                    r.activation_id,
                    shared::lease::date_of(end)
                ));
            }
        }
    }
    lines
}

/// What the watcher keeps between looks.
#[derive(Debug, Default)]
pub struct Watch {
    /// The disk percentage last announced (while over the threshold).
    disk_told: Option<u8>,
    /// Since when this member sees neither other member.
    alone_since: Option<(Instant, i64)>,
}

impl Watch {
    /// The disk's percentage: announced when over the threshold and not announced yet at
    /// this percentage (each percent more, or less but still over, is news).
    pub fn disk(&mut self, n: &Notifier, used: u8, dir: &std::path::Path) {
        if used < n.settings.disk_threshold {
            self.disk_told = None;
            return;
        }
        if self.disk_told == Some(used) {
            return;
        }
        self.disk_told = Some(used);
        // Each crossing is news again once the disk went back under the threshold.
        n.queued.lock().remove(&format!("disk:{used}"));
        n.notify(
            Event::Disk,
            &format!("disk:{used}"),
            &format!("DATA_DIR's partition is {used}% full"),
            &format!(
                "The partition holding DATA_DIR ({}) is {used}% full (MAIL_DISK_THRESHOLD {}%). \
                 The license server stops granting when it can no longer write its journal.",
                dir.display(),
                n.settings.disk_threshold
            ),
        );
    }

    /// Whether this member sees another member; announces being alone for
    /// `MAIL_ISOLATED_AFTER`, once while it lasts.
    pub fn isolation(&mut self, n: &Notifier, sees_another: bool, now_ms: i64) {
        if sees_another {
            self.alone_since = None;
            return;
        }
        let (since, since_ms) = *self.alone_since.get_or_insert((Instant::now(), now_ms));
        if since.elapsed() >= n.settings.isolated_after {
            n.notify(
                Event::Isolated,
                &format!("isolated:{since_ms}"),
                "this cluster member is cut off from the other two",
                &format!(
                    "This member has reached neither other member of its cluster for {} \
                     (since {} UTC): it grants nothing until it sees one again; the other two \
                     serve the pool if they see each other. Check the network between the \
                     members.",
                    shared::duration::format(since.elapsed()),
                    shared::lease::date_of(since_ms / 1000)
                ),
            );
        }
    }

    /// The licenses ending soon: one mail for all of them, once a (UTC) day.
    pub fn expiry(&mut self, n: &Notifier, features: &[shared::lease::FeatureInfo], now: i64) {
        let lines = ending_soon(features, now, n.settings.expiry_days);
        if lines.is_empty() {
            return;
        }
        let today = shared::lease::date_of(now);
        n.notify(
            Event::Expiry,
            &format!("expiry:{today}"),
            &format!(
                "{} license(s) end within {} days",
                lines.len(),
                n.settings.expiry_days
            ),
            &format!(
                "These licenses end within {} days (MAIL_EXPIRY_DAYS):\n\n{}\n\nRenew them \
                 with your producer; this mail is sent once a day while any is this close.",
                n.settings.expiry_days,
                lines.join("\n")
            ),
        );
    }
}

/// Looks at the watched conditions every second until `stop`.
pub async fn watch(
    n: Arc<Notifier>,
    svc: Arc<Service>,
    data_dir: PathBuf,
    mut stop: watch::Receiver<bool>,
) {
    let mut w = Watch::default();
    let mut tick = tokio::time::interval(WATCH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        if let Some(used) = disk_used_percent(&data_dir) {
            w.disk(&n, used, &data_dir);
        }
        if let Some(c) = svc.cluster() {
            let sees = c.health.peers.iter().any(|p| c.health.up(p.id));
            w.isolation(&n, sees, crate::cluster::now_ms());
        }
        let now = crate::cluster::now_ms() / 1000;
        w.expiry(&n, &svc.features(), now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw() -> MailRaw {
        MailRaw {
            host: Some("mail.example".into()),
            from: Some("License server <lls@example.com>".into()),
            to: Some("ops@example.com, it@example.com".into()),
            ..MailRaw::default()
        }
    }

    #[test]
    fn mail_settings_default_and_refuse_what_cannot_be_sent() {
        let s = MailSettings::from_raw(raw()).unwrap().unwrap();
        assert_eq!((s.port, s.tls), (25, MailTls::StartTls));
        assert_eq!(s.to.len(), 2);
        assert_eq!(s.events, Event::ALL.to_vec());
        assert_eq!(
            (s.disk_threshold, s.isolated_after, s.expiry_days),
            (80, Duration::from_secs(300), 14)
        );
        let tls = MailSettings::from_raw(MailRaw {
            tls: Some("TLS".into()),
            ..raw()
        })
        .unwrap()
        .unwrap();
        assert_eq!((tls.port, tls.tls), (465, MailTls::Tls));
        assert!(
            MailSettings::from_raw(MailRaw::default())
                .unwrap()
                .is_none()
        );
        for (bad, says) in [
            (MailRaw { to: None, ..raw() }, "MAIL_TO is required"),
            (
                MailRaw {
                    to: Some("ops@example.com,,x@example.com".into()),
                    ..raw()
                },
                "empty address",
            ),
            (
                MailRaw {
                    to: Some("ops@example.com, not an address".into()),
                    ..raw()
                },
                "`not an address` is not a mail address",
            ),
            (
                MailRaw {
                    from: Some("nobody".into()),
                    ..raw()
                },
                "MAIL_FROM `nobody` is not a mail address",
            ),
            (
                MailRaw {
                    port: Some("0".into()),
                    ..raw()
                },
                "MAIL_SMTP_PORT `0` is not a port",
            ),
            (
                MailRaw {
                    port: Some("70000".into()),
                    ..raw()
                },
                "MAIL_SMTP_PORT `70000`",
            ),
            (
                MailRaw {
                    tls: Some("ssl".into()),
                    ..raw()
                },
                "MAIL_SMTP_TLS `ssl`",
            ),
            (
                MailRaw {
                    host: Some("mail.example:26".into()),
                    ..raw()
                },
                "the port goes in MAIL_SMTP_PORT",
            ),
            (
                MailRaw {
                    events: Some("start,reboot".into()),
                    ..raw()
                },
                "`reboot` is not one of",
            ),
            (
                MailRaw {
                    disk_threshold: Some("100".into()),
                    ..raw()
                },
                "MAIL_DISK_THRESHOLD `100`",
            ),
            (
                MailRaw {
                    isolated_after: Some(Duration::from_secs(7200)),
                    ..raw()
                },
                "MAIL_ISOLATED_AFTER",
            ),
            (
                MailRaw {
                    expiry_days: Some("31".into()),
                    ..raw()
                },
                "MAIL_EXPIRY_DAYS `31`",
            ),
            (
                MailRaw {
                    host: None,
                    ..raw()
                },
                "MAIL_FROM is set but MAIL_SMTP_HOST is not",
            ),
        ] {
            let e = MailSettings::from_raw(bad).unwrap_err().to_string();
            assert!(e.contains(says), "{says}: {e}");
        }
    }

    #[test]
    fn licenses_ending_within_the_days_are_listed_and_no_others() {
        let now = 1_900_000_000;
        let right = |id: &str, end: Option<i64>| shared::lease::FeatureRight {
            activation_id: id.into(),
            count: 2,
            starts_at: 0,
            expires_at: end,
            started: true,
        };
        let f: shared::lease::FeatureInfo = serde_json::from_value(serde_json::json!({
            "feature": "cad", "version": "1.0", "count": 8, "in_use": 0, "free": 8,
            "expired": false, "rights": [],
        }))
        .unwrap();
        let f = shared::lease::FeatureInfo {
            rights: vec![
                right("SOON", Some(now + 3 * 86_400)),
                right("LATER", Some(now + 30 * 86_400)),
                right("PAST", Some(now - 10)),
                right("PERMANENT", None),
            ],
            ..f
        };
        let lines = ending_soon(&[f], now, 7);
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(
            lines[0].starts_with("cad 1.0: 2 seat(s) of SOON end on "),
            "{lines:?}"
        );
    }

    #[tokio::test]
    async fn each_event_is_queued_once_isolation_once_while_it_lasts_and_expiry_once_a_day() {
        let (n, _task) = Notifier::start(
            MailSettings {
                isolated_after: Duration::from_millis(1),
                disk_threshold: 50,
                ..MailSettings::from_raw(MailRaw {
                    tls: Some("none".into()),
                    host: Some("127.0.0.1".into()),
                    port: Some("9".into()),
                    ..raw()
                })
                .unwrap()
                .unwrap()
            },
            "string:test".into(),
        )
        .unwrap();
        assert!(n.notify(Event::Start, "start", "started", "body"));
        assert!(!n.notify(Event::Start, "start", "started", "body"), "twice");
        let mut w = Watch::default();
        let dir = std::path::Path::new("/");
        w.disk(&n, 40, dir);
        w.disk(&n, 60, dir);
        w.disk(&n, 60, dir);
        w.disk(&n, 61, dir);
        w.disk(&n, 40, dir);
        w.disk(&n, 60, dir);
        let queued = |prefix: &str| {
            n.queued
                .lock()
                .iter()
                .filter(|k| k.starts_with(prefix))
                .count()
        };
        assert_eq!(queued("disk:"), 2, "60 and 61");
        w.isolation(&n, false, 1_000);
        std::thread::sleep(Duration::from_millis(5));
        w.isolation(&n, false, 2_000);
        w.isolation(&n, false, 3_000);
        assert_eq!(queued("isolated:"), 1);
        w.isolation(&n, true, 4_000);
        w.isolation(&n, false, 5_000);
        std::thread::sleep(Duration::from_millis(5));
        w.isolation(&n, false, 6_000);
        assert_eq!(queued("isolated:"), 2, "cut off again: news again");
        let f: shared::lease::FeatureInfo = serde_json::from_value(serde_json::json!({
            "feature": "cad", "version": "1.0", "count": 8, "in_use": 0, "free": 8,
            "expired": false, "rights": [{"activation_id": "A", "count": 8, "starts_at": 0,
            "expires_at": 1_900_000_000 + 86_400, "started": true}],
        }))
        .unwrap();
        let fs = [f];
        w.expiry(&n, &fs, 1_900_000_000);
        w.expiry(&n, &fs, 1_900_000_000 + 3_600);
        assert_eq!(queued("expiry:"), 1, "once a day");
        w.expiry(&n, &fs, 1_900_000_000 - 86_400);
        assert_eq!(queued("expiry:"), 2, "another day");
        // start, disk 60, 61 and 60 again, isolated twice, expiry twice: none sent (port 9).
        assert_eq!(*n.pending.borrow(), 8);
    }
}
