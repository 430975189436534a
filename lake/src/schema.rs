//! Arrow schemas of campo's tables (SPEC 7).
//!
//! Every timestamp is UTC microseconds. Bronze tables are partitioned by `event_date`, the UTC
//! date of `occurred_at`; `rejected` by `rejected_date`, the UTC date it was rejected.

use std::sync::{Arc, LazyLock};

use deltalake::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

/// Timestamp type used in every table: microseconds, UTC.
pub fn ts() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

fn envelope() -> Vec<Field> {
    vec![
        Field::new("event_id", DataType::Utf8, false),
        Field::new("schema_version", DataType::Utf8, false),
        Field::new("occurred_at", ts(), false),
        Field::new("producer", DataType::Utf8, false),
        Field::new("idempotency_key", DataType::Utf8, false),
        Field::new("trace_id", DataType::Utf8, false),
    ]
}

fn provenance() -> Vec<Field> {
    vec![
        Field::new("kafka_topic", DataType::Utf8, false),
        Field::new("kafka_partition", DataType::Int32, false),
        Field::new("kafka_offset", DataType::Int64, false),
        Field::new("ingested_at", ts(), false),
        Field::new("late", DataType::Boolean, false),
        Field::new("event_date", DataType::Date32, false),
    ]
}

/// `readings`: one row per valid, unique vibrational reading.
pub static READINGS: LazyLock<SchemaRef> = LazyLock::new(|| {
    let mut f = envelope();
    f.extend([
        Field::new("user_hash", DataType::Utf8, false),
        Field::new("region", DataType::Utf8, false),
        Field::new("hz", DataType::Float64, false),
        Field::new("hz_bucket", DataType::Int32, false),
        Field::new("hz_bucket_derived", DataType::Boolean, false),
        Field::new("mood_delta", DataType::Float64, true),
        Field::new("entropy", DataType::Float64, true),
        Field::new("action_type", DataType::Utf8, true),
    ]);
    f.extend(provenance());
    Arc::new(Schema::new(f))
});

/// `activity`: one row per valid, unique user-activity event.
pub static ACTIVITY: LazyLock<SchemaRef> = LazyLock::new(|| {
    let mut f = envelope();
    f.extend([
        Field::new("kind", DataType::Utf8, false),
        Field::new("user_hash", DataType::Utf8, false),
        Field::new("region", DataType::Utf8, false),
        Field::new("route", DataType::Utf8, true),
        Field::new("status", DataType::Int32, true),
        Field::new("latency_ms", DataType::Float64, true),
        Field::new("waf_blocked", DataType::Boolean, true),
        Field::new("items_count", DataType::Int64, true),
        Field::new("entropy", DataType::Float64, true),
    ]);
    f.extend(provenance());
    Arc::new(Schema::new(f))
});

/// `rejected`: the DLQ record's fields as columns (SPEC 1), plus the partition column.
pub static REJECTED: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("source_topic", DataType::Utf8, false),
        Field::new("partition", DataType::Int32, false),
        Field::new("offset", DataType::Int64, false),
        Field::new("reason", DataType::Utf8, false),
        Field::new("message", DataType::Utf8, false),
        Field::new("size_bytes", DataType::Int64, false),
        Field::new("rejected_at", ts(), false),
        Field::new("record", DataType::Utf8, false),
        Field::new("rejected_date", DataType::Date32, false),
    ]))
});

fn window_key() -> Vec<Field> {
    vec![
        Field::new("region", DataType::Utf8, false),
        Field::new("window_start", ts(), false),
        Field::new("window_end", ts(), false),
    ]
}

/// `region_metrics_1m` (SPEC 3): one row per region and closed window; partitioned by
/// `window_date`, the UTC date of `window_start`.
pub static REGION_METRICS_1M: LazyLock<SchemaRef> = LazyLock::new(|| {
    let mut f = window_key();
    f.extend([
        Field::new("readings", DataType::Int64, false),
        Field::new("users", DataType::Int64, false),
        Field::new("hz_mean", DataType::Float64, false),
        Field::new("hz_p50", DataType::Float64, false),
        Field::new("hz_p95", DataType::Float64, false),
        Field::new("low_share", DataType::Float64, false),
        Field::new("entropy", DataType::Float64, false),
        Field::new("stability", DataType::Float64, false),
        Field::new("sensorial_entropy", DataType::Float64, true),
        Field::new("mood_mean", DataType::Float64, true),
        Field::new("state", DataType::Utf8, false),
        Field::new("window_date", DataType::Date32, false),
    ]);
    Arc::new(Schema::new(f))
});

/// `evu_1m` (SPEC 4): one row per region and closed window with readings or activity.
pub static EVU_1M: LazyLock<SchemaRef> = LazyLock::new(|| {
    let mut f = window_key();
    f.extend([
        Field::new("requests", DataType::Int64, false),
        Field::new("latency", DataType::Float64, true),
        Field::new("coherence", DataType::Float64, true),
        Field::new("emotional", DataType::Float64, true),
        Field::new("security", DataType::Float64, true),
        Field::new("evu", DataType::Float64, true),
        Field::new("error_rate", DataType::Float64, true),
        Field::new("latency_p95_ms", DataType::Float64, true),
        Field::new("window_date", DataType::Date32, false),
    ]);
    Arc::new(Schema::new(f))
});

/// `collapse_forecast` (SPEC 5): per region, window close (`issued_at`) and horizon; partitioned
/// by `issued_date`, the UTC date of `issued_at`.
pub static COLLAPSE_FORECAST: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("region", DataType::Utf8, false),
        Field::new("issued_at", ts(), false),
        Field::new("horizon_min", DataType::Int32, false),
        Field::new("target_window_end", ts(), false),
        Field::new("hz_forecast", DataType::Float64, false),
        Field::new("lo80", DataType::Float64, false),
        Field::new("hi80", DataType::Float64, false),
        Field::new("lo95", DataType::Float64, false),
        Field::new("hi95", DataType::Float64, false),
        Field::new("p_collapse", DataType::Float64, false),
        Field::new("model", DataType::Utf8, false),
        Field::new("issued_date", DataType::Date32, false),
    ]))
});

/// `alerts` (SPEC 6): one row per protective-mode level change, the outbox of `system.protect`;
/// partitioned by `alert_date`, the UTC date of `window_end`.
pub static ALERTS: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("event_id", DataType::Utf8, false),
        Field::new("region", DataType::Utf8, false),
        Field::new("level", DataType::Utf8, false),
        Field::new("previous_level", DataType::Utf8, false),
        Field::new("reason", DataType::Utf8, false),
        Field::new("window_end", ts(), false),
        Field::new("expires_at", ts(), false),
        Field::new("hz_mean", DataType::Float64, false),
        Field::new("low_share", DataType::Float64, false),
        Field::new("p_collapse_10", DataType::Float64, true),
        Field::new("alert_date", DataType::Date32, false),
    ]))
});

/// `erasures` (SPEC 8): one row per user of an erasure request. The user is named only by
/// `user_key`, HMAC-SHA256(the lake's erasure key, user_hash), and `user_fp`, a keyed 64-bit
/// fingerprint the ingest uses to drop a replayed record of an erased user cheaply; the key
/// lives outside the lake. The `*_rows` columns and `completed_at` are set once it is done.
pub static ERASURES: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("request_id", DataType::Utf8, false),
        Field::new("user_key", DataType::Utf8, false),
        Field::new("user_fp", DataType::Int64, false),
        Field::new("requested_at", ts(), false),
        Field::new("completed_at", ts(), true),
        Field::new("readings_rows", DataType::Int64, true),
        Field::new("activity_rows", DataType::Int64, true),
        Field::new("rejected_rows", DataType::Int64, true),
        Field::new("files_removed", DataType::Int64, true),
    ]))
});
