//! The full administration session ([`crate::admin_session`]) at run time: kept by this
//! server; on a cluster by the serving member, for its raft term, so the three members
//! have one session and a new serving member starts without one.

use serde::{Deserialize, Serialize};

use super::{Service, now_ms};
use crate::admin_session::{Holder, MAX_OPERATOR};
use crate::domain::fmt_time;
use crate::error::ServiceError;

/// Who holds the full session (never its key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(example = json!({"operator": "alice", "opened_at": 1795835000, "last_used_at": 1795835060, "lapses_at": 1795836860}))]
pub struct SessionHolder {
    /// The name its holder gave, or where the request that opened it came from.
    pub operator: String,
    /// When it was opened (Unix time, seconds since 1970-01-01T00:00:00Z).
    pub opened_at: i64,
    /// Its last request that carried the key (Unix time, seconds).
    pub last_used_at: i64,
    /// When it lapses unless a request carries its key before (Unix time, seconds).
    pub lapses_at: i64,
}

impl From<Holder> for SessionHolder {
    fn from(h: Holder) -> Self {
        SessionHolder {
            operator: h.operator,
            opened_at: h.opened_at_ms / 1000,
            last_used_at: h.last_used_ms / 1000,
            lapses_at: h.lapses_at_ms / 1000,
        }
    }
}

/// `POST /api/v1/admin/session` body (optional).
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OpenSession {
    /// A name for the others to see (at most 64 characters); else where the request came
    /// from.
    #[serde(default)]
    pub operator: Option<String>,
    /// Take the session from the operator who holds it (who is then out).
    #[serde(default)]
    pub take_over: bool,
}

/// The session opened: its key goes in `X-Admin-Session` on each request that acts.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OpenedSession {
    /// The session's key (shown once).
    pub key: String,
    pub holder: SessionHolder,
    /// How long it stays open without a request carrying its key (`ADMIN_SESSION_IDLE`,
    /// seconds).
    pub idle_secs: u64,
    /// Whom it was taken from, with `take_over`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub took_over: Option<SessionHolder>,
}

impl Service {
    /// The epoch sessions are kept in: the raft term on a cluster, whose serving member
    /// alone keeps the session (the others answer `NOT_SERVING` with its URL).
    fn session_epoch(&self) -> Result<u64, ServiceError> {
        match &self.cluster {
            Some(c) => {
                c.serving()?;
                Ok(c.term())
            }
            None => Ok(0),
        }
    }

    fn held(&self, h: Holder) -> ServiceError {
        let whose = if self.cluster.is_some() {
            "the cluster's"
        } else {
            "this server's"
        };
        let h = SessionHolder::from(h);
        ServiceError::SessionHeld(format!(
            "{} holds {whose} full administration session since {} (last request {}): acting \
             needs its key until it is closed, until it lapses at {} if left idle \
             (ADMIN_SESSION_IDLE), or until it is taken over (`license-server session open \
             --take-over`)",
            h.operator,
            fmt_time(h.opened_at),
            fmt_time(h.last_used_at),
            fmt_time(h.lapses_at),
        ))
    }

    /// Opens the full session for the operator of `req` (`from`: where the request came
    /// from, its name when it gives none); `held`: the key it sent, kept when it holds the
    /// session already.
    pub fn open_session(
        &self,
        req: OpenSession,
        held: Option<&str>,
        from: &str,
    ) -> Result<OpenedSession, ServiceError> {
        let operator = match req.operator {
            Some(name) => {
                let name = name.trim().to_owned();
                if name.is_empty()
                    || name.chars().count() > MAX_OPERATOR
                    || name.chars().any(char::is_control)
                {
                    return Err(ServiceError::validation(
                        "operator",
                        format!(
                            "the operator's name must be 1 to {MAX_OPERATOR} printable characters"
                        ),
                    ));
                }
                name
            }
            None => format!("an operator at {from}"),
        };
        let epoch = self.session_epoch()?;
        let now = now_ms();
        let (key, opened) = {
            let mut sessions = self.sessions.lock();
            let key = match held {
                Some(k) if sessions.holds(k, now, epoch) => k.to_owned(),
                _ => shared::random_token::<32>(),
            };
            let opened = sessions.open(&key, &operator, req.take_over, now, epoch);
            (key, opened.map_err(|h| self.held(h))?)
        };
        let took_over = opened.took_over.map(SessionHolder::from);
        match &took_over {
            Some(before) => tracing::info!(
                operator = %operator,
                from = %before.operator,
                "the full administration session was taken over"
            ),
            None => tracing::info!(operator = %operator, "full administration session opened"),
        }
        Ok(OpenedSession {
            key,
            holder: opened.holder.into(),
            idle_secs: (self.cfg.admin_session_idle_ms / 1000) as u64,
            took_over,
        })
    }

    /// Who holds the full session, if anyone.
    pub fn session_holder(&self) -> Result<Option<SessionHolder>, ServiceError> {
        let epoch = self.session_epoch()?;
        Ok(self
            .sessions
            .lock()
            .view(now_ms(), epoch)
            .map(SessionHolder::from))
    }

    /// Closes the full session `key` holds (none open: nothing to do).
    pub fn close_session(&self, key: Option<&str>) -> Result<(), ServiceError> {
        let epoch = self.session_epoch()?;
        let closed = self
            .sessions
            .lock()
            .close(key, now_ms(), epoch)
            .map_err(|h| self.held(h))?;
        if closed {
            tracing::info!("full administration session closed");
        }
        Ok(())
    }

    /// Whether an operator's request that acts, carrying `key` (or none), is taken now.
    pub fn check_session(&self, key: Option<&str>) -> Result<(), ServiceError> {
        let epoch = self.session_epoch()?;
        let checked = self.sessions.lock().check(key, now_ms(), epoch);
        checked.map_err(|h| self.held(h))
    }
}
