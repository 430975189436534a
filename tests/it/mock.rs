//! Fast integration tests on rdkafka's in-process mock cluster.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use campo_pipelines::Config;
use campo_pipelines::ingest::batch::BatchQueue;
use campo_pipelines::ingest::{self, Shutdown, Stats};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::mocking::MockCluster;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use crate::harness::*;

pub(crate) struct Setup {
    pub cluster: MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    pub cfg: Config,
    pub _dir: tempfile::TempDir,
}

pub(crate) fn setup() -> Setup {
    // The in-process ingest's log, shown with a failing test's output (RUST_LOG, default warn).
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into());
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
    let cluster = MockCluster::new(1).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = Config::default();
    cfg.kafka.brokers = cluster.bootstrap_servers();
    cfg.kafka.group_id = unique("g");
    cfg.lake.path = dir.path().join("lake").to_str().unwrap().into();
    cfg.metrics.listen = String::new();
    cfg.ingest.flush_interval = Duration::from_millis(200);
    for (t, p) in [(&cfg.kafka.readings_topic, 3), (&cfg.kafka.activity_topic, 2), (&cfg.kafka.dlq_topic, 1)] {
        cluster.create_topic(t, p, 1).unwrap();
    }
    Setup { cluster, cfg, _dir: dir }
}

fn produce(brokers: &str, count: u64, seed: u64) -> serde_json::Value {
    produce_at(brokers, count, seed, 0)
}

/// `rate` events/s (0: as fast as possible).
fn produce_at(brokers: &str, count: u64, seed: u64, rate: u64) -> serde_json::Value {
    simulate(&[
        "--brokers", brokers, "--count", &count.to_string(), "--rate", &rate.to_string(), "--seed", &seed.to_string(),
        "--partitions", "0", "--invalid-share", "0.05", "--duplicate-share", "0.05", "--late-share", "0.02",
        "--out-of-order-share", "0.05", "--start", "2026-11-20T10:00:00Z", "--speed", "30",
    ])
}

pub(crate) async fn ingest_until(cfg: &Config, committed: u64) -> Arc<Stats> {
    let stats = Arc::new(Stats::default());
    let shutdown = Shutdown::default();
    let task = tokio::spawn(ingest::run(cfg.clone(), stats.clone(), shutdown.clone()));
    let s = stats.clone();
    wait_until(Duration::from_secs(120), "every record committed", || {
        let s = s.clone();
        async move { s.committed_total() >= committed }
    })
    .await;
    shutdown.trigger();
    task.await.unwrap().unwrap();
    stats
}

async fn assert_lake_matches(cfg: &Config, totals: &serde_json::Value) {
    let lake = lake(std::path::Path::new(&cfg.lake.path));
    let (r, a) = (cfg.kafka.readings_topic.as_str(), cfg.kafka.activity_topic.as_str());
    assert_eq!(scalar(&lake, "SELECT count(*) FROM readings").await, total(totals, "unique_valid", r));
    assert_eq!(scalar(&lake, "SELECT count(*) FROM activity").await, total(totals, "unique_valid", a));
    for (table, topic) in [("readings", r), ("activity", a)] {
        let n = scalar(&lake, &format!("SELECT count(*) FROM {table}")).await;
        let keys = scalar(&lake, &format!("SELECT count(DISTINCT idempotency_key) FROM {table}")).await;
        let offs = scalar(&lake, &format!("SELECT count(DISTINCT (kafka_partition, kafka_offset)) FROM {table}")).await;
        assert_eq!((keys, offs), (n, n), "{table}: every row unique");
        let wrong = scalar(&lake, &format!("SELECT count(*) FROM {table} WHERE kafka_topic <> '{topic}'")).await;
        assert_eq!(wrong, 0);
    }
    let by_reason = counts_by(&lake, "SELECT source_topic || ':' || reason, count(*) FROM rejected GROUP BY 1").await;
    let mut expected = std::collections::BTreeMap::new();
    for topic in [r, a] {
        if let Some(m) = totals["invalid"][topic].as_object() {
            for (reason, n) in m {
                expected.insert(format!("{topic}:{reason}"), n.as_i64().unwrap());
            }
        }
    }
    assert_eq!(by_reason, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bronze_holds_exactly_the_unique_valid_events_and_rejected_the_invalid_ones() {
    let s = setup();
    let totals = produce(&s.cfg.kafka.brokers, 6000, 11);
    let stats = ingest_until(&s.cfg, 6000).await;
    assert_lake_matches(&s.cfg, &totals).await;
    // Every record came through the batch queue (see batch_queue_* below).
    assert_eq!(stats.unbatched.load(Ordering::Relaxed), 0, "records read one by one");
    // Counts exported match what was planted.
    let dups: i64 = ["vibration.readings", "user.activity"].iter().map(|t| total(&totals, "duplicates", t)).sum();
    let d = stats.duplicate[0].load(Ordering::Relaxed) + stats.duplicate[1].load(Ordering::Relaxed);
    assert_eq!(d as i64, dups);
    // The DLQ topic holds one record per invalid event, with its reason and no PII.
    let invalid: i64 = ["vibration.readings", "user.activity"].iter().map(|t| invalid_total(&totals, t)).sum();
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &s.cfg.kafka.brokers)
        .set("group.id", unique("dlq-reader"))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[&s.cfg.kafka.dlq_topic]).unwrap();
    let mut seen = 0;
    let start = std::time::Instant::now();
    while seen < invalid && start.elapsed() < Duration::from_secs(30) {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            let v: serde_json::Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
            assert!(v["reason"].is_string() && v["offset"].is_i64() && v["source_topic"].is_string());
            assert!(!m.payload().unwrap().windows(12).any(|w| w == b"@example.org"), "PII in the DLQ");
            seen += 1;
        }
    }
    assert_eq!(seen, invalid);
    // Close the reader while its broker is still there: closing waits for the group to be left.
    drop(consumer);
    // No PII anywhere in the lake's files.
    assert_no_bytes(std::path::Path::new(&s.cfg.lake.path), b"@example.org");
    drop(s.cluster);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_resumes_from_the_delta_log_with_no_loss_and_no_duplicate() {
    let s = setup();
    let totals = produce(&s.cfg.kafka.brokers, 8000, 12);
    // First run: stop part-way (everything consumed by then is committed).
    ingest_until(&s.cfg, 3000).await;
    // Second run, same lake and group: picks up where the log says.
    let lake = lake(std::path::Path::new(&s.cfg.lake.path));
    let before = scalar(&lake, "SELECT count(*) FROM readings").await + scalar(&lake, "SELECT count(*) FROM activity").await;
    assert!(before > 0);
    let stats = Arc::new(Stats::default());
    let shutdown = Shutdown::default();
    let task = tokio::spawn(ingest::run(s.cfg.clone(), stats.clone(), shutdown.clone()));
    let expected = total(&totals, "unique_valid", "vibration.readings") + total(&totals, "unique_valid", "user.activity");
    let l = lake.clone();
    wait_until(Duration::from_secs(120), "bronze complete", || {
        let l = l.clone();
        async move {
            scalar(&l, "SELECT count(*) FROM readings").await + scalar(&l, "SELECT count(*) FROM activity").await >= expected
        }
    })
    .await;
    shutdown.trigger();
    task.await.unwrap().unwrap();
    assert_lake_matches(&s.cfg, &totals).await;
    // The second run did not re-read what the first committed.
    assert!(stats.consumed.load(Ordering::Relaxed) < 8000);
    drop(s.cluster);
}

pub fn assert_no_bytes(root: &std::path::Path, needle: &[u8]) {
    for entry in walk(root) {
        let bytes = std::fs::read(&entry).unwrap();
        assert!(!bytes.windows(needle.len()).any(|w| w == needle), "{} contains {:?}", entry.display(), String::from_utf8_lossy(needle));
    }
}

fn walk(root: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() { stack.push(p) } else { out.push(p) }
        }
    }
    out
}

fn merged(a: &serde_json::Value, b: &serde_json::Value) -> serde_json::Value {
    let mut out = serde_json::json!({"unique_valid": {}, "duplicates": {}, "invalid": {}});
    for t in [a, b] {
        for key in ["unique_valid", "duplicates"] {
            for (topic, n) in t[key].as_object().unwrap() {
                let cur = out[key][topic].as_i64().unwrap_or(0);
                out[key][topic] = (cur + n.as_i64().unwrap()).into();
            }
        }
        for (topic, reasons) in t["invalid"].as_object().unwrap() {
            for (reason, n) in reasons.as_object().unwrap() {
                let cur = out["invalid"][topic][reason].as_i64().unwrap_or(0);
                out["invalid"][topic][reason] = (cur + n.as_i64().unwrap()).into();
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unwritable_lake_pauses_consumption_and_resumes_with_nothing_lost() {
    let mut s = setup();
    s.cfg.ingest.max_batch_rows = 500;
    let first = produce(&s.cfg.kafka.brokers, 2000, 21);
    let stats = Arc::new(Stats::default());
    let shutdown = Shutdown::default();
    let task = tokio::spawn(ingest::run(s.cfg.clone(), stats.clone(), shutdown.clone()));
    let st = stats.clone();
    wait_until(Duration::from_secs(60), "the first records committed", || {
        let st = st.clone();
        async move { st.committed_total() >= 2000 }
    })
    .await;
    // Break the readings table: its log directory becomes a file, so commits fail.
    let log = std::path::Path::new(&s.cfg.lake.path).join("readings/_delta_log");
    let aside = log.with_file_name("_delta_log.aside");
    std::fs::rename(&log, &aside).unwrap();
    std::fs::write(&log, b"not a directory").unwrap();
    let second = produce(&s.cfg.kafka.brokers, 6000, 22);
    let st = stats.clone();
    wait_until(Duration::from_secs(30), "the lake reported not writable", || {
        let st = st.clone();
        async move { !st.lake_ready.load(Ordering::SeqCst) }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let readings_before = stats.bronze[0].load(Ordering::SeqCst);
    let consumed_before = stats.consumed.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(stats.bronze[0].load(Ordering::SeqCst), readings_before, "nothing commits while the lake is down");
    // Backpressure: consumption stopped; what is held is bounded by the pending flushes.
    let consumed = stats.consumed.load(Ordering::SeqCst);
    assert_eq!(consumed, consumed_before, "consumption is paused while the lake is down");
    assert!(stats.pending_flushes.load(Ordering::SeqCst) <= s.cfg.ingest.max_pending_flushes);
    let held = consumed - stats.committed_total();
    assert!(held <= 5 * 500 + 1000, "uncommitted records stay bounded, held {held}");
    assert!(consumed < 8000, "the consumer did not run ahead of the lake");
    // Repair: it resumes by itself and loses nothing.
    std::fs::remove_file(&log).unwrap();
    std::fs::rename(&aside, &log).unwrap();
    let st = stats.clone();
    wait_until(Duration::from_secs(60), "everything committed after the repair", || {
        let st = st.clone();
        async move { st.committed_total() >= 8000 }
    })
    .await;
    assert!(stats.lake_ready.load(Ordering::SeqCst));
    shutdown.trigger();
    task.await.unwrap().unwrap();
    assert_lake_matches(&s.cfg, &merged(&first, &second)).await;
    drop(s.cluster);
}

/// Sums two simulator totals (numbers added, objects merged key by key).
fn add_totals(into: &mut serde_json::Value, more: &serde_json::Value) {
    match (into, more) {
        (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
            for (k, v) in b {
                add_totals(a.entry(k.clone()).or_insert(serde_json::json!(0)), v);
            }
        }
        (a @ serde_json::Value::Number(_), serde_json::Value::Number(b)) => {
            *a = serde_json::json!(a.as_i64().unwrap() + b.as_i64().unwrap());
        }
        (a, b) => *a = b.clone(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_and_vacuum_while_ingesting_lose_and_double_nothing() {
    let mut s = setup();
    // A pass every 2 s, vacuuming at once what compaction replaced; a by-hand optimize as well.
    s.cfg.maintenance.interval = Duration::from_secs(2);
    s.cfg.maintenance.vacuum_retention = Duration::ZERO;
    // The events are dated 2026-11-20: keep retention from expiring them whenever this runs.
    s.cfg.lifecycle.granular_retention = Duration::from_secs(100 * 365 * 86_400);
    s.cfg.lifecycle.pseudonymize_after = Duration::from_secs(100 * 365 * 86_400);
    let stats = Arc::new(Stats::default());
    let shutdown = Shutdown::default();
    let task = tokio::spawn(ingest::run(s.cfg.clone(), stats.clone(), shutdown.clone()));
    let brokers = s.cfg.kafka.brokers.clone();
    let lake_path = s.cfg.lake.path.clone();
    // The producer writes 2000 events/s for about 12 s while maintenance runs.
    let producer = std::thread::spawn(move || {
        let mut totals = serde_json::json!({});
        let mut by_hand = 0;
        for round in 0..6u64 {
            add_totals(&mut totals, &produce_at(&brokers, 4000, 100 + round, 2000));
            if round == 2 {
                let out = std::process::Command::new(campo_bin()).args(["lake", "--lake", &lake_path, "optimize"]).output().unwrap();
                assert!(out.status.success(), "campo lake optimize: {}", String::from_utf8_lossy(&out.stderr));
                by_hand += 1;
            }
        }
        (totals, by_hand)
    });
    let (totals, by_hand) = tokio::task::spawn_blocking(move || producer.join().unwrap()).await.unwrap();
    assert_eq!(by_hand, 1);
    let records = totals["records"].as_u64().unwrap();
    let s2 = stats.clone();
    wait_until(Duration::from_secs(120), "every record committed", || {
        let s = s2.clone();
        async move { s.committed_total() >= records }
    })
    .await;
    let lake = lake(std::path::Path::new(&s.cfg.lake.path));
    let flushes = stats.flushes.load(Ordering::Relaxed);
    let readings_dir = std::path::Path::new(&s.cfg.lake.path).join("readings");
    let on_disk = move || {
        std::fs::read_dir(&readings_dir)
            .unwrap()
            .flat_map(|d| std::fs::read_dir(d.unwrap().path()).into_iter().flatten())
            .filter(|e| e.as_ref().is_ok_and(|e| e.path().extension().is_some_and(|x| x == "parquet")))
            .count()
    };
    // The passes go on every 2 s: one after the last commit compacts it and vacuums what it
    // replaced (how soon depends on the machine's load).
    let (l, d) = (lake.clone(), on_disk.clone());
    wait_until(Duration::from_secs(60), "a pass compacted and vacuumed the last commits", || {
        let (l, d) = (l.clone(), d.clone());
        async move {
            let st = l.status(campo_lake::TableKind::Readings).await.unwrap().unwrap();
            (st.files as u64) * 3 < flushes && (d() as u64) * 2 < flushes
        }
    })
    .await;
    shutdown.trigger();
    task.await.unwrap().unwrap();
    let status = lake.status(campo_lake::TableKind::Readings).await.unwrap().unwrap();
    assert!(status.last_optimize.is_some() && status.last_vacuum.is_some(), "{status:?}");
    let on_disk = on_disk();
    eprintln!("maintenance while ingesting: {flushes} flushes, {} live files in readings, {on_disk} on disk", status.files);
    assert_lake_matches(&s.cfg, &totals).await;

    // Independent readers still read every table, and agree.
    let tables = ["readings", "activity", "rejected", "region_metrics_1m", "evu_1m", "collapse_forecast", "alerts"];
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/read_lake.py");
    let out = std::process::Command::new(python()).arg(script).arg(&s.cfg.lake.path).args(tables).output().unwrap();
    assert!(out.status.success(), "read_lake.py: {}", String::from_utf8_lossy(&out.stderr));
    let counts: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for table in tables {
        let ours = scalar(&lake, &format!("SELECT count(*) FROM {table}")).await;
        for reader in ["deltalake", "polars", "duckdb"] {
            assert_eq!(counts[reader][table].as_i64(), Some(ours), "{reader} reads {table}");
        }
    }
    drop(s.cluster);
}

/// A lake writer that cannot start (here its DLQ producer: idempotence needs `acks=all`, and
/// the consumer ignores the producer-only `acks`) stops the whole ingest with its error, with
/// nothing committed, instead of leaving the consumer holding a flush for a writer that is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_that_fails_stops_the_ingest_with_its_error() {
    let mut s = setup();
    s.cfg.windows.enabled = false;
    s.cfg.kafka.properties.insert("acks".into(), "1".into());
    produce(&s.cfg.kafka.brokers, 500, 31);
    let stats = Arc::new(Stats::default());
    let shutdown = Shutdown::default();
    let run = ingest::run(s.cfg.clone(), stats.clone(), shutdown.clone());
    let result = tokio::time::timeout(Duration::from_secs(60), run).await.expect("the ingest stops by itself");
    let err = result.expect_err("the writer's failure is the ingest's error").to_string();
    assert!(err.contains("acks"), "the error names the cause: {err}");
    assert!(shutdown.is_triggered());
    assert_eq!(stats.committed_total(), 0);
    drop(s.cluster);
}

/// Produces `n` records `"<partition>:<i>"` to each of `partitions` partitions of `topic`.
fn produce_numbered(brokers: &str, topic: &str, partitions: i32, n: usize) {
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let producer: BaseProducer = ClientConfig::new().set("bootstrap.servers", brokers).create().unwrap();
    for i in 0..n {
        for p in 0..partitions {
            let v = format!("{p}:{i}");
            producer.send(BaseRecord::<(), _>::to(topic).partition(p).payload(&v)).unwrap();
        }
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(10)).unwrap();
}

/// Takes from `queue` until `n` records arrived (or 20 s passed): (partition, offset, value).
fn take_n(queue: &mut BatchQueue<'_>, n: usize) -> Vec<(i32, i64, String)> {
    let mut got = Vec::new();
    let start = std::time::Instant::now();
    while got.len() < n && start.elapsed() < Duration::from_secs(20) {
        let batch = queue.take(Duration::from_millis(100), 64);
        for m in batch.iter() {
            assert!(m.error().is_none(), "{:?}", m.error());
            assert_eq!(m.topic(), "bq");
            got.push((m.partition(), m.offset(), String::from_utf8(m.payload().unwrap().to_vec()).unwrap()));
        }
    }
    got
}

/// The batch queue the ingest consumes from: a routed partition's records arrive there in
/// offset order and nowhere else, an unrouted one's on the consumer queue, and a seek drops
/// what was fetched before it (the ingest's resync relies on that).
#[test]
fn batch_queue_takes_routed_partitions_in_order_and_honours_seek() {
    let cluster = MockCluster::new(1).unwrap();
    let brokers = cluster.bootstrap_servers();
    cluster.create_topic("bq", 2, 1).unwrap();
    produce_numbered(&brokers, "bq", 2, 300);
    let consumer: BaseConsumer =
        ClientConfig::new().set("bootstrap.servers", &brokers).set("group.id", unique("bq")).create().unwrap();
    let mut queue = BatchQueue::new(consumer.client());
    let mut all = TopicPartitionList::new();
    all.add_partition_offset("bq", 0, Offset::Beginning).unwrap();
    all.add_partition_offset("bq", 1, Offset::Beginning).unwrap();
    let mut routed = TopicPartitionList::new();
    routed.add_partition("bq", 0);
    assert_eq!(queue.route(&routed), 1);
    consumer.assign(&all).unwrap();

    let got = take_n(&mut queue, 300);
    let want: Vec<_> = (0..300).map(|i| (0, i as i64, format!("0:{i}"))).collect();
    assert_eq!(got, want, "partition 0 in offset order, and only partition 0");
    let mut unrouted = Vec::new();
    let start = std::time::Instant::now();
    while unrouted.len() < 300 && start.elapsed() < Duration::from_secs(20) {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            unrouted.push((m.partition(), m.offset()));
        }
    }
    assert_eq!(unrouted, (0..300).map(|i| (1, i)).collect::<Vec<_>>(), "partition 1 stays on the consumer queue");

    // Records fetched before a seek are dropped: after seeking back to 250, the next record is 250.
    produce_numbered(&brokers, "bq", 1, 100);
    std::thread::sleep(Duration::from_millis(500));
    consumer.seek("bq", 0, Offset::Offset(250), Duration::from_secs(5)).unwrap();
    let got = take_n(&mut queue, 150);
    assert_eq!(got.first().map(|g| g.1), Some(250));
    assert_eq!(got.iter().map(|g| g.1).collect::<Vec<_>>(), (250..400).collect::<Vec<_>>());
    drop(queue);
    drop(consumer);
}
