//! Event contracts (SPEC 1): decoding and validating `vibration.readings` and `user.activity`.
//!
//! The fast path deserializes straight into typed structs that borrow from the record. Only when
//! that fails does the slow path parse a `serde_json::Value` to say precisely which field is
//! wrong. Both paths check in the same order: the record as a whole, `schema_version`, then every
//! other field in contract order, so a record gets the same reason code whichever path sees it.
//!
//! Reason codes:
//! - `too_large`: over `max_record_bytes`, not parsed at all;
//! - `not_json`: not UTF-8 JSON;
//! - `bad_type`: not an object, a field of the wrong JSON type, or a string that is not the
//!   format its field needs (UUID, RFC 3339 with offset, semver);
//! - `unsupported_schema_version`: a semver whose major is not 1;
//! - `missing_field`: a required field absent or null;
//! - `out_of_range`: a value outside its domain (number ranges, empty or over-long strings,
//!   the `region` alphabet, an unknown activity `kind`).

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde_json::Value;

/// Why a record was rejected; the `reason` column of `rejected` and of DLQ records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    NotJson,
    MissingField,
    BadType,
    OutOfRange,
    UnsupportedSchemaVersion,
    TooLarge,
}

impl Reason {
    pub const ALL: [Reason; 6] = [
        Reason::NotJson,
        Reason::MissingField,
        Reason::BadType,
        Reason::OutOfRange,
        Reason::UnsupportedSchemaVersion,
        Reason::TooLarge,
    ];

    pub fn code(self) -> &'static str {
        match self {
            Reason::NotJson => "not_json",
            Reason::MissingField => "missing_field",
            Reason::BadType => "bad_type",
            Reason::OutOfRange => "out_of_range",
            Reason::UnsupportedSchemaVersion => "unsupported_schema_version",
            Reason::TooLarge => "too_large",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// A rejected record's reason code and human-readable message.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    pub reason: Reason,
    pub message: String,
}

fn reject<T>(reason: Reason, message: impl Into<String>) -> Result<T, Rejection> {
    Err(Rejection { reason, message: message.into() })
}

/// The validated envelope, borrowing from the record where it can.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope<'a> {
    /// Canonical lowercase hyphenated UUID (as sent when it was already in that form).
    pub event_id: Cow<'a, str>,
    pub schema_version: Cow<'a, str>,
    /// UTC microseconds since the epoch.
    pub occurred_at_us: i64,
    pub producer: Cow<'a, str>,
    pub idempotency_key: Cow<'a, str>,
    pub trace_id: Cow<'a, str>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Reading<'a> {
    pub envelope: Envelope<'a>,
    pub user_hash: Cow<'a, str>,
    pub region: Cow<'a, str>,
    pub hz: f64,
    pub hz_bucket: i32,
    /// True when the producer sent no `hz_bucket` and campo derived it from `hz`.
    pub hz_bucket_derived: bool,
    pub mood_delta: Option<f64>,
    pub entropy: Option<f64>,
    pub action_type: Option<Cow<'a, str>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActivityKind {
    ApiRequest,
    FeedRendered,
    EventCheckin,
    ChatMessage,
}

impl ActivityKind {
    pub const ALL: [ActivityKind; 4] = [
        ActivityKind::ApiRequest,
        ActivityKind::FeedRendered,
        ActivityKind::EventCheckin,
        ActivityKind::ChatMessage,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ActivityKind::ApiRequest => "api.request",
            ActivityKind::FeedRendered => "feed.rendered",
            ActivityKind::EventCheckin => "event.checkin",
            ActivityKind::ChatMessage => "chat.message",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Activity<'a> {
    pub envelope: Envelope<'a>,
    pub kind: ActivityKind,
    pub user_hash: Cow<'a, str>,
    pub region: Cow<'a, str>,
    pub route: Option<Cow<'a, str>>,
    pub status: Option<i32>,
    pub latency_ms: Option<f64>,
    pub waf_blocked: Option<bool>,
    pub items_count: Option<i64>,
    pub entropy: Option<f64>,
}

/// Which contract a record is checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Contract {
    Reading,
    Activity,
}

/// JSON types a field may have, for the slow path's type check.
#[derive(Clone, Copy)]
enum Ty {
    Str,
    Num,
    Int,
    Bool,
}

impl Ty {
    fn matches(self, v: &Value) -> bool {
        match self {
            Ty::Str => v.is_string(),
            Ty::Num => v.is_number(),
            Ty::Int => v.is_i64() || v.is_u64(),
            Ty::Bool => v.is_boolean(),
        }
    }
    fn name(self) -> &'static str {
        match self {
            Ty::Str => "a string",
            Ty::Num => "a number",
            Ty::Int => "an integer",
            Ty::Bool => "a boolean",
        }
    }
}

const ENVELOPE_FIELDS: [(&str, Ty); 6] = [
    ("event_id", Ty::Str),
    ("schema_version", Ty::Str),
    ("occurred_at", Ty::Str),
    ("producer", Ty::Str),
    ("idempotency_key", Ty::Str),
    ("trace_id", Ty::Str),
];

const READING_FIELDS: [(&str, Ty); 7] = [
    ("user_hash", Ty::Str),
    ("region", Ty::Str),
    ("hz", Ty::Num),
    ("hz_bucket", Ty::Int),
    ("mood_delta", Ty::Num),
    ("entropy", Ty::Num),
    ("action_type", Ty::Str),
];

const ACTIVITY_FIELDS: [(&str, Ty); 9] = [
    ("kind", Ty::Str),
    ("user_hash", Ty::Str),
    ("region", Ty::Str),
    ("route", Ty::Str),
    ("status", Ty::Int),
    ("latency_ms", Ty::Num),
    ("waf_blocked", Ty::Bool),
    ("items_count", Ty::Int),
    ("entropy", Ty::Num),
];

/// A string field that borrows from the record unless it holds escapes. serde's own `Cow<str>`
/// is always owned inside an `Option` (its `borrow` attribute reaches only a bare `Cow`), which
/// cost an allocation and a copy per field of every record.
struct Text<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(v)))
            }
        }
        d.deserialize_str(Visit)
    }
}

fn text(t: Option<Text<'_>>) -> Option<Cow<'_, str>> {
    t.map(|t| t.0)
}

#[derive(Deserialize)]
struct RawReading<'a> {
    #[serde(borrow, default)]
    event_id: Option<Text<'a>>,
    #[serde(borrow, default)]
    schema_version: Option<Text<'a>>,
    #[serde(borrow, default)]
    occurred_at: Option<Text<'a>>,
    #[serde(borrow, default)]
    producer: Option<Text<'a>>,
    #[serde(borrow, default)]
    idempotency_key: Option<Text<'a>>,
    #[serde(borrow, default)]
    trace_id: Option<Text<'a>>,
    #[serde(borrow, default)]
    user_hash: Option<Text<'a>>,
    #[serde(borrow, default)]
    region: Option<Text<'a>>,
    #[serde(default)]
    hz: Option<f64>,
    #[serde(default)]
    hz_bucket: Option<i64>,
    #[serde(default)]
    mood_delta: Option<f64>,
    #[serde(default)]
    entropy: Option<f64>,
    #[serde(borrow, default)]
    action_type: Option<Text<'a>>,
}

#[derive(Deserialize)]
struct RawActivity<'a> {
    #[serde(borrow, default)]
    event_id: Option<Text<'a>>,
    #[serde(borrow, default)]
    schema_version: Option<Text<'a>>,
    #[serde(borrow, default)]
    occurred_at: Option<Text<'a>>,
    #[serde(borrow, default)]
    producer: Option<Text<'a>>,
    #[serde(borrow, default)]
    idempotency_key: Option<Text<'a>>,
    #[serde(borrow, default)]
    trace_id: Option<Text<'a>>,
    #[serde(borrow, default)]
    kind: Option<Text<'a>>,
    #[serde(borrow, default)]
    user_hash: Option<Text<'a>>,
    #[serde(borrow, default)]
    region: Option<Text<'a>>,
    #[serde(borrow, default)]
    route: Option<Text<'a>>,
    #[serde(default)]
    status: Option<i64>,
    #[serde(default)]
    latency_ms: Option<f64>,
    #[serde(default)]
    waf_blocked: Option<bool>,
    #[serde(default)]
    items_count: Option<i64>,
    #[serde(default)]
    entropy: Option<f64>,
}

/// Decodes and validates a `vibration.readings` record.
pub fn decode_reading(bytes: &[u8], max_record_bytes: usize) -> Result<Reading<'_>, Rejection> {
    check_size(bytes, max_record_bytes)?;
    match fast_parse::<RawReading<'_>>(bytes) {
        Ok(raw) => validate_reading(raw),
        Err(e) => Err(slow_path(bytes, Contract::Reading, e)),
    }
}

/// Decodes and validates a `user.activity` record.
pub fn decode_activity(bytes: &[u8], max_record_bytes: usize) -> Result<Activity<'_>, Rejection> {
    check_size(bytes, max_record_bytes)?;
    match fast_parse::<RawActivity<'_>>(bytes) {
        Ok(raw) => validate_activity(raw),
        Err(e) => Err(slow_path(bytes, Contract::Activity, e)),
    }
}

/// The typed decode. The whole record is checked as UTF-8 once and then parsed as a `str`:
/// serde_json re-validates every string it borrows from a byte slice, which cost more than the
/// one pass. A record that is not UTF-8 is parsed as bytes so its error reads as before.
fn fast_parse<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, serde_json::Error> {
    match std::str::from_utf8(bytes) {
        Ok(s) => serde_json::from_str(s),
        Err(_) => serde_json::from_slice(bytes),
    }
}

fn check_size(bytes: &[u8], max: usize) -> Result<(), Rejection> {
    if bytes.len() > max {
        return reject(
            Reason::TooLarge,
            format!("record is {} bytes, over max_record_bytes = {max}", bytes.len()),
        );
    }
    Ok(())
}

/// Explains a record that the typed decoder refused.
fn slow_path(bytes: &[u8], contract: Contract, typed_err: serde_json::Error) -> Rejection {
    let value: Value = match serde_json::from_slice(bytes) {
        Ok(v) => v,
        Err(e) => {
            return Rejection { reason: Reason::NotJson, message: format!("not JSON: {e}") };
        }
    };
    let Some(obj) = value.as_object() else {
        return Rejection {
            reason: Reason::BadType,
            message: format!("event must be a JSON object, got {}", json_kind(&value)),
        };
    };
    let present = |name: &str| obj.get(name).filter(|v| !v.is_null());
    // schema_version first, exactly as the fast path does.
    if let Err(r) = check_schema_version(present("schema_version").map(|v| v.as_str())) {
        return r;
    }
    let topic_fields: &[(&str, Ty)] = match contract {
        Contract::Reading => &READING_FIELDS,
        Contract::Activity => &ACTIVITY_FIELDS,
    };
    for (name, ty) in ENVELOPE_FIELDS.iter().chain(topic_fields) {
        if let Some(v) = present(name) {
            if !ty.matches(v) {
                return Rejection {
                    reason: Reason::BadType,
                    message: format!("field `{name}` must be {}, got {}", ty.name(), json_kind(v)),
                };
            }
        }
    }
    Rejection { reason: Reason::BadType, message: format!("malformed event: {typed_err}") }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_f64() => "a fractional number",
        Value::Number(_) => "an integer",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// `Some(None)` is a present value of the wrong type (slow path only).
fn check_schema_version(v: Option<Option<&str>>) -> Result<(), Rejection> {
    let s = match v {
        None => return reject(Reason::MissingField, "missing field `schema_version`"),
        Some(None) => return reject(Reason::BadType, "field `schema_version` must be a string"),
        Some(Some(s)) => s,
    };
    let Some(major) = semver_major(s) else {
        return reject(
            Reason::BadType,
            format!("field `schema_version` must be semver MAJOR.MINOR.PATCH, got {s:?}"),
        );
    };
    if major != 1 {
        return reject(
            Reason::UnsupportedSchemaVersion,
            format!("schema_version {s:?} has major {major}; campo reads major 1"),
        );
    }
    Ok(())
}

fn required<'a, T>(v: Option<T>, name: &str) -> Result<T, Rejection> {
    match v {
        Some(v) => Ok(v),
        None => reject(Reason::MissingField, format!("missing field `{name}`")),
    }
}

fn non_empty<'a>(v: Option<Cow<'a, str>>, name: &str, max_chars: Option<usize>) -> Result<Cow<'a, str>, Rejection> {
    let s = required(v, name)?;
    if s.is_empty() {
        return reject(Reason::OutOfRange, format!("field `{name}` must not be empty"));
    }
    if let Some(max) = max_chars {
        // At most `max` bytes is at most `max` characters: count only the long ones.
        if s.len() > max && s.chars().count() > max {
            return reject(Reason::OutOfRange, format!("field `{name}` is longer than {max} characters"));
        }
    }
    Ok(s)
}

struct RawEnvelope<'a> {
    event_id: Option<Cow<'a, str>>,
    schema_version: Option<Cow<'a, str>>,
    occurred_at: Option<Cow<'a, str>>,
    producer: Option<Cow<'a, str>>,
    idempotency_key: Option<Cow<'a, str>>,
    trace_id: Option<Cow<'a, str>>,
}

/// The envelope fields of a `RawReading` or `RawActivity` (the same names in both).
macro_rules! raw_envelope {
    ($raw:ident) => {
        RawEnvelope {
            event_id: text($raw.event_id),
            schema_version: text($raw.schema_version),
            occurred_at: text($raw.occurred_at),
            producer: text($raw.producer),
            idempotency_key: text($raw.idempotency_key),
            trace_id: text($raw.trace_id),
        }
    };
}

fn validate_envelope(raw: RawEnvelope<'_>) -> Result<Envelope<'_>, Rejection> {
    check_schema_version(raw.schema_version.as_deref().map(Some))?;
    let id = required(raw.event_id, "event_id")?;
    let uuid = uuid::Uuid::try_parse(&id)
        .map_err(|_| Rejection { reason: Reason::BadType, message: format!("field `event_id` must be a UUID, got {id:?}") })?;
    // A parsed UUID of 36 characters is the hyphenated form; without upper case it is canonical.
    let event_id = if id.len() == 36 && !id.bytes().any(|b| b.is_ascii_uppercase()) {
        id
    } else {
        Cow::Owned(uuid.hyphenated().to_string())
    };
    let at = required(raw.occurred_at, "occurred_at")?;
    let occurred_at_us = match rfc3339_micros(at.as_bytes()) {
        Some(us) => us,
        None => chrono::DateTime::parse_from_rfc3339(&at)
            .map_err(|e| Rejection {
                reason: Reason::BadType,
                message: format!("field `occurred_at` must be RFC 3339 with an offset, got {at:?}: {e}"),
            })?
            .timestamp_micros(),
    };
    Ok(Envelope {
        event_id,
        schema_version: raw.schema_version.expect("checked above"),
        occurred_at_us,
        producer: non_empty(raw.producer, "producer", None)?,
        idempotency_key: non_empty(raw.idempotency_key, "idempotency_key", Some(128))?,
        trace_id: non_empty(raw.trace_id, "trace_id", None)?,
    })
}

fn region(v: Option<Cow<'_, str>>) -> Result<Cow<'_, str>, Rejection> {
    let r = non_empty(v, "region", Some(64))?;
    if !r.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
        return reject(Reason::OutOfRange, format!("field `region` must match [a-z0-9-]{{1,64}}, got {r:?}"));
    }
    Ok(r)
}

fn in_range(v: Option<f64>, name: &str, lo: f64, hi: f64) -> Result<Option<f64>, Rejection> {
    match v {
        Some(x) if !(x.is_finite() && x >= lo && x <= hi) => {
            reject(Reason::OutOfRange, format!("field `{name}` must be in {lo}..={hi}, got {x}"))
        }
        _ => Ok(v),
    }
}

fn int_in_range(v: Option<i64>, name: &str, lo: i64, hi: i64) -> Result<Option<i64>, Rejection> {
    match v {
        Some(x) if x < lo || x > hi => {
            reject(Reason::OutOfRange, format!("field `{name}` must be in {lo}..={hi}, got {x}"))
        }
        _ => Ok(v),
    }
}

/// `min(10, floor(hz / 100))`, the bucket of a reading without one (SPEC 1).
pub fn derive_bucket(hz: f64) -> i32 {
    ((hz / 100.0).floor() as i32).clamp(0, 10)
}

fn validate_reading(raw: RawReading<'_>) -> Result<Reading<'_>, Rejection> {
    let envelope = validate_envelope(raw_envelope!(raw))?;
    let user_hash = non_empty(text(raw.user_hash), "user_hash", None)?;
    let region = region(text(raw.region))?;
    let hz = required(raw.hz, "hz")?;
    if !(hz.is_finite() && hz > 0.0 && hz <= 2000.0) {
        return reject(Reason::OutOfRange, format!("field `hz` must be in (0, 2000], got {hz}"));
    }
    let bucket = int_in_range(raw.hz_bucket, "hz_bucket", 0, 10)?;
    Ok(Reading {
        envelope,
        user_hash,
        region,
        hz,
        hz_bucket: bucket.map_or_else(|| derive_bucket(hz), |b| b as i32),
        hz_bucket_derived: bucket.is_none(),
        mood_delta: in_range(raw.mood_delta, "mood_delta", -1.0, 1.0)?,
        entropy: in_range(raw.entropy, "entropy", 0.0, 1.0)?,
        action_type: text(raw.action_type),
    })
}

fn validate_activity(raw: RawActivity<'_>) -> Result<Activity<'_>, Rejection> {
    let envelope = validate_envelope(raw_envelope!(raw))?;
    let kind_s = required(text(raw.kind), "kind")?;
    let Some(kind) = ActivityKind::parse(&kind_s) else {
        return reject(
            Reason::OutOfRange,
            format!("field `kind` must be one of api.request, feed.rendered, event.checkin, chat.message; got {kind_s:?}"),
        );
    };
    let user_hash = non_empty(text(raw.user_hash), "user_hash", None)?;
    let region = region(text(raw.region))?;
    let status = int_in_range(raw.status, "status", 100, 599)?;
    let latency_ms = in_range(raw.latency_ms, "latency_ms", 0.0, f64::MAX)?;
    let items_count = int_in_range(raw.items_count, "items_count", 0, i64::MAX)?;
    let entropy = in_range(raw.entropy, "entropy", 0.0, 1.0)?;
    let route = match text(raw.route) {
        Some(r) if r.is_empty() => return reject(Reason::OutOfRange, "field `route` must not be empty"),
        r => r,
    };
    match kind {
        ActivityKind::ApiRequest => {
            required(route.as_ref(), "route")?;
            required(status, "status")?;
            required(latency_ms, "latency_ms")?;
        }
        ActivityKind::FeedRendered => {
            required(items_count, "items_count")?;
            required(entropy, "entropy")?;
        }
        ActivityKind::EventCheckin | ActivityKind::ChatMessage => {}
    }
    Ok(Activity {
        envelope,
        kind,
        user_hash,
        region,
        route,
        status: status.map(|s| s as i32),
        latency_ms,
        waf_blocked: raw.waf_blocked,
        items_count,
        entropy,
    })
}

mod formats;
mod pii;

use formats::{rfc3339_micros, semver_major};

pub use pii::{PII_FIELDS, scrubbed_record};

#[cfg(test)]
mod tests;
