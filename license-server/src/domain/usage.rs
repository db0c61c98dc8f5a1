//! Usage reports, counted: per feature and clock-aligned interval, the peak and the
//! time-weighted seats in use, grants (borrowed and overdraft among them), denials by the
//! contract code that refused, true denials, and queued clients.
//!
//! The [`Meter`] is what the serving server counts in memory; nothing here knows clocks
//! (callers pass `now`). Closed intervals leave it as [`UsageInterval`]s, which the
//! service makes an event of, so that they are durable, replicated to the pair partner
//! and reported to the back office (which keeps each once, by [`UsageInterval::key`]).
//!
//! A **true denial** is a denied client — the same client ID, or the same user and host —
//! that did not get a seat of the feature within the retry window of its first denial;
//! denials of that client within the window are its retries, not new true denials. It is
//! counted in the interval in which its window ends (so an interval closes at its end,
//! without waiting for the window). A server that stops serving its pool (a backup
//! handing it back, a server stopping) counts the denials still in their window as true:
//! no seat went to their client there.

use std::collections::BTreeMap;

use shared::HostId;
use shared::capability::UsageInterval;

use super::{FeatureKey, LeaseKind, Millis};

/// Who asked, as a true denial recognises a retry.
#[derive(Clone, Copy, Debug)]
pub struct Asker<'a> {
    pub client_id: &'a str,
    pub user: &'a str,
    pub host: &'a str,
}

impl Asker<'_> {
    fn same(&self, p: &Pending) -> bool {
        (!self.client_id.is_empty() && self.client_id == p.client_id)
            || (!self.user.is_empty()
                && !self.host.is_empty()
                && self.user == p.user
                && self.host == p.host)
    }
}

/// A denied client waiting for its retry window to end.
#[derive(Clone, Debug)]
struct Pending {
    key: FeatureKey,
    client_id: String,
    user: String,
    host: String,
    first: Millis,
}

/// One interval's figures while it is open.
#[derive(Clone, Debug, Default)]
struct Acc {
    served_from: Millis,
    served_until: Millis,
    count: u32,
    peak: u32,
    seat_ms: u128,
    grants: u32,
    denials: BTreeMap<String, u32>,
    true_denials: u32,
    borrowed: u32,
    overdraft: u32,
    queued: u32,
}

impl Acc {
    fn is_empty(&self) -> bool {
        self.peak == 0
            && self.grants == 0
            && self.denials.is_empty()
            && self.true_denials == 0
            && self.queued == 0
    }
}

/// One feature: its seats in use since `since`, and its open intervals by start.
#[derive(Clone, Debug)]
struct Track {
    level: u32,
    count: u32,
    since: Millis,
    open: BTreeMap<Millis, Acc>,
}

/// The usage a serving server counts (see the module's comment).
#[derive(Clone, Debug)]
pub struct Meter {
    interval_ms: Millis,
    window_ms: Millis,
    served_by: HostId,
    tracks: BTreeMap<FeatureKey, Track>,
    pending: Vec<Pending>,
}

impl Meter {
    /// `interval_ms`: the interval's length (`USAGE_INTERVAL`); `window_ms`: the retry
    /// window of true denials (`USAGE_RETRY_WINDOW`). Both above 0.
    pub fn new(served_by: HostId, interval_ms: Millis, window_ms: Millis) -> Meter {
        Meter {
            interval_ms: interval_ms.max(1),
            window_ms: window_ms.max(1),
            served_by,
            tracks: BTreeMap::new(),
            pending: Vec::new(),
        }
    }

    fn start_of(&self, t: Millis) -> Millis {
        t.div_euclid(self.interval_ms) * self.interval_ms
    }

    /// The track of `key`, advanced to `now` (created at `now` with nothing in use).
    fn track(&mut self, key: &FeatureKey, now: Millis) -> &mut Track {
        let len = self.interval_ms;
        let track = self.tracks.entry(key.clone()).or_insert_with(|| Track {
            level: 0,
            count: 0,
            since: now,
            open: BTreeMap::new(),
        });
        advance(track, len, now);
        track
    }

    /// The open interval of `key` that holds `now`.
    fn acc(&mut self, key: &FeatureKey, now: Millis) -> &mut Acc {
        let start = self.start_of(now);
        let track = self.track(key, now);
        open_acc(track, start, now)
    }

    /// Seats of `key` in use (and licensed) from `now` on.
    pub fn level(&mut self, key: &FeatureKey, now: Millis, in_use: u32, count: u32) {
        let start = self.start_of(now);
        let track = self.track(key, now);
        track.level = in_use;
        track.count = count;
        let acc = open_acc(track, start, now);
        acc.peak = acc.peak.max(in_use);
        acc.count = acc.count.max(count);
    }

    /// A checkout of `key` granted to `who`: it ends the retry window of that client's
    /// denial, if any.
    pub fn grant(&mut self, key: &FeatureKey, now: Millis, kind: LeaseKind, who: Asker<'_>) {
        let acc = self.acc(key, now);
        acc.grants += 1;
        acc.borrowed += u32::from(kind.borrowed);
        acc.overdraft += u32::from(kind.overdraft);
        let window = self.window_ms;
        self.pending
            .retain(|p| !(p.key == *key && now < p.first + window && who.same(p)));
    }

    /// A checkout of `key` by `who` refused with the contract code `code`.
    pub fn deny(&mut self, key: &FeatureKey, now: Millis, code: &str, who: Asker<'_>) {
        let acc = self.acc(key, now);
        *acc.denials.entry(code.to_owned()).or_default() += 1;
        if !self.pending.iter().any(|p| p.key == *key && who.same(p)) {
            self.pending.push(Pending {
                key: key.clone(),
                client_id: who.client_id.to_owned(),
                user: who.user.to_owned(),
                host: who.host.to_owned(),
                first: now,
            });
        }
    }

    /// A client of `key` joined the line for a seat.
    pub fn queued(&mut self, key: &FeatureKey, now: Millis) {
        self.acc(key, now).queued += 1;
    }

    /// Counts the true denials whose window ended by `now`, then closes the intervals
    /// that ended by `now`: those with something to show, oldest first.
    pub fn close(&mut self, now: Millis) -> Vec<UsageInterval> {
        self.settle_denials(now);
        let len = self.interval_ms;
        let mut out = Vec::new();
        for (key, track) in &mut self.tracks {
            advance(track, len, now);
            while let Some(entry) = track.open.first_entry() {
                if *entry.key() + len > now {
                    break;
                }
                let (start, acc) = entry.remove_entry();
                if !acc.is_empty() {
                    out.push(interval(key, &self.served_by, start, len, acc));
                }
            }
        }
        out.sort_by_key(|i| i.starts_at);
        out
    }

    /// Everything counted up to `now`, open intervals included (as the part served so
    /// far): the server stops serving (it hands the pool back, or stops). Denials still in
    /// their window count as true denials now: no seat went to their client here, and
    /// this server will not see one go to it.
    pub fn flush(&mut self, now: Millis) -> Vec<UsageInterval> {
        self.settle_denials(now);
        for p in std::mem::take(&mut self.pending) {
            self.acc(&p.key, now).true_denials += 1;
        }
        let len = self.interval_ms;
        let mut out = Vec::new();
        for (key, mut track) in std::mem::take(&mut self.tracks) {
            advance(&mut track, len, now);
            for (start, acc) in track.open {
                if !acc.is_empty() {
                    out.push(interval(&key, &self.served_by, start, len, acc));
                }
            }
        }
        out.sort_by_key(|i| i.starts_at);
        out
    }

    fn settle_denials(&mut self, now: Millis) {
        let window = self.window_ms;
        let (due, keep): (Vec<Pending>, Vec<Pending>) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(|p| p.first + window <= now);
        self.pending = keep;
        for p in due {
            let end = p.first + window;
            self.acc(&p.key, end).true_denials += 1;
        }
    }
}

/// The open interval at `start` of a track, created (served from `now`) if need be.
fn open_acc(track: &mut Track, start: Millis, now: Millis) -> &mut Acc {
    let (level, count) = (track.level, track.count);
    track.open.entry(start).or_insert_with(|| Acc {
        served_from: now,
        served_until: now,
        count,
        peak: level,
        ..Acc::default()
    })
}

/// Adds the seats in use from the track's `since` to `now` to the intervals they fall in.
/// After a long silence (a clock that jumped) only the last two intervals are filled.
fn advance(track: &mut Track, len: Millis, now: Millis) {
    if now <= track.since {
        return;
    }
    let start_now = now.div_euclid(len) * len;
    let mut t = track.since.max(start_now - len);
    while t < now {
        let start = t.div_euclid(len) * len;
        let end = (start + len).min(now);
        let level = track.level;
        let acc = open_acc(track, start, t);
        acc.seat_ms += u128::from(level) * (end - t) as u128;
        acc.served_until = end;
        t = end;
    }
    track.since = now;
}

fn interval(
    key: &FeatureKey,
    served_by: &HostId,
    start: Millis,
    len: Millis,
    acc: Acc,
) -> UsageInterval {
    UsageInterval {
        feature: key.feature.clone(),
        version: key.version.clone(),
        starts_at: start.div_euclid(1000),
        ends_at: (start + len).div_euclid(1000),
        served_by: served_by.clone(),
        served_from: acc.served_from.div_euclid(1000),
        served_until: (acc.served_until + 999).div_euclid(1000),
        count: acc.count,
        peak: acc.peak,
        seat_secs: u64::try_from((acc.seat_ms + 500) / 1000).unwrap_or(u64::MAX),
        grants: acc.grants,
        denials: acc.denials,
        true_denials: acc.true_denials,
        borrowed: acc.borrowed,
        overdraft: acc.overdraft,
        queued: acc.queued,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Millis = 60_000;
    /// An interval start: 2026-11-27T00:00:00Z.
    const T0: Millis = 1_795_737_600_000;

    fn key() -> FeatureKey {
        FeatureKey {
            feature: "cad".into(),
            version: String::new(),
        }
    }

    fn meter() -> Meter {
        Meter::new(HostId::parse("string:main").unwrap(), 5 * MIN, MIN)
    }

    fn alice() -> Asker<'static> {
        Asker {
            client_id: "c-alice",
            user: "alice",
            host: "ws1",
        }
    }

    #[test]
    fn peak_and_average_count_leases_starting_and_ending_mid_interval() {
        let mut m = meter();
        m.level(&key(), T0, 0, 4);
        // One seat from minute 1 to minute 4, a second from minute 2 into the next interval.
        m.level(&key(), T0 + MIN, 1, 4);
        m.level(&key(), T0 + 2 * MIN, 2, 4);
        m.level(&key(), T0 + 4 * MIN, 1, 4);
        assert!(m.close(T0 + 5 * MIN - 1).is_empty(), "not ended yet");
        let closed = m.close(T0 + 5 * MIN);
        assert_eq!(closed.len(), 1);
        let i = &closed[0];
        assert_eq!((i.starts_at, i.ends_at), (T0 / 1000, T0 / 1000 + 300));
        assert_eq!((i.served_from, i.served_until), (i.starts_at, i.ends_at));
        assert_eq!(i.peak, 2);
        assert_eq!(i.count, 4);
        // 1 seat × 1 min + 2 × 2 min + 1 × 1 min = 6 seat-minutes: 1.2 on average.
        assert_eq!(i.seat_secs, 360);
        // The held seat carries into the next interval, which starts at it.
        m.level(&key(), T0 + 7 * MIN, 0, 4);
        let next = m.close(T0 + 10 * MIN);
        assert_eq!(next.len(), 1);
        assert_eq!((next[0].peak, next[0].seat_secs), (1, 120));
        // Nothing in use, nothing asked: nothing to report.
        assert!(m.close(T0 + 15 * MIN).is_empty());
    }

    #[test]
    fn a_server_that_starts_serving_mid_interval_reports_the_part_it_served() {
        let mut m = meter();
        m.level(&key(), T0 + 3 * MIN, 2, 4);
        m.deny(
            &key(),
            T0 + 4 * MIN - 1_000,
            "NO_LICENSE_AVAILABLE",
            alice(),
        );
        let part = m.flush(T0 + 4 * MIN);
        assert_eq!(part.len(), 1);
        assert_eq!(part[0].true_denials, 1, "no seat went to alice here");
        assert_eq!(part[0].served_from, T0 / 1000 + 180);
        assert_eq!(part[0].served_until, T0 / 1000 + 240);
        assert_eq!(part[0].seat_secs, 120);
        assert!(
            m.close(T0 + 5 * MIN).is_empty(),
            "a flush empties the meter"
        );
    }

    #[test]
    fn grants_and_denials_are_counted_by_kind_and_code() {
        let mut m = meter();
        let plain = LeaseKind::default();
        let borrowed = LeaseKind {
            borrowed: true,
            overdraft: false,
        };
        let over = LeaseKind {
            borrowed: false,
            overdraft: true,
        };
        m.grant(&key(), T0 + 1, plain, alice());
        m.grant(&key(), T0 + 2, borrowed, alice());
        m.grant(&key(), T0 + 3, over, alice());
        let bob = Asker {
            client_id: "c-bob",
            user: "bob",
            host: "ws2",
        };
        m.deny(&key(), T0 + 4, "NO_LICENSE", bob);
        m.deny(&key(), T0 + 5, "EXCLUDED", bob);
        m.deny(&key(), T0 + 6, "OVER_MAX", alice());
        m.queued(&key(), T0 + 7);
        let i = &m.close(T0 + 5 * MIN)[0];
        assert_eq!((i.grants, i.borrowed, i.overdraft, i.queued), (3, 1, 1, 1));
        assert_eq!(
            i.denials,
            BTreeMap::from([
                ("EXCLUDED".to_owned(), 1),
                ("NO_LICENSE".to_owned(), 1),
                ("OVER_MAX".to_owned(), 1),
            ])
        );
    }

    #[test]
    fn a_denied_client_that_gets_a_seat_on_a_retry_within_the_window_is_no_true_denial() {
        let mut m = meter();
        // Alice: denied twice, granted 50 s after her first denial (a retry).
        m.deny(&key(), T0 + 10_000, "NO_LICENSE", alice());
        m.deny(&key(), T0 + 40_000, "NO_LICENSE", alice());
        m.grant(&key(), T0 + 60_000, LeaseKind::default(), alice());
        // Bob: denied twice, granted 70 s after his first denial: too late, one true
        // denial (his second denial was a retry).
        let bob = Asker {
            client_id: "c-bob",
            user: "bob",
            host: "ws2",
        };
        m.deny(&key(), T0 + 20_000, "NO_LICENSE", bob);
        m.deny(&key(), T0 + 50_000, "NO_LICENSE", bob);
        m.grant(&key(), T0 + 90_000, LeaseKind::default(), bob);
        // Carol's retry comes from another client ID on the same user and host: a retry.
        let carol = |client_id| Asker {
            client_id,
            user: "carol",
            host: "ws3",
        };
        m.deny(&key(), T0 + 30_000, "RESERVED", carol("c-carol-1"));
        m.grant(
            &key(),
            T0 + 40_000,
            LeaseKind::default(),
            carol("c-carol-2"),
        );
        let i = &m.close(T0 + 5 * MIN)[0];
        assert_eq!(i.true_denials, 1);
        assert_eq!(i.denials["NO_LICENSE"], 4);
        assert_eq!(i.grants, 3);
    }

    #[test]
    fn a_true_denial_counts_in_the_interval_in_which_its_window_ends() {
        let mut m = meter();
        m.deny(&key(), T0 + 5 * MIN - 10_000, "NO_LICENSE", alice());
        let first = m.close(T0 + 5 * MIN);
        assert_eq!(
            (first[0].denials["NO_LICENSE"], first[0].true_denials),
            (1, 0)
        );
        let second = m.close(T0 + 10 * MIN);
        assert_eq!(second.len(), 1);
        assert_eq!(second[0].starts_at, T0 / 1000 + 300);
        assert_eq!((second[0].denials.len(), second[0].true_denials), (0, 1));
    }

    #[test]
    fn intervals_are_aligned_to_the_clock() {
        let mut m = meter();
        m.level(&key(), T0 + 7 * MIN + 123, 1, 1);
        let i = &m.close(T0 + 10 * MIN)[0];
        assert_eq!(i.starts_at, T0 / 1000 + 300);
        assert_eq!(i.ends_at % 300, 0);
    }
}
