//! End-to-end tests against a real broker process (tansu), through the `campo` binary.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::harness::*;

/// A `campo run` child process, killed when dropped still running (a failing test leaves no
/// process behind holding the test's output open).
pub struct CampoRun(Child);

impl std::ops::Deref for CampoRun {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for CampoRun {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for CampoRun {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// `campo run` as a child process on a broker, a lake and a group.
pub fn campo_run(brokers: &str, lake: &Path, group: &str, topics: (&str, &str, &str), extra: &[&str]) -> CampoRun {
    campo_run_with(brokers, lake, group, topics, extra, &[])
}

/// [`campo_run`] with extra environment variables (e.g. `CAMPO__PROTECT__TOPIC`).
pub fn campo_run_with(brokers: &str, lake: &Path, group: &str, topics: (&str, &str, &str), extra: &[&str], env: &[(&str, &str)]) -> CampoRun {
    let child = Command::new(campo_bin())
        .envs(env.iter().copied())
        .args(["run", "--brokers", brokers, "--group-id", group, "--lake", lake.to_str().unwrap(), "--flush-interval", "300ms"])
        .args(if extra.contains(&"--metrics-listen") { &[][..] } else { &["--metrics-listen", ""][..] })
        .args(if extra.contains(&"--api-listen") { &[][..] } else { &["--api-listen", ""][..] })
        .env("CAMPO__KAFKA__READINGS_TOPIC", topics.0)
        .env("CAMPO__KAFKA__ACTIVITY_TOPIC", topics.1)
        .env("CAMPO__KAFKA__DLQ_TOPIC", topics.2)
        .env("CAMPO_LOG", "warn")
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start campo run");
    CampoRun(child)
}

pub fn topics(tag: &str) -> (String, String, String) {
    let t = unique(tag);
    (format!("{t}.readings"), format!("{t}.activity"), format!("{t}.dlq"))
}

pub fn stop(mut child: CampoRun) {
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let status = child.wait().unwrap();
    assert!(status.success(), "campo run exited with {status} on SIGTERM");
}

pub async fn bronze_rows(lake: &campo_lake::Lake) -> i64 {
    scalar(lake, "SELECT count(*) FROM readings").await + scalar(lake, "SELECT count(*) FROM activity").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_broker_bronze_and_dlq_hold_exactly_what_was_planted() {
    let broker = Broker::start();
    let (r, a, d) = topics("e2e");
    broker.create_topics((&r, &a, &d), 4);
    let totals = simulate(&[
        "--brokers", &broker.addr, "--count", "20000", "--rate", "0", "--seed", "5", "--partitions", "0",
        "--readings-topic", &r, "--activity-topic", &a, "--invalid-share", "0.04", "--duplicate-share", "0.04",
        "--late-share", "0.02", "--out-of-order-share", "0.05", "--start", "2026-11-22T08:00:00Z", "--speed", "60",
    ]);
    let dir = tempfile::tempdir().unwrap();
    let lake_path = dir.path().join("lake");
    let metrics = format!("127.0.0.1:{}", free_port());
    let child = campo_run(&broker.addr, &lake_path, &unique("g"), (&r, &a, &d), &["--metrics-listen", &metrics]);
    let lake = lake(&lake_path);
    let expected = total(&totals, "unique_valid", &r) + total(&totals, "unique_valid", &a);
    let invalid = invalid_total(&totals, &r) + invalid_total(&totals, &a);
    wait_until(Duration::from_secs(120), "bronze and rejected complete", || {
        let l = lake.clone();
        async move { l.open("rejected").await.is_ok() && bronze_rows(&l).await >= expected && scalar(&l, "SELECT count(*) FROM rejected").await >= invalid }
    })
    .await;
    // The counts are exported: every record in exactly one outcome.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let m = scrape(&metrics);
    assert_eq!(metric(&m, "campo_records_total", &[("topic", &r), ("outcome", "bronze")]), total(&totals, "unique_valid", &r));
    assert_eq!(metric(&m, "campo_records_total", &[("topic", &a), ("outcome", "bronze")]), total(&totals, "unique_valid", &a));
    assert_eq!(metric(&m, "campo_records_total", &[("topic", &r), ("outcome", "duplicate")]), total(&totals, "duplicates", &r));
    assert_eq!(metric(&m, "campo_records_total", &[("topic", &r), ("outcome", "dlq")]), invalid_total(&totals, &r));
    assert_eq!(
        metric(&m, "campo_rejected_total", &[("topic", &r), ("reason", "not_json")]),
        totals["invalid"][r.as_str()]["not_json"].as_i64().unwrap_or(0)
    );
    stop(child);
    assert_eq!(scalar(&lake, "SELECT count(*) FROM readings").await, total(&totals, "unique_valid", &r));
    assert_eq!(scalar(&lake, "SELECT count(*) FROM activity").await, total(&totals, "unique_valid", &a));
    assert_eq!(scalar(&lake, "SELECT count(DISTINCT idempotency_key) FROM readings").await, total(&totals, "unique_valid", &r));
    let by_reason = counts_by(&lake, "SELECT source_topic || ':' || reason, count(*) FROM rejected GROUP BY 1").await;
    for topic in [&r, &a] {
        for (reason, n) in totals["invalid"][topic.as_str()].as_object().unwrap() {
            assert_eq!(by_reason.get(&format!("{topic}:{reason}")).copied(), n.as_i64(), "{topic}:{reason}");
        }
    }
    assert_eq!(by_reason.values().sum::<i64>(), invalid);
    // Late and out-of-order events are in bronze like any other valid event.
    let late = scalar(&lake, "SELECT count(*) FROM readings r JOIN readings s ON r.kafka_partition = s.kafka_partition AND r.kafka_offset = s.kafka_offset + 1 WHERE r.occurred_at < s.occurred_at - INTERVAL '100 seconds'").await;
    assert!(late > 0, "late events reached bronze");
    assert_eq!(scalar(&lake, "SELECT count(*) FROM rejected WHERE record LIKE '%@example.org%'").await, 0);
    drop(broker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_broker_is_waited_for_and_then_consumed() {
    let port = free_port_outside_ephemeral_range();
    let addr = format!("127.0.0.1:{port}");
    let (r, a, d) = topics("late-broker");
    let dir = tempfile::tempdir().unwrap();
    let lake_path = dir.path().join("lake");
    let child = campo_run(&addr, &lake_path, &unique("g"), (&r, &a, &d), &[]);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(child.id() > 0);
    let broker = Broker::start_on(port);
    // campo connects and reads metadata before the topics exist: it must pick them up when
    // they appear (within seconds, not librdkafka's default 5-minute metadata refresh).
    tokio::time::sleep(Duration::from_secs(6)).await;
    broker.create_topics((&r, &a, &d), 2);
    let totals = simulate(&[
        "--brokers", &addr, "--count", "3000", "--rate", "0", "--seed", "9", "--partitions", "0",
        "--readings-topic", &r, "--activity-topic", &a, "--invalid-share", "0", "--duplicate-share", "0",
    ]);
    let lake = lake(&lake_path);
    let expected = total(&totals, "unique_valid", &r) + total(&totals, "unique_valid", &a);
    wait_until(Duration::from_secs(90), "bronze complete after the broker came up", || {
        let l = lake.clone();
        async move { bronze_rows(&l).await >= expected }
    })
    .await;
    stop(child);
    assert_eq!(bronze_rows(&lake).await, expected);
}

/// GET /metrics over a plain TCP connection.
pub fn scrape(addr: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    body
}

/// The value of one sample, matched by name and labels (0 when absent).
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> i64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .find(|l| labels.iter().all(|(k, v)| l.contains(&format!("{k}=\"{v}\""))))
        .and_then(|l| l.rsplit(' ').next())
        .map(|v| v.parse::<f64>().unwrap() as i64)
        .unwrap_or(0)
}

/// Two instances in one group share the partitions; rebalances move them back and forth while
/// a producer writes; the lake ends exact. (tansu: one record per producer batch, because a
/// consumer resuming inside a batch would skip the rest of it; see shared/TANSU.md.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_partitions_through_rebalances_exactly_once() {
    let broker = Broker::start();
    let (r, a, d) = topics("rebalance");
    broker.create_topics((&r, &a, &d), 4);
    let producer = one_record_batches_producer(&broker.addr, (&r, &a), &[
        "--count", "40000", "--rate", "4000", "--seed", "31", "--invalid-share", "0.02", "--duplicate-share", "0.03",
    ]);
    let dir = tempfile::tempdir().unwrap();
    let lake_path = dir.path().join("lake");
    let group = unique("g");
    let opts = ["-X", "session.timeout.ms=6000", "-X", "heartbeat.interval.ms=1000"];
    let first = campo_run(&broker.addr, &lake_path, &group, (&r, &a, &d), &opts);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let second = campo_run(&broker.addr, &lake_path, &group, (&r, &a, &d), &opts);
    tokio::time::sleep(Duration::from_secs(4)).await;
    stop(first);
    let third = campo_run(&broker.addr, &lake_path, &group, (&r, &a, &d), &opts);
    let out = producer.finish();
    let totals: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let lake = lake(&lake_path);
    let expected = total(&totals, "unique_valid", &r) + total(&totals, "unique_valid", &a);
    let invalid = invalid_total(&totals, &r) + invalid_total(&totals, &a);
    wait_until(Duration::from_secs(120), "bronze complete across rebalances", || {
        let l = lake.clone();
        async move { bronze_rows(&l).await >= expected && scalar(&l, "SELECT count(*) FROM rejected").await >= invalid }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop(second);
    stop(third);
    for (table, topic) in [("readings", &r), ("activity", &a)] {
        assert_eq!(scalar(&lake, &format!("SELECT count(*) FROM {table}")).await, total(&totals, "unique_valid", topic), "{table}");
        assert_eq!(
            scalar(&lake, &format!("SELECT count(DISTINCT idempotency_key) FROM {table}")).await,
            total(&totals, "unique_valid", topic),
            "{table}: no duplicate"
        );
    }
    assert_eq!(scalar(&lake, "SELECT count(*) FROM rejected").await, invalid);
}
