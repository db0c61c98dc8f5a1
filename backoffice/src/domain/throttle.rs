//! The rule that slows down password guessing: failed sign-ins are counted per account
//! (e-mail address) and per client address. After a few free failures every further one
//! locks the key for twice as long as the one before, from one second up to a limit; while
//! a key is locked its sign-ins are refused without looking at the password. A success
//! forgets the key, and so does a quiet period as long as the limit.
//!
//! Pure: the time is passed in, in milliseconds. Memory is bounded: each kind of key has a fixed number of
//! entries, and when they are all taken the one quiet for longest makes room.

use std::collections::HashMap;
use std::net::IpAddr;

/// What failures are counted against.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Key {
    /// A normalised e-mail address, whether or not anyone has it.
    Account(String),
    /// The client's address.
    Address(IpAddr),
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Key::Account(email) => write!(f, "account {email}"),
            Key::Address(ip) => write!(f, "address {ip}"),
        }
    }
}

/// How one kind of key is treated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Failures before the first lock.
    pub free: u32,
    /// The longest lock, in milliseconds; also how long a key must be quiet to be forgotten.
    pub max_lock: i64,
    /// Entries kept at most.
    pub capacity: usize,
}

/// Accounts: five tries, then 1 s, 2 s, 4 s, … up to 15 minutes.
pub const ACCOUNTS: Policy = Policy {
    free: 5,
    max_lock: 15 * 60 * 1000,
    capacity: 10_000,
};

/// Addresses: more room, since people behind one NAT or proxy share an address.
pub const ADDRESSES: Policy = Policy {
    free: 20,
    max_lock: 15 * 60 * 1000,
    capacity: 10_000,
};

#[derive(Clone, Copy, Debug)]
struct Entry {
    failures: u32,
    last_failure: i64,
    locked_until: i64,
    /// This burst's lock has been reported (once per burst).
    reported: bool,
}

/// A lock that has just begun for a key not reported in this burst yet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewLock {
    pub key: Key,
    pub failures: u32,
    /// Milliseconds.
    pub lock: i64,
}

#[derive(Debug)]
pub struct Throttle {
    accounts: Table,
    addresses: Table,
}

impl Default for Throttle {
    fn default() -> Self {
        Throttle::new(ACCOUNTS, ADDRESSES)
    }
}

impl Throttle {
    pub fn new(accounts: Policy, addresses: Policy) -> Throttle {
        Throttle {
            accounts: Table::new(accounts),
            addresses: Table::new(addresses),
        }
    }

    fn table(&mut self, key: &Key) -> &mut Table {
        match key {
            Key::Account(_) => &mut self.accounts,
            Key::Address(_) => &mut self.addresses,
        }
    }

    /// `Err(milliseconds)` while any of `keys` is locked: how long until a sign-in may be
    /// tried.
    pub fn check(&mut self, keys: &[Key], now: i64) -> Result<(), i64> {
        let wait = keys
            .iter()
            .filter_map(|k| self.table(k).locked_for(k, now))
            .max();
        match wait {
            Some(w) => Err(w),
            None => Ok(()),
        }
    }

    /// Counts a failed sign-in against every key; returns the locks to report.
    pub fn failed(&mut self, keys: &[Key], now: i64) -> Vec<NewLock> {
        keys.iter()
            .filter_map(|k| self.table(k).failed(k, now))
            .collect()
    }

    /// A sign-in succeeded: its keys start afresh.
    pub fn succeeded(&mut self, keys: &[Key]) {
        for k in keys {
            self.table(k).entries.remove(k);
        }
    }

    /// Entries held, for tests of the bound.
    pub fn len(&self) -> usize {
        self.accounts.entries.len() + self.addresses.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Debug)]
struct Table {
    policy: Policy,
    entries: HashMap<Key, Entry>,
}

impl Table {
    fn new(policy: Policy) -> Table {
        Table {
            policy,
            entries: HashMap::new(),
        }
    }

    fn forgotten(&self, e: &Entry, now: i64) -> bool {
        now - e.last_failure >= self.policy.max_lock && now >= e.locked_until
    }

    fn locked_for(&mut self, key: &Key, now: i64) -> Option<i64> {
        let e = self.entries.get(key)?;
        if self.forgotten(e, now) {
            self.entries.remove(key);
            return None;
        }
        (e.locked_until > now).then(|| e.locked_until - now)
    }

    fn failed(&mut self, key: &Key, now: i64) -> Option<NewLock> {
        if let Some(e) = self.entries.get(key)
            && self.forgotten(e, now)
        {
            self.entries.remove(key);
        }
        if !self.entries.contains_key(key) {
            self.make_room(now);
        }
        let policy = self.policy;
        let e = self.entries.entry(key.clone()).or_insert(Entry {
            failures: 0,
            last_failure: now,
            locked_until: now,
            reported: false,
        });
        e.failures = e.failures.saturating_add(1);
        e.last_failure = now;
        let over = e.failures.checked_sub(policy.free)?;
        if over == 0 {
            return None;
        }
        // 1 s after the first failure over the free ones, then doubling up to the limit.
        let lock = 1000i64
            .checked_shl(over - 1)
            .filter(|ms| *ms > 0)
            .map_or(policy.max_lock, |ms| ms.min(policy.max_lock));
        e.locked_until = now + lock;
        if e.reported {
            return None;
        }
        e.reported = true;
        Some(NewLock {
            key: key.clone(),
            failures: e.failures,
            lock,
        })
    }

    /// Keeps the table within its capacity: forgotten entries go first, then the quietest.
    fn make_room(&mut self, now: i64) {
        if self.entries.len() < self.policy.capacity {
            return;
        }
        let max_lock = self.policy.max_lock;
        self.entries
            .retain(|_, e| !(now - e.last_failure >= max_lock && now >= e.locked_until));
        while self.entries.len() >= self.policy.capacity {
            let Some(oldest) = self
                .entries
                .iter()
                .min_by_key(|(_, e)| e.last_failure)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            self.entries.remove(&oldest);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account(s: &str) -> Key {
        Key::Account(s.to_owned())
    }

    #[test]
    fn free_failures_then_doubling_locks() {
        let mut t = Throttle::default();
        let k = [account("a@x")];
        for i in 0..5 {
            assert_eq!(t.check(&k, 100), Ok(()), "try {i}");
            assert!(t.failed(&k, 100).is_empty());
        }
        // The sixth failure locks for 1 s, and is reported.
        let locks = t.failed(&k, 100);
        assert_eq!(
            locks,
            vec![NewLock {
                key: account("a@x"),
                failures: 6,
                lock: 1000
            }]
        );
        assert_eq!(t.check(&k, 100), Err(1000));
        assert_eq!(t.check(&k, 600), Err(500));
        assert_eq!(t.check(&k, 1100), Ok(()));
        // Then 2 s, 4 s, …: reported once per burst.
        assert!(t.failed(&k, 1100).is_empty());
        assert_eq!(t.check(&k, 1100), Err(2000));
        assert!(t.failed(&k, 3100).is_empty());
        assert_eq!(t.check(&k, 3100), Err(4000));
    }

    #[test]
    fn locks_stop_growing_at_the_limit_and_end() {
        let mut t = Throttle::default();
        let k = [account("a@x")];
        let mut now = 0;
        for _ in 0..200 {
            t.failed(&k, now);
            now += 1000;
        }
        let wait = t.check(&k, now).unwrap_err();
        assert!(wait <= ACCOUNTS.max_lock, "{wait}");
        // Once the lock ends the password may be tried again; a success forgets it all.
        now += wait;
        assert_eq!(t.check(&k, now), Ok(()));
        t.succeeded(&k);
        assert_eq!(t.check(&k, now), Ok(()));
        for _ in 0..5 {
            t.failed(&k, now);
        }
        assert_eq!(t.check(&k, now), Ok(()), "the count started afresh");
    }

    #[test]
    fn a_quiet_key_is_forgotten() {
        let mut t = Throttle::default();
        let k = [account("a@x")];
        for _ in 0..6 {
            t.failed(&k, 0);
        }
        assert!(t.check(&k, 0).is_err());
        let later = ACCOUNTS.max_lock;
        assert_eq!(t.check(&k, later), Ok(()));
        assert!(t.is_empty());
        // A new burst is reported again.
        for _ in 0..5 {
            t.failed(&k, later);
        }
        assert_eq!(t.failed(&k, later).len(), 1);
    }

    #[test]
    fn addresses_have_their_own_count() {
        let mut t = Throttle::default();
        let ip = Key::Address("192.0.2.7".parse().unwrap());
        // Twenty different accounts from one address: the address locks on the 21st.
        for i in 0..20 {
            let keys = [account(&format!("u{i}@x")), ip.clone()];
            assert_eq!(t.check(&keys, 0), Ok(()));
            assert!(t.failed(&keys, 0).is_empty());
        }
        let keys = [account("u20@x"), ip.clone()];
        let locks = t.failed(&keys, 0);
        assert_eq!(locks.len(), 1);
        assert_eq!(locks[0].key, ip);
        assert_eq!(t.check(&[account("fresh@x"), ip], 0), Err(1000));
        assert_eq!(t.check(&[account("fresh@x")], 0), Ok(()));
    }

    #[test]
    fn memory_is_bounded() {
        let small = Policy {
            free: 1,
            max_lock: 900_000,
            capacity: 100,
        };
        let mut t = Throttle::new(small, small);
        for i in 0..10_000 {
            t.failed(&[account(&format!("{i}@x"))], i);
        }
        assert_eq!(t.len(), 100);
        // The newest are kept.
        assert!(t.failed(&[account("9999@x")], 10_000).len() == 1);
    }
}
