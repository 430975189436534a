//! `POST /v1/sql`: formats, every refused form (a canary outside the lake), the limits, bad bodies.

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

use super::*;

async fn post_sql(s: &AppState, token: &str, body: Value, accept: Option<&str>) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
    let mut req = Request::post("/v1/sql").header("authorization", format!("Bearer {token}")).header("content-type", "application/json");
    if let Some(a) = accept {
        req = req.header("accept", a);
    }
    let resp = router(s.clone()).oneshot(req.body(Body::from(body.to_string())).unwrap()).await.unwrap();
    let (parts, body) = resp.into_parts();
    (parts.status, parts.headers, body.collect().await.unwrap().to_bytes().to_vec())
}

fn json_of(b: &[u8]) -> Value {
    serde_json::from_slice(b).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(b)))
}

#[tokio::test]
async fn sql_answers_in_every_format_with_campo_functions() {
    let (_d, s) = lake().await;
    let t = token(&s, &[Scope::SqlQuery]);
    let q = "SELECT region, count(*) AS n, hz_bucket(min(hz_mean)) AS lowest_bucket FROM region_metrics_1m GROUP BY region ORDER BY region";
    let (st, h, b) = post_sql(&s, &t, json!({"sql": q}), None).await;
    assert_eq!(st, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
    assert_eq!(h["content-type"], "application/json");
    let v = json_of(&b);
    assert_eq!(v["row_count"], 2);
    assert_eq!(v["columns"][0]["name"], "region");
    assert_eq!(v["rows"][0], json!({"region": "eu-west-1", "n": 12, "lowest_bucket": 5}), "{v}");
    assert_eq!(v["rows"][1]["region"], "sa-east-1");

    let (st, h, b) = post_sql(&s, &t, json!({"sql": q, "format": "ndjson"}), None).await;
    assert_eq!((st, h["content-type"].to_str().unwrap()), (StatusCode::OK, "application/x-ndjson"));
    let lines: Vec<Value> = String::from_utf8(b).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[1]["n"], 12);

    let (st, _, b) = post_sql(&s, &t, json!({"sql": q}), Some("text/csv")).await;
    assert_eq!(st, StatusCode::OK);
    let csv = String::from_utf8(b).unwrap();
    assert_eq!(csv.lines().next(), Some("region,n,lowest_bucket"));
    assert_eq!(csv.lines().count(), 3, "{csv}");

    let (st, h, b) = post_sql(&s, &t, json!({"sql": q, "format": "arrow"}), None).await;
    assert_eq!((st, h["content-type"].to_str().unwrap()), (StatusCode::OK, "application/vnd.apache.arrow.stream"));
    let reader = campo_lake::arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(b), None).unwrap();
    let batches: Vec<_> = reader.collect::<Result<_, _>>().unwrap();
    assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 2);
    assert_eq!(batches[0].schema().field(1).name(), "n");

    // No rows is an answer too, with its columns.
    let (st, _, b) = post_sql(&s, &t, json!({"sql": "SELECT region FROM alerts WHERE level = 'hard'"}), None).await;
    assert_eq!(st, StatusCode::OK);
    let v = json_of(&b);
    assert_eq!((v["row_count"].as_i64(), v["rows"].as_array().map(Vec::len)), (Some(0), Some(0)));
    assert_eq!(v["columns"][0]["name"], "region");

    // The scope is needed.
    let t2 = token(&s, &[Scope::SignalsRead, Scope::AlertsRead]);
    let (st, h, b) = post_sql(&s, &t2, json!({"sql": q}), None).await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    assert_envelope(&json_of(&b), &h, "forbidden");
}

#[tokio::test]
async fn sql_refuses_every_form_that_is_not_a_read_of_the_lake() {
    let (dir, s) = lake().await;
    let t = token(&s, &[Scope::SqlQuery]);
    // A canary outside the lake (beside it, in the same temporary folder's parent).
    let outside = tempfile::tempdir().unwrap();
    let canary = outside.path().join("canary.csv");
    std::fs::write(&canary, "secret\nCANARY-7f3a9c\n").unwrap();
    let c = canary.to_str().unwrap();
    let lake_file = dir.path().join("alerts");
    let cases: Vec<(String, StatusCode, &str)> = vec![
        ("CREATE TABLE t AS SELECT 1".into(), StatusCode::FORBIDDEN, "read_only"),
        ("CREATE VIEW v AS SELECT * FROM alerts".into(), StatusCode::FORBIDDEN, "read_only"),
        ("DROP TABLE alerts".into(), StatusCode::FORBIDDEN, "read_only"),
        ("INSERT INTO alerts SELECT * FROM alerts".into(), StatusCode::FORBIDDEN, "read_only"),
        ("DELETE FROM alerts".into(), StatusCode::FORBIDDEN, "read_only"),
        ("UPDATE alerts SET level = 'off'".into(), StatusCode::FORBIDDEN, "read_only"),
        (format!("COPY (SELECT 1) TO '{}/out.csv'", outside.path().display()), StatusCode::FORBIDDEN, "read_only"),
        (format!("COPY alerts TO '{}/out.parquet'", outside.path().display()), StatusCode::FORBIDDEN, "read_only"),
        ("SET datafusion.execution.batch_size = 1".into(), StatusCode::FORBIDDEN, "read_only"),
        ("RESET datafusion.execution.batch_size".into(), StatusCode::FORBIDDEN, "read_only"),
        (format!("CREATE EXTERNAL TABLE x STORED AS CSV LOCATION '{c}'"), StatusCode::FORBIDDEN, "read_only"),
        ("EXPLAIN ANALYZE SELECT * FROM alerts".into(), StatusCode::FORBIDDEN, "read_only"),
        ("SELECT 1; SELECT 2".into(), StatusCode::BAD_REQUEST, "multiple_statements"),
        ("SELECT 1; DROP TABLE alerts".into(), StatusCode::BAD_REQUEST, "multiple_statements"),
        (format!("SELECT * FROM '{c}'"), StatusCode::FORBIDDEN, "table_not_allowed"),
        (format!("SELECT * FROM \"file://{c}\""), StatusCode::FORBIDDEN, "table_not_allowed"),
        (format!("SELECT * FROM '{}'", lake_file.display()), StatusCode::FORBIDDEN, "table_not_allowed"),
        ("SELECT * FROM 'https://example.invalid/x.parquet'".into(), StatusCode::FORBIDDEN, "table_not_allowed"),
        ("SELECT * FROM information_schema.tables".into(), StatusCode::FORBIDDEN, "table_not_allowed"),
        ("SELECT * FROM datafusion.public.alerts".into(), StatusCode::FORBIDDEN, "table_not_allowed"),
        (format!("WITH x AS (SELECT * FROM '{c}') SELECT * FROM x"), StatusCode::FORBIDDEN, "table_not_allowed"),
        (format!("SELECT * FROM alerts WHERE region IN (SELECT column_1 FROM '{c}')"), StatusCode::FORBIDDEN, "table_not_allowed"),
        (format!("SELECT * FROM read_csv('{c}')"), StatusCode::BAD_REQUEST, ""),
        ("SELECT * FROM nope".into(), StatusCode::BAD_REQUEST, "unknown_table"),
        ("SELECT * FROM readings".into(), StatusCode::BAD_REQUEST, "unknown_table"),
        ("SELECT no_such_column FROM alerts".into(), StatusCode::BAD_REQUEST, "invalid_sql"),
        ("SELEC 1".into(), StatusCode::BAD_REQUEST, "invalid_sql"),
        ("".into(), StatusCode::BAD_REQUEST, "invalid_sql"),
    ];
    for (sql, status, code) in &cases {
        let (st, h, b) = post_sql(&s, &t, json!({"sql": sql}), None).await;
        let text = String::from_utf8_lossy(&b);
        assert!(!text.contains("CANARY-7f3a9c"), "{sql}: the canary leaked: {text}");
        assert_eq!(st, *status, "{sql}: {text}");
        let v = json_of(&b);
        if !code.is_empty() {
            assert_envelope(&v, &h, code);
        }
    }
    assert!(!outside.path().join("out.csv").exists() && !outside.path().join("out.parquet").exists());
    // The lake is as it was.
    let (_, _, b) = post_sql(&s, &t, json!({"sql": "SELECT count(*) AS n FROM alerts"}), None).await;
    assert_eq!(json_of(&b)["rows"][0]["n"], 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_limits_rows_memory_and_time_each_with_its_error() {
    let (_d, mut s) = lake().await;
    let t = token(&s, &[Scope::SqlQuery]);
    s.limits.sql_max_rows = 5;
    let (st, h, b) = post_sql(&s, &t, json!({"sql": "SELECT * FROM region_metrics_1m"}), None).await;
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY);
    assert_envelope(&json_of(&b), &h, "row_limit_exceeded");
    assert_eq!(json_of(&b)["details"]["max_rows"], 5);
    let (st, _, _) = post_sql(&s, &t, json!({"sql": "SELECT * FROM region_metrics_1m LIMIT 5"}), None).await;
    assert_eq!(st, StatusCode::OK, "at the cap is fine");

    s.limits.sql_max_rows = 100_000;
    s.limits.sql_memory_bytes = 1 << 20;
    let heavy = "SELECT max(rn) AS m FROM (SELECT row_number() OVER (ORDER BY a.region, b.region, c.window_end, d.window_end) AS rn \
                 FROM region_metrics_1m a, region_metrics_1m b, region_metrics_1m c, region_metrics_1m d)";
    let (st, h, b) = post_sql(&s, &t, json!({"sql": heavy}), None).await;
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY, "{}", String::from_utf8_lossy(&b));
    assert_envelope(&json_of(&b), &h, "memory_limit_exceeded");

    s.limits.sql_memory_bytes = 256 << 20;
    s.limits.sql_timeout = Duration::from_millis(200);
    // 24^6 = 191 million rows: far longer than the limit.
    let slow = "SELECT count(*) AS n FROM region_metrics_1m a, region_metrics_1m b, region_metrics_1m c, region_metrics_1m d, \
                region_metrics_1m e, region_metrics_1m f WHERE a.hz_mean + b.hz_mean + c.hz_mean + d.hz_mean + e.hz_mean + f.hz_mean > 0";
    let started = std::time::Instant::now();
    let (st, h, b) = post_sql(&s, &t, json!({"sql": slow}), None).await;
    assert_eq!(st, StatusCode::REQUEST_TIMEOUT, "{}", String::from_utf8_lossy(&b));
    assert_envelope(&json_of(&b), &h, "query_timeout");
    assert!(started.elapsed() < Duration::from_secs(5), "the limit stops the query");
}

#[tokio::test]
async fn sql_bodies_huge_malformed_or_mistyped_get_the_envelope() {
    let (_d, mut s) = lake().await;
    s.limits.max_body_bytes = 4096;
    let t = token(&s, &[Scope::SqlQuery]);
    let send = |body: Vec<u8>, ct: &'static str| {
        let s = s.clone();
        let t = t.clone();
        async move {
            let req = Request::post("/v1/sql").header("authorization", format!("Bearer {t}")).header("content-type", ct);
            let resp = router(s).oneshot(req.body(Body::from(body)).unwrap()).await.unwrap();
            let h = resp.headers().clone();
            let st = resp.status();
            (st, h, json_of(&resp.into_body().collect().await.unwrap().to_bytes()))
        }
    };
    let huge = json!({"sql": format!("SELECT '{}'", "x".repeat(10_000))}).to_string().into_bytes();
    let (st, h, v) = send(huge, "application/json").await;
    assert_eq!(st, StatusCode::PAYLOAD_TOO_LARGE);
    assert_envelope(&v, &h, "payload_too_large");
    let (st, h, v) = send(b"{\"sql\": ".to_vec(), "application/json").await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert_envelope(&v, &h, "bad_request");
    let (st, h, v) = send(b"{\"query\": \"SELECT 1\"}".to_vec(), "application/json").await;
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY);
    assert_envelope(&v, &h, "invalid_body");
    let (st, h, v) = send(b"{\"sql\": \"SELECT 1\", \"format\": \"xml\"}".to_vec(), "application/json").await;
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY);
    assert_envelope(&v, &h, "invalid_body");
    let (st, h, v) = send(b"sql=SELECT 1".to_vec(), "text/plain").await;
    assert_eq!(st, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_envelope(&v, &h, "unsupported_media_type");
    let (st, h, v) = send(vec![0xff, 0xfe, 0x00], "application/json").await;
    assert!(st.is_client_error(), "{st}");
    assert!(v["code"].is_string());
    assert_eq!(v["trace_id"].as_str(), h.get("x-trace-id").and_then(|x| x.to_str().ok()));
}
