//! The live view: `/v1/regions` following the lake, and `/v1/stream` (resume, live, scopes).

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

use super::*;
use crate::auth::Keys;
use campo_lake::Lake;

#[tokio::test]
async fn regions_follow_new_windows_from_the_live_view() {
    let (_d, s) = lake().await;
    let t = token(&s, &[Scope::SignalsRead]);
    let (_, _, v) = call(&s, "/v1/regions", Some(&t)).await;
    let sa = v["items"].as_array().unwrap().iter().find(|r| r["region"] == "sa-east-1").unwrap().clone();
    assert_eq!(sa["forecast_10"]["hz_forecast"], 400.0, "{sa}");
    assert_eq!(sa["forecast_10"]["lo80"], 380.0);
    close_window(&s, 12, &[("sa-east-1", 300.0), ("eu-west-1", 525.0)]).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (st, _, v) = call(&s, "/v1/regions", Some(&t)).await;
        assert_eq!(st, StatusCode::OK);
        let sa = v["items"].as_array().unwrap().iter().find(|r| r["region"] == "sa-east-1").unwrap().clone();
        if sa["window_end"].as_str() == Some(&iso(T0 + 13 * MIN)) {
            assert_eq!(sa["hz_mean"], 300.0);
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the live view never saw the new window: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Opens `/v1/stream` and returns a reader of its events `(id, event, data)`.
async fn open_stream(s: &AppState, token: &str, last_event_id: Option<&str>) -> (StatusCode, axum::body::Body) {
    let mut req = Request::get("/v1/stream").header("authorization", format!("Bearer {token}"));
    if let Some(id) = last_event_id {
        req = req.header("last-event-id", id);
    }
    let resp = router(s.clone()).oneshot(req.body(Body::empty()).unwrap()).await.unwrap();
    let status = resp.status();
    (status, resp.into_body())
}

/// Reads SSE events until `n` are in or `limit` passes.
async fn read_events(body: &mut axum::body::Body, n: usize, limit: Duration) -> Vec<(String, String, Value)> {
    let mut buf = String::new();
    let mut out = vec![];
    let deadline = tokio::time::Instant::now() + limit;
    while out.len() < n {
        let Ok(Some(frame)) = tokio::time::timeout_at(deadline, body.frame()).await else { break };
        let Ok(data) = frame.unwrap().into_data() else { continue };
        buf.push_str(std::str::from_utf8(&data).unwrap());
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            let (mut id, mut ev, mut data) = (String::new(), String::new(), String::new());
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("id:") {
                    id = v.trim().into();
                } else if let Some(v) = line.strip_prefix("event:") {
                    ev = v.trim().into();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim());
                }
            }
            if !id.is_empty() {
                out.push((id, ev, serde_json::from_str(&data).unwrap()));
            }
        }
    }
    out
}

#[tokio::test]
async fn stream_resumes_from_last_event_id_then_goes_live() {
    let (_d, s) = lake().await;
    let t = token(&s, &[Scope::SignalsRead, Scope::AlertsRead]);
    let after = format!("{}-w-sa-east-1", T0 + 10 * MIN);
    let (st, mut body) = open_stream(&s, &t, Some(&after)).await;
    assert_eq!(st, StatusCode::OK);
    let got = read_events(&mut body, 5, Duration::from_secs(10)).await;
    let ids: Vec<&str> = got.iter().map(|(id, _, _)| id.as_str()).collect();
    let w = |i: i64, r: &str| format!("{}-w-{r}", T0 + i * MIN);
    assert_eq!(ids, [w(11, "eu-west-1"), w(11, "sa-east-1"), format!("{}-a-a4", T0 + 11 * MIN), w(12, "eu-west-1"), w(12, "sa-east-1")]);
    assert_eq!(got[2].1, "alert");
    assert_eq!(got[2].2["level"], "medium");
    assert_eq!(got[1].1, "window");
    assert_eq!(got[1].2["hz_mean"], 400.0);
    assert_eq!(got[1].2["evu"], 80.0);
    // Then live: a window committed now arrives on the open stream.
    close_window(&s, 12, &[("sa-east-1", 300.0), ("eu-west-1", 525.0)]).await;
    let got = read_events(&mut body, 2, Duration::from_secs(10)).await;
    let ids: Vec<&str> = got.iter().map(|(id, _, _)| id.as_str()).collect();
    assert_eq!(ids, [w(13, "eu-west-1"), w(13, "sa-east-1")]);
    assert_eq!(got[1].2["hz_mean"], 300.0);
}

#[tokio::test]
async fn stream_without_last_event_id_starts_now_and_hides_alerts_without_the_scope() {
    let (_d, s) = lake().await;
    let t = token(&s, &[Scope::SignalsRead]);
    let (st, mut body) = open_stream(&s, &t, None).await;
    assert_eq!(st, StatusCode::OK);
    assert!(read_events(&mut body, 1, Duration::from_millis(800)).await.is_empty(), "no history without Last-Event-ID");
    // From before the alert at window 11: windows only, the alert is not this token's to see.
    let (_, mut body) = open_stream(&s, &t, Some(&format!("{}-w-sa-east-1", T0 + 10 * MIN))).await;
    let got = read_events(&mut body, 4, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 4);
    assert!(got.iter().all(|(_, ev, _)| ev == "window"), "{got:?}");

    for bad in ["nonsense", "12-x-sa-east-1", "12-w-", "12-w-sa'east"] {
        let resp = router(s.clone())
            .oneshot(Request::get("/v1/stream").header("authorization", format!("Bearer {t}")).header("last-event-id", bad).body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{bad}");
        let h = resp.headers().clone();
        let v: Value = serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
        assert_envelope(&v, &h, "invalid_last_event_id");
    }
    let (st, h, v) = call(&s, "/v1/stream", None).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    assert_envelope(&v, &h, "unauthorized");
}

#[tokio::test]
async fn the_live_view_picks_up_tables_created_after_it_started() {
    let dir = tempfile::tempdir().unwrap();
    let lake = Lake::new(dir.path().to_str().unwrap(), Default::default()).unwrap();
    let s = AppState::new(lake, Keys::new(&[7u8; 32], "campo"));
    let t = token(&s, &[Scope::SignalsRead]);
    let (st, _, v) = call(&s, "/v1/regions", Some(&t)).await;
    assert_eq!((st, v), (StatusCode::OK, json!({"items": []})));
    for i in 0..3 {
        close_window(&s, i, &[("sa-east-1", 500.0)]).await;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let (_, _, v) = call(&s, "/v1/regions", Some(&t)).await;
            if v["items"][0]["window_end"].as_str() == Some(&iso(T0 + (i + 1) * MIN)) {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "window {i} never showed: {v}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
