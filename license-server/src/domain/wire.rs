//! The JSON form of [`State`]: what the pair sends as a snapshot (`PUT
//! /api/v1/pair/snapshot`) and as a handback answer: `leases` a map from lease ID to
//! [`LeaseRecord`] (the compact table is built while the leases are read, one at a time),
//! `queue` the clients in line in the order they joined (absent: none),
//! and `rights` the capability answer itself, a token (never counts: a state read from
//! JSON has rights that are not verified until the receiver verifies them). `usage`: the
//! closed usage intervals it keeps.

use std::fmt;

use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use shared::capability::UsageInterval;
use uuid::Uuid;

use super::table::LeaseTable;
use super::{
    BackupState, Fork, LeaseRecord, LeaseRef, Millis, OptionsInForce, QueueEntry, Rights, State,
    pools_of,
};

#[derive(Serialize)]
struct StateOut<'a> {
    seq: u64,
    lease_key: &'a Option<String>,
    rights: &'a Option<Rights>,
    rights_updated_at: Option<Millis>,
    history: Uuid,
    #[serde(skip_serializing_if = "Option::is_none")]
    fork: Option<Fork>,
    #[serde(skip_serializing_if = "Option::is_none")]
    active_since: Option<Millis>,
    backup: &'a BackupState,
    #[serde(skip_serializing_if = "Option::is_none")]
    detached: &'a Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    alone_from: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    absorbed: Option<Fork>,
    #[serde(skip_serializing_if = "Option::is_none")]
    options: Option<&'a str>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    queue: &'a [QueueEntry],
    #[serde(skip_serializing_if = "Vec::is_empty")]
    usage: Vec<&'a UsageInterval>,
    leases: LeasesOut<'a>,
}

struct LeasesOut<'a>(&'a LeaseTable);

impl Serialize for LeasesOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for l in self.0.iter() {
            map.serialize_entry(&l.id, &self.0.record(l))?;
        }
        map.end()
    }
}

impl Serialize for State {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        StateOut {
            seq: self.seq,
            lease_key: &self.lease_key,
            rights: &self.rights,
            rights_updated_at: self.rights_updated_at,
            history: self.history,
            fork: self.fork,
            active_since: self.active_since,
            backup: &self.backup,
            detached: &self.detached,
            alone_from: self.alone_from,
            absorbed: self.absorbed,
            options: self.options.as_ref().map(|o| &*o.text),
            queue: &self.queue,
            usage: self.usage.values().collect(),
            leases: LeasesOut(&self.leases),
        }
        .serialize(s)
    }
}

#[derive(Deserialize)]
struct StateIn {
    seq: u64,
    lease_key: Option<String>,
    rights: Option<Rights>,
    rights_updated_at: Option<Millis>,
    #[serde(default)]
    history: Uuid,
    #[serde(default)]
    fork: Option<Fork>,
    #[serde(default)]
    active_since: Option<Millis>,
    #[serde(default)]
    backup: BackupState,
    #[serde(default)]
    detached: Option<String>,
    #[serde(default)]
    alone_from: Option<u64>,
    #[serde(default)]
    absorbed: Option<Fork>,
    #[serde(default)]
    options: Option<String>,
    #[serde(default)]
    queue: Vec<QueueEntry>,
    #[serde(default)]
    usage: Vec<UsageInterval>,
    leases: LeasesIn,
}

struct LeasesIn(LeaseTable);

impl<'de> Deserialize<'de> for LeasesIn {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = LeasesIn;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map from lease ID to lease")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<LeasesIn, A::Error> {
                let mut table = LeaseTable::default();
                while let Some((_, lease)) = map.next_entry::<Uuid, LeaseRecord>()? {
                    table.insert(LeaseRef::from(&lease));
                }
                Ok(LeasesIn(table))
            }
        }
        d.deserialize_map(V)
    }
}

impl<'de> Deserialize<'de> for State {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = StateIn::deserialize(d)?;
        Ok(State {
            seq: s.seq,
            lease_key: s.lease_key,
            pools: pools_of(s.rights.as_ref().map_or(&[], Rights::rights)),
            rights: s.rights,
            rights_updated_at: s.rights_updated_at,
            history: s.history,
            fork: s.fork,
            active_since: s.active_since,
            backup: s.backup,
            detached: s.detached,
            alone_from: s.alone_from,
            absorbed: s.absorbed,
            options: s.options.as_deref().and_then(OptionsInForce::of),
            queue: s.queue,
            usage: s.usage.into_iter().map(|i| (i.key(), i)).collect(),
            leases: s.leases.0,
        })
    }
}
