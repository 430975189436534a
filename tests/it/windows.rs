//! Event-time windows and the signal pipelines end to end on rdkafka's mock cluster: the
//! watermark (out-of-order, late and idle partitions), golden signals recomputed by polars,
//! identical rows after a kill -9 and restart, and after two instances share the partitions
//! and one leaves.

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use campo_pipelines::Config;
use campo_pipelines::ingest::{self, Shutdown, Stats};
use rdkafka::ClientConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

use crate::e2e::{campo_run, stop};
use crate::harness::*;

type Cluster = MockCluster<'static, rdkafka::producer::DefaultProducerContext>;

fn config(cluster: &Cluster, lake: &std::path::Path) -> Config {
    let mut cfg = Config::default();
    cfg.kafka.brokers = cluster.bootstrap_servers();
    cfg.kafka.group_id = unique("w");
    cfg.lake.path = lake.to_str().unwrap().into();
    cfg.metrics.listen = String::new();
    cfg.ingest.flush_interval = Duration::from_millis(200);
    cfg.windows.idle_timeout = Duration::from_secs(2);
    // A restarted member rejoins the mock broker's group faster.
    cfg.kafka.properties.insert("session.timeout.ms".into(), "6000".into());
    cfg.kafka.properties.insert("heartbeat.interval.ms".into(), "1000".into());
    cfg
}

fn reading(key: &str, at: &str, user: &str, hz: f64) -> String {
    serde_json::json!({
        "event_id": uuid::Uuid::new_v4().to_string(), "schema_version": "1.0.0", "occurred_at": at,
        "producer": "test", "idempotency_key": key, "trace_id": "t", "user_hash": user,
        "region": "sa-east-1", "hz": hz,
    })
    .to_string()
}

fn send(producer: &BaseProducer, topic: &str, partition: i32, events: &[String]) {
    for e in events {
        producer.send(BaseRecord::<str, str>::to(topic).partition(partition).key("sa-east-1").payload(e)).unwrap();
    }
    producer.flush(Duration::from_secs(10)).unwrap();
}

async fn window_rows(lake: &campo_lake::Lake) -> std::collections::BTreeMap<String, i64> {
    counts_by(lake, "SELECT CAST(window_start AS VARCHAR), readings FROM region_metrics_1m").await
}

fn start(cfg: &Config) -> (Arc<Stats>, Shutdown, tokio::task::JoinHandle<Result<(), ingest::IngestError>>) {
    let stats = Arc::new(Stats::default());
    let shutdown = Shutdown::default();
    let task = tokio::spawn(ingest::run(cfg.clone(), stats.clone(), shutdown.clone()));
    (stats, shutdown, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watermark_closes_windows_past_out_of_order_late_and_idle_partitions() {
    let cluster = MockCluster::new(1).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&cluster, &dir.path().join("lake"));
    let (r, a) = (cfg.kafka.readings_topic.clone(), cfg.kafka.activity_topic.clone());
    cluster.create_topic(&r, 2, 1).unwrap();
    cluster.create_topic(&a, 1, 1).unwrap(); // never gets data: idle from the start
    cluster.create_topic(&cfg.kafka.dlq_topic, 1, 1).unwrap();
    let producer: BaseProducer = ClientConfig::new().set("bootstrap.servers", &cfg.kafka.brokers).create().unwrap();
    let lake = lake(std::path::Path::new(&cfg.lake.path));
    let (stats, shutdown, task) = start(&cfg);

    // Nothing closes while partition 1 trails: min(10:00:30, 10:00:20) - 30 s.
    send(&producer, &r, 0, &[reading("a1", "2026-11-20T10:00:10Z", "u1", 300.0), reading("a2", "2026-11-20T10:00:30Z", "u1", 350.0)]);
    send(&producer, &r, 1, &[reading("b1", "2026-11-20T10:00:20Z", "u2", 500.0)]);
    wait_until(Duration::from_secs(30), "first readings committed", || {
        let s = stats.clone();
        async move { s.bronze[0].load(Ordering::Relaxed) == 3 }
    })
    .await;
    // Out of order on partition 1 (10:00:50 after 10:01:40) is not late: the watermark is
    // min(10:01:45, 10:01:40) - 30 s = 10:01:10, which closes [10:00, 10:01) with 4 readings.
    send(&producer, &r, 0, &[reading("a3", "2026-11-20T10:01:45Z", "u1", 700.0)]);
    send(&producer, &r, 1, &[reading("b2", "2026-11-20T10:01:40Z", "u2", 800.0), reading("b3", "2026-11-20T10:00:50Z", "u3", 410.0)]);
    wait_until(Duration::from_secs(30), "window 10:00 closed", || {
        let l = lake.clone();
        async move { l.open("region_metrics_1m").await.is_ok() && !window_rows(&l).await.is_empty() }
    })
    .await;
    assert_eq!(window_rows(&lake).await.into_iter().collect::<Vec<_>>(), vec![("2026-11-20T10:00:00Z".to_string(), 4)]);
    assert_eq!(stats.late[0].load(Ordering::Relaxed), 0);

    // A reading for the closed window is stored as late and changes nothing.
    send(&producer, &r, 0, &[reading("a4", "2026-11-20T10:00:59Z", "u1", 100.0)]);
    wait_until(Duration::from_secs(30), "late reading committed", || {
        let s = stats.clone();
        async move { s.late[0].load(Ordering::Relaxed) == 1 }
    })
    .await;
    assert_eq!(scalar(&lake, "SELECT count(*) FROM readings WHERE late AND idempotency_key = 'a4'").await, 1);

    // Partition 1 goes quiet (read to its end): after idle_timeout it no longer holds the
    // watermark back, so 10:03:00 on partition 0 alone closes [10:01, 10:02) (2 readings).
    send(&producer, &r, 0, &[reading("a5", "2026-11-20T10:03:00Z", "u1", 600.0)]);
    wait_until(Duration::from_secs(30), "window 10:01 closed by the idle partition rule", || {
        let l = lake.clone();
        async move { window_rows(&l).await.len() == 2 }
    })
    .await;
    let rows = window_rows(&lake).await;
    assert_eq!(rows.get("2026-11-20T10:00:00Z"), Some(&4), "the late reading changed nothing");
    assert_eq!(rows.get("2026-11-20T10:01:00Z"), Some(&2));
    shutdown.trigger();
    task.await.unwrap().unwrap();

    // A restart reopens nothing: the watermark resumes from the last closed window.
    let (stats, shutdown, task) = start(&cfg);
    send(&producer, &r, 1, &[reading("b4", "2026-11-20T10:01:30Z", "u2", 900.0)]);
    wait_until(Duration::from_secs(90), "late reading after restart committed", || {
        let s = stats.clone();
        async move { s.late[0].load(Ordering::Relaxed) == 1 }
    })
    .await;
    assert_eq!(window_rows(&lake).await, rows);
    assert_eq!(stats.closed_through.load(Ordering::Relaxed), chrono::DateTime::parse_from_rfc3339("2026-11-20T10:02:00Z").unwrap().timestamp_micros());
    shutdown.trigger();
    task.await.unwrap().unwrap();
    drop(producer);
}

/// The end of the last window the final watermark closes: every partition idle at the end, so
/// floor(max event time - 30 s) to the minute.
async fn final_through(lake: &campo_lake::Lake) -> i64 {
    let max = scalar(lake, "SELECT max(m) FROM (SELECT CAST(to_unixtime(max(occurred_at)) * 1000000 AS BIGINT) AS m FROM readings UNION ALL SELECT CAST(to_unixtime(max(occurred_at)) * 1000000 AS BIGINT) FROM activity)").await;
    (max - 30_000_000).div_euclid(60_000_000) * 60_000_000
}

async fn signal_rows(lake: &campo_lake::Lake, table: &str) -> Vec<String> {
    let kind = campo_lake::TableKind::ALL.into_iter().find(|k| k.name() == table).unwrap();
    let cols: Vec<String> =
        kind.schema().fields().iter().map(|f| format!("coalesce(CAST({} AS VARCHAR), 'NULL')", f.name())).collect();
    let sql = format!("SELECT concat_ws('|', {}) FROM {table}", cols.join(", "));
    let mut out = Vec::new();
    lake.for_each_string(&sql, |s| out.push(s.to_string())).await.unwrap();
    out.sort();
    out
}

/// Asserts equal row sets, printing only the rows that differ.
fn same_rows(got: Vec<String>, want: &[String], what: &str) {
    let only_got: Vec<&String> = got.iter().filter(|r| !want.contains(r)).collect();
    let only_want: Vec<&String> = want.iter().filter(|r| !got.contains(r)).collect();
    assert!(
        only_got.is_empty() && only_want.is_empty() && got.len() == want.len(),
        "{what}: {} rows vs {} expected\nonly here:\n{only_got:#?}\nmissing:\n{only_want:#?}",
        got.len(),
        want.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signals_match_polars_and_are_identical_after_kill_9_and_restart_and_with_two_instances() {
    let cluster = MockCluster::new(1).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&cluster, &dir.path().join("straight"));
    let (r, a, d) = (cfg.kafka.readings_topic.clone(), cfg.kafka.activity_topic.clone(), cfg.kafka.dlq_topic.clone());
    // Six partitions each: the mock broker keeps only ~5 MB per partition.
    for (t, p) in [(&r, 6), (&a, 6), (&d, 1)] {
        cluster.create_topic(t, p, 1).unwrap();
    }
    // Seven minutes of event time, a planted collapse, out-of-order events within the allowed
    // lateness (so no event is late in either run, whatever the fetch order), invalid and
    // duplicate records.
    let totals = simulate(&[
        "--brokers", &cfg.kafka.brokers, "--count", "30000", "--rate", "0", "--seed", "11", "--partitions", "0",
        "--invalid-share", "0.01", "--duplicate-share", "0.01", "--late-share", "0", "--out-of-order-share", "0.05",
        "--start", "2026-11-20T10:00:00Z", "--speed", "140", "--collapse", "sa-east-1@1+4:0.8",
    ]);
    let records = totals["records"].as_u64().unwrap();

    // Straight through.
    let straight = lake(std::path::Path::new(&cfg.lake.path));
    let (stats, shutdown, task) = start(&cfg);
    wait_until(Duration::from_secs(120), "every record committed", || {
        let s = stats.clone();
        async move { s.committed_total() >= records }
    })
    .await;
    let through = final_through(&straight).await;
    wait_until(Duration::from_secs(60), "final windows closed", || {
        let s = stats.clone();
        async move { s.closed_through.load(Ordering::Relaxed) >= through }
    })
    .await;
    shutdown.trigger();
    task.await.unwrap().unwrap();
    assert_eq!(stats.late[0].load(Ordering::Relaxed) + stats.late[1].load(Ordering::Relaxed), 0);
    let rm = signal_rows(&straight, "region_metrics_1m").await;
    let evu = signal_rows(&straight, "evu_1m").await;
    assert!(rm.len() >= 6 * 5, "six regions, at least five closed minutes: {}", rm.len());
    assert!(rm.iter().any(|row| row.contains("sa-east-1") && row.contains("collapse")), "the planted collapse shows");
    assert!(!rm.iter().any(|row| !row.contains("sa-east-1") && row.contains("collapse")), "no other region collapses");

    // campo's functions are registered in the lake's ad-hoc SQL sessions too.
    let consistent = scalar(&straight, "SELECT count(*) FROM region_metrics_1m WHERE hz_bucket(hz_mean) = CAST(floor(hz_mean / 100) AS INT) OR hz_mean >= 1000").await;
    assert_eq!(consistent as usize, rm.len());

    // Independently recomputed from bronze by polars.
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/signals.py");
    let out = Command::new(python()).arg(script).arg(&cfg.lake.path).output().unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "polars disagrees: {report}\n{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_str(&report).unwrap();
    assert_eq!(report["region_metrics_1m"].as_u64().unwrap() as usize, rm.len());
    assert_eq!(report["evu_1m"].as_u64().unwrap() as usize, evu.len());

    // Again with `campo run`, killed with SIGKILL once windows started closing, then restarted.
    let crashed_path = dir.path().join("crashed");
    let crashed = lake(&crashed_path);
    let group = unique("wc");
    // Small flushes so the run is still going when the first windows close.
    let extra = ["--idle-timeout", "2s", "--max-batch-rows", "300", "-X", "session.timeout.ms=6000", "-X", "heartbeat.interval.ms=1000"];
    let mut child = campo_run(&cfg.kafka.brokers, &crashed_path, &group, (&r, &a, &d), &extra);
    wait_until(Duration::from_secs(60), "some windows closed before the kill", || {
        let l = crashed.clone();
        async move { l.open("region_metrics_1m").await.is_ok() && scalar(&l, "SELECT count(*) FROM region_metrics_1m").await > 0 }
    })
    .await;
    child.kill().unwrap();
    child.wait().unwrap();
    let before = scalar(&crashed, "SELECT count(*) FROM region_metrics_1m").await;
    assert!((before as usize) < rm.len(), "killed mid-way ({before} of {} rows)", rm.len());
    let child = campo_run(&cfg.kafka.brokers, &crashed_path, &group, (&r, &a, &d), &extra);
    let last = rm.last().cloned();
    wait_until(Duration::from_secs(120), "restarted run caught up", || {
        let l = crashed.clone();
        let n = rm.len();
        async move { scalar(&l, "SELECT count(*) FROM region_metrics_1m").await as usize >= n }
    })
    .await;
    // Let the last evu commit land, then stop.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop(child);
    assert_eq!(signal_rows(&crashed, "region_metrics_1m").await, rm, "region_metrics_1m identical after the crash");
    assert_eq!(signal_rows(&crashed, "evu_1m").await, evu, "evu_1m identical after the crash");
    assert!(last.is_some());

    // Two instances in one group split the partitions: neither sees whole windows, so neither
    // writes any. When one leaves, the other holds every partition, rebuilds the open windows
    // from bronze (which both wrote) and writes the same rows as the straight run.
    let mut shared = config(&cluster, &dir.path().join("shared"));
    let (r2, a2, d2) = ("two.readings".to_string(), "two.activity".to_string(), "two.dlq".to_string());
    for (t, p) in [(&r2, 6), (&a2, 6), (&d2, 1)] {
        cluster.create_topic(t, p, 1).unwrap();
    }
    (shared.kafka.readings_topic, shared.kafka.activity_topic, shared.kafka.dlq_topic) = (r2.clone(), a2.clone(), d2);
    let shared_lake = lake(std::path::Path::new(&shared.lake.path));
    let (s1, sh1, t1) = start(&shared);
    let (s2, sh2, t2) = start(&shared);
    wait_until(Duration::from_secs(60), "both instances hold partitions", || {
        let (s1, s2) = (s1.clone(), s2.clone());
        async move {
            let (n1, n2) = (s1.assigned_partitions.load(Ordering::Relaxed), s2.assigned_partitions.load(Ordering::Relaxed));
            n1 > 0 && n2 > 0 && n1 + n2 == 12
        }
    })
    .await;
    simulate(&[
        "--brokers", &cfg.kafka.brokers, "--readings-topic", &r2, "--activity-topic", &a2, "--count", "30000", "--rate",
        "0", "--seed", "11", "--partitions", "0", "--invalid-share", "0.01", "--duplicate-share", "0.01", "--late-share",
        "0", "--out-of-order-share", "0.05", "--start", "2026-11-20T10:00:00Z", "--speed", "140", "--collapse",
        "sa-east-1@1+4:0.8",
    ]);
    wait_until(Duration::from_secs(120), "both instances committed every record", || {
        let (s1, s2) = (s1.clone(), s2.clone());
        async move { s1.committed_total() + s2.committed_total() >= records }
    })
    .await;
    // Idle partitions close windows after 2 s: give them the chance to (wrongly) close some.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(s1.committed_total() > 0 && s2.committed_total() > 0, "both instances ingested");
    assert_eq!(s1.windows_closed.load(Ordering::Relaxed) + s2.windows_closed.load(Ordering::Relaxed), 0, "no instance closes partial windows");
    assert_eq!(signal_rows(&shared_lake, "region_metrics_1m").await.len(), 0);
    sh2.trigger();
    t2.await.unwrap().unwrap();
    wait_until(Duration::from_secs(120), "the remaining instance wrote every window", || {
        let s = s1.clone();
        async move { s.closed_through.load(Ordering::Relaxed) >= through }
    })
    .await;
    sh1.trigger();
    t1.await.unwrap().unwrap();
    same_rows(signal_rows(&shared_lake, "region_metrics_1m").await, &rm, "region_metrics_1m with two instances");
    same_rows(signal_rows(&shared_lake, "evu_1m").await, &evu, "evu_1m with two instances");
}
