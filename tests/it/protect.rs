//! Collapse forecasts and protective mode end to end: a real broker, a planted collapse that
//! spreads through a region while another stays calm, `campo run` killed with SIGKILL once an
//! alert is written, and the events read back from `system.protect`; and the backtest on a
//! seeded scenario.
//!
//! tansu workarounds (shared/TANSU.md), to drop when the broker is fixed: the producer sends one
//! record per batch; `session.timeout.ms=6000` and the replacement starts after it has passed.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::e2e::{campo_run_with, stop, topics};
use crate::harness::*;

/// Every event on a topic: (region, level, event_id, window_end), in offset order per partition.
fn read_topic(brokers: &str, topic: &str) -> Vec<serde_json::Value> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", unique("readback"))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).unwrap();
    let mut tpl = TopicPartitionList::new();
    let mut ends = BTreeMap::new();
    for p in md.topics()[0].partitions() {
        let (low, high) = consumer.fetch_watermarks(topic, p.id(), Duration::from_secs(10)).unwrap();
        if high > low {
            tpl.add_partition_offset(topic, p.id(), Offset::Offset(low)).unwrap();
            ends.insert(p.id(), high);
        }
    }
    let mut out = Vec::new();
    if ends.is_empty() {
        return out;
    }
    consumer.assign(&tpl).unwrap();
    let start = Instant::now();
    while !ends.is_empty() {
        assert!(start.elapsed() < Duration::from_secs(30), "reading {topic} back: {ends:?} left");
        if let Some(m) = consumer.poll(Duration::from_millis(200)) {
            let m = m.unwrap();
            out.push(serde_json::from_slice(m.payload().unwrap()).unwrap());
            if ends.get(&m.partition()).is_some_and(|e| m.offset() + 1 >= *e) {
                ends.remove(&m.partition());
            }
        }
    }
    out
}

async fn alert_rows(lake: &campo_lake::Lake) -> Vec<(String, i64, String, String)> {
    let mut out = Vec::new();
    let sql = "SELECT concat_ws('|', region, CAST(CAST(window_end AS BIGINT) AS VARCHAR), level, event_id) FROM alerts";
    lake.for_each_string(sql, |s| {
        let f: Vec<&str> = s.split('|').collect();
        out.push((f[0].to_string(), f[1].parse().unwrap(), f[2].to_string(), f[3].to_string()));
    })
    .await
    .unwrap();
    out.sort_by(|a, b| (a.1, &a.0).cmp(&(b.1, &b.0)));
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spreading_collapse_goes_soft_medium_hard_off_and_a_kill_9_emits_no_event_twice() {
    let broker = Broker::start();
    let (r, a, d) = topics("protect");
    broker.create_topics((&r, &a, &d), 4);
    let protect_topic = format!("{r}.protect");
    // 75 simulated minutes (1000 events a minute): sa-east-1 collapses from minute 15, spreading
    // over 6 minutes to 85% of its users, for 40 minutes; eu-west-1 stays calm.
    let producer = one_record_batches_producer(&broker.addr, (&r, &a), &[
        "--count", "75000", "--rate", "0", "--speed", "600", "--seed", "3", "--regions", "sa-east-1,eu-west-1",
        "--users-per-region", "150", "--invalid-share", "0", "--duplicate-share", "0", "--late-share", "0",
        "--out-of-order-share", "0.02", "--start", "2026-11-20T10:00:00Z", "--collapse", "sa-east-1@15+40:0.85/6",
    ]);
    let dir = tempfile::tempdir().unwrap();
    let lake_path = dir.path().join("lake");
    let lake = lake(&lake_path);
    let group = unique("protect-g");
    let metrics = format!("127.0.0.1:{}", free_port());
    let opts = ["-X", "session.timeout.ms=6000", "-X", "heartbeat.interval.ms=1000", "--idle-timeout", "2s", "--metrics-listen", &metrics];
    let run = || campo_run_with(&broker.addr, &lake_path, &group, (&r, &a, &d), &opts, &[("CAMPO__PROTECT__TOPIC", &protect_topic)]);
    // The protect topic does not exist during the first run: its sends fail and wait in the
    // outbox (unless the broker creates topics on demand, in which case they land at once).
    let mut first = run();
    wait_until(Duration::from_secs(180), "the first alert is committed", || {
        let l = lake.clone();
        async move { l.open("alerts").await.is_ok() && scalar(&l, "SELECT count(*) FROM alerts").await >= 1 }
    })
    .await;
    first.kill().unwrap(); // SIGKILL, right after an alert row was committed
    first.wait().unwrap();
    let after_kill = alert_rows(&lake).await;
    eprintln!("killed after {} alert rows: {after_kill:?}", after_kill.len());
    broker.create_topic(&protect_topic, 2);
    // Past the dead member's 6 s session with a margin: on a loaded machine tansu expires it
    // late, and a replacement that joins before then can keep an empty assignment (TANSU.md 4).
    tokio::time::sleep(Duration::from_secs(12)).await;
    let second = run();
    producer.finish();
    // Every window up to the last full minute before the end (minute 74) closes.
    let end_us = chrono::DateTime::parse_from_rfc3339("2026-11-20T11:14:00Z").unwrap().timestamp_micros();
    wait_until(Duration::from_secs(240), "every window closed and processed", || {
        let l = lake.clone();
        async move { scalar(&l, "SELECT CAST(max(issued_at) AS BIGINT) FROM collapse_forecast").await >= end_us }
    })
    .await;
    // The outbox sends asynchronously: give it a moment, then stop cleanly.
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Every metric the alerting rules use is exported, per region where it is a region's.
    let exported = crate::e2e::scrape(&metrics);
    let rules = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/prometheus/campo.rules.yml")).unwrap();
    for name in ["campo_region_protect_level", "campo_region_collapse_probability", "campo_consumer_lag_messages", "campo_window_closed_through_seconds", "campo_records_total"] {
        assert!(rules.contains(name), "{name} not in the rules");
        assert!(exported.contains(name), "{name} not exported:\n{exported}");
    }
    for name in ["campo_region_mean_frequency_hertz", "campo_region_low_share_ratio", "campo_region_evu_score"] {
        assert!(exported.contains(&format!("{name}{{region=\"sa-east-1\"}}")), "{name} not exported per region:\n{exported}");
    }
    assert!(exported.contains("campo_region_protect_level{region=\"sa-east-1\"} 0"), "sa-east-1 is off again:\n{exported}");
    stop(second);

    let alerts = alert_rows(&lake).await;
    let levels: Vec<(&str, &str)> = alerts.iter().map(|(r, _, l, _)| (r.as_str(), l.as_str())).collect();
    assert_eq!(levels, vec![("sa-east-1", "soft"), ("sa-east-1", "medium"), ("sa-east-1", "hard"), ("sa-east-1", "off")], "{alerts:?}");
    // At the windows SPEC 6 implies, recomputed by polars from the lake's signals.
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/alerts.py");
    let py = Command::new(python()).arg(script).arg(&lake_path).output().unwrap();
    assert!(py.status.success(), "alerts.py: {}", String::from_utf8_lossy(&py.stderr));
    let expected: Vec<(String, i64, String)> = serde_json::from_slice(&py.stdout).unwrap();
    let got: Vec<(String, i64, String)> = alerts.iter().map(|(r, w, l, _)| (r.clone(), *w, l.clone())).collect();
    assert_eq!(got, expected, "alerts vs SPEC 6 recomputed by polars");
    // The forecast flagged the collapse: some forecast before the first window under 420 Hz
    // gave p_collapse >= 0.5 for a target at or after it.
    let onset = scalar(&lake, "SELECT CAST(min(window_end) AS BIGINT) FROM region_metrics_1m WHERE region = 'sa-east-1' AND hz_mean < 420").await;
    let ahead = scalar(
        &lake,
        &format!(
            "SELECT count(*) FROM collapse_forecast WHERE region = 'sa-east-1' AND p_collapse >= 0.5 \
             AND issued_at < to_timestamp_micros({onset}) AND target_window_end >= to_timestamp_micros({onset})"
        ),
    )
    .await;
    assert!(ahead > 0, "no forecast saw the collapse coming");
    assert_eq!(scalar(&lake, "SELECT count(*) FROM alerts WHERE region = 'eu-west-1'").await, 0, "the calm region raised an alert");

    // On the broker: exactly the alerts, each once, whatever the kill interrupted.
    let events = read_topic(&broker.addr, &protect_topic);
    let mut ids: Vec<&str> = events.iter().map(|e| e["event_id"].as_str().unwrap()).collect();
    ids.sort();
    let mut want: Vec<&str> = alerts.iter().map(|a| a.3.as_str()).collect();
    want.sort();
    assert_eq!(ids, want, "system.protect holds each change exactly once: {events:#?}");
    let soft = events.iter().find(|e| e["level"] == "soft").unwrap();
    for field in ["schema_version", "occurred_at", "producer", "idempotency_key", "trace_id", "region", "reason", "window_end", "expires_at"] {
        assert!(soft.get(field).is_some(), "{field} missing: {soft}");
    }
}

#[test]
fn the_backtest_beats_persistence_and_the_damped_trend_on_a_seeded_scenario() {
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let out = Command::new(campo_bin())
        .args(["backtest", "--scenario", "--json", "--lake", dir.path().join("lake").to_str().unwrap(), "--metrics-listen", ""])
        .env("CAMPO_LOG", "warn")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "campo backtest: {stderr}");
    eprintln!("{stderr}\n(backtest took {:?})", started.elapsed());
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for h in report["horizons"].as_array().unwrap() {
        for reference in ["skill_vs_persistence", "skill_vs_damped_trend"] {
            let skill = h[reference].as_f64().unwrap();
            assert!(skill > 0.0, "{reference} not positive at {}: {h}", h["horizon_min"]);
        }
        assert!(h["positives"].as_u64().unwrap() > 0, "no collapse in the targets: {h}");
    }
    // The goal: skill >= 0.3 at 10 minutes.
    let at10 = &report["horizons"][1];
    assert_eq!(at10["horizon_min"], 10);
    assert!(at10["skill_vs_persistence"].as_f64().unwrap() >= 0.3, "{at10}");
    // The four planted collapses are all seen as episodes, every one flagged ahead, and all but
    // the fastest (a 6-minute spread: the share first moves 5 minutes before the mean crosses)
    // at least 5 minutes ahead, the goal.
    let episodes = report["episodes"].as_array().unwrap();
    assert_eq!(episodes.len(), 4, "{report}");
    let leads: Vec<f64> = episodes.iter().map(|e| e["lead_min"]["share_logit_trend"].as_f64().unwrap_or(0.0)).collect();
    assert!(leads.iter().all(|&l| l >= 3.0), "{leads:?}");
    assert!(leads.iter().filter(|&&l| l >= 5.0).count() >= 3, "{leads:?}");
    // The calm region raised nothing in the scenario's own alerts table.
    let lake = lake(&dir.path().join("lake"));
    let rt = tokio::runtime::Runtime::new().unwrap();
    assert_eq!(rt.block_on(scalar(&lake, "SELECT count(*) FROM alerts WHERE region = 'eu-west-1'")), 0);
    assert!(rt.block_on(scalar(&lake, "SELECT count(*) FROM alerts WHERE region = 'sa-east-1' AND level = 'medium'")) >= 2);
}

#[test]
fn the_alerting_rules_pass_promtool_check_and_unit_tests() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/prometheus");
    let promtool = std::env::var("CAMPO_PROMTOOL").unwrap_or_else(|_| "promtool".into());
    for args in [&["check", "rules", "campo.rules.yml"][..], &["test", "rules", "campo.rules.test.yml"][..]] {
        let out = Command::new(&promtool)
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap_or_else(|e| panic!("{promtool} not runnable ({e}): scripts/test.sh installs Debian's prometheus package"));
        assert!(out.status.success(), "promtool {args:?}: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    }
}
