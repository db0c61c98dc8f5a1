//! Pure helpers that turn domain values into what the pages show: readable status labels,
//! times, and where a registry error belongs on the pair form.

use shared::capability::{ClusterStatus, PairStatus, Role, ServerStatus};
use shared::{ErrorBody, ErrorCode};

/// A status as shown: the readable label, the contract code (kept visible for people who
/// compare with the license server's own output) and a CSS class for its colour.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusView {
    pub code: &'static str,
    pub label: &'static str,
    pub class: &'static str,
}

pub fn server_status(s: ServerStatus) -> StatusView {
    let (label, class) = match s {
        ServerStatus::Active => ("Active (serving)", "ok"),
        ServerStatus::Ready => ("Ready (standing by)", "ok"),
        ServerStatus::Inaccessible => ("Inaccessible", "bad"),
    };
    StatusView {
        code: s.as_str(),
        label,
        class,
    }
}

pub fn pair_status(p: PairStatus) -> StatusView {
    let (label, class) = match p {
        PairStatus::PairedAvailable => ("Paired, both available", "ok"),
        PairStatus::MainNotAvailable => ("Main not available", "bad"),
        PairStatus::BackupNotAvailable => ("Backup not available", "warn"),
        PairStatus::NotSynced => ("Not synchronised", "warn"),
        PairStatus::Recovering => ("Recovering (main catching up)", "warn"),
    };
    StatusView {
        code: p.as_str(),
        label,
        class,
    }
}

/// A server's status, or "Not started yet" (neutral, not an alarm) for a server that has
/// never contacted the back office: registered by hand or as a pair's backup, and not
/// started since. The code stays the contract's.
pub fn cluster_status(c: ClusterStatus) -> StatusView {
    let (label, class) = match c {
        ClusterStatus::Operational => ("Operational (three members)", "ok"),
        ClusterStatus::PartiallyOperational => ("Partially operational (two members)", "warn"),
        ClusterStatus::NotOperational => ("Not operational", "bad"),
    };
    StatusView {
        code: c.as_str(),
        label,
        class,
    }
}

pub fn member_status(s: ServerStatus, started: bool) -> StatusView {
    match s {
        ServerStatus::Inaccessible if !started => not_started(s.as_str()),
        _ => server_status(s),
    }
}

/// A pair's status, or "Not started yet" (neutral) while its main has never contacted the
/// back office. The code stays the contract's.
pub fn pair_status_of(p: PairStatus, main_started: bool) -> StatusView {
    match p {
        PairStatus::MainNotAvailable if !main_started => not_started(p.as_str()),
        _ => pair_status(p),
    }
}

fn not_started(code: &'static str) -> StatusView {
    StatusView {
        code,
        label: "Not started yet",
        class: "muted",
    }
}

pub fn role(r: Role) -> &'static str {
    match r {
        Role::Main => "Main",
        Role::Backup => "Backup",
        Role::Standalone => "Standalone",
    }
}

/// A note on a server's registration state, when there is something to say.
pub fn registration_note(registration: &str) -> Option<&'static str> {
    match registration {
        "expected" => Some("Registered by hand; has not contacted the back office yet"),
        "waiting" => Some("Waiting: its main has not registered the pair yet"),
        _ => None,
    }
}

/// `2026-11-22 08:05 UTC`.
pub fn time(t: i64) -> String {
    let fmt = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute] UTC");
    time::OffsetDateTime::from_unix_timestamp(t)
        .ok()
        .and_then(|d| d.format(&fmt).ok())
        .unwrap_or_else(|| t.to_string())
}

/// `2026-11-22T08:05:00Z`, for `<time datetime>`.
pub fn iso(t: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(t)
        .ok()
        .and_then(|d| {
            d.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

/// `2026-11-22`.
pub fn date(t: i64) -> String {
    let fmt = time::macros::format_description!("[year]-[month]-[day]");
    time::OffsetDateTime::from_unix_timestamp(t)
        .ok()
        .and_then(|d| d.format(&fmt).ok())
        .unwrap_or_else(|| t.to_string())
}

/// How long ago `t` was, roughly: `just now`, `5 min ago`, `3 h ago`, `2 days ago`.
pub fn ago(now: i64, t: i64) -> String {
    let d = now - t;
    match d {
        i64::MIN..=9 => "just now".to_owned(),
        10..=59 => format!("{d} s ago"),
        60..=3599 => format!("{} min ago", d / 60),
        3600..=172_799 => format!("{} h ago", d / 3600),
        _ => format!("{} days ago", d / 86_400),
    }
}

/// A last-contact cell: `never`, or the time and how long ago.
pub fn last_contact(now: i64, t: Option<i64>) -> String {
    match t {
        Some(t) => format!("{} ({})", time(t), ago(now, t)),
        None => "never".to_owned(),
    }
}

pub fn expiry(t: Option<i64>) -> String {
    t.map_or_else(|| "permanent".to_owned(), date)
}

/// A line item's borrow policy: `no`, or the longest borrow in the largest whole unit
/// (`up to 7 days`, `up to 36 hours`, `up to 90 minutes`).
pub fn borrow_policy(max_secs: Option<i64>) -> String {
    let Some(s) = max_secs else {
        return "no".to_owned();
    };
    let (n, unit) = if s % 86_400 == 0 {
        (s / 86_400, "day")
    } else if s % 3_600 == 0 {
        (s / 3_600, "hour")
    } else if s % 60 == 0 {
        (s / 60, "minute")
    } else {
        (s, "second")
    };
    format!("up to {n} {unit}{}", if n == 1 { "" } else { "s" })
}

/// The field of the pair form an error belongs next to, or `None` for the top of the form.
pub fn pair_error_field(err: &ErrorBody, main: &str, backup: &str) -> Option<&'static str> {
    let named = |f: &str| match f {
        "main_hostid" => Some("main_hostid"),
        "backup_hostid" => Some("backup_hostid"),
        _ => None,
    };
    match err.code {
        ErrorCode::ValidationError => err.field.as_deref().and_then(named),
        ErrorCode::HostidTypeMismatch => Some("backup_hostid"),
        ErrorCode::HostidInUse | ErrorCode::RoleConflict => {
            // The registry's messages start with the hostid concerned.
            let m = err.message.strip_prefix("hostid ").unwrap_or(&err.message);
            let starts = |h: &str| {
                !h.is_empty() && m.strip_prefix(h).is_some_and(|rest| rest.starts_with(' '))
            };
            if starts(backup) {
                Some("backup_hostid")
            } else if starts(main) {
                Some("main_hostid")
            } else {
                None
            }
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_labels_are_readable_and_keep_the_code() {
        let p = pair_status(PairStatus::PairedAvailable);
        assert_eq!(p.code, "paired_available");
        assert_eq!(p.label, "Paired, both available");
        assert_eq!(p.class, "ok");
        assert_eq!(pair_status(PairStatus::MainNotAvailable).class, "bad");
        assert_eq!(pair_status(PairStatus::Recovering).code, "recovering");
        assert_eq!(
            server_status(ServerStatus::Inaccessible).label,
            "Inaccessible"
        );
        assert_eq!(server_status(ServerStatus::Ready).code, "ready");
        // Never started: said so, neutral, with the contract's code.
        let n = member_status(ServerStatus::Inaccessible, false);
        assert_eq!(
            (n.label, n.class, n.code),
            ("Not started yet", "muted", "inaccessible")
        );
        assert_eq!(member_status(ServerStatus::Inaccessible, true).class, "bad");
        let p = pair_status_of(PairStatus::MainNotAvailable, false);
        assert_eq!((p.label, p.class), ("Not started yet", "muted"));
        assert_eq!(
            pair_status_of(PairStatus::MainNotAvailable, true).class,
            "bad"
        );
        assert_eq!(role(Role::Backup), "Backup");
        assert!(registration_note("expected").is_some());
        assert!(registration_note("registered").is_none());
    }

    #[test]
    fn times() {
        assert_eq!(time(0), "1970-01-01 00:00 UTC");
        assert_eq!(iso(0), "1970-01-01T00:00:00Z");
        assert_eq!(expiry(None), "permanent");
        assert_eq!(borrow_policy(None), "no");
        assert_eq!(borrow_policy(Some(7 * 86_400)), "up to 7 days");
        assert_eq!(borrow_policy(Some(3_600)), "up to 1 hour");
        assert_eq!(borrow_policy(Some(5_400)), "up to 90 minutes");
        assert_eq!(borrow_policy(Some(61)), "up to 61 seconds");
        assert_eq!(expiry(Some(86_400)), "1970-01-02");
        assert_eq!(ago(100, 95), "just now");
        assert_eq!(ago(100, 50), "50 s ago");
        assert_eq!(ago(1000, 100), "15 min ago");
        assert_eq!(ago(10_000, 0), "2 h ago");
        assert_eq!(ago(1_000_000, 0), "11 days ago");
        assert_eq!(last_contact(0, None), "never");
    }

    #[test]
    fn pair_errors_go_next_to_their_field() {
        let main = "string:main-1";
        let backup = "string:backup-1";
        let e = |code, msg: &str| ErrorBody::new(code, msg);
        assert_eq!(
            pair_error_field(
                &e(ErrorCode::HostidTypeMismatch, "types differ"),
                main,
                backup
            ),
            Some("backup_hostid")
        );
        assert_eq!(
            pair_error_field(
                &e(ErrorCode::ValidationError, "bad").with_field("main_hostid"),
                main,
                backup
            ),
            Some("main_hostid")
        );
        assert_eq!(
            pair_error_field(
                &e(
                    ErrorCode::HostidInUse,
                    "hostid string:backup-1 is registered to another account"
                ),
                main,
                backup
            ),
            Some("backup_hostid")
        );
        assert_eq!(
            pair_error_field(
                &e(
                    ErrorCode::RoleConflict,
                    "string:main-1 is registered as the backup of x"
                ),
                main,
                backup
            ),
            Some("main_hostid")
        );
        assert_eq!(
            pair_error_field(&e(ErrorCode::AlreadyExists, "already a pair"), main, backup),
            None
        );
    }
}
