//! The lease table: every lease the state holds, in a compact fixed-size form, with the
//! indexes allocation needs.
//!
//! Memory is the point (100,000 leases in well under 64 MiB, the whole process included).
//! A lease is one 112-byte [`Lease`]: its ID, its client ID inline when it fits in 24
//! bytes ([`CompactString`]; longer ones, up to what a checkout allows, on the heap), its
//! times, the 16-byte hash of its client's secret ([`Holder`]), and its pool (feature and
//! version) and granting server as numbers into two small interned tables. Leases live in chunks of [`CHUNK`] slots behind `Arc`s, so a copy of
//! the table for a snapshot ([`LeaseTable::frozen`]) shares them and costs one pointer per
//! chunk; the first change to a shared chunk copies that chunk alone (copy on write).
//! Freed slots are reused. The indexes hold 4-byte slot numbers: by ID and by (client,
//! feature) in hash tables that keep only the slot (the key is read from the lease), by
//! expiry and by pool in B-trees of (expiry, slot). About 190 bytes a lease in all.

use std::collections::BTreeSet;
use std::sync::Arc;

use compact_str::CompactString;
use hashbrown::{DefaultHashBuilder, HashMap, HashTable};
use std::hash::BuildHasher;
use uuid::Uuid;

use super::{FeatureKey, Holder, LeaseKind, LeaseRecord, Millis};

/// Slots per chunk: a chunk is the unit a snapshot shares and a change copies.
pub const CHUNK: usize = 1024;

/// A lease as the table holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Lease {
    pub id: Uuid,
    pub client: CompactString,
    pub granted_at: Millis,
    pub renewed_at: Millis,
    pub expires_at: Millis,
    pub granted_seq: u64,
    pub holder: Holder,
    pub kind: LeaseKind,
    pub count: u32,
    /// Index into the pool names.
    pub pool: u32,
    /// Index into the host names.
    pub host: u32,
    /// The checkout's user and host: indexes into the client names (0: none).
    pub user: u32,
    pub client_host: u32,
}

/// A lease with its names resolved, borrowed from a table or from a decoder: what the
/// snapshot encoder reads and what [`LeaseTable::insert`] takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseRef<'a> {
    pub id: Uuid,
    pub client_id: &'a str,
    pub feature: &'a str,
    pub version: &'a str,
    pub granted_by: &'a str,
    pub count: u32,
    pub granted_at: Millis,
    pub renewed_at: Millis,
    pub expires_at: Millis,
    pub granted_seq: u64,
    pub holder: Holder,
    /// The checkout's user and host ("" when it named none).
    pub user: &'a str,
    pub host: &'a str,
    pub kind: LeaseKind,
}

impl LeaseRef<'_> {
    pub fn to_record(&self) -> LeaseRecord {
        LeaseRecord {
            id: self.id,
            feature: self.feature.to_owned(),
            version: self.version.to_owned(),
            count: self.count,
            client_id: self.client_id.to_owned(),
            granted_at: self.granted_at,
            renewed_at: self.renewed_at,
            expires_at: self.expires_at,
            granted_by: self.granted_by.to_owned(),
            granted_seq: self.granted_seq,
            holder: self.holder,
            user: self.user.to_owned(),
            host: self.host.to_owned(),
            kind: self.kind,
        }
    }
}

impl<'a> From<&'a LeaseRecord> for LeaseRef<'a> {
    fn from(l: &'a LeaseRecord) -> Self {
        LeaseRef {
            id: l.id,
            client_id: &l.client_id,
            feature: &l.feature,
            version: &l.version,
            granted_by: &l.granted_by,
            count: l.count,
            granted_at: l.granted_at,
            renewed_at: l.renewed_at,
            expires_at: l.expires_at,
            granted_seq: l.granted_seq,
            holder: l.holder,
            user: &l.user,
            host: &l.host,
            kind: l.kind,
        }
    }
}

type Chunk = Arc<Vec<Option<Lease>>>;

/// Interned names: pools (feature and version) and granting hosts. They are few (what the
/// rights name, the servers of a pair) and never forgotten. The users and hosts clients
/// named are interned too (as many as the site has; number 0 is none).
#[derive(Clone, Debug, Default)]
struct Names {
    pools: Vec<FeatureKey>,
    pool_ids: HashMap<FeatureKey, u32>,
    hosts: Vec<Box<str>>,
    host_ids: HashMap<Box<str>, u32>,
    who: Vec<Box<str>>,
    who_ids: HashMap<Box<str>, u32>,
}

/// A borrowed pool key, to look a pool up without allocating.
#[derive(Hash)]
struct PoolRef<'a> {
    feature: &'a str,
    version: &'a str,
}

impl hashbrown::Equivalent<FeatureKey> for PoolRef<'_> {
    fn equivalent(&self, key: &FeatureKey) -> bool {
        key.feature == self.feature && key.version == self.version
    }
}

impl Names {
    fn pool_id(&self, feature: &str, version: &str) -> Option<u32> {
        self.pool_ids.get(&PoolRef { feature, version }).copied()
    }

    fn intern_pool(&mut self, feature: &str, version: &str) -> u32 {
        if let Some(id) = self.pool_id(feature, version) {
            return id;
        }
        let id = self.pools.len() as u32;
        let key = FeatureKey {
            feature: feature.to_owned(),
            version: version.to_owned(),
        };
        self.pools.push(key.clone());
        self.pool_ids.insert(key, id);
        id
    }

    fn intern_who(&mut self, name: &str) -> u32 {
        if name.is_empty() {
            return 0;
        }
        if let Some(id) = self.who_ids.get(name) {
            return *id;
        }
        self.who.push(name.into());
        let id = self.who.len() as u32;
        self.who_ids.insert(name.into(), id);
        id
    }

    fn intern_host(&mut self, host: &str) -> u32 {
        if let Some(id) = self.host_ids.get(host) {
            return *id;
        }
        let id = self.hosts.len() as u32;
        self.hosts.push(host.into());
        self.host_ids.insert(host.into(), id);
        id
    }
}

/// Every lease, with its indexes.
#[derive(Clone, Default)]
pub(crate) struct LeaseTable {
    chunks: Vec<Chunk>,
    /// Slots emptied by removals, reused first.
    free: Vec<u32>,
    len: usize,
    names: Names,
    hasher: DefaultHashBuilder,
    by_id: HashTable<u32>,
    /// (client ID, feature) → slots.
    by_client: HashTable<u32>,
    /// (expiry, slot) of every lease, for the reaper.
    by_expiry: BTreeSet<(Millis, u32)>,
    /// Per pool: (expiry, slot) of its leases, for "when is a seat free".
    by_pool: Vec<BTreeSet<(Millis, u32)>>,
    /// Per pool: seats held.
    in_use: Vec<u32>,
    /// Loading: the expiry indexes are built once at the end ([`LeaseTable::index`]).
    deferred: bool,
}

impl std::fmt::Debug for LeaseTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseTable")
            .field("leases", &self.len)
            .field("pools", &self.names.pools)
            .finish_non_exhaustive()
    }
}

fn slot_ref(chunks: &[Chunk], slot: u32) -> &Lease {
    let s = slot as usize;
    chunks[s / CHUNK][s % CHUNK]
        .as_ref()
        .expect("indexes name only occupied slots")
}

impl LeaseTable {
    pub fn len(&self) -> usize {
        self.len
    }

    fn hash_id(&self, id: &Uuid) -> u64 {
        self.hasher.hash_one(id.as_u128())
    }

    fn hash_client(hasher: &DefaultHashBuilder, client: &str, feature: &str) -> u64 {
        hasher.hash_one((client, feature))
    }

    fn slot_of(&self, id: &Uuid) -> Option<u32> {
        let chunks = &self.chunks;
        self.by_id
            .find(self.hash_id(id), |&s| slot_ref(chunks, s).id == *id)
            .copied()
    }

    pub fn get(&self, id: &Uuid) -> Option<&Lease> {
        self.slot_of(id).map(|s| slot_ref(&self.chunks, s))
    }

    pub fn contains(&self, id: &Uuid) -> bool {
        self.slot_of(id).is_some()
    }

    pub fn pool_key(&self, pool: u32) -> &FeatureKey {
        &self.names.pools[pool as usize]
    }

    pub fn pool_id(&self, key: &FeatureKey) -> Option<u32> {
        self.names.pool_id(&key.feature, &key.version)
    }

    pub fn host(&self, host: u32) -> &str {
        &self.names.hosts[host as usize]
    }

    /// A user or host a client named ("" for none).
    pub fn who(&self, id: u32) -> &str {
        who(&self.names.who, id)
    }

    /// The lease with its names.
    pub fn view<'a>(&'a self, l: &'a Lease) -> LeaseRef<'a> {
        let key = self.pool_key(l.pool);
        LeaseRef {
            id: l.id,
            client_id: &l.client,
            feature: &key.feature,
            version: &key.version,
            granted_by: self.host(l.host),
            count: l.count,
            granted_at: l.granted_at,
            renewed_at: l.renewed_at,
            expires_at: l.expires_at,
            granted_seq: l.granted_seq,
            holder: l.holder,
            user: self.who(l.user),
            host: self.who(l.client_host),
            kind: l.kind,
        }
    }

    pub fn record(&self, l: &Lease) -> LeaseRecord {
        self.view(l).to_record()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Lease> {
        self.chunks.iter().flat_map(|c| c.iter().flatten())
    }

    /// Seats held in a pool.
    pub fn in_use(&self, pool: u32) -> u32 {
        self.in_use.get(pool as usize).copied().unwrap_or(0)
    }

    /// Pools that have leases, with the seats they hold.
    pub fn pools_in_use(&self) -> impl Iterator<Item = (&FeatureKey, u32)> {
        self.in_use
            .iter()
            .enumerate()
            .filter(|(_, n)| **n > 0)
            .map(|(i, n)| (&self.names.pools[i], *n))
    }

    /// Leases of a pool by expiry, soonest first.
    pub fn by_pool_expiry(&self, pool: u32) -> impl Iterator<Item = (Millis, &Lease)> {
        self.by_pool
            .get(pool as usize)
            .into_iter()
            .flatten()
            .map(|&(exp, s)| (exp, slot_ref(&self.chunks, s)))
    }

    /// All leases by expiry, soonest first.
    pub fn by_expiry(&self) -> impl Iterator<Item = (Millis, &Lease)> {
        self.by_expiry
            .iter()
            .map(|&(exp, s)| (exp, slot_ref(&self.chunks, s)))
    }

    pub fn next_expiry(&self) -> Option<Millis> {
        self.by_expiry.first().map(|(e, _)| *e)
    }

    /// Leases of a client for a feature (any version).
    pub fn of_client<'a>(
        &'a self,
        client: &'a str,
        feature: &'a str,
    ) -> impl Iterator<Item = &'a Lease> + 'a {
        let hash = Self::hash_client(&self.hasher, client, feature);
        self.by_client
            .iter_hash(hash)
            .map(|&s| slot_ref(&self.chunks, s))
            .filter(move |l| {
                l.client == client && self.names.pools[l.pool as usize].feature == feature
            })
    }

    /// Adds a lease (replacing one with the same ID).
    pub fn insert(&mut self, l: LeaseRef<'_>) {
        self.remove(&l.id);
        let lease = Lease {
            id: l.id,
            client: CompactString::from(l.client_id),
            granted_at: l.granted_at,
            renewed_at: l.renewed_at,
            expires_at: l.expires_at,
            granted_seq: l.granted_seq,
            holder: l.holder,
            kind: l.kind,
            count: l.count,
            pool: self.names.intern_pool(l.feature, l.version),
            host: self.names.intern_host(l.granted_by),
            user: self.names.intern_who(l.user),
            client_host: self.names.intern_who(l.host),
        };
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                if self.chunks.last().is_none_or(|c| c.len() == CHUNK) {
                    self.chunks.push(Arc::new(Vec::with_capacity(CHUNK)));
                }
                let last = self.chunks.len() - 1;
                let chunk = Arc::make_mut(&mut self.chunks[last]);
                chunk.push(None);
                (last * CHUNK + chunk.len() - 1) as u32
            }
        };
        let pool = lease.pool as usize;
        if self.by_pool.len() <= pool {
            self.by_pool.resize_with(pool + 1, BTreeSet::new);
            self.in_use.resize(pool + 1, 0);
        }
        self.in_use[pool] = self.in_use[pool].saturating_add(lease.count);
        if !self.deferred {
            self.by_pool[pool].insert((lease.expires_at, slot));
            self.by_expiry.insert((lease.expires_at, slot));
        }
        let id_hash = self.hash_id(&lease.id);
        let client_hash =
            Self::hash_client(&self.hasher, &lease.client, &self.names.pools[pool].feature);
        let s = slot as usize;
        Arc::make_mut(&mut self.chunks[s / CHUNK])[s % CHUNK] = Some(lease);
        self.len += 1;

        let (chunks, names, hasher) = (&self.chunks, &self.names, &self.hasher);
        self.by_id.insert_unique(id_hash, slot, |&s| {
            hasher.hash_one(slot_ref(chunks, s).id.as_u128())
        });
        self.by_client.insert_unique(client_hash, slot, |&s| {
            let l = slot_ref(chunks, s);
            Self::hash_client(hasher, &l.client, &names.pools[l.pool as usize].feature)
        });
    }

    /// Removes a lease; returns it.
    pub fn remove(&mut self, id: &Uuid) -> Option<Lease> {
        let hash = self.hash_id(id);
        let chunks = &self.chunks;
        let slot = match self
            .by_id
            .find_entry(hash, |&s| slot_ref(chunks, s).id == *id)
        {
            Ok(entry) => entry.remove().0,
            Err(_) => return None,
        };
        let lease = {
            let s = slot as usize;
            Arc::make_mut(&mut self.chunks[s / CHUNK])[s % CHUNK]
                .take()
                .expect("an indexed slot is occupied")
        };
        let pool = lease.pool as usize;
        self.in_use[pool] = self.in_use[pool].saturating_sub(lease.count);
        if !self.deferred {
            self.by_pool[pool].remove(&(lease.expires_at, slot));
            self.by_expiry.remove(&(lease.expires_at, slot));
        }
        let client_hash =
            Self::hash_client(&self.hasher, &lease.client, &self.names.pools[pool].feature);
        if let Ok(entry) = self.by_client.find_entry(client_hash, |&s| s == slot) {
            entry.remove();
        }
        self.free.push(slot);
        self.len -= 1;
        Some(lease)
    }

    /// Moves a lease's expiry (a renewal).
    pub fn renew(&mut self, id: &Uuid, at: Millis, expires_at: Millis) {
        let Some(slot) = self.slot_of(id) else {
            return;
        };
        let s = slot as usize;
        let lease = Arc::make_mut(&mut self.chunks[s / CHUNK])[s % CHUNK]
            .as_mut()
            .expect("an indexed slot is occupied");
        let old = lease.expires_at;
        lease.renewed_at = at;
        lease.expires_at = expires_at;
        let pool = lease.pool as usize;
        if !self.deferred {
            self.by_expiry.remove(&(old, slot));
            self.by_expiry.insert((expires_at, slot));
            self.by_pool[pool].remove(&(old, slot));
            self.by_pool[pool].insert((expires_at, slot));
        }
    }

    /// Stops keeping the expiry indexes until [`LeaseTable::index`] (loading: a snapshot
    /// and a journal's renewals cost one bulk build instead of a B-tree update each).
    pub fn defer_index(&mut self) {
        self.deferred = true;
    }

    /// Builds the expiry indexes (sorted, in bulk) and keeps them from now on.
    pub fn index(&mut self) {
        if !self.deferred {
            return;
        }
        self.deferred = false;
        let mut all: Vec<(Millis, u32, u32)> = Vec::with_capacity(self.len);
        for (c, chunk) in self.chunks.iter().enumerate() {
            for (i, l) in chunk.iter().enumerate() {
                if let Some(l) = l {
                    all.push((l.expires_at, (c * CHUNK + i) as u32, l.pool));
                }
            }
        }
        all.sort_unstable();
        self.by_expiry = all.iter().map(|&(e, s, _)| (e, s)).collect();
        let mut per_pool: Vec<Vec<(Millis, u32)>> = vec![Vec::new(); self.by_pool.len()];
        for &(e, s, p) in &all {
            per_pool[p as usize].push((e, s));
        }
        self.by_pool = per_pool.into_iter().map(BTreeSet::from_iter).collect();
    }

    /// A copy for a snapshot: shares every chunk (copy on write).
    pub fn frozen(&self) -> FrozenLeases {
        FrozenLeases {
            chunks: self.chunks.clone(),
            len: self.len,
            pools: self.names.pools.clone(),
            hosts: self.names.hosts.clone(),
            who: self.names.who.clone(),
        }
    }
}

/// The leases as they were when [`LeaseTable::frozen`] was called.
#[derive(Clone, Debug, Default)]
pub struct FrozenLeases {
    chunks: Vec<Chunk>,
    len: usize,
    pools: Vec<FeatureKey>,
    hosts: Vec<Box<str>>,
    who: Vec<Box<str>>,
}

fn who(names: &[Box<str>], id: u32) -> &str {
    match id {
        0 => "",
        n => &names[n as usize - 1],
    }
}

impl FrozenLeases {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn iter(&self) -> impl Iterator<Item = LeaseRef<'_>> {
        self.chunks
            .iter()
            .flat_map(|c| c.iter().flatten())
            .map(|l| {
                let key = &self.pools[l.pool as usize];
                LeaseRef {
                    id: l.id,
                    client_id: &l.client,
                    feature: &key.feature,
                    version: &key.version,
                    granted_by: &self.hosts[l.host as usize],
                    count: l.count,
                    granted_at: l.granted_at,
                    renewed_at: l.renewed_at,
                    expires_at: l.expires_at,
                    granted_seq: l.granted_seq,
                    holder: l.holder,
                    user: who(&self.who, l.user),
                    host: who(&self.who, l.client_host),
                    kind: l.kind,
                }
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(id: Uuid, client: &str, feature: &str, exp: Millis) -> LeaseRecord {
        LeaseRecord {
            id,
            feature: feature.into(),
            version: String::new(),
            count: 1,
            client_id: client.into(),
            granted_at: 0,
            renewed_at: 0,
            expires_at: exp,
            granted_by: "string:me".into(),
            granted_seq: 1,
            holder: Holder::of_secret(client),
            user: String::new(),
            host: String::new(),
            kind: LeaseKind::default(),
        }
    }

    #[test]
    fn a_lease_is_112_bytes() {
        assert_eq!(std::mem::size_of::<Option<Lease>>(), 112);
    }

    #[test]
    fn insert_remove_reuse_and_indexes_agree() {
        let mut t = LeaseTable::default();
        let ids: Vec<Uuid> = (0..3000).map(|_| Uuid::new_v4()).collect();
        for (i, id) in ids.iter().enumerate() {
            t.insert((&lease(*id, &format!("c{i}"), "cad", i as i64)).into());
        }
        assert_eq!(t.len(), 3000);
        let cad = t.pool_id(&FeatureKey {
            feature: "cad".into(),
            version: String::new(),
        });
        assert_eq!(t.in_use(cad.unwrap()), 3000);
        for id in &ids[..1500] {
            assert!(t.remove(id).is_some());
        }
        assert!(t.remove(&ids[0]).is_none());
        // Freed slots are reused: no new chunk.
        let chunks = t.chunks.len();
        for i in 0..1500 {
            t.insert((&lease(Uuid::new_v4(), &format!("n{i}"), "cad", 5000)).into());
        }
        assert_eq!(t.chunks.len(), chunks);
        assert_eq!(t.len(), 3000);
        assert_eq!(t.iter().count(), 3000);
        assert_eq!(t.by_expiry().count(), 3000);
        assert_eq!(t.next_expiry(), Some(1500));
        assert_eq!(t.of_client("c2000", "cad").count(), 1);
        assert_eq!(t.of_client("c2000", "other").count(), 0);
        assert_eq!(t.of_client("c10", "cad").count(), 0);
        t.renew(&ids[2000], 7, 9000);
        assert_eq!(t.get(&ids[2000]).unwrap().expires_at, 9000);
        assert_eq!(t.by_pool_expiry(cad.unwrap()).last().unwrap().0, 9000);
    }

    #[test]
    fn a_deferred_index_is_built_the_same() {
        let mut live = LeaseTable::default();
        let mut bulk = LeaseTable::default();
        bulk.defer_index();
        let ids: Vec<Uuid> = (0..2500).map(|_| Uuid::new_v4()).collect();
        for (i, id) in ids.iter().enumerate() {
            let feature = if i % 3 == 0 { "cad" } else { "cam" };
            let l = lease(*id, &format!("c{i}"), feature, (i * 7 % 1000) as i64);
            live.insert((&l).into());
            bulk.insert((&l).into());
        }
        for (i, id) in ids.iter().enumerate().step_by(5) {
            live.renew(id, 1, 5000 + i as i64);
            bulk.renew(id, 1, 5000 + i as i64);
        }
        for id in ids.iter().skip(1).step_by(7) {
            live.remove(id);
            bulk.remove(id);
        }
        bulk.index();
        assert_eq!(bulk.by_expiry, live.by_expiry);
        assert_eq!(bulk.by_pool, live.by_pool);
        assert_eq!(bulk.in_use, live.in_use);
    }

    #[test]
    fn a_frozen_copy_does_not_see_later_changes() {
        let mut t = LeaseTable::default();
        let a = Uuid::new_v4();
        t.insert((&lease(a, "x", "cad", 10)).into());
        let frozen = t.frozen();
        t.renew(&a, 1, 99);
        t.insert((&lease(Uuid::new_v4(), "y", "cad", 10)).into());
        let seen: Vec<_> = frozen.iter().map(|l| (l.id, l.expires_at)).collect();
        assert_eq!(seen, vec![(a, 10)]);
        assert_eq!(t.get(&a).unwrap().expires_at, 99);
    }
}
