//! The live links' waiters: each license server holds one capability request open (its
//! live link, see `api::capability`), which waits here for a change of its account's
//! rights. A change is told to [`Links::changed`] by the request that made it, once it is
//! committed; on PostgreSQL every process is also told by the database
//! (`store::links::listen`), so a change made through one process wakes the links held
//! by all of them.
//!
//! What a link holds is a [`Link`]: a receiver of its account's change counter and its
//! place in the counts that [`Links::open`] bounds (`MAX_LINKS`, `MAX_LINKS_PER_ACCOUNT`).
//! An account's counter exists while one of its links is open.

use std::collections::HashMap;
use std::sync::{Arc, Weak};

use parking_lot::Mutex;
use tokio::sync::watch;

/// The waiters of every account with a link open.
pub struct Links {
    inner: Mutex<Inner>,
    max: usize,
    max_per_account: usize,
}

struct Inner {
    accounts: HashMap<String, Account>,
    open: usize,
}

struct Account {
    changes: watch::Sender<u64>,
    open: usize,
}

/// Why a link was not opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// `MAX_LINKS` links are open.
    Full(usize),
    /// `MAX_LINKS_PER_ACCOUNT` links of this account are open.
    AccountFull(usize),
}

impl Links {
    pub fn new(max: usize, max_per_account: usize) -> Arc<Links> {
        Arc::new(Links {
            inner: Mutex::new(Inner {
                accounts: HashMap::new(),
                open: 0,
            }),
            max,
            max_per_account,
        })
    }

    /// Opens a link of `account`: it is woken by every change of the account's rights
    /// from now on.
    pub fn open(self: &Arc<Self>, account: &str) -> Result<Link, Refused> {
        let mut inner = self.inner.lock();
        if inner.open >= self.max {
            return Err(Refused::Full(self.max));
        }
        let entry = inner
            .accounts
            .entry(account.to_owned())
            .or_insert_with(|| Account {
                changes: watch::Sender::new(0),
                open: 0,
            });
        if entry.open >= self.max_per_account {
            return Err(Refused::AccountFull(self.max_per_account));
        }
        entry.open += 1;
        let changes = entry.changes.subscribe();
        inner.open += 1;
        Ok(Link {
            links: self.clone(),
            account: account.to_owned(),
            changes,
        })
    }

    /// The rights of `account` changed (committed): its links look again.
    pub fn changed(&self, account: &str) {
        if let Some(a) = self.inner.lock().accounts.get(account) {
            a.changes.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// Anything may have changed (the database's notifications were interrupted): every
    /// link looks again.
    pub fn changed_all(&self) {
        for a in self.inner.lock().accounts.values() {
            a.changes.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// Links open now.
    pub fn open_count(&self) -> usize {
        self.inner.lock().open
    }
}

/// The database's listener tells the links of this process; it stops with them.
impl crate::store::links::Listener for Weak<Links> {
    fn changed(&self, account_id: &str) {
        if let Some(links) = self.upgrade() {
            links.changed(account_id);
        }
    }

    fn changed_all(&self) {
        if let Some(links) = self.upgrade() {
            links.changed_all();
        }
    }

    fn is_closed(&self) -> bool {
        self.strong_count() == 0
    }
}

/// One open link: woken by its account's changes; closed when dropped.
pub struct Link {
    links: Arc<Links>,
    account: String,
    changes: watch::Receiver<u64>,
}

impl Link {
    /// Waits for the next change of the account's rights after the last one seen.
    pub async fn changed(&mut self) {
        // The sender lives as long as this link (the account's entry is kept while it is
        // open): an error cannot happen, and would only mean "look again" anyway.
        let _ = self.changes.changed().await;
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        let mut inner = self.links.inner.lock();
        inner.open = inner.open.saturating_sub(1);
        if let Some(a) = inner.accounts.get_mut(&self.account) {
            a.open = a.open.saturating_sub(1);
            if a.open == 0 {
                inner.accounts.remove(&self.account);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_change_wakes_the_links_of_its_account_only() {
        let links = Links::new(10, 10);
        let mut a = links.open("a").unwrap();
        let mut b = links.open("b").unwrap();
        links.changed("a");
        tokio::time::timeout(Duration::from_secs(1), a.changed())
            .await
            .expect("a woken");
        assert!(
            tokio::time::timeout(Duration::from_millis(50), b.changed())
                .await
                .is_err(),
            "b woken by a's change"
        );
        links.changed_all();
        tokio::time::timeout(Duration::from_secs(1), b.changed())
            .await
            .expect("b woken by a change of all");
    }

    #[test]
    fn links_past_the_caps_are_refused_and_closing_makes_room() {
        let links = Links::new(3, 2);
        let a1 = links.open("a").unwrap();
        let _a2 = links.open("a").unwrap();
        assert_eq!(links.open("a").err(), Some(Refused::AccountFull(2)));
        let _b = links.open("b").unwrap();
        assert_eq!(links.open("c").err(), Some(Refused::Full(3)));
        drop(a1);
        assert_eq!(links.open_count(), 2);
        let _a3 = links.open("a").unwrap();
        assert_eq!(links.open("c").err(), Some(Refused::Full(3)));
        assert_eq!(links.open_count(), 3);
    }

    #[test]
    fn an_account_without_links_is_forgotten() {
        let links = Links::new(3, 3);
        drop(links.open("a").unwrap());
        assert!(links.inner.lock().accounts.is_empty());
        assert_eq!(links.open_count(), 0);
    }
}
