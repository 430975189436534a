//! The crash test: `campo run` killed with SIGKILL at random points, at least 20 times, while a
//! producer writes 200K events; the lake must end identical to an uninterrupted run.
//!
//! tansu workarounds (shared/TANSU.md), to drop when the broker is fixed:
//! - the producer sends one record per batch (`batch.num.messages=1`, `linger.ms=0`): tansu skips
//!   the rest of a batch when a consumer resumes inside it;
//! - `session.timeout.ms=6000` and each replacement starts only after it has passed: a group
//!   can otherwise keep an empty assignment after its only member was killed.

use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};

use crate::e2e::{bronze_rows, campo_run, stop, topics};
use crate::harness::*;

async fn rows(lake: &campo_lake::Lake, table: &str, cols: &str) -> Vec<String> {
    let mut out = Vec::new();
    let sql = format!("SELECT concat_ws('|', {cols}) FROM {table}");
    lake.for_each_string(&sql, |s| out.push(s.to_string())).await.unwrap();
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_twenty_times_loses_nothing_and_duplicates_nothing() {
    const EVENTS: &str = "200000";
    let broker = Broker::start();
    let (r, a, d) = topics("crash");
    broker.create_topics((&r, &a, &d), 4);
    let producer = one_record_batches_producer(&broker.addr, (&r, &a), &[
        "--count", EVENTS, "--rate", "0", "--seed", "77", "--invalid-share", "0.02", "--duplicate-share", "0.02",
        "--start", "2026-11-22T09:00:00Z", "--speed", "30",
    ]);
    let dir = tempfile::tempdir().unwrap();
    let lake_path = dir.path().join("lake");
    let group = unique("crash-g");
    let kafka_opts = ["-X", "session.timeout.ms=6000", "-X", "heartbeat.interval.ms=1000"];
    let mut rng = rand::rngs::StdRng::seed_from_u64(2026);
    let started = Instant::now();
    let lake = lake(&lake_path);
    let mut progress = Vec::new();
    for kill in 0..20 {
        let mut child = campo_run(&broker.addr, &lake_path, &group, (&r, &a, &d), &kafka_opts);
        let alive = Duration::from_millis(rng.random_range(1500..4000));
        tokio::time::sleep(alive).await;
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let n = if lake.open("readings").await.is_ok() { bronze_rows(&lake).await } else { 0 };
        progress.push(n);
        eprintln!("kill {kill}: after {alive:?}, bronze has {n} rows ({:?} elapsed)", started.elapsed());
        tokio::time::sleep(Duration::from_millis(6500)).await;
    }
    let out = producer.finish();
    let totals: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(progress.windows(2).any(|w| w[1] > w[0]), "the killed runs made progress: {progress:?}");

    // A last, clean run finishes the job.
    let expected = total(&totals, "unique_valid", &r) + total(&totals, "unique_valid", &a);
    let invalid = invalid_total(&totals, &r) + invalid_total(&totals, &a);
    let child = campo_run(&broker.addr, &lake_path, &group, (&r, &a, &d), &kafka_opts);
    wait_until(Duration::from_secs(300), "bronze complete after the kills", || {
        let l = lake.clone();
        async move { bronze_rows(&l).await >= expected && scalar(&l, "SELECT count(*) FROM rejected").await >= invalid }
    })
    .await;
    stop(child);

    // The uninterrupted reference run, on a lake and group of its own.
    let ref_path = dir.path().join("reference");
    let child = campo_run(&broker.addr, &ref_path, &unique("ref-g"), (&r, &a, &d), &[]);
    let reference = crate::harness::lake(&ref_path);
    wait_until(Duration::from_secs(300), "reference run complete", || {
        let l = reference.clone();
        async move { l.open("rejected").await.is_ok() && bronze_rows(&l).await >= expected && scalar(&l, "SELECT count(*) FROM rejected").await >= invalid }
    })
    .await;
    stop(child);

    let key = "kafka_topic, kafka_partition, kafka_offset, event_id, idempotency_key";
    for table in ["readings", "activity"] {
        let (got, want) = (rows(&lake, table, key).await, rows(&reference, table, key).await);
        assert_eq!(got.len(), want.len(), "{table}: row count after kills vs uninterrupted");
        assert!(got == want, "{table}: rows differ from the uninterrupted run");
    }
    let rej = "source_topic, \"partition\", \"offset\", reason";
    assert_eq!(rows(&lake, "rejected", rej).await, rows(&reference, "rejected", rej).await);
    assert_eq!(bronze_rows(&lake).await, expected);
}
