//! Router tests without a socket (`tower::ServiceExt::oneshot`) over a small lake written
//! through campo's own writer.

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use campo_lake::{Lake, TableCommit, TableKind, TableWriter};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::auth::{Keys, Scope};
use crate::{AppState, router};

mod live;
mod sql;

const MIN: i64 = 60_000_000;
const T0: i64 = 1_780_000_000_000_000 / MIN * MIN;

fn iso(us: i64) -> String {
    chrono::DateTime::from_timestamp_micros(us).unwrap().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

async fn write(lake: &Lake, kind: TableKind, rows: Vec<Value>) {
    let ndjson: String = rows.iter().map(|r| format!("{r}\n")).collect();
    let reader = campo_lake::arrow::json::ReaderBuilder::new(kind.schema()).build(std::io::Cursor::new(ndjson)).unwrap();
    let batches = reader.collect::<Result<Vec<_>, _>>().unwrap();
    let mut w = TableWriter::open(lake, kind, "api-test").await.unwrap();
    w.commit(&TableCommit { batches, txns: vec![] }).await.unwrap();
}

/// The `region_metrics_1m` and `evu_1m` rows of window `i` (ending at `T0 + (i + 1) min`).
fn window(region: &str, i: i64, hz: f64) -> (Value, Value) {
    let (start, end) = (T0 + i * MIN, T0 + (i + 1) * MIN);
    let m = json!({"region": region, "window_start": iso(start), "window_end": iso(end),
        "readings": 100 + i, "users": 50, "hz_mean": hz, "hz_p50": hz, "hz_p95": hz + 50.0,
        "low_share": if hz < 420.0 { 0.7 } else { 0.1 }, "entropy": 0.4, "stability": 0.6,
        "sensorial_entropy": 0.3, "mood_mean": 0.0,
        "state": if hz < 420.0 { "collapse" } else { "neutral" }, "window_date": &iso(start)[..10]});
    let e = json!({"region": region, "window_start": iso(start), "window_end": iso(end), "requests": 10,
        "latency": 0.9, "coherence": 0.8, "emotional": 0.9, "security": 1.0, "evu": 90.0 - i as f64,
        "error_rate": 0.0, "latency_p95_ms": 250.0, "window_date": &iso(start)[..10]});
    (m, e)
}

/// Commits window `i` of every region in `hz`: the windows, then their EVU (as a close does).
async fn close_window(s: &AppState, i: i64, hz: &[(&str, f64)]) {
    let (m, e): (Vec<Value>, Vec<Value>) = hz.iter().map(|(r, hz)| window(r, i, *hz)).unzip();
    write(&s.lake, TableKind::RegionMetrics1m, m).await;
    write(&s.lake, TableKind::Evu1m, e).await;
}

/// Two regions, 12 windows each; sa-east-1 collapsing with an active alert and a forecast.
async fn lake() -> (tempfile::TempDir, AppState) {
    let dir = tempfile::tempdir().unwrap();
    let lake = Lake::new(dir.path().to_str().unwrap(), Default::default()).unwrap();
    let (mut metrics, mut evu) = (vec![], vec![]);
    for region in ["sa-east-1", "eu-west-1"] {
        for i in 0..12 {
            let hz = if region == "sa-east-1" { 500.0 - 10.0 * i as f64 } else { 520.0 };
            let (m, e) = window(region, i, hz);
            metrics.push(m);
            evu.push(e);
        }
    }
    write(&lake, TableKind::RegionMetrics1m, metrics).await;
    write(&lake, TableKind::Evu1m, evu).await;
    let alert = |id: &str, level: &str, prev: &str, i: i64| {
        json!({"event_id": id, "region": "sa-east-1", "level": level, "previous_level": prev, "reason": "low_share >= 0.5",
            "window_end": iso(T0 + i * MIN), "expires_at": iso(T0 + (i + 15) * MIN), "hz_mean": 415.0, "low_share": 0.7,
            "p_collapse_10": 0.9, "alert_date": &iso(T0)[..10]})
    };
    write(&lake, TableKind::Alerts, vec![
        alert("a1", "soft", "off", 3), alert("a2", "off", "soft", 5), alert("a3", "soft", "off", 9), alert("a4", "medium", "soft", 11),
    ]).await;
    let fc: Vec<Value> = [5, 10, 15, 30]
        .iter()
        .map(|h| json!({"region": "sa-east-1", "issued_at": iso(T0 + 12 * MIN), "horizon_min": h,
            "target_window_end": iso(T0 + (12 + h) * MIN), "hz_forecast": 400.0, "lo80": 380.0, "hi80": 420.0,
            "lo95": 370.0, "hi95": 430.0, "p_collapse": 0.8, "model": "leading-signals", "issued_date": &iso(T0)[..10]}))
        .collect();
    write(&lake, TableKind::CollapseForecast, fc).await;
    (dir, AppState::new(lake, Keys::new(&[7u8; 32], "campo")))
}

fn token(s: &AppState, scopes: &[Scope]) -> String {
    s.keys.mint("test", scopes, Duration::from_secs(60)).unwrap()
}

async fn call(s: &AppState, uri: &str, token: Option<&str>) -> (StatusCode, axum::http::HeaderMap, Value) {
    let mut req = Request::get(uri);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let resp = router(s.clone()).oneshot(req.body(Body::empty()).unwrap()).await.unwrap();
    let (parts, body) = resp.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    let v = serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
    (parts.status, parts.headers, v)
}

fn assert_envelope(v: &Value, headers: &axum::http::HeaderMap, code: &str) {
    assert_eq!(v["code"], code, "{v}");
    assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    assert!(v.get("details").is_some(), "{v}");
    assert_eq!(v["trace_id"].as_str(), headers.get("x-trace-id").and_then(|h| h.to_str().ok()), "{v}");
}

#[tokio::test]
async fn health_ready_and_unknown_routes() {
    let (_d, s) = lake().await;
    let (st, h, v) = call(&s, "/healthz", None).await;
    assert_eq!((st, v["status"].as_str()), (StatusCode::OK, Some("ok")));
    assert!(h.contains_key("x-trace-id"));
    let (st, _, v) = call(&s, "/readyz", None).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["checks"]["lake_reachable"], true);

    let mut not_ready = s.clone();
    not_ready.ready = Some(std::sync::Arc::new(|| vec![("kafka_assignment", false)]));
    let (st, h, v) = call(&not_ready, "/readyz", None).await;
    assert_eq!(st, StatusCode::SERVICE_UNAVAILABLE);
    assert_envelope(&v, &h, "unavailable");
    assert_eq!(v["details"]["checks"]["kafka_assignment"], false);

    let (st, h, v) = call(&s, "/v2/nothing", None).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    assert_envelope(&v, &h, "not_found");

    let (st, h, v) = call(&s, "/metrics", None).await;
    assert_eq!(st, StatusCode::NOT_FOUND, "no recorder in this process: {v}");
    assert_envelope(&v, &h, "not_found");
    let mut with_metrics = s.clone();
    with_metrics.metrics = Some(std::sync::Arc::new(|| "campo_consumed_total 7\n".to_string()));
    let (st, h, v) = call(&with_metrics, "/metrics", None).await;
    assert_eq!((st, v.as_str()), (StatusCode::OK, Some("campo_consumed_total 7\n")));
    assert!(h["content-type"].to_str().unwrap().starts_with("text/plain; version=0.0.4"));

    let resp = router(s.clone()).oneshot(Request::post("/healthz").body(Body::empty()).unwrap()).await.unwrap();
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
    let h = resp.headers().clone();
    let v: Value = serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_envelope(&v, &h, "method_not_allowed");
}

#[tokio::test]
async fn caller_trace_id_is_kept_and_a_hostile_one_replaced() {
    let (_d, s) = lake().await;
    let send = |id: &'static str| {
        let s = s.clone();
        async move {
            let r = router(s).oneshot(Request::get("/healthz").header("x-trace-id", id).body(Body::empty()).unwrap()).await.unwrap();
            r.headers()["x-trace-id"].to_str().unwrap().to_string()
        }
    };
    assert_eq!(send("abc-123").await, "abc-123");
    let replaced = send("a b<script>").await;
    assert_ne!(replaced, "a b<script>");
    assert_eq!(replaced.len(), 32);
}

#[tokio::test]
async fn regions_lists_latest_window_with_evu_and_alert_level() {
    let (_d, s) = lake().await;
    let t = token(&s, &[Scope::SignalsRead]);
    let (st, _, v) = call(&s, "/v1/regions", Some(&t)).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let items = v["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    let sa = items.iter().find(|r| r["region"] == "sa-east-1").unwrap();
    assert_eq!(sa["window_end"].as_str().unwrap(), iso(T0 + 12 * MIN));
    assert_eq!(sa["hz_mean"], 390.0);
    assert_eq!(sa["state"], "collapse");
    assert_eq!(sa["evu"], 79.0);
    assert_eq!(sa["alert_level"], "medium");
    let eu = items.iter().find(|r| r["region"] == "eu-west-1").unwrap();
    assert_eq!(eu["alert_level"], "off");
    assert_eq!(eu["hz_mean"], 520.0);
}

#[tokio::test]
async fn signals_page_through_the_series_with_a_cursor() {
    let (_d, s) = lake().await;
    let t = token(&s, &[Scope::SignalsRead]);
    let mut seen = vec![];
    let mut uri = format!("/v1/regions/sa-east-1/signals?from={}&limit=5", iso(T0 + MIN));
    loop {
        let (st, _, v) = call(&s, &uri, Some(&t)).await;
        assert_eq!(st, StatusCode::OK, "{v}");
        for it in v["items"].as_array().unwrap() {
            assert!(it.get("start_us").is_none());
            seen.push(it["hz_mean"].as_f64().unwrap());
        }
        match v["next_cursor"].as_str() {
            Some(c) => uri = format!("/v1/regions/sa-east-1/signals?from={}&limit=5&cursor={c}", iso(T0 + MIN)),
            None => break,
        }
    }
    let want: Vec<f64> = (1..12).map(|i| 500.0 - 10.0 * i as f64).collect();
    assert_eq!(seen, want);

    let (st, _, v) = call(&s, &format!("/v1/regions/sa-east-1/signals?to={}", iso(T0 + 2 * MIN)), Some(&t)).await;
    assert_eq!((st, v["items"].as_array().unwrap().len()), (StatusCode::OK, 2));

    for (uri, code, status) in [
        ("/v1/regions/nowhere-1/signals", "not_found", StatusCode::NOT_FOUND),
        ("/v1/regions/sa-east-1'%20OR%201=1/signals", "invalid_region", StatusCode::BAD_REQUEST),
        ("/v1/regions/sa-east-1/signals?from=yesterday", "invalid_time", StatusCode::BAD_REQUEST),
        ("/v1/regions/sa-east-1/signals?limit=201", "invalid_limit", StatusCode::BAD_REQUEST),
        ("/v1/regions/sa-east-1/signals?limit=0", "invalid_limit", StatusCode::BAD_REQUEST),
        ("/v1/regions/sa-east-1/signals?limit=many", "bad_request", StatusCode::BAD_REQUEST),
        ("/v1/regions/sa-east-1/signals?cursor=zz", "invalid_cursor", StatusCode::BAD_REQUEST),
    ] {
        let (st, h, v) = call(&s, uri, Some(&t)).await;
        assert_eq!(st, status, "{uri}: {v}");
        assert_envelope(&v, &h, code);
    }
}

#[tokio::test]
async fn forecast_returns_every_horizon_of_the_latest_issue() {
    let (_d, s) = lake().await;
    let t = token(&s, &[Scope::SignalsRead]);
    let (st, _, v) = call(&s, "/v1/regions/sa-east-1/forecast", Some(&t)).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let hs: Vec<i64> = v["horizons"].as_array().unwrap().iter().map(|h| h["horizon_min"].as_i64().unwrap()).collect();
    assert_eq!(hs, [5, 10, 15, 30]);
    assert_eq!(v["model"], "leading-signals");
    assert_eq!(v["horizons"][1]["lo80"], 380.0);
    let (st, h, v) = call(&s, "/v1/regions/eu-west-1/forecast", Some(&t)).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    assert_envelope(&v, &h, "not_found");
}

#[tokio::test]
async fn alerts_history_active_and_paging() {
    let (_d, s) = lake().await;
    let t = token(&s, &[Scope::AlertsRead]);
    let (st, _, v) = call(&s, "/v1/alerts?limit=3", Some(&t)).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let ids: Vec<&str> = v["items"].as_array().unwrap().iter().map(|a| a["event_id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["a4", "a3", "a2"]);
    let c = v["next_cursor"].as_str().unwrap().to_string();
    let (_, _, v) = call(&s, &format!("/v1/alerts?limit=3&cursor={c}"), Some(&t)).await;
    assert_eq!(v["items"].as_array().unwrap().len(), 1);
    assert_eq!(v["items"][0]["event_id"], "a1");
    assert!(v["next_cursor"].is_null());
    let (_, _, v) = call(&s, "/v1/alerts?active=true", Some(&t)).await;
    let active = v["items"].as_array().unwrap();
    assert_eq!((active.len(), active[0]["level"].as_str()), (1, Some("medium")));
    let (_, _, v) = call(&s, "/v1/alerts?region=eu-west-1", Some(&t)).await;
    assert!(v["items"].as_array().unwrap().is_empty());
    let (st, h, v) = call(&s, "/v1/alerts?active=maybe", Some(&t)).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert_envelope(&v, &h, "bad_request");
}

#[tokio::test]
async fn routes_refuse_bad_tokens_and_missing_scopes() {
    let (_d, s) = lake().await;
    let b64 = |v: &Value| {
        use std::fmt::Write;
        // base64url without padding, enough for hand-made hostile tokens.
        const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let bytes = v.to_string().into_bytes();
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | (*b as u32) << (16 - 8 * i));
            for i in 0..=chunk.len() {
                let _ = out.write_char(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            }
        }
        out
    };
    let now = chrono::Utc::now().timestamp();
    let claims = |exp: Value, aud: &str| json!({"iss": "campo", "aud": aud, "sub": "x", "scope": "admin", "iat": now, "exp": exp});
    let none = format!("{}.{}.", b64(&json!({"alg": "none", "typ": "JWT"})), b64(&claims(json!(now + 60), "campo")));
    let other_key = Keys::new(&[9u8; 32], "campo").mint("x", &[Scope::Admin], Duration::from_secs(60)).unwrap();
    let other_aud = Keys::new(&[7u8; 32], "elsewhere").mint("x", &[Scope::Admin], Duration::from_secs(60)).unwrap();
    let sign = |c: &Value| {
        jsonwebtoken::encode(&jsonwebtoken::Header::default(), c, &jsonwebtoken::EncodingKey::from_secret(&[7u8; 32])).unwrap()
    };
    let expired = sign(&claims(json!(now - 3600), "campo"));
    let string_exp = sign(&claims(json!((now + 3600).to_string()), "campo"));
    for (what, tok) in [
        ("alg none", none.as_str()),
        ("wrong key", &other_key),
        ("wrong audience", &other_aud),
        ("expired", &expired),
        ("string exp", &string_exp),
        ("garbage", "not.a.jwt"),
    ] {
        let (st, h, v) = call(&s, "/v1/regions", Some(tok)).await;
        assert_eq!(st, StatusCode::UNAUTHORIZED, "{what}: {v}");
        assert_envelope(&v, &h, "unauthorized");
        assert_eq!(h["www-authenticate"], "Bearer");
    }
    let (st, h, v) = call(&s, "/v1/regions", None).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    assert_envelope(&v, &h, "unauthorized");

    let alerts_only = token(&s, &[Scope::AlertsRead]);
    let (st, h, v) = call(&s, "/v1/regions", Some(&alerts_only)).await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    assert_envelope(&v, &h, "forbidden");
    assert_eq!(v["details"]["required_scope"], "signals:read");
    let signals_only = token(&s, &[Scope::SignalsRead]);
    let (st, _, _) = call(&s, "/v1/alerts", Some(&signals_only)).await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    let admin = token(&s, &[Scope::Admin]);
    let (st, _, _) = call(&s, "/v1/alerts", Some(&admin)).await;
    assert_eq!(st, StatusCode::OK);
}

#[test]
fn signing_key_is_created_once_owner_only_and_reused() {
    let dir = tempfile::tempdir().unwrap();
    let path = crate::auth::default_key_path(dir.path());
    let a = crate::auth::load_or_create_key(&path).unwrap();
    let b = crate::auth::load_or_create_key(&path).unwrap();
    assert_eq!(a, b);
    assert_eq!(a.len(), 32);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    }
    let t = Keys::new(&a, "campo").mint("x", &[Scope::SignalsRead], Duration::from_secs(60)).unwrap();
    assert!(Keys::new(&b, "campo").verify(&t).is_ok());
    std::fs::write(&path, "zz\n").unwrap();
    let e = crate::auth::load_or_create_key(&path).unwrap_err().to_string();
    assert!(e.contains("api-signing.key") && e.contains("not hex"), "{e}");
}

#[tokio::test]
async fn rate_limit_per_token_with_429_retry_after_and_headers() {
    let (_d, mut s) = lake().await;
    s.limits.rate_per_s = 1;
    s.limits.burst = 3;
    let app = router(s.clone());
    let get = |uri: &'static str, token: Option<String>| {
        let app = app.clone();
        async move {
            let mut req = Request::get(uri);
            if let Some(t) = token {
                req = req.header("authorization", format!("Bearer {t}"));
            }
            let resp = app.oneshot(req.body(Body::empty()).unwrap()).await.unwrap();
            let h = resp.headers().clone();
            let st = resp.status();
            let b = resp.into_body().collect().await.unwrap().to_bytes();
            (st, h, serde_json::from_slice::<Value>(&b).unwrap_or(Value::Null))
        }
    };
    let (a, b) = (token(&s, &[Scope::SignalsRead]), s.keys.mint("other", &[Scope::SignalsRead], Duration::from_secs(60)).unwrap());
    for left in (0..3).rev() {
        let (st, h, _) = get("/v1/regions", Some(a.clone())).await;
        assert_eq!(st, StatusCode::OK);
        assert_eq!(h["x-ratelimit-limit"], "3");
        assert_eq!(h["x-ratelimit-remaining"], left.to_string().as_str());
    }
    let (st, h, v) = get("/v1/regions", Some(a.clone())).await;
    assert_eq!(st, StatusCode::TOO_MANY_REQUESTS);
    assert_envelope(&v, &h, "rate_limited");
    let retry: u64 = h["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry), "{retry}");
    assert_eq!(h["x-ratelimit-after"], h["retry-after"]);
    // Another token has its own budget; probes are not limited.
    assert_eq!(get("/v1/regions", Some(b)).await.0, StatusCode::OK);
    for _ in 0..10 {
        assert_eq!(get("/healthz", None).await.0, StatusCode::OK);
    }
    // The bucket refills at the configured rate.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(get("/v1/regions", Some(a)).await.0, StatusCode::OK);
}

#[tokio::test]
async fn openapi_describes_every_route_and_the_dashboard_is_self_contained() {
    let (_d, s) = lake().await;
    let (st, _, v) = call(&s, "/openapi.json", None).await;
    assert_eq!(st, StatusCode::OK);
    assert!(v["openapi"].as_str().unwrap().starts_with("3.1"), "{}", v["openapi"]);
    let paths: Vec<&str> = v["paths"].as_object().unwrap().keys().map(String::as_str).collect();
    for p in ["/", "/healthz", "/readyz", "/metrics", "/openapi.json", "/v1/regions", "/v1/regions/{region}/signals",
        "/v1/regions/{region}/forecast", "/v1/alerts", "/v1/stream", "/v1/sql", "/v1/erasure"] {
        assert!(paths.contains(&p), "{p} is not in the document: {paths:?}");
    }
    assert_eq!(v["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");
    assert!(v["paths"]["/v1/sql"]["post"]["responses"]["403"].is_object());
    for p in ["/v1/regions", "/v1/regions/{region}/signals", "/v1/regions/{region}/forecast", "/v1/alerts", "/v1/stream"] {
        for status in ["200", "401", "403", "429"] {
            assert!(v["paths"][p]["get"]["responses"][status].is_object(), "{p} documents {status}");
        }
    }
    let limit = &v["paths"]["/v1/alerts"]["get"]["parameters"].as_array().unwrap().iter().find(|p| p["name"] == "limit").unwrap()["schema"];
    assert_eq!((limit["minimum"].as_i64(), limit["maximum"].as_i64()), (Some(1), Some(200)), "{limit}");

    let resp = router(s.clone()).oneshot(Request::get("/").body(Body::empty()).unwrap()).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
    let html = String::from_utf8(resp.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    assert!(html.contains("/v1/stream") && html.contains("/v1/regions"));
    for external in ["src=\"http", "href=\"http", "@import", "url(http"] {
        assert!(!html.contains(external), "the dashboard loads nothing from elsewhere ({external})");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasure_needs_admin_and_a_key_directory_and_removes_the_users_rows() {
    let (_d, mut s) = lake().await;
    let reading = |user: &str, offset: i64| {
        json!({"event_id": format!("e{offset}"), "schema_version": "1.0.0", "occurred_at": iso(T0), "producer": "p",
            "idempotency_key": format!("k{offset}"), "trace_id": "t", "user_hash": user, "region": "sa-east-1", "hz": 410.0,
            "hz_bucket": 4, "hz_bucket_derived": true, "kafka_topic": "vibration.readings", "kafka_partition": 0,
            "kafka_offset": offset, "ingested_at": iso(T0), "late": false, "event_date": &iso(T0)[..10]})
    };
    write(&s.lake, TableKind::Readings, vec![reading("u_gone", 1), reading("u_stays", 2), reading("u_gone", 3)]).await;
    let post = |s: &AppState, token: String, body: Value| {
        let req = Request::post("/v1/erasure")
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", "application/json")
            .body(Body::from(body.to_string()))
            .unwrap();
        let app = router(s.clone());
        async move {
            let resp = app.oneshot(req).await.unwrap();
            let (parts, body) = resp.into_parts();
            let v: Value = serde_json::from_slice(&body.collect().await.unwrap().to_bytes()).unwrap();
            (parts.status, parts.headers, v)
        }
    };
    let gone = json!({"user_hashes": ["u_gone"]});
    let (st, h, v) = post(&s, token(&s, &[Scope::SqlQuery, Scope::SignalsRead]), gone.clone()).await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    assert_envelope(&v, &h, "forbidden");
    let (st, h, v) = post(&s, token(&s, &[Scope::Admin]), gone.clone()).await;
    assert_eq!(st, StatusCode::SERVICE_UNAVAILABLE, "no key directory: {v}");
    assert_envelope(&v, &h, "unavailable");
    let keys_dir = tempfile::tempdir().unwrap();
    s.erasure_keys = Some(campo_lake::lifecycle::PeriodKeys::open(keys_dir.path(), &s.lake).unwrap());
    let (st, h, v) = post(&s, token(&s, &[Scope::Admin]), json!({"user_hashes": []})).await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
    assert_envelope(&v, &h, "invalid_request");
    let (st, _, v) = post(&s, token(&s, &[Scope::Admin]), gone).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["rows"]["readings"], 2, "{v}");
    assert_eq!(v["users"], 1);
    let left = s.lake.query("SELECT user_hash FROM readings").await.unwrap();
    let users: Vec<String> = left.iter().flat_map(|b| {
        use campo_lake::arrow::array::AsArray;
        let c = campo_lake::arrow::compute::cast(b.column(0), &campo_lake::arrow::datatypes::DataType::Utf8).unwrap();
        c.as_string::<i32>().iter().map(|x| x.unwrap().to_string()).collect::<Vec<_>>()
    }).collect();
    assert_eq!(users, vec!["u_stays".to_string()]);
    let recorded = s.lake.query("SELECT count(*) FROM erasures WHERE completed_at IS NOT NULL AND readings_rows = 2").await.unwrap();
    use campo_lake::arrow::array::AsArray;
    assert_eq!(recorded[0].column(0).as_primitive::<campo_lake::arrow::datatypes::Int64Type>().value(0), 1);
}
