//! The lake's lifecycle benchmark (issue 7): on a lake of CAMPO_BENCH_READINGS readings
//! (default 10 million) written the way the ingest writes it (one commit of
//! CAMPO_BENCH_FLUSH_ROWS rows a flush, default 20000, so many small files over three days):
//!
//! 1. a typical analyst query, one day of one region by hour, before and after compaction
//!    (bin-packing, then z-order by region, as `campo lake optimize --zorder` does), and the
//!    speed-up;
//! 2. the time from an erasure request (`Lake::forget`, what `campo forget` runs) to the user
//!    verified erased: no row left, and no byte of the `user_hash` in any file under the lake
//!    root (the scan is part of the time); once on the lake as ingested (the user's rows in
//!    about a hundred small files) and once after compaction (in a few large ones).
//!
//! Run: `cargo bench --bench lake` (CAMPO_BENCH_DIR: where the lake is built, default a
//! temporary directory).

use std::sync::Arc;
use std::time::{Duration, Instant};

use campo_lake::arrow::array::{
    ArrayRef, BooleanArray, Date32Array, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use campo_lake::maintain::{Dates, OptimizeOptions};
use campo_lake::{Lake, OffsetTxn, TableCommit, TableKind, TableWriter};

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

const REGIONS: [&str; 5] = ["sa-east-1", "us-east-1", "eu-west-1", "europe-west1", "asia-east1"];
const USERS: u64 = 100_000;
/// 2026-11-20T00:00:00Z, µs.
const DAY0_US: i64 = 1_795_132_800_000_000;
const DAY_US: i64 = 86_400_000_000;

fn user(u: u64) -> String {
    format!("u_{:016x}", u.wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

/// Rows `from..from + n` of the bench's readings: three days in time order, users and regions
/// spread evenly (a user keeps a region), Hz around a per-user baseline.
fn batch(from: u64, n: usize, total: u64) -> RecordBatch {
    let mut rng = from.wrapping_mul(0x2545_F491_4F6C_DD1D) | 1;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let (mut users, mut regions, mut hz, mut at, mut dates, mut ids, mut keys, mut offsets) =
        (vec![], vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
    for i in from..from + n as u64 {
        let u = next() % USERS;
        let t = DAY0_US + (i as i128 * 3 * DAY_US as i128 / total as i128) as i64;
        users.push(user(u));
        regions.push(REGIONS[(u % 5) as usize]);
        hz.push(380.0 + (u % 200) as f64 + (next() % 100) as f64 * 0.5);
        at.push(t);
        dates.push((t.div_euclid(DAY_US)) as i32);
        ids.push(format!("{:032x}", next() as u128 * 0x1_0000_0001));
        keys.push(format!("bench-{i}"));
        offsets.push(i as i64);
    }
    let n = users.len();
    let s = |v: &str| Arc::new(StringArray::from(vec![v; n])) as ArrayRef;
    let bucket: Vec<i32> = hz.iter().map(|h| (h / 100.0).floor().min(10.0) as i32).collect();
    RecordBatch::try_new(
        TableKind::Readings.schema(),
        vec![
            Arc::new(StringArray::from(ids)),
            s("1.0.0"),
            Arc::new(TimestampMicrosecondArray::from(at.clone()).with_timezone("UTC")),
            s("bench"),
            Arc::new(StringArray::from(keys)),
            s("trace"),
            Arc::new(StringArray::from(users)),
            Arc::new(StringArray::from(regions)),
            Arc::new(Float64Array::from(hz)),
            Arc::new(Int32Array::from(bucket)),
            Arc::new(BooleanArray::from(vec![true; n])),
            Arc::new(Float64Array::from(vec![Some(0.1); n])),
            Arc::new(Float64Array::from(vec![Some(0.5); n])),
            Arc::new(StringArray::from(vec![None::<&str>; n])),
            s("vibration.readings"),
            Arc::new(Int32Array::from(vec![0; n])),
            Arc::new(Int64Array::from(offsets)),
            Arc::new(TimestampMicrosecondArray::from(at).with_timezone("UTC")),
            Arc::new(BooleanArray::from(vec![false; n])),
            Arc::new(Date32Array::from(dates)),
        ],
    )
    .expect("the bench batch matches the readings schema")
}

const QUERY: &str = "SELECT date_trunc('hour', occurred_at) AS hour, count(*) AS readings, avg(hz) AS hz_mean, \
     avg(CASE WHEN hz < 420 THEN 1.0 ELSE 0.0 END) AS low_share, count(DISTINCT user_hash) AS users \
     FROM readings WHERE event_date = DATE '2026-11-21' AND region = 'sa-east-1' GROUP BY 1 ORDER BY 1";

/// The best of three runs of the analyst query (each opens the table, as a notebook does).
async fn analyst_query(lake: &Lake) -> (f64, usize) {
    let mut best = f64::MAX;
    let mut rows = 0;
    for _ in 0..3 {
        let t = Instant::now();
        let b = lake.query(QUERY).await.expect("the analyst query");
        best = best.min(t.elapsed().as_secs_f64());
        rows = b.iter().map(RecordBatch::num_rows).sum();
    }
    (best, rows)
}

fn files_under(root: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = vec![];
    let mut todo = vec![root.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() { todo.push(p) } else { out.push(p) }
        }
    }
    out
}

fn contains(path: &std::path::Path, needle: &[u8]) -> bool {
    let bytes = std::fs::read(path).unwrap_or_default();
    bytes.windows(needle.len()).any(|w| w == needle)
}

fn count_of(b: &[RecordBatch]) -> i64 {
    use campo_lake::arrow::array::AsArray;
    b[0].column(0).as_primitive::<campo_lake::arrow::datatypes::Int64Type>().value(0)
}

/// Erases `victim` (what `campo forget` runs) and verifies it: no row left and no file under
/// the lake root holding the `user_hash` bytes. Returns the seconds to erased and to verified.
async fn erase(lake: &Lake, root: &std::path::Path, keys: &campo_lake::lifecycle::PeriodKeys, victim: &str) -> (f64, f64) {
    let count = format!("SELECT count(*) FROM readings WHERE user_hash = '{victim}'");
    let n_before = count_of(&lake.query(&count).await.unwrap());
    let files_before = lake.status(TableKind::Readings).await.unwrap().unwrap().files;
    let t = Instant::now();
    let report = lake.forget(&[victim.to_string()], keys, Duration::from_secs(3600)).await.unwrap();
    let erased_s = t.elapsed().as_secs_f64();
    let left = count_of(&lake.query(&count).await.unwrap());
    let files = files_under(root);
    let found: Vec<_> = files.iter().filter(|p| contains(p, victim.as_bytes())).collect();
    let verified_s = t.elapsed().as_secs_f64();
    assert_eq!(left, 0, "rows of the user left");
    assert!(found.is_empty(), "the user_hash is still in {found:?}");
    println!(
        "   {} of the user's {n_before} rows deleted from a table of {files_before} files; {} files deleted and {} log files scrubbed; {} files scanned, none holds the user_hash",
        report.rows.get("readings").copied().unwrap_or(0),
        report.files_removed,
        report.log_entries_scrubbed,
        files.len()
    );
    println!("   erased in {erased_s:.1} s; verified erased (no row, no byte) at {verified_s:.1} s (target <= 300 s)");
    (erased_s, verified_s)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let total = env("CAMPO_BENCH_READINGS", 10_000_000);
    let flush = env("CAMPO_BENCH_FLUSH_ROWS", 20_000) as usize;
    let tmp = tempfile::tempdir().unwrap();
    let base = std::env::var_os("CAMPO_BENCH_DIR").map(std::path::PathBuf::from).unwrap_or_else(|| tmp.path().to_path_buf());
    let root = base.join("lake");
    let _ = std::fs::remove_dir_all(&root);
    let lake = Lake::new(root.to_str().unwrap(), Default::default()).unwrap();

    println!("== writing {total} readings, {flush} a commit (as the ingest does) ...");
    let t = Instant::now();
    let mut w = TableWriter::open(&lake, TableKind::Readings, "bench").await.unwrap();
    let mut last = None;
    let mut from = 0;
    while from < total {
        let n = flush.min((total - from) as usize);
        let b = batch(from, n, total);
        let txn = OffsetTxn { topic: "vibration.readings".into(), partition: 0, expected: last, last: (from + n as u64 - 1) as i64 };
        last = Some(txn.last);
        w.commit(&TableCommit { batches: vec![b], txns: vec![txn] }).await.unwrap();
        from += n as u64;
        if (from / flush as u64).is_multiple_of(100) {
            eprintln!("   {from} rows, {:.0} s", t.elapsed().as_secs_f64());
        }
    }
    w.maintenance_done().await;
    let st = lake.status(TableKind::Readings).await.unwrap().unwrap();
    println!("   written in {:.1} s: {} files, {:.1} MiB, version {}", t.elapsed().as_secs_f64(), st.files, st.bytes as f64 / (1 << 20) as f64, st.version);

    println!("== analyst query (one day of one region, by hour), before compaction");
    let (before, rows) = analyst_query(&lake).await;
    println!("   best of 3: {:.3} s ({rows} rows)", before);

    let keys = campo_lake::lifecycle::PeriodKeys::open(&base.join("lake.keys"), &lake).unwrap();
    println!("== erasure of one user from the lake as ingested (small files), request to verified erased");
    let (erased_small, verified_small) = erase(&lake, &root, &keys, &user(4242)).await;

    println!("== compaction: bin-packing, then z-order by region (campo lake optimize --zorder)");
    let t = Instant::now();
    let compact = lake.optimize(TableKind::Readings, &OptimizeOptions::default()).await.unwrap();
    let z = lake
        .optimize(TableKind::Readings, &OptimizeOptions { zorder_by_region: true, dates: Dates::All, ..Default::default() })
        .await
        .unwrap();
    let st = lake.status(TableKind::Readings).await.unwrap().unwrap();
    println!(
        "   {} files -> {} (z-order rewrote {} into {}) in {:.1} s",
        compact.files_removed,
        st.files,
        z.files_removed,
        z.files_added,
        t.elapsed().as_secs_f64()
    );
    let (after, rows_after) = analyst_query(&lake).await;
    assert_eq!(rows, rows_after, "the same answer after compaction");
    println!("   best of 3 after: {:.3} s; speed-up {:.1}x", after, before / after);

    println!("== erasure of one user from the compacted lake, request to verified erased");
    let (erased_big, verified_big) = erase(&lake, &root, &keys, &user(777)).await;
    println!("RESULT readings={total} query_before_s={before:.3} query_after_s={after:.3} speedup={:.1} erasure_small_files_s={erased_small:.1} verified_small_files_s={verified_small:.1} erasure_compacted_s={erased_big:.1} verified_compacted_s={verified_big:.1}", before / after);
}
