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

pub struct Dedup {
    horizon_min: u32,
    max_keys: usize,
    seen: HashMap<u64, u32, BuildHasherDefault<IdentityHasher>>,
    last_sweep_min: u32,
    /// Keys forgotten before their horizon because `max_keys` was reached.
    pub evicted: u64,
}

impl Dedup {
    pub fn new(horizon: std::time::Duration, max_keys: usize) -> Self {
        Self {
            horizon_min: (horizon.as_secs() / 60).max(1) as u32,
            max_keys,
            seen: HashMap::default(),
            last_sweep_min: 0,
            evicted: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    /// Whether the set holds more keys than its bound ([`Dedup::sweep`] brings it back).
    pub fn over_bound(&self) -> bool {
        self.seen.len() > self.max_keys
    }

    /// Records the fingerprint if it is new (within the horizon) and returns whether it was.
    pub fn admit(&mut self, fp: u64, now_min: u32) -> bool {
        match self.seen.get_mut(&fp) {
            Some(at) if now_min.saturating_sub(*at) < self.horizon_min => false,
            Some(at) => {
                *at = now_min;
                true
            }
            None => {
                self.seen.insert(fp, now_min);
                true
            }
        }
    }

    /// Remembers a key committed at `at_min` (used when rebuilding from bronze).
    pub fn remember(&mut self, fp: u64, at_min: u32) {
        let e = self.seen.entry(fp).or_insert(at_min);
        *e = (*e).max(at_min);
    }

    /// Forgets keys whose rows were never committed.
    pub fn forget(&mut self, fps: &[u64]) {
        for fp in fps {
            self.seen.remove(fp);
        }
    }

    /// Drops keys past the horizon (at most once a minute), then the oldest ones while over
    /// `max_keys`. Returns how many were evicted early.
    pub fn sweep(&mut self, now_min: u32) -> u64 {
        if now_min == self.last_sweep_min && !self.over_bound() {
            return 0;
        }
        self.last_sweep_min = now_min;
        let mut cutoff = now_min.saturating_sub(self.horizon_min);
        self.seen.retain(|_, at| *at > cutoff);
        let mut early = 0;
        while self.over_bound() {
            let oldest = self.seen.values().copied().min().unwrap_or(now_min);
            cutoff = cutoff.max(oldest);
            let before = self.seen.len();
            self.seen.retain(|_, at| *at > cutoff);
            early += (before - self.seen.len()) as u64;
            if self.seen.len() == before {
                break;
            }
        }
        self.evicted += early;
        early
    }
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
    fn sweep_bounds_memory_by_evicting_the_oldest_first() {
        let mut d = Dedup::new(Duration::from_secs(24 * 3600), 10);
        for i in 0..20u32 {
            d.admit(fingerprint(Contract::Reading, &i.to_string()), 100 + i);
        }
        let early = d.sweep(200);
        assert!(d.len() <= 10);
        assert_eq!(early, 20 - d.len() as u64);
        // The newest key survived, the oldest did not.
        assert!(!d.admit(fingerprint(Contract::Reading, "19"), 200));
        assert!(d.admit(fingerprint(Contract::Reading, "0"), 200));
    }
}
