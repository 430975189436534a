//! campo's configuration: one struct with SPEC's defaults, read from `campo.toml`, then
//! `CAMPO__SECTION__KEY` environment variables, then command-line flags (in the binary).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub kafka: KafkaConfig,
    pub lake: LakeConfig,
    pub ingest: IngestConfig,
    pub windows: WindowsConfig,
    pub signals: SignalsConfig,
    pub protect: ProtectConfig,
    pub metrics: MetricsConfig,
    pub api: ApiConfig,
    pub maintenance: MaintenanceConfig,
    pub lifecycle: LifecycleConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap servers, comma-separated `host:port`.
    pub brokers: String,
    /// Consumer group used for partition assignment (offsets come from the Delta log).
    pub group_id: String,
    pub readings_topic: String,
    pub activity_topic: String,
    pub dlq_topic: String,
    /// Extra librdkafka properties, passed through as-is (e.g. `security.protocol`).
    pub properties: BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".into(),
            group_id: "campo".into(),
            readings_topic: "vibration.readings".into(),
            activity_topic: "user.activity".into(),
            dlq_topic: "campo.dlq".into(),
            properties: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LakeConfig {
    /// Lake root: a local path or an object-store URL delta-rs accepts.
    pub path: String,
    /// Object-store options (credentials, endpoint...), passed to delta-rs.
    pub storage_options: BTreeMap<String, String>,
}

impl Default for LakeConfig {
    fn default() -> Self {
        Self { path: "./lake".into(), storage_options: BTreeMap::new() }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct IngestConfig {
    /// Prefix of the Delta txn app ids; two pipelines with different names never share offsets.
    pub pipeline: String,
    /// Flush buffered rows to Delta at least this often.
    #[serde(with = "humantime_serde")]
    pub flush_interval: Duration,
    /// ... or as soon as this many rows are buffered.
    pub max_batch_rows: usize,
    /// Records larger than this are rejected as `too_large`.
    pub max_record_bytes: usize,
    /// A record whose `idempotency_key` was seen within this horizon is a duplicate.
    #[serde(with = "humantime_serde")]
    pub dedup_horizon: Duration,
    /// Upper bound on remembered keys, kept as two generations of half of it; past it the
    /// older generation is forgotten early (and counted).
    pub dedup_max_keys: usize,
    /// Flushes handed to the lake writer but not yet committed; past this the consumer stops taking records.
    pub max_pending_flushes: usize,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            pipeline: "campo".into(),
            flush_interval: Duration::from_secs(1),
            max_batch_rows: 200_000,
            max_record_bytes: 1024 * 1024,
            dedup_horizon: Duration::from_secs(24 * 3600),
            // Two generations of at most 7M keys, each what a hash table of 2^23 buckets holds
            // (7/8 of them); 2^23 buckets of 17 bytes (key, minute, control byte) = 143 MiB.
            dedup_max_keys: 14_000_000,
            max_pending_flushes: 2,
        }
    }
}

/// Event-time windows (SPEC 2).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct WindowsConfig {
    /// Run the signal pipelines (`region_metrics_1m`, `evu_1m`) as windows close.
    pub enabled: bool,
    /// Tumbling window size, aligned to the Unix epoch (the UTC minute for 1 min).
    #[serde(with = "humantime_serde")]
    pub size: Duration,
    /// How far behind the largest event time the watermark trails.
    #[serde(with = "humantime_serde")]
    pub allowed_lateness: Duration,
    /// A partition read to its end with no record for this long does not hold the watermark back.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// State rows of open windows (partial aggregates, `sql/state/`) past which a warning is
    /// logged (reported as `campo_window_open_rows`).
    pub max_open_rows: usize,
}

impl Default for WindowsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            size: Duration::from_secs(60),
            allowed_lateness: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(10),
            max_open_rows: 5_000_000,
        }
    }
}

/// Thresholds and weights of the signals (SPEC 3 and 4).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SignalsConfig {
    /// Below this Hz a user counts in `low_share` and a window's state is `collapse`.
    pub low_hz: f64,
    /// At or above this mean Hz a window's state is `expansion`.
    pub high_hz: f64,
    /// Apdex threshold T in milliseconds.
    pub apdex_t_ms: f64,
    /// EVU weights of latency, coherence, emotional and security.
    pub evu_weights: [f64; 4],
}

impl Default for SignalsConfig {
    fn default() -> Self {
        Self { low_hz: 420.0, high_hz: 700.0, apdex_t_ms: 300.0, evu_weights: [1.0; 4] }
    }
}

/// Collapse forecasts and protective mode (SPEC 5 and 6). The levels' thresholds; `hz_mean`'s
/// threshold is `signals.low_hz`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ProtectConfig {
    /// Forecast each region and run the protective-mode state machine at every window close.
    pub enabled: bool,
    /// Topic the level changes are sent to.
    pub topic: String,
    /// `soft`: `low_share` at or above this in the latest window ...
    pub soft_low_share: f64,
    /// ... or `p_collapse` at 10 minutes at or above this.
    pub soft_p_collapse: f64,
    /// `medium`: `hz_mean` under `signals.low_hz` in each of this many windows ...
    pub medium_windows: usize,
    /// ... or `low_share` at or above this ...
    pub medium_low_share: f64,
    /// ... in each of this many windows.
    pub medium_share_windows: usize,
    /// `hard`: `hz_mean` under `signals.low_hz` in each of this many windows ...
    pub hard_windows: usize,
    /// ... or a regional failure: `error_rate` above this ...
    pub error_rate: f64,
    /// ... or `latency_p95_ms` above this ...
    pub latency_p95_ms: f64,
    /// ... in each of this many windows.
    pub failure_windows: usize,
    /// `off`: no condition holds and `hz_mean` >= this and `low_share` < `soft_low_share` ...
    pub recover_hz: f64,
    /// ... in each of this many windows.
    pub off_windows: usize,
}

impl Default for ProtectConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            topic: "system.protect".into(),
            soft_low_share: 0.5,
            soft_p_collapse: 0.8,
            medium_windows: 10,
            medium_low_share: 0.65,
            medium_share_windows: 3,
            hard_windows: 30,
            error_rate: 0.05,
            latency_p95_ms: 1000.0,
            failure_windows: 3,
            recover_hz: 440.0,
            off_windows: 5,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address of the Prometheus `/metrics` endpoint; empty disables it.
    pub listen: String,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self { listen: "127.0.0.1:9464".into() }
    }
}

/// The HTTP API: signals, forecasts, alerts, the live stream and read-only SQL.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    /// Address the API listens on; empty disables it (in `campo run`).
    pub listen: String,
    /// The audience (`aud`) every token must name.
    pub audience: String,
    /// HS256 signing key (hex, at least 32 bytes). Empty: `<lake>/_campo/api-signing.key`,
    /// created on first start with owner-only permissions (a local lake only).
    pub signing_key_file: String,
    /// Requests per second each caller (token subject; client address without a token) may
    /// make on average; 0 disables rate limiting.
    pub rate_limit_per_s: u32,
    /// How many requests a caller may make at once above that rate.
    pub rate_limit_burst: u32,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Memory one `POST /v1/sql` query may use, in MiB.
    pub sql_memory_mb: usize,
    /// Time one `POST /v1/sql` query may run.
    #[serde(with = "humantime_serde")]
    pub sql_timeout: Duration,
    /// Rows one `POST /v1/sql` query may return.
    pub sql_max_rows: usize,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            audience: "campo".into(),
            signing_key_file: String::new(),
            rate_limit_per_s: 200,
            rate_limit_burst: 400,
            max_body_bytes: 64 * 1024,
            sql_memory_mb: 256,
            sql_timeout: Duration::from_secs(30),
            sql_max_rows: 100_000,
        }
    }
}

/// Lake maintenance inside the engine, on a schedule, while ingesting.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct MaintenanceConfig {
    /// Run compaction, vacuum and checkpoints on a schedule (in `campo run` and `campo demo`).
    pub enabled: bool,
    /// How often a maintenance pass runs over every table.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Compaction bin-packs small files up to this size, in MiB.
    pub target_file_mb: u64,
    /// Z-order rows by `region` in the date partitions before today's (written no more), so a
    /// query on one region reads few files; today's partition is only bin-packed.
    pub zorder_by_region: bool,
    /// Vacuum deletes the files no version younger than this references (time travel reaches
    /// back this far).
    #[serde(with = "humantime_serde")]
    pub vacuum_retention: Duration,
}

impl Default for MaintenanceConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            interval: Duration::from_secs(3600),
            target_file_mb: 128,
            zorder_by_region: true,
            vacuum_retention: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// Retention and pseudonymization (SPEC 8), applied by every maintenance pass and by
/// `campo lake retain`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LifecycleConfig {
    /// Bronze rows (readings, activity, rejected) older than this are deleted.
    #[serde(with = "humantime_serde")]
    pub granular_retention: Duration,
    /// In bronze rows older than this, `user_hash` is replaced by HMAC-SHA256(month key, user_hash).
    #[serde(with = "humantime_serde")]
    pub pseudonymize_after: Duration,
    /// Rows of the derived tables older than this are deleted.
    #[serde(with = "humantime_serde")]
    pub aggregate_retention: Duration,
    /// Where the month keys live (outside the lake root). Empty: `<lake>.keys` beside a local
    /// lake; an object-store lake must set it.
    pub keys_dir: String,
}

impl Default for LifecycleConfig {
    fn default() -> Self {
        let day = 24 * 3600;
        Self {
            granular_retention: Duration::from_secs(90 * day),
            pseudonymize_after: Duration::from_secs(30 * day),
            aggregate_retention: Duration::from_secs(730 * day),
            keys_dir: String::new(),
        }
    }
}

impl LifecycleConfig {
    /// The key directory for a lake: `keys_dir`, else `<lake>.keys` beside a local lake.
    pub fn keys_dir_for(&self, lake: &campo_lake::Lake) -> Result<std::path::PathBuf, ConfigError> {
        if !self.keys_dir.is_empty() {
            return Ok(self.keys_dir.clone().into());
        }
        let root = lake.local_root().ok_or(ConfigError {
            key: "lifecycle.keys_dir",
            reason: "must be set for a lake that is not on the local filesystem (keys live outside the lake)".into(),
        })?;
        let name = root.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "lake".into());
        Ok(root.with_file_name(format!("{name}.keys")))
    }

    pub fn policy(&self) -> campo_lake::lifecycle::Policy {
        campo_lake::lifecycle::Policy {
            granular_retention: self.granular_retention,
            pseudonymize_after: self.pseudonymize_after,
            aggregate_retention: self.aggregate_retention,
        }
    }
}

/// A configuration value that cannot work, named by its key.
#[derive(Debug, thiserror::Error)]
#[error("config key `{key}`: {reason}")]
pub struct ConfigError {
    pub key: &'static str,
    pub reason: String,
}

impl Config {
    /// Checks what serde cannot: values that parse but cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |key, reason: &str| Err(ConfigError { key, reason: reason.into() });
        if self.kafka.brokers.trim().is_empty() {
            return err("kafka.brokers", "must name at least one broker");
        }
        if self.kafka.group_id.trim().is_empty() {
            return err("kafka.group_id", "must not be empty");
        }
        for (key, t) in [
            ("kafka.readings_topic", &self.kafka.readings_topic),
            ("kafka.activity_topic", &self.kafka.activity_topic),
            ("kafka.dlq_topic", &self.kafka.dlq_topic),
        ] {
            if t.is_empty() || !t.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)) {
                return err(key, "must be a Kafka topic name ([a-zA-Z0-9._-]+)");
            }
        }
        if self.kafka.readings_topic == self.kafka.activity_topic {
            return err("kafka.activity_topic", "must differ from kafka.readings_topic");
        }
        if self.lake.path.trim().is_empty() {
            return err("lake.path", "must not be empty");
        }
        if self.ingest.pipeline.is_empty()
            || !self.ingest.pipeline.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        {
            return err("ingest.pipeline", "must be non-empty [a-zA-Z0-9._-]");
        }
        if self.ingest.flush_interval.is_zero() {
            return err("ingest.flush_interval", "must be greater than zero");
        }
        if self.ingest.max_batch_rows == 0 {
            return err("ingest.max_batch_rows", "must be at least 1");
        }
        if self.ingest.max_record_bytes < 64 {
            return err("ingest.max_record_bytes", "must be at least 64 bytes");
        }
        for (key, d) in [
            ("lifecycle.granular_retention", self.lifecycle.granular_retention),
            ("lifecycle.pseudonymize_after", self.lifecycle.pseudonymize_after),
            ("lifecycle.aggregate_retention", self.lifecycle.aggregate_retention),
        ] {
            if d < Duration::from_secs(3600) {
                return err(key, "must be at least 1h");
            }
        }
        if self.maintenance.interval < Duration::from_secs(1) {
            return err("maintenance.interval", "must be at least 1s");
        }
        if self.maintenance.target_file_mb == 0 {
            return err("maintenance.target_file_mb", "must be at least 1");
        }
        if self.ingest.max_pending_flushes == 0 {
            return err("ingest.max_pending_flushes", "must be at least 1");
        }
        let w = &self.windows;
        if w.size.as_micros() < 1_000_000 || w.size.as_micros() % 1_000_000 != 0 {
            return err("windows.size", "must be a whole number of seconds, at least 1 s");
        }
        if (24 * 3600 * 1_000_000) % w.size.as_micros() != 0 {
            return err("windows.size", "must divide a day evenly (e.g. 10s, 1m, 5m, 1h)");
        }
        if w.idle_timeout.is_zero() {
            return err("windows.idle_timeout", "must be greater than zero");
        }
        let s = &self.signals;
        if !(s.low_hz.is_finite() && s.low_hz > 0.0) {
            return err("signals.low_hz", "must be a positive number");
        }
        if !(s.high_hz.is_finite() && s.high_hz > s.low_hz) {
            return err("signals.high_hz", "must be a number above signals.low_hz");
        }
        if !(s.apdex_t_ms.is_finite() && s.apdex_t_ms > 0.0) {
            return err("signals.apdex_t_ms", "must be a positive number of milliseconds");
        }
        if s.evu_weights.iter().any(|w| !w.is_finite() || *w < 0.0) || s.evu_weights.iter().sum::<f64>() <= 0.0 {
            return err("signals.evu_weights", "must be four finite weights >= 0, not all zero");
        }
        let p = &self.protect;
        if p.topic.is_empty() || !p.topic.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)) {
            return err("protect.topic", "must be a Kafka topic name ([a-zA-Z0-9._-]+)");
        }
        for (key, v) in [
            ("protect.soft_low_share", p.soft_low_share),
            ("protect.soft_p_collapse", p.soft_p_collapse),
            ("protect.medium_low_share", p.medium_low_share),
            ("protect.error_rate", p.error_rate),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return err(key, "must be a share between 0 and 1");
            }
        }
        for (key, n) in [
            ("protect.medium_windows", p.medium_windows),
            ("protect.medium_share_windows", p.medium_share_windows),
            ("protect.hard_windows", p.hard_windows),
            ("protect.failure_windows", p.failure_windows),
            ("protect.off_windows", p.off_windows),
        ] {
            if n == 0 || n > 1440 {
                return err(key, "must be a number of windows from 1 to 1440");
            }
        }
        if !(p.latency_p95_ms.is_finite() && p.latency_p95_ms > 0.0) {
            return err("protect.latency_p95_ms", "must be a positive number of milliseconds");
        }
        if !(p.recover_hz.is_finite() && p.recover_hz >= s.low_hz) {
            return err("protect.recover_hz", "must be a number at or above signals.low_hz");
        }
        if !self.metrics.listen.is_empty() && self.metrics.listen.parse::<std::net::SocketAddr>().is_err() {
            return err("metrics.listen", "must be an address like 127.0.0.1:9464, or empty");
        }
        let a = &self.api;
        if !a.listen.is_empty() && a.listen.parse::<std::net::SocketAddr>().is_err() {
            return err("api.listen", "must be an address like 127.0.0.1:8080, or empty");
        }
        if a.audience.trim().is_empty() {
            return err("api.audience", "must not be empty");
        }
        if a.rate_limit_per_s > 0 && a.rate_limit_burst == 0 {
            return err("api.rate_limit_burst", "must be at least 1 when api.rate_limit_per_s is set");
        }
        if a.max_body_bytes < 1024 {
            return err("api.max_body_bytes", "must be at least 1024 bytes");
        }
        if a.sql_memory_mb == 0 {
            return err("api.sql_memory_mb", "must be at least 1 MiB");
        }
        if a.sql_timeout.is_zero() {
            return err("api.sql_timeout", "must be greater than zero");
        }
        if a.sql_max_rows == 0 {
            return err("api.sql_max_rows", "must be at least 1");
        }
        Ok(())
    }
}
