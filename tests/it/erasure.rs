//! Erasure (SPEC 8, `campo forget`): a user's events spread over many files, both date
//! partitions and three tables (an invalid record in `rejected` too, and files an earlier compaction replaced);
//! after `campo forget` no byte sequence of the `user_hash` is anywhere under the lake root
//! (data files and Delta logs alike), every other row is unchanged, the request is recorded
//! without the identifier, independent readers still read the lake, and a replay of the topics
//! from before the erasure does not bring the user back.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

use crate::harness::*;
use crate::mock::{assert_no_bytes, ingest_until, setup};

async fn others(l: &campo_lake::Lake, victim: &str) -> [BTreeMap<String, i64>; 3] {
    [
        counts_by(l, &format!("SELECT event_id, kafka_offset FROM readings WHERE user_hash <> '{victim}'")).await,
        counts_by(l, &format!("SELECT event_id, kafka_offset FROM activity WHERE user_hash <> '{victim}'")).await,
        counts_by(l, &format!("SELECT source_topic || '/' || CAST(\"partition\" AS VARCHAR) || '/' || CAST(\"offset\" AS VARCHAR), size_bytes FROM rejected WHERE strpos(record, '{victim}') = 0")).await,
    ]
}

async fn victim_rows(l: &campo_lake::Lake, victim: &str) -> [i64; 3] {
    [
        scalar(l, &format!("SELECT count(*) FROM readings WHERE user_hash = '{victim}'")).await,
        scalar(l, &format!("SELECT count(*) FROM activity WHERE user_hash = '{victim}'")).await,
        scalar(l, &format!("SELECT count(*) FROM rejected WHERE strpos(record, '{victim}') > 0")).await,
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forgotten_user_leaves_no_byte_in_the_lake_and_a_replay_does_not_bring_them_back() {
    let mut s = setup();
    s.cfg.windows.enabled = false;
    let brokers = s.cfg.kafka.brokers.clone();
    // 8000 events over midnight (two date partitions), 20 flushes or so, 20 users a region.
    let totals = simulate(&[
        "--brokers", &brokers, "--count", "8000", "--rate", "4000", "--seed", "21", "--partitions", "0",
        "--users-per-region", "20", "--invalid-share", "0.03", "--duplicate-share", "0.03",
        "--start", "2026-11-20T23:59:00Z", "--speed", "60",
    ]);
    let records = totals["records"].as_u64().unwrap();
    ingest_until(&s.cfg, records).await;
    let root = Path::new(&s.cfg.lake.path).to_path_buf();
    let l = lake(&root);

    // The victim: a user with rows on both days, in many commits (the key is the region, so a
    // user stays in one Kafka partition).
    let candidates = counts_by(
        &l,
        "SELECT user_hash, count(*) FROM readings GROUP BY user_hash HAVING count(DISTINCT event_date) > 1",
    )
    .await;
    let (victim, _) = candidates.iter().max_by_key(|(_, n)| **n).expect("a user with rows on both days");
    let victim = victim.clone();
    // Their invalid records too: one with a bad field, one that is not JSON at all.
    let producer: BaseProducer = rdkafka::ClientConfig::new().set("bootstrap.servers", &brokers).create().unwrap();
    let bad = format!(
        r#"{{"event_id":"7c1f5a52-0000-4000-8000-000000000001","schema_version":"1.0.0","occurred_at":"2026-11-20T23:59:00Z","producer":"t","idempotency_key":"erasure-bad-1","trace_id":"t","user_hash":"{victim}","region":"eu-west-1","hz":"loud"}}"#
    );
    let garbage = format!("<<garbage from {victim} >>");
    for payload in [bad.as_str(), garbage.as_str()] {
        producer.send(BaseRecord::to(&s.cfg.kafka.readings_topic).key("eu-west-1").payload(payload)).unwrap();
    }
    producer.flush(Duration::from_secs(10)).unwrap();
    ingest_until(&s.cfg, 2).await;
    // A compaction leaves the files it replaced on disk (vacuum keeps them 7 days): they hold
    // the victim's rows as well.
    let out = Command::new(campo_bin()).args(["lake", "--lake"]).arg(&root).args(["optimize", "--table", "readings"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let before = victim_rows(&l, &victim).await;
    assert!(before[0] >= 5 && before[1] >= 1 && before[2] >= 2, "victim rows {before:?}");
    let kept = others(&l, &victim).await;

    // The erasure.
    let out = Command::new(campo_bin()).args(["forget", "--lake"]).arg(&root).arg(&victim).output().unwrap();
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "campo forget: {}\n{said}", String::from_utf8_lossy(&out.stderr));
    assert!(said.contains(&format!("readings: {} rows deleted", before[0])), "{said}");
    assert!(said.contains(&format!("activity: {} rows deleted", before[1])), "{said}");
    assert!(said.contains(&format!("rejected: {} rows deleted", before[2])), "{said}");

    // No byte of the user_hash anywhere under the lake root: data files, logs, checkpoints.
    assert_no_bytes(&root, victim.as_bytes());
    let l = lake(&root);
    assert_eq!(victim_rows(&l, &victim).await, [0, 0, 0]);
    assert_eq!(others(&l, &victim).await, kept, "every other row unchanged");
    // The request is recorded with a keyed hash, never the user.
    let rec = counts_by(&l, "SELECT user_key, readings_rows FROM erasures WHERE completed_at IS NOT NULL").await;
    assert_eq!(rec.len(), 1, "{rec:?}");
    let (user_key, n) = rec.iter().next().unwrap();
    assert!(user_key.len() == 64 && !user_key.contains(&victim), "{user_key}");
    assert_eq!(*n, before[0]);
    // Independent readers read the rewritten tables and agree.
    let tables = ["readings", "activity", "rejected", "erasures"];
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/read_lake.py");
    let out = Command::new(python()).arg(script).arg(&root).args(tables).output().unwrap();
    assert!(out.status.success(), "read_lake.py: {}", String::from_utf8_lossy(&out.stderr));
    let counts: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for table in tables {
        let ours = scalar(&l, &format!("SELECT count(*) FROM {table}")).await;
        for reader in ["deltalake", "polars", "duckdb"] {
            assert_eq!(counts[reader][table].as_i64(), Some(ours), "{reader} reads {table}");
        }
    }

    // A replay of both topics from their start (a new pipeline name has no positions): the
    // others are duplicates of bronze, the victim's records are dropped as erased.
    let mut replay = s.cfg.clone();
    replay.ingest.pipeline = "replay".into();
    replay.kafka.group_id = unique("replay");
    let stats = ingest_until(&replay, records + 2).await;
    let erased = stats.erased[0].load(Ordering::Relaxed) + stats.erased[1].load(Ordering::Relaxed);
    assert_eq!(erased as i64, before.iter().sum::<i64>(), "every record of the victim dropped as erased");
    let l = lake(&root);
    assert_eq!(victim_rows(&l, &victim).await, [0, 0, 0]);
    let after = others(&l, &victim).await;
    assert_eq!(after[..2], kept[..2], "bronze unchanged by the replay");
    assert_no_bytes(&root, victim.as_bytes());
    drop(s.cluster);
}

/// The erasure while the ingest writes: its commits race the DELETEs (and are fenced by
/// them), the user's records keep arriving; afterwards nothing of the user is in the lake,
/// and no other row is lost or doubled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erasure_during_ingest_leaves_nothing_of_the_user_and_loses_no_other_row() {
    let mut s = setup();
    s.cfg.windows.enabled = false;
    let stats = std::sync::Arc::new(campo_pipelines::ingest::Stats::default());
    let shutdown = campo_pipelines::ingest::Shutdown::default();
    let task = tokio::spawn(campo_pipelines::ingest::run(s.cfg.clone(), stats.clone(), shutdown.clone()));
    let brokers = s.cfg.kafka.brokers.clone();
    // About 12 s of traffic at 2000 events/s from 100 users.
    let producer = std::thread::spawn(move || {
        (0..3u64)
            .map(|round| {
                simulate(&[
                    "--brokers", &brokers, "--count", "8000", "--rate", "2000", "--seed", &(300 + round).to_string(),
                    "--partitions", "0", "--users-per-region", "20", "--invalid-share", "0.02",
                    "--start", "2026-11-20T10:00:00Z", "--speed", "30",
                ])
            })
            .collect::<Vec<_>>()
    });
    let root = Path::new(&s.cfg.lake.path).to_path_buf();
    let l = lake(&root);
    let l2 = l.clone();
    wait_until(Duration::from_secs(60), "some readings committed", || {
        let l = l2.clone();
        async move { l.open("readings").await.is_ok() && scalar(&l, "SELECT count(*) FROM readings").await > 2000 }
    })
    .await;
    let by_user = counts_by(&l, "SELECT user_hash, count(*) FROM readings GROUP BY user_hash").await;
    let victim = by_user.iter().max_by_key(|(_, n)| **n).unwrap().0.clone();
    let forget = {
        let (root, victim) = (root.clone(), victim.clone());
        tokio::task::spawn_blocking(move || Command::new(campo_bin()).args(["forget", "--lake"]).arg(&root).arg(&victim).output().unwrap())
    };
    let out = forget.await.unwrap();
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "campo forget: {}\n{said}", String::from_utf8_lossy(&out.stderr));
    let deleted: i64 = said
        .lines()
        .filter(|l| l.starts_with("readings:") || l.starts_with("activity:"))
        .map(|l| l.split_whitespace().nth(1).unwrap().parse::<i64>().unwrap())
        .sum();
    // Records of the user that occurred before the erasure, read after it (a late delivery, a
    // replay): dropped as erased.
    let kafka: BaseProducer = rdkafka::ClientConfig::new().set("bootstrap.servers", &s.cfg.kafka.brokers).create().unwrap();
    for i in 0..5 {
        let payload = format!(
            r#"{{"event_id":"7c1f5a52-0000-4000-8000-00000000001{i}","schema_version":"1.0.0","occurred_at":"2026-11-20T10:00:0{i}Z","producer":"t","idempotency_key":"erasure-late-{i}","trace_id":"t","user_hash":"{victim}","region":"eu-west-1","hz":432.0}}"#
        );
        kafka.send(BaseRecord::to(&s.cfg.kafka.readings_topic).key("eu-west-1").payload(&payload)).unwrap();
    }
    kafka.flush(Duration::from_secs(10)).unwrap();
    let totals = tokio::task::spawn_blocking(move || producer.join().unwrap()).await.unwrap();
    let records: u64 = totals.iter().map(|t| t["records"].as_u64().unwrap()).sum::<u64>() + 5;
    let unique: i64 =
        totals.iter().map(|t| total(t, "unique_valid", "vibration.readings") + total(t, "unique_valid", "user.activity")).sum();
    let s2 = stats.clone();
    wait_until(Duration::from_secs(120), "every record committed", || {
        let s = s2.clone();
        async move { s.committed_total() >= records }
    })
    .await;
    shutdown.trigger();
    task.await.unwrap().unwrap();

    assert_eq!(victim_rows(&l, &victim).await, [0, 0, 0], "nothing of the user after the erasure");
    assert_no_bytes(&root, victim.as_bytes());
    let erased = stats.erased[0].load(Ordering::Relaxed) + stats.erased[1].load(Ordering::Relaxed);
    assert!(erased >= 5, "the user's records read after the erasure were dropped as erased ({erased})");
    // Every other unique valid event is in bronze once: each is either there, deleted by the
    // erasure, or dropped as erased (the user's invalid records count there too, hence <=).
    let bronze = scalar(&l, "SELECT count(*) FROM readings").await + scalar(&l, "SELECT count(*) FROM activity").await;
    for table in ["readings", "activity"] {
        let n = scalar(&l, &format!("SELECT count(*) FROM {table}")).await;
        let keys = scalar(&l, &format!("SELECT count(DISTINCT idempotency_key) FROM {table}")).await;
        assert_eq!(keys, n, "{table}: no row doubled");
    }
    assert!(bronze + deleted <= unique && unique <= bronze + deleted + erased as i64, "bronze {bronze} + deleted {deleted} + erased {erased} vs unique {unique}");
    drop(s.cluster);
}
