use proptest::prelude::*;
use serde_json::{Value, json};

use super::*;

const MAX: usize = 1 << 20;

fn reading() -> Value {
    json!({
        "event_id": "7d3f2a4e-9a43-4a8e-b0c1-2f5e8a9b6c01",
        "schema_version": "1.0.0",
        "occurred_at": "2026-11-23T10:15:30.250+02:00",
        "producer": "vibe-sensor",
        "idempotency_key": "k-1",
        "trace_id": "t-1",
        "user_hash": "u_1",
        "region": "sa-east-1",
        "hz": 432.5,
        "mood_delta": -0.2,
        "entropy": 0.4,
        "email": "someone@example.org"
    })
}

fn activity(kind: &str) -> Value {
    let mut v = json!({
        "event_id": "7d3f2a4e-9a43-4a8e-b0c1-2f5e8a9b6c02",
        "schema_version": "1.3.1",
        "occurred_at": "2026-11-23T10:15:30Z",
        "producer": "api",
        "idempotency_key": "k-2",
        "trace_id": "t-2",
        "kind": kind,
        "user_hash": "u_2",
        "region": "eu-west-1",
    });
    let m = v.as_object_mut().unwrap();
    match kind {
        "api.request" => {
            m.insert("route".into(), json!("/v1/feed"));
            m.insert("status".into(), json!(200));
            m.insert("latency_ms".into(), json!(120.5));
        }
        "feed.rendered" => {
            m.insert("items_count".into(), json!(12));
            m.insert("entropy".into(), json!(0.3));
        }
        _ => {}
    }
    v
}

fn reason_of(v: &Value) -> Option<Reason> {
    decode_reading(v.to_string().as_bytes(), MAX).err().map(|r| r.reason)
}

fn with(mut v: Value, key: &str, val: Value) -> Value {
    v.as_object_mut().unwrap().insert(key.into(), val);
    v
}

fn without(mut v: Value, key: &str) -> Value {
    v.as_object_mut().unwrap().remove(key);
    v
}

#[test]
fn a_valid_reading_decodes_with_utc_micros_and_a_derived_bucket() {
    let bytes = reading().to_string();
    let r = decode_reading(bytes.as_bytes(), MAX).unwrap();
    assert_eq!(r.envelope.occurred_at_us, chrono::DateTime::parse_from_rfc3339("2026-11-23T08:15:30.25Z").unwrap().timestamp_micros());
    assert_eq!(r.hz_bucket, 4);
    assert!(r.hz_bucket_derived);
    assert_eq!(r.region, "sa-east-1");
}

#[test]
fn a_sent_bucket_is_kept_as_sent() {
    let v = with(reading(), "hz_bucket", json!(7));
    let bytes = v.to_string();
    let r = decode_reading(bytes.as_bytes(), MAX).unwrap();
    assert_eq!((r.hz_bucket, r.hz_bucket_derived), (7, false));
}

#[test]
fn derive_bucket_follows_spec() {
    assert_eq!(derive_bucket(0.5), 0);
    assert_eq!(derive_bucket(99.99), 0);
    assert_eq!(derive_bucket(100.0), 1);
    assert_eq!(derive_bucket(419.9), 4);
    assert_eq!(derive_bucket(1000.0), 10);
    assert_eq!(derive_bucket(2000.0), 10);
}

#[test]
fn a_record_that_is_json_but_for_one_invalid_utf8_byte_is_not_json() {
    // The fast path checks the whole record as UTF-8 once; a bad byte inside a string value
    // must still be refused, and with serde_json's own words.
    let good = serde_json::to_vec(&with(reading(), "producer", json!("svc-XY"))).unwrap();
    assert!(decode_reading(&good, MAX).is_ok());
    let at = good.windows(2).position(|w| w == b"XY").unwrap();
    let mut bad = good.clone();
    bad[at] = 0xff;
    let rej = decode_reading(&bad, MAX).unwrap_err();
    assert_eq!(rej.reason, Reason::NotJson);
    assert!(rej.message.contains("invalid unicode"), "{}", rej.message);
}

#[test]
fn every_reason_code_for_readings() {
    assert_eq!(decode_reading(b"{not json", MAX).unwrap_err().reason, Reason::NotJson);
    assert_eq!(decode_reading(&[0xff, 0xfe], MAX).unwrap_err().reason, Reason::NotJson);
    assert_eq!(decode_reading(b"[1,2]", MAX).unwrap_err().reason, Reason::BadType);
    let big = vec![b' '; 2000];
    assert_eq!(decode_reading(&big, 1000).unwrap_err().reason, Reason::TooLarge);
    assert_eq!(reason_of(&without(reading(), "hz")), Some(Reason::MissingField));
    assert_eq!(reason_of(&with(reading(), "hz", Value::Null)), Some(Reason::MissingField));
    assert_eq!(reason_of(&without(reading(), "schema_version")), Some(Reason::MissingField));
    assert_eq!(reason_of(&without(reading(), "event_id")), Some(Reason::MissingField));
    assert_eq!(reason_of(&with(reading(), "hz", json!("432"))), Some(Reason::BadType));
    assert_eq!(reason_of(&with(reading(), "hz_bucket", json!(3.5))), Some(Reason::BadType));
    assert_eq!(reason_of(&with(reading(), "event_id", json!("not-a-uuid"))), Some(Reason::BadType));
    assert_eq!(reason_of(&with(reading(), "occurred_at", json!("2026-11-23 10:15:30"))), Some(Reason::BadType));
    assert_eq!(reason_of(&with(reading(), "schema_version", json!("one"))), Some(Reason::BadType));
    assert_eq!(reason_of(&with(reading(), "schema_version", json!("2.0.0"))), Some(Reason::UnsupportedSchemaVersion));
    assert_eq!(reason_of(&with(reading(), "schema_version", json!("0.9.1"))), Some(Reason::UnsupportedSchemaVersion));
    assert_eq!(reason_of(&with(reading(), "hz", json!(0))), Some(Reason::OutOfRange));
    assert_eq!(reason_of(&with(reading(), "hz", json!(2000.01))), Some(Reason::OutOfRange));
    assert_eq!(reason_of(&with(reading(), "hz", json!(2000))), None);
    assert_eq!(reason_of(&with(reading(), "hz_bucket", json!(11))), Some(Reason::OutOfRange));
    assert_eq!(reason_of(&with(reading(), "mood_delta", json!(-1.5))), Some(Reason::OutOfRange));
    assert_eq!(reason_of(&with(reading(), "entropy", json!(1.01))), Some(Reason::OutOfRange));
    assert_eq!(reason_of(&with(reading(), "region", json!("SA-East"))), Some(Reason::OutOfRange));
    assert_eq!(reason_of(&with(reading(), "region", json!("a".repeat(65)))), Some(Reason::OutOfRange));
    assert_eq!(reason_of(&with(reading(), "producer", json!(""))), Some(Reason::OutOfRange));
    assert_eq!(reason_of(&with(reading(), "idempotency_key", json!("k".repeat(129)))), Some(Reason::OutOfRange));
    assert_eq!(reason_of(&with(reading(), "idempotency_key", json!("k".repeat(128)))), None);
}

#[test]
fn schema_version_is_checked_before_other_fields() {
    // A v2 event with a field of another type is unsupported, not bad_type.
    let v = with(with(reading(), "schema_version", json!("2.1.0")), "hz", json!("fast"));
    assert_eq!(reason_of(&v), Some(Reason::UnsupportedSchemaVersion));
}

#[test]
fn activity_kinds_require_their_fields() {
    for kind in ["api.request", "feed.rendered", "event.checkin", "chat.message"] {
        let b = activity(kind).to_string();
        assert!(decode_activity(b.as_bytes(), MAX).is_ok(), "{kind}");
    }
    let r = |v: Value| decode_activity(v.to_string().as_bytes(), MAX).err().map(|r| r.reason);
    assert_eq!(r(without(activity("api.request"), "status")), Some(Reason::MissingField));
    assert_eq!(r(without(activity("api.request"), "route")), Some(Reason::MissingField));
    assert_eq!(r(without(activity("feed.rendered"), "entropy")), Some(Reason::MissingField));
    assert_eq!(r(with(activity("api.request"), "status", json!(600))), Some(Reason::OutOfRange));
    assert_eq!(r(with(activity("api.request"), "latency_ms", json!(-1))), Some(Reason::OutOfRange));
    assert_eq!(r(with(activity("api.request"), "waf_blocked", json!("yes"))), Some(Reason::BadType));
    assert_eq!(r(with(activity("feed.rendered"), "items_count", json!(-3))), Some(Reason::OutOfRange));
    assert_eq!(r(with(activity("chat.message"), "kind", json!("chat.deleted"))), Some(Reason::OutOfRange));
    assert_eq!(r(without(activity("chat.message"), "kind")), Some(Reason::MissingField));
}

#[test]
fn unknown_fields_are_ignored_and_pii_is_never_kept() {
    let v = with(with(reading(), "future_field", json!({"nested": [1, 2]})), "ip", json!("10.0.0.1"));
    let bytes = v.to_string();
    assert!(decode_reading(bytes.as_bytes(), MAX).is_ok());
    let dlq = scrubbed_record(with(v.clone(), "hz", json!("x")).to_string().as_bytes(), true);
    assert!(!dlq.contains("someone@example.org") && !dlq.contains("10.0.0.1"), "{dlq}");
    assert!(dlq.contains("future_field"));
    let broken = format!("{{\"email\": \"someone@example.org\", \"name\":\"Ana\", \"hz\": 4{}", "");
    let text = scrubbed_record(broken.as_bytes(), true);
    assert!(!text.contains("someone@example.org") && !text.contains("Ana"), "{text}");
}

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i32>().prop_map(|n| json!(n)),
        (-3000.0..3000.0f64).prop_map(|f| json!(f)),
        "[a-z0-9@. -]{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(2, 8, 4, |inner| prop::collection::vec(inner, 0..3).prop_map(Value::Array))
}

const FIELDS: [&str; 14] = [
    "event_id", "schema_version", "occurred_at", "producer", "idempotency_key", "trace_id", "user_hash",
    "region", "hz", "hz_bucket", "mood_delta", "entropy", "kind", "status",
];

proptest! {
    /// Any mutation of a valid event either decodes or is rejected with a code, never panics,
    /// and what is stored for it never carries a PII value.
    #[test]
    fn mutated_events_decode_or_reject_and_never_leak_pii(
        field in prop::sample::select(FIELDS.to_vec()),
        value in arb_json(),
        drop_it in any::<bool>(),
        pii in "[a-z]{6}@pii\\.test",
    ) {
        let mut v = with(reading(), "email", json!(pii.clone()));
        v = if drop_it { without(v, field) } else { with(v, field, value) };
        let bytes = v.to_string();
        match decode_reading(bytes.as_bytes(), MAX) {
            Ok(r) => {
                let stored = format!("{r:?}");
                prop_assert!(!stored.contains(&pii));
            }
            Err(rej) => {
                prop_assert!(!rej.message.is_empty());
                prop_assert!(!scrubbed_record(bytes.as_bytes(), true).contains(&pii));
            }
        }
        // Truncated, the same record is either not JSON or (rarely) still an object.
        let cut = &bytes.as_bytes()[..bytes.len() / 2];
        let rej = decode_reading(cut, MAX).unwrap_err();
        prop_assert_eq!(rej.reason, Reason::NotJson);
        prop_assert!(!scrubbed_record(cut, true).contains(&pii));
    }

    /// The fast and slow paths agree: a record the typed decoder accepts has no type error the
    /// slow path would find, and the reason is a stable function of the bytes.
    #[test]
    fn decoding_is_deterministic(field in prop::sample::select(FIELDS.to_vec()), value in arb_json()) {
        let b = with(activity("api.request"), field, value).to_string();
        let a1 = decode_activity(b.as_bytes(), MAX).map(|_| ()).map_err(|r| r.reason);
        let a2 = decode_activity(b.as_bytes(), MAX).map(|_| ()).map_err(|r| r.reason);
        prop_assert_eq!(a1, a2);
    }
}

/// Strings are borrowed from the record, not copied, unless they hold escapes (then their
/// unescaped value is owned). The ingest's per-record cost depends on it.
#[test]
fn strings_borrow_from_the_record_unless_escaped() {
    let plain = with(reading(), "action_type", json!("meditate")).to_string();
    let r = decode_reading(plain.as_bytes(), MAX).unwrap();
    for s in [&r.envelope.producer, &r.envelope.idempotency_key, &r.envelope.trace_id, &r.user_hash, &r.region] {
        assert!(matches!(s, Cow::Borrowed(_)), "{s:?} was copied");
    }
    assert!(matches!(r.action_type, Some(Cow::Borrowed("meditate"))));
    let escaped = with(reading(), "producer", json!("vibe \"sensor\"\n")).to_string();
    let r = decode_reading(escaped.as_bytes(), MAX).unwrap();
    assert_eq!(r.envelope.producer, "vibe \"sensor\"\n");
    let a = activity("api.request").to_string();
    let a = decode_activity(a.as_bytes(), MAX).unwrap();
    assert!(matches!(a.route, Some(Cow::Borrowed("/v1/feed"))) && matches!(a.user_hash, Cow::Borrowed("u_2")));
}

#[test]
fn event_id_is_stored_canonical_whatever_uuid_form_was_sent() {
    let canonical = "7d3f2a4e-9a43-4a8e-b0c1-2f5e8a9b6c01";
    for sent in [
        canonical,
        "7D3F2A4E-9A43-4A8E-B0C1-2F5E8A9B6C01",
        "7d3f2a4e9a434a8eb0c12f5e8a9b6c01",
        "{7d3f2a4e-9a43-4a8e-b0c1-2f5e8a9b6c01}",
        "urn:uuid:7d3f2a4e-9a43-4a8e-b0c1-2f5e8a9b6c01",
    ] {
        let bytes = serde_json::to_vec(&with(reading(), "event_id", json!(sent))).unwrap();
        let r = decode_reading(&bytes, MAX).unwrap();
        assert_eq!(r.envelope.event_id, canonical, "sent {sent}");
        // The canonical form is kept as sent, without a copy.
        assert_eq!(matches!(r.envelope.event_id, Cow::Borrowed(_)), sent == canonical, "sent {sent}");
    }
}

/// chrono's verdict on an RFC 3339 text: its UTC microseconds, or `None` when it rejects it.
fn chrono_micros(s: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(s).ok().map(|t| t.timestamp_micros())
}

#[test]
fn rfc3339_fast_path_agrees_with_chrono_on_edges() {
    for s in [
        "2026-11-23T10:15:30Z",
        "2026-11-23T10:15:30.250+02:00",
        "1969-12-31T23:59:59.999999999Z",
        "1970-01-01T00:00:00-00:30",
        "0000-01-01T00:00:00Z",
        "9999-12-31T23:59:59.1+23:59",
        "2024-02-29T12:00:00Z",
        "2000-02-29T12:00:00Z",
        "1900-02-29T12:00:00Z",
        "2026-02-29T12:00:00Z",
        "2026-04-31T12:00:00Z",
        "2026-11-23T24:00:00Z",
        "2026-11-23T10:15:60Z",
        "2026-11-23T10:15:30.Z",
        "2026-11-23T10:15:30.1234567891Z",
        "2026-11-23t10:15:30z",
        "2026-11-23 10:15:30Z",
        "2026-11-23T10:15:30",
        "2026-11-23T10:15:30+0200",
        "2026-11-23T10:15:30+24:00",
    ] {
        let fast = rfc3339_micros(s.as_bytes());
        assert!(fast.is_none() || fast == chrono_micros(s), "{s}: fast {fast:?}, chrono {:?}", chrono_micros(s));
    }
    // The form producers send takes the fast path.
    assert_eq!(rfc3339_micros(b"2026-11-23T10:15:30.250+02:00"), Some(1_795_421_730_250_000));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(5000))]
    /// Wherever the fast path answers, chrono gives the same instant.
    #[test]
    fn rfc3339_fast_path_agrees_with_chrono(
        (y, mo, d, h, mi, sec) in (0u32..10000, 0u32..14, 0u32..33, 0u32..26, 0u32..61, 0u32..62),
        frac in prop::option::of("[0-9]{0,11}"),
        offset in prop_oneof![Just("Z".to_string()), (prop::bool::ANY, 0u32..26, 0u32..61).prop_map(|(neg, h, m)| format!("{}{h:02}:{m:02}", if neg { '-' } else { '+' }))],
    ) {
        let s = format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{sec:02}{}{offset}", frac.map(|f| format!(".{f}")).unwrap_or_default());
        let fast = rfc3339_micros(s.as_bytes());
        prop_assert!(fast.is_none() || fast == chrono_micros(&s), "{}: fast {:?}, chrono {:?}", s, fast, chrono_micros(&s));
        // Only the forms the fast path leaves out go to chrono.
        let strict = (1..=12).contains(&mo) && d >= 1 && h <= 23 && mi <= 59 && sec <= 59 && chrono_micros(&s).is_some();
        prop_assert_eq!(fast.is_some(), strict && !s.contains(".Z") && !s.contains(".+") && !s.contains(".-")
            && s.split('.').nth(1).is_none_or(|f| f.bytes().take_while(u8::is_ascii_digit).count() <= 9), "{}", s);
    }

    /// Semver's major, as the contract reads it: three dot-separated numbers, then anything after
    /// a `-` or `+`.
    #[test]
    fn semver_major_reads_only_major_minor_patch(s in "[0-9.+a-z-]{0,12}") {
        let core = s.split(['-', '+']).next().unwrap();
        let parts: Vec<&str> = core.split('.').collect();
        let ok = parts.len() == 3 && parts.iter().all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
        prop_assert_eq!(semver_major(&s), if ok { parts[0].parse().ok() } else { None });
    }
}
