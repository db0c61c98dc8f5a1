//! The full administration session: one operator at a time acts on a server (on a
//! cluster, on its three members: the serving member keeps the session), as only one
//! administration tool is connected in full mode in the DS seed. Pure rules: no HTTP, no
//! clock (times in Unix milliseconds are passed in).
//!
//! - An operator with the full token opens the session and gets its key; while it is
//!   open, a request that acts is taken only with that key, and refused to anyone else
//!   (`SESSION_HELD`, saying who holds it, since when, and when it lapses).
//! - It ends when its holder closes it, after `ADMIN_SESSION_IDLE` without a request that
//!   carries its key, when another operator takes it over (`take_over`, as a tool on the
//!   server's own machine disconnects the one connected before), or when the serving
//!   member of a cluster changes (the epoch: the raft term).
//! - While no session is open, a request that acts is taken from any full token (a
//!   one-off command), with or without a key.
//! - The key coordinates operators who all hold the full token; it is not a second
//!   secret (the full token is what authorizes). It is kept as its SHA-256 and compared
//!   in constant time.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The longest operator name kept (longer ones are refused).
pub const MAX_OPERATOR: usize = 64;

/// Who holds the session and since when (never its key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// The name its holder gave, or where it came from.
    pub operator: String,
    pub opened_at_ms: i64,
    /// Its last request that carried the key.
    pub last_used_ms: i64,
    /// When it lapses if no request carries its key before.
    pub lapses_at_ms: i64,
}

/// A session opened: its holder, and whom it was taken from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    pub holder: Holder,
    pub took_over: Option<Holder>,
}

#[derive(Debug, Clone)]
struct Held {
    digest: [u8; 32],
    operator: String,
    opened_at_ms: i64,
    last_used_ms: i64,
    epoch: u64,
}

/// The session of one server.
#[derive(Debug)]
pub struct Sessions {
    idle_ms: i64,
    held: Option<Held>,
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

impl Sessions {
    /// No session open; one lapses after `idle_ms` without a request carrying its key.
    pub fn new(idle_ms: i64) -> Sessions {
        Sessions {
            idle_ms,
            held: None,
        }
    }

    /// The open session, if any: not lapsed, opened in this `epoch`.
    fn live(&self, now_ms: i64, epoch: u64) -> Option<&Held> {
        self.held
            .as_ref()
            .filter(|h| h.epoch == epoch && now_ms - h.last_used_ms < self.idle_ms)
    }

    fn holder(&self, h: &Held) -> Holder {
        Holder {
            operator: h.operator.clone(),
            opened_at_ms: h.opened_at_ms,
            last_used_ms: h.last_used_ms,
            lapses_at_ms: h.last_used_ms + self.idle_ms,
        }
    }

    /// Whether `key` holds the open session.
    pub fn holds(&self, key: &str, now_ms: i64, epoch: u64) -> bool {
        self.live(now_ms, epoch)
            .is_some_and(|h| bool::from(h.digest.ct_eq(&digest(key))))
    }

    /// Who holds the session now, if anyone.
    pub fn view(&self, now_ms: i64, epoch: u64) -> Option<Holder> {
        self.live(now_ms, epoch).map(|h| self.holder(h))
    }

    /// Opens the session for `operator` with `key` (made by the caller, random). Refused
    /// with the holder while another key holds it, unless `take_over`; answers the new
    /// holder and whom it took the session from. Opening again with the key that holds it
    /// keeps it.
    pub fn open(
        &mut self,
        key: &str,
        operator: &str,
        take_over: bool,
        now_ms: i64,
        epoch: u64,
    ) -> Result<Opened, Holder> {
        let d = digest(key);
        let before = match self.live(now_ms, epoch) {
            Some(h) if bool::from(h.digest.ct_eq(&d)) => None,
            Some(h) if !take_over => return Err(self.holder(h)),
            Some(h) => Some(self.holder(h)),
            None => None,
        };
        let held = Held {
            digest: d,
            operator: operator.to_owned(),
            opened_at_ms: now_ms,
            last_used_ms: now_ms,
            epoch,
        };
        let holder = self.holder(&held);
        self.held = Some(held);
        Ok(Opened {
            holder,
            took_over: before,
        })
    }

    /// Whether a request that acts, carrying `key` (or none), is taken: always while no
    /// session is open; while one is, only with its key (which keeps it from lapsing).
    pub fn check(&mut self, key: Option<&str>, now_ms: i64, epoch: u64) -> Result<(), Holder> {
        let Some(h) = self.live(now_ms, epoch) else {
            return Ok(());
        };
        if key.is_some_and(|k| bool::from(h.digest.ct_eq(&digest(k)))) {
            if let Some(h) = self.held.as_mut() {
                h.last_used_ms = now_ms;
            }
            return Ok(());
        }
        Err(self.holder(h))
    }

    /// Closes the session `key` holds. `Ok(true)`: closed; `Ok(false)`: none was open;
    /// `Err`: another key holds it (it stays).
    pub fn close(&mut self, key: Option<&str>, now_ms: i64, epoch: u64) -> Result<bool, Holder> {
        match self.live(now_ms, epoch) {
            None => {
                self.held = None;
                Ok(false)
            }
            Some(h) if key.is_some_and(|k| bool::from(h.digest.ct_eq(&digest(k)))) => {
                self.held = None;
                Ok(true)
            }
            Some(h) => Err(self.holder(h)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDLE: i64 = 30 * 60_000;

    /// Whom an opening took the session from.
    fn took(opened: Result<Opened, Holder>) -> Result<Option<Holder>, Holder> {
        opened.map(|o| o.took_over)
    }

    #[test]
    fn one_operator_at_a_time_acts_while_a_session_is_open() {
        let mut s = Sessions::new(IDLE);
        // None open: anyone acts, with or without a key.
        assert_eq!(s.check(None, 0, 1), Ok(()));
        assert_eq!(s.check(Some("stale"), 0, 1), Ok(()));
        let opened = s.open("alice-key", "alice", false, 1_000, 1).unwrap();
        assert_eq!(opened.took_over, None);
        assert_eq!(
            opened.holder,
            Holder {
                operator: "alice".into(),
                opened_at_ms: 1_000,
                last_used_ms: 1_000,
                lapses_at_ms: 1_000 + IDLE
            }
        );
        // Alice acts; anyone else is told who holds it and until when.
        assert_eq!(s.check(Some("alice-key"), 2_000, 1), Ok(()));
        let held = s.check(None, 3_000, 1).unwrap_err();
        assert_eq!(held.operator, "alice");
        assert_eq!(held.opened_at_ms, 1_000);
        assert_eq!(held.last_used_ms, 2_000);
        assert_eq!(held.lapses_at_ms, 2_000 + IDLE);
        assert!(s.check(Some("bob-key"), 3_000, 1).is_err());
        // Bob cannot open it, nor close it.
        assert_eq!(
            s.open("bob-key", "bob", false, 4_000, 1)
                .unwrap_err()
                .operator,
            "alice"
        );
        assert!(s.close(Some("bob-key"), 4_000, 1).is_err());
        assert!(s.close(None, 4_000, 1).is_err());
        // Opening again with her key keeps it hers.
        assert!(s.holds("alice-key", 5_000, 1) && !s.holds("bob-key", 5_000, 1));
        assert_eq!(
            took(s.open("alice-key", "alice", false, 5_000, 1)),
            Ok(None)
        );
        // Bob takes it over: Alice is out.
        let was = took(s.open("bob-key", "bob", true, 6_000, 1))
            .unwrap()
            .unwrap();
        assert_eq!(was.operator, "alice");
        assert!(s.check(Some("alice-key"), 7_000, 1).is_err());
        assert_eq!(s.check(Some("bob-key"), 7_000, 1), Ok(()));
        // Bob closes it: anyone acts again.
        assert_eq!(s.close(Some("bob-key"), 8_000, 1), Ok(true));
        assert_eq!(s.check(None, 8_000, 1), Ok(()));
        assert_eq!(s.close(Some("bob-key"), 8_000, 1), Ok(false));
        assert_eq!(s.view(8_000, 1), None);
    }

    #[test]
    fn a_session_lapses_when_idle_and_ends_with_the_serving_member() {
        let mut s = Sessions::new(IDLE);
        s.open("k", "alice", false, 0, 1).unwrap();
        // Each request with the key keeps it: idle counts from the last one.
        assert_eq!(s.check(Some("k"), IDLE - 1, 1), Ok(()));
        assert!(s.check(None, 2 * IDLE - 2, 1).is_err());
        assert_eq!(s.view(2 * IDLE - 1, 1), None);
        assert_eq!(s.check(None, 2 * IDLE - 1, 1), Ok(()));
        assert_eq!(took(s.open("other", "bob", false, 2 * IDLE, 1)), Ok(None));
        // Another term: the serving member changed, the session opened before is over.
        assert_eq!(s.check(None, 2 * IDLE + 1, 2), Ok(()));
        assert_eq!(s.view(2 * IDLE + 1, 2), None);
        assert_eq!(took(s.open("k", "alice", false, 2 * IDLE + 2, 2)), Ok(None));
    }
}
