//! Duplicate detection by `idempotency_key` within the dedup horizon (SPEC 1).
//!
//! Keys are remembered as 64-bit XXH3 fingerprints (per contract, so the two topics never
//! collide) with the minute they were first seen; 16 bytes a key. Two distinct keys share a
//! fingerprint with probability about n / 2^64 per lookup (5e-13 with 10M keys in memory).
//!
//! The set survives restarts by being rebuilt from bronze: a key is "seen" exactly when a row
//! carrying it is committed. That makes it consistent with exactly-once by construction:
//! nothing separate to persist, and a replay after a crash re-admits exactly the records whose
//! rows never reached Delta. Keys of rows that were buffered but not committed (revoked
//! partitions, refused commits) are removed again with [`Dedup::forget`].

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use crate::contract::Contract;

/// The fingerprint is already a good hash: use it as is.
#[derive(Default)]
struct IdentityHasher(u64);

impl Hasher for IdentityHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) | u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

pub fn fingerprint(contract: Contract, key: &str) -> u64 {
    let seed = match contract {
        Contract::Reading => 0x5265_6164,
        Contract::Activity => 0x4163_7476,
    };
    xxhash_rust::xxh3::xxh3_64_with_seed(key.as_bytes(), seed)
}

type Keys = HashMap<u64, u32, BuildHasherDefault<IdentityHasher>>;

/// The set of keys seen within the horizon, in two generations: new keys go into `current`;
/// lookups also see `previous`. When `current` holds half of `max_keys`, or has been filling
/// for a whole horizon, `previous` is dropped whole and `current` takes its place.
///
/// Nothing is ever removed one key at a time (but for [`Dedup::forget`]): the first design
/// swept expired and surplus keys out of one table, which left it full of tombstones, and past
/// the bound every sweep scanned the whole table, lookups probed longer and the table doubled
/// (a 10-minute soak at 50K events/s: RSS from 770 MiB to 1.23 GiB, the ingest falling
/// behind). Dropping a generation costs one pass over it (to count the keys evicted early),
/// and memory stays at two tables of at most half the bound each. The price: past the bound a key is remembered for at least
/// `max_keys / 2` later keys rather than `max_keys`.
pub struct Dedup {
    horizon_min: u32,
    max_keys: usize,
    current: Keys,
    previous: Keys,
    /// The minute `current` was started (its first key).
    started_min: Option<u32>,
    /// Keys forgotten before their horizon because `max_keys` was reached.
    pub evicted: u64,
    unreported: u64,
}

impl Dedup {
    pub fn new(horizon: std::time::Duration, max_keys: usize) -> Self {
        Self {
            horizon_min: (horizon.as_secs() / 60).max(1) as u32,
            max_keys,
            current: Keys::default(),
            previous: Keys::default(),
            started_min: None,
            evicted: 0,
            unreported: 0,
        }
    }

    /// An empty set with the ingest's `dedup_horizon` and `dedup_max_keys`.
    pub fn from_config(cfg: &crate::config::IngestConfig) -> Self {
        Self::new(cfg.dedup_horizon, cfg.dedup_max_keys)
    }

    /// Keys held (a key seen again after its horizon may be counted in both generations).
    pub fn len(&self) -> usize {
        self.current.len() + self.previous.len()
    }

    pub fn is_empty(&self) -> bool {
        self.current.is_empty() && self.previous.is_empty()
    }

    fn generation_size(&self) -> usize {
        (self.max_keys / 2).max(1)
    }

    /// Records the fingerprint if it is new (within the horizon) and returns whether it was.
    pub fn admit(&mut self, fp: u64, now_min: u32) -> bool {
        use std::collections::hash_map::Entry;
        let h = self.horizon_min;
        let full = self.current.len() >= self.generation_size();
        // One probe of `current`: a new key is inserted where the lookup ended, unless a
        // rotation is due first.
        match self.current.entry(fp) {
            Entry::Occupied(mut e) => {
                if within(h, *e.get(), now_min) {
                    return false;
                }
                e.insert(now_min);
            }
            Entry::Vacant(e) => {
                if self.previous.get(&fp).is_some_and(|&at| within(h, at, now_min)) {
                    return false;
                }
                if full {
                    self.insert(fp, now_min, now_min);
                } else {
                    self.started_min.get_or_insert(now_min);
                    e.insert(now_min);
                }
            }
        }
        true
    }

    fn insert(&mut self, fp: u64, at_min: u32, now_min: u32) {
        if self.current.len() >= self.generation_size() {
            self.rotate(now_min);
        }
        self.started_min.get_or_insert(at_min);
        self.current.insert(fp, at_min);
    }

    /// Drops `previous` (counting its keys still within the horizon as evicted early) and
    /// makes `current` the previous generation.
    fn rotate(&mut self, now_min: u32) {
        let h = self.horizon_min;
        let early = self.previous.values().filter(|&&at| within(h, at, now_min)).count() as u64;
        self.evicted += early;
        self.unreported += early;
        // The generation just closed predicts the next one's size: no rehashing while it fills.
        let capacity = self.current.len().min(self.generation_size());
        self.previous = std::mem::replace(&mut self.current, Keys::with_capacity_and_hasher(capacity, Default::default()));
        self.started_min = None;
    }

    /// Remembers a key committed at `at_min` (used when rebuilding from bronze).
    pub fn remember(&mut self, fp: u64, at_min: u32) {
        if let Some(e) = self.current.get_mut(&fp) {
            *e = (*e).max(at_min);
        } else {
            self.insert(fp, at_min, at_min);
        }
    }

    /// Forgets keys whose rows were never committed.
    pub fn forget(&mut self, fps: &[u64]) {
        for fp in fps {
            self.current.remove(fp);
            self.previous.remove(fp);
        }
    }

    /// Once `current` has been filling for a whole horizon, every key of `previous` is past
    /// it: the generations turn. Returns how many keys were evicted early (bound reached)
    /// since the last call.
    pub fn sweep(&mut self, now_min: u32) -> u64 {
        if self.started_min.is_some_and(|s| !within(self.horizon_min, s, now_min)) {
            self.rotate(now_min);
        }
        std::mem::take(&mut self.unreported)
    }
}

/// Whether a key seen at `at_min` is still within a horizon of `horizon_min` at `now_min`.
fn within(horizon_min: u32, at_min: u32, now_min: u32) -> bool {
    now_min.saturating_sub(at_min) < horizon_min
}

/// Minutes since the Unix epoch.
pub fn unix_minute(us: i64) -> u32 {
    (us.div_euclid(60_000_000)).max(0) as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_key_is_a_duplicate_within_the_horizon_and_new_after_it() {
        let mut d = Dedup::new(Duration::from_secs(3600), 100);
        let fp = fingerprint(Contract::Reading, "k1");
        assert!(d.admit(fp, 1000));
        assert!(!d.admit(fp, 1000));
        assert!(!d.admit(fp, 1059));
        assert!(d.admit(fp, 1060));
    }

    #[test]
    fn contracts_do_not_share_keys() {
        let mut d = Dedup::new(Duration::from_secs(3600), 100);
        assert!(d.admit(fingerprint(Contract::Reading, "same"), 1));
        assert!(d.admit(fingerprint(Contract::Activity, "same"), 1));
    }

    #[test]
    fn forgotten_keys_are_admitted_again() {
        let mut d = Dedup::new(Duration::from_secs(3600), 100);
        let fp = fingerprint(Contract::Reading, "k");
        assert!(d.admit(fp, 5));
        d.forget(&[fp]);
        assert!(d.admit(fp, 5));
    }

    #[test]
    fn the_bound_holds_as_keys_arrive_and_the_oldest_go_first() {
        let mut d = Dedup::new(Duration::from_secs(24 * 3600), 10);
        for i in 0..20u32 {
            assert!(d.admit(fingerprint(Contract::Reading, &i.to_string()), 100 + i));
            assert!(d.len() <= 10, "{} keys after {i}", d.len());
        }
        let early = d.sweep(200);
        assert_eq!(early, 20 - d.len() as u64);
        assert_eq!(d.sweep(200), 0, "reported once");
        assert_eq!(d.evicted, early);
        // The newest half-bound of keys is always remembered; the oldest were forgotten.
        for i in 15..20 {
            assert!(!d.admit(fingerprint(Contract::Reading, &i.to_string()), 200), "key {i}");
        }
        assert!(d.admit(fingerprint(Contract::Reading, "0"), 200));
    }

    #[test]
    fn generations_turn_after_a_horizon_and_expired_keys_are_not_evictions() {
        let mut d = Dedup::new(Duration::from_secs(3600), 1000);
        let (k, j) = (fingerprint(Contract::Reading, "k"), fingerprint(Contract::Reading, "j"));
        assert!(d.admit(k, 1000));
        assert_eq!(d.sweep(1030), 0);
        assert!(d.admit(j, 1030));
        assert_eq!(d.sweep(1060), 0); // current started at 1000: it turns; nothing is dropped yet
        assert_eq!(d.len(), 2);
        assert!(!d.admit(j, 1061), "j is in the previous generation and within the horizon");
        assert!(d.admit(k, 1061), "k is past the horizon");
        assert!(d.admit(fingerprint(Contract::Reading, "x"), 1125));
        assert_eq!(d.sweep(1125), 0, "the dropped generation held only expired keys");
        assert!(d.admit(j, 1125));
        assert_eq!(d.evicted, 0);
    }

    #[test]
    fn forgetting_reaches_both_generations() {
        let mut d = Dedup::new(Duration::from_secs(3600), 4);
        let fps: Vec<u64> = (0..3).map(|i| fingerprint(Contract::Activity, &i.to_string())).collect();
        for fp in &fps {
            assert!(d.admit(*fp, 7));
        }
        d.forget(&fps);
        assert!(fps.iter().all(|fp| d.admit(*fp, 7)));
    }
}
