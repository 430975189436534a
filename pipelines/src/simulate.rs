//! A realistic traffic generator for FriendApp's topics.
//!
//! Users belong to a region and keep a baseline Hz for life; their readings follow a daily
//! rhythm (local afternoon high, night low) with mood noise. Activity events carry realistic
//! latency (log-normal) and status mixes. Scenarios plant regional collapse episodes: for a
//! while a share of a region's users read well under 420 Hz, with more entropy and worse mood.
//! Configurable shares of invalid, duplicate, late and out-of-order events exercise every
//! contract path. Event time runs `speed` times faster than the clock; the same seed gives the
//! same events.

use std::collections::{BTreeMap, VecDeque};

use chrono::{DateTime, SecondsFormat, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, LogNormal, Normal};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::contract::Reason;

/// Regions named after the cloud regions FriendApp runs in.
pub const DEFAULT_REGIONS: [&str; 6] = ["sa-east-1", "us-east-1", "eu-west-1", "europe-west1", "asia-east1", "ap-south-1"];

/// A planted collapse: from `start_min` (simulated minutes after the start) for `minutes`,
/// `low_share` of the region's users read under 420 Hz. With an `onset_min`, the collapse
/// spreads from user to user first: the share of users under 420 Hz follows a logistic curve
/// from about 1% of `low_share` at `start_min` to 99% of it `onset_min` later (unrest shows at
/// once: sensorial entropy, mood and API latency move from `start_min`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Collapse {
    pub region: String,
    pub start_min: f64,
    pub minutes: f64,
    pub low_share: f64,
    #[serde(default)]
    pub onset_min: f64,
}

impl Collapse {
    /// The share of users under 420 Hz `m` minutes after the simulation's start, if the
    /// collapse is in force then.
    pub fn share_at(&self, m: f64) -> Option<f64> {
        if !(m >= self.start_min && m < self.start_min + self.minutes) {
            return None;
        }
        if self.onset_min <= 0.0 {
            return Some(self.low_share);
        }
        // Logistic through the onset's middle; 1% and 99% at its ends (ln 99 = 4.595).
        let x = (m - self.start_min - self.onset_min / 2.0) / (self.onset_min / (2.0 * 4.595));
        Some(self.low_share / (1.0 + (-x).exp()))
    }
}

impl std::str::FromStr for Collapse {
    type Err = String;
    /// `REGION@START_MIN+MINUTES[:LOW_SHARE][/ONSET_MIN]`, e.g. `sa-east-1@10+15:0.65` or
    /// `sa-east-1@10+40:0.8/12` (spreading over 12 minutes).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || {
            format!("collapse {s:?}: expected REGION@START_MIN+MINUTES[:LOW_SHARE][/ONSET_MIN], e.g. sa-east-1@10+15:0.65 or sa-east-1@10+40:0.8/12")
        };
        let (s_main, onset) = match s.split_once('/') {
            Some((a, o)) => (a, o.parse::<f64>().map_err(|_| bad())?),
            None => (s, 0.0),
        };
        let (region, rest) = s_main.split_once('@').ok_or_else(bad)?;
        let (start, rest) = rest.split_once('+').ok_or_else(bad)?;
        let (minutes, share) = match rest.split_once(':') {
            Some((m, sh)) => (m, sh.parse().map_err(|_| bad())?),
            None => (rest, 0.65),
        };
        let c = Collapse {
            region: region.to_string(),
            start_min: start.parse().map_err(|_| bad())?,
            minutes: minutes.parse().map_err(|_| bad())?,
            low_share: share,
            onset_min: onset,
        };
        if !(0.0..=1.0).contains(&c.low_share) || c.minutes <= 0.0 || region.is_empty() || !(0.0..=c.minutes).contains(&c.onset_min) {
            return Err(bad());
        }
        Ok(c)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SimConfig {
    pub regions: Vec<String>,
    pub users_per_region: usize,
    /// Events per second of wall-clock time (the driver paces to it).
    pub rate: f64,
    /// Simulated seconds per wall-clock second.
    pub speed: f64,
    pub seed: u64,
    /// Event time of the first event.
    pub start: DateTime<Utc>,
    /// Share of events on `user.activity` (the rest are readings).
    pub activity_share: f64,
    pub invalid_share: f64,
    pub duplicate_share: f64,
    pub late_share: f64,
    pub out_of_order_share: f64,
    /// Share of valid events that also carry PII fields a careless producer added.
    pub pii_share: f64,
    pub collapses: Vec<Collapse>,
    pub readings_topic: String,
    pub activity_topic: String,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            regions: DEFAULT_REGIONS.iter().map(|s| s.to_string()).collect(),
            users_per_region: 500,
            rate: 2000.0,
            speed: 1.0,
            seed: 42,
            start: Utc::now(),
            activity_share: 0.4,
            invalid_share: 0.01,
            duplicate_share: 0.01,
            late_share: 0.005,
            out_of_order_share: 0.02,
            pii_share: 0.02,
            collapses: Vec::new(),
            readings_topic: "vibration.readings".into(),
            activity_topic: "user.activity".into(),
        }
    }
}

/// What an emitted record is, for tests and summaries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Planted {
    Valid,
    Duplicate,
    Late,
    OutOfOrder,
    Invalid(#[serde(with = "reason_code")] Reason),
}

mod reason_code {
    use crate::contract::Reason;
    pub fn serialize<S: serde::Serializer>(r: &Reason, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(r.code())
    }
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Reason, D::Error> {
        let s: String = serde::Deserialize::deserialize(d)?;
        Reason::ALL.into_iter().find(|r| r.code() == s).ok_or_else(|| serde::de::Error::custom(format!("unknown reason {s}")))
    }
}

/// One record to produce.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SimRecord {
    pub topic: String,
    /// The message key: the region (SPEC 1).
    pub key: String,
    /// The raw value, exactly as produced (invalid ones included).
    pub value: String,
    pub planted: Planted,
}

/// Totals of what was generated, by topic.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct SimTotals {
    pub records: u64,
    /// Distinct valid events (late and out-of-order included): what bronze must hold.
    pub unique_valid: BTreeMap<String, u64>,
    pub duplicates: BTreeMap<String, u64>,
    pub invalid: BTreeMap<String, BTreeMap<String, u64>>,
    pub late: u64,
    pub out_of_order: u64,
}

struct User {
    hash: String,
    region: usize,
    baseline_hz: f64,
    /// Fixed rank in 0..1: users under a collapse's `low_share` are the ones who drop.
    susceptibility: f64,
}

pub struct Simulator {
    cfg: SimConfig,
    rng: StdRng,
    users: Vec<User>,
    seq: u64,
    sim_us: f64,
    step_us: f64,
    recent: VecDeque<SimRecord>,
    pub totals: SimTotals,
}

const ROUTES: [&str; 8] = [
    "/v1/feed", "/v1/readings", "/v1/profile", "/v1/checkins", "/v1/chat/send", "/v1/field", "/v1/auth/refresh", "/v1/search",
];

impl Simulator {
    pub fn new(cfg: SimConfig) -> Self {
        let mut rng = StdRng::seed_from_u64(cfg.seed);
        let baseline = Normal::new(560.0, 70.0).expect("valid normal");
        let mut users = Vec::new();
        for (r, region) in cfg.regions.iter().enumerate() {
            for u in 0..cfg.users_per_region {
                let h = xxhash_rust::xxh3::xxh3_64_with_seed(format!("{region}/{u}").as_bytes(), cfg.seed);
                users.push(User {
                    hash: format!("u_{h:016x}"),
                    region: r,
                    baseline_hz: f64::clamp(baseline.sample(&mut rng), 440.0, 900.0),
                    susceptibility: rng.random::<f64>(),
                });
            }
        }
        let step_us = 1e6 * cfg.speed / cfg.rate.max(1e-9);
        let sim_us = cfg.start.timestamp_micros() as f64;
        Self { cfg, rng, users, seq: 0, sim_us, step_us, recent: VecDeque::new(), totals: SimTotals::default() }
    }

    /// The current simulated time.
    pub fn now(&self) -> DateTime<Utc> {
        DateTime::from_timestamp_micros(self.sim_us as i64).unwrap_or_default()
    }

    fn minutes_since_start(&self, at_us: f64) -> f64 {
        (at_us - self.cfg.start.timestamp_micros() as f64) / 60e6
    }

    /// The collapse share in force for a region at a time, if any.
    fn collapse_share(&self, region: usize, at_us: f64) -> Option<f64> {
        let m = self.minutes_since_start(at_us);
        let name = &self.cfg.regions[region];
        self.cfg.collapses.iter().filter(|c| &c.region == name).filter_map(|c| c.share_at(m)).reduce(f64::max)
    }

    /// Generates the next record.
    pub fn next_record(&mut self) -> SimRecord {
        self.sim_us += self.step_us;
        self.totals.records += 1;
        let roll: f64 = self.rng.random();
        let c = &self.cfg;
        let (dup, inv, late, ooo) = (c.duplicate_share, c.invalid_share, c.late_share, c.out_of_order_share);
        let rec = if roll < dup && !self.recent.is_empty() {
            let i = self.rng.random_range(0..self.recent.len());
            let mut r = self.recent[i].clone();
            r.planted = Planted::Duplicate;
            *self.totals.duplicates.entry(r.topic.clone()).or_default() += 1;
            r
        } else if roll < dup + inv {
            self.invalid()
        } else {
            let (at_us, planted) = if roll < dup + inv + late {
                self.totals.late += 1;
                (self.sim_us - self.rng.random_range(120.0..600.0) * 1e6, Planted::Late)
            } else if roll < dup + inv + late + ooo {
                self.totals.out_of_order += 1;
                (self.sim_us - self.rng.random_range(1.0..20.0) * 1e6, Planted::OutOfOrder)
            } else {
                (self.sim_us, Planted::Valid)
            };
            let r = self.valid(at_us, planted);
            *self.totals.unique_valid.entry(r.topic.clone()).or_default() += 1;
            self.recent.push_back(r.clone());
            if self.recent.len() > 256 {
                self.recent.pop_front();
            }
            r
        };
        rec
    }

    fn envelope(&mut self, at_us: f64, producer: &str) -> serde_json::Map<String, Value> {
        self.seq += 1;
        let id = uuid::Uuid::from_u64_pair(self.rng.random(), self.rng.random());
        let at = DateTime::from_timestamp_micros(at_us as i64).unwrap_or_default();
        let mut m = serde_json::Map::new();
        m.insert("event_id".into(), json!(id.to_string()));
        m.insert("schema_version".into(), json!("1.2.0"));
        m.insert("occurred_at".into(), json!(at.to_rfc3339_opts(SecondsFormat::Millis, true)));
        m.insert("producer".into(), json!(producer));
        m.insert("idempotency_key".into(), json!(format!("{producer}-{}-{}", self.cfg.seed, self.seq)));
        m.insert("trace_id".into(), json!(format!("{:032x}", self.rng.random::<u128>())));
        m
    }

    fn valid(&mut self, at_us: f64, planted: Planted) -> SimRecord {
        let u = self.rng.random_range(0..self.users.len());
        let region = self.users[u].region;
        let region_name = self.cfg.regions[region].clone();
        let is_activity = self.rng.random::<f64>() < self.cfg.activity_share;
        let collapse = self.collapse_share(region, at_us);
        let (topic, mut m) = if is_activity {
            (self.cfg.activity_topic.clone(), self.activity(u, at_us, collapse))
        } else {
            (self.cfg.readings_topic.clone(), self.reading(u, at_us, collapse))
        };
        if self.rng.random::<f64>() < self.cfg.pii_share {
            m.insert("email".into(), json!(format!("person{}@example.org", self.rng.random_range(0..100_000))));
            m.insert("ip".into(), json!(format!("10.{}.{}.{}", self.rng.random::<u8>(), self.rng.random::<u8>(), self.rng.random::<u8>())));
        }
        SimRecord { topic, key: region_name, value: Value::Object(m).to_string(), planted }
    }

    fn reading(&mut self, u: usize, at_us: f64, collapse: Option<f64>) -> serde_json::Map<String, Value> {
        let mut m = self.envelope(at_us, "vibe-sensor");
        let user = &self.users[u];
        let region = self.cfg.regions[user.region].clone();
        let (hash, baseline, low) = (user.hash.clone(), user.baseline_hz, collapse.is_some_and(|s| user.susceptibility < s));
        // Daily rhythm: +-6% around the baseline, peaking mid-afternoon (UTC offset by region).
        let hour = ((at_us / 3.6e9) + 3.0 * user.region as f64).rem_euclid(24.0);
        let rhythm = 1.0 + 0.06 * ((hour - 9.0) / 24.0 * std::f64::consts::TAU).sin();
        let noise = Normal::new(0.0, 18.0).expect("valid normal").sample(&mut self.rng);
        let hz = if low {
            Normal::new(360.0, 28.0).expect("valid normal").sample(&mut self.rng)
        } else {
            baseline * rhythm + noise
        }
        .clamp(1.0, 2000.0);
        let mood_mu = if low { -0.45 } else if collapse.is_some() { -0.15 } else { 0.05 };
        let mood: f64 = Normal::new(mood_mu, 0.25).expect("valid normal").sample(&mut self.rng);
        let mood = mood.clamp(-1.0, 1.0);
        let ent_mu = if collapse.is_some() { 0.62 } else { 0.32 };
        let entropy: f64 = Normal::new(ent_mu, 0.1).expect("valid normal").sample(&mut self.rng);
        let entropy = entropy.clamp(0.0, 1.0);
        m.insert("user_hash".into(), json!(hash));
        m.insert("region".into(), json!(region));
        m.insert("hz".into(), json!((hz * 100.0).round() / 100.0));
        if self.rng.random::<f64>() < 0.7 {
            m.insert("hz_bucket".into(), json!(crate::contract::derive_bucket(hz)));
        }
        m.insert("mood_delta".into(), json!((mood * 1000.0).round() / 1000.0));
        if self.rng.random::<f64>() < 0.8 {
            m.insert("entropy".into(), json!((entropy * 1000.0).round() / 1000.0));
        }
        if self.rng.random::<f64>() < 0.5 {
            let a = ["meditate", "scroll", "breathe", "share", "listen"][self.rng.random_range(0..5)];
            m.insert("action_type".into(), json!(a));
        }
        m
    }

    fn activity(&mut self, u: usize, at_us: f64, collapse: Option<f64>) -> serde_json::Map<String, Value> {
        let mut m = self.envelope(at_us, "friendapp-api");
        let user = &self.users[u];
        m.insert("user_hash".into(), json!(user.hash.clone()));
        m.insert("region".into(), json!(self.cfg.regions[user.region].clone()));
        let k: f64 = self.rng.random();
        if k < 0.55 {
            m.insert("kind".into(), json!("api.request"));
            m.insert("route".into(), json!(ROUTES[self.rng.random_range(0..ROUTES.len())]));
            let median: f64 = if collapse.is_some() { 260.0 } else { 120.0 };
            let latency = LogNormal::new(median.ln(), 0.6).expect("valid lognormal").sample(&mut self.rng);
            let s: f64 = self.rng.random();
            let err5xx = if collapse.is_some() { 0.04 } else { 0.012 };
            let status = if s < err5xx {
                [500, 502, 503, 504][self.rng.random_range(0..4)]
            } else if s < err5xx + 0.035 {
                [400, 401, 403, 404, 409, 429][self.rng.random_range(0..6)]
            } else if s < err5xx + 0.045 {
                304
            } else {
                [200, 200, 200, 201, 204][self.rng.random_range(0..5)]
            };
            m.insert("status".into(), json!(status));
            m.insert("latency_ms".into(), json!((latency * 10.0).round() / 10.0));
            if self.rng.random::<f64>() < 0.3 {
                m.insert("waf_blocked".into(), json!(self.rng.random::<f64>() < 0.01));
            }
        } else if k < 0.80 {
            m.insert("kind".into(), json!("feed.rendered"));
            m.insert("items_count".into(), json!(self.rng.random_range(0..60)));
            let mu = if collapse.is_some() { 0.55 } else { 0.3 };
            let e: f64 = Normal::new(mu, 0.12).expect("valid normal").sample(&mut self.rng);
            let e = e.clamp(0.0, 1.0);
            m.insert("entropy".into(), json!((e * 1000.0).round() / 1000.0));
        } else if k < 0.90 {
            m.insert("kind".into(), json!("event.checkin"));
        } else {
            m.insert("kind".into(), json!("chat.message"));
        }
        m
    }

    fn invalid(&mut self) -> SimRecord {
        let mut base = self.valid(self.sim_us, Planted::Valid);
        let reading = base.topic == self.cfg.readings_topic;
        let mut v: Value = serde_json::from_str(&base.value).expect("we wrote it");
        let m = v.as_object_mut().expect("object");
        let reason = match self.rng.random_range(0..5) {
            0 => {
                let cut = base.value.len() / 2;
                base.value.truncate(cut);
                Reason::NotJson
            }
            1 => {
                m.remove(if reading { "hz" } else { "user_hash" });
                Reason::MissingField
            }
            2 => {
                m.insert(if reading { "hz".into() } else { "region".into() }, json!(["not", "a", "scalar"]));
                Reason::BadType
            }
            3 => {
                if reading {
                    m.insert("hz".into(), json!(5000.0));
                } else {
                    m.insert("region".into(), json!("Not A Region!"));
                }
                Reason::OutOfRange
            }
            _ => {
                m.insert("schema_version".into(), json!("2.0.0"));
                Reason::UnsupportedSchemaVersion
            }
        };
        if reason != Reason::NotJson {
            base.value = v.to_string();
        }
        *self.totals.invalid.entry(base.topic.clone()).or_default().entry(reason.code().to_string()).or_default() += 1;
        base.planted = Planted::Invalid(reason);
        base
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::{decode_activity, decode_reading};

    fn sim(seed: u64) -> Simulator {
        Simulator::new(SimConfig {
            seed,
            start: "2026-01-01T00:00:00Z".parse().unwrap(),
            invalid_share: 0.05,
            duplicate_share: 0.05,
            ..SimConfig::default()
        })
    }

    #[test]
    fn the_same_seed_gives_the_same_events() {
        let (mut a, mut b) = (sim(7), sim(7));
        for _ in 0..500 {
            assert_eq!(a.next_record().value, b.next_record().value);
        }
        assert_ne!(sim(8).next_record().value, sim(7).next_record().value);
    }

    #[test]
    fn planted_outcomes_match_the_contract_decoder() {
        let mut s = sim(1);
        for _ in 0..5000 {
            let r = s.next_record();
            let decoded = if r.topic == "vibration.readings" {
                decode_reading(r.value.as_bytes(), 1 << 20).map(|_| ())
            } else {
                decode_activity(r.value.as_bytes(), 1 << 20).map(|_| ())
            };
            match r.planted {
                Planted::Invalid(reason) => assert_eq!(decoded.unwrap_err().reason, reason, "{}", r.value),
                _ => assert!(decoded.is_ok(), "{:?}: {}", decoded, r.value),
            }
        }
        assert!(s.totals.duplicates.values().sum::<u64>() > 100);
    }

    #[test]
    fn a_collapse_with_an_onset_spreads_along_a_logistic_curve() {
        let c: Collapse = "sa-east-1@10+40:0.8/12".parse().unwrap();
        assert_eq!((c.start_min, c.minutes, c.low_share, c.onset_min), (10.0, 40.0, 0.8, 12.0));
        assert_eq!(c.share_at(9.9), None);
        assert!((c.share_at(10.0).unwrap() / 0.8 - 0.01).abs() < 1e-3);
        assert!((c.share_at(16.0).unwrap() - 0.4).abs() < 1e-9);
        assert!((c.share_at(22.0).unwrap() / 0.8 - 0.99).abs() < 1e-3);
        assert_eq!(c.share_at(50.0), None);
        // Monotone during the onset.
        let v: Vec<f64> = (0..=12).map(|m| c.share_at(10.0 + m as f64).unwrap()).collect();
        assert!(v.windows(2).all(|w| w[0] < w[1]), "{v:?}");
        // Without an onset the share is in force at once, as before.
        let abrupt: Collapse = "sa-east-1@10+15:0.65".parse().unwrap();
        assert_eq!(abrupt.share_at(10.0), Some(0.65));
        assert!("sa-east-1@10+15:0.65/20".parse::<Collapse>().is_err(), "onset longer than the collapse");
        assert!("sa-east-1@10+15:0.65/x".parse::<Collapse>().is_err());
    }

    #[test]
    fn a_planted_collapse_puts_most_of_the_region_under_420() {
        let mut s = Simulator::new(SimConfig {
            regions: vec!["sa-east-1".into(), "eu-west-1".into()],
            start: "2026-01-01T12:00:00Z".parse().unwrap(),
            rate: 1000.0,
            speed: 60.0,
            invalid_share: 0.0,
            duplicate_share: 0.0,
            collapses: vec!["sa-east-1@1+3:0.65".parse().unwrap()],
            ..SimConfig::default()
        });
        let (mut low, mut n, mut low_other, mut n_other) = (0, 0, 0, 0);
        while s.minutes_since_start(s.sim_us) < 4.0 {
            let r = s.next_record();
            if r.topic != "vibration.readings" || r.planted != Planted::Valid {
                continue;
            }
            let v: Value = serde_json::from_str(&r.value).unwrap();
            let hz = v["hz"].as_f64().unwrap();
            let in_window = s.minutes_since_start(s.sim_us) >= 1.0;
            if in_window && r.key == "sa-east-1" {
                n += 1;
                low += (hz < 420.0) as u32;
            } else if in_window {
                n_other += 1;
                low_other += (hz < 420.0) as u32;
            }
        }
        let share = low as f64 / n as f64;
        assert!((0.55..0.75).contains(&share), "collapse share {share}");
        assert!((low_other as f64 / n_other as f64) < 0.1);
    }
}
