use std::sync::Arc;

use deltalake::arrow::array::{ArrayRef, Date32Array, Int32Array, Int64Array, StringArray, TimestampMicrosecondArray};

use super::*;

fn rejected_rows(offsets: &[i64]) -> RecordBatch {
    let n = offsets.len();
    let s = |v: &str| Arc::new(StringArray::from(vec![v; n])) as ArrayRef;
    RecordBatch::try_new(
        TableKind::Rejected.schema(),
        vec![
            s("t"),
            Arc::new(Int32Array::from(vec![0; n])),
            Arc::new(Int64Array::from(offsets.to_vec())),
            s("not_json"),
            s("msg"),
            Arc::new(Int64Array::from(vec![10; n])),
            Arc::new(TimestampMicrosecondArray::from(vec![1_700_000_000_000_000; n]).with_timezone("UTC")),
            s("{"),
            Arc::new(Date32Array::from(vec![19_675; n])),
        ],
    )
    .unwrap()
}

/// An empty lake in a temporary directory, which lives as long as the `TempDir`.
pub(crate) fn temp_lake() -> (tempfile::TempDir, Lake) {
    let dir = tempfile::tempdir().unwrap();
    let lake = Lake::new(dir.path().to_str().unwrap(), Default::default()).unwrap();
    (dir, lake)
}

/// A writer of the `rejected` table for pipeline "p".
pub(crate) async fn rejected_writer(lake: &Lake) -> TableWriter {
    TableWriter::open(lake, TableKind::Rejected, "p").await.unwrap()
}

pub(crate) fn commit(offsets: &[i64], expected: Option<i64>) -> TableCommit {
    commit_to(0, offsets, expected)
}

/// A commit of no rows that moves topic "t", partition `partition`, to `last`.
fn txn_only(partition: i32, expected: Option<i64>, last: i64) -> TableCommit {
    TableCommit { batches: vec![], txns: vec![OffsetTxn { topic: "t".into(), partition, expected, last }] }
}

/// Rows with `offsets` of topic "t", partition `partition`, and their txn.
fn commit_to(partition: i32, offsets: &[i64], expected: Option<i64>) -> TableCommit {
    TableCommit {
        batches: vec![rejected_rows(offsets)],
        txns: vec![OffsetTxn { topic: "t".into(), partition, expected, last: *offsets.last().unwrap() }],
    }
}

#[tokio::test]
async fn commits_carry_txn_versions_and_moved_offsets_are_refused() {
    let (_dir, lake) = temp_lake();
    let mut a = rejected_writer(&lake).await;
    let mut b = rejected_writer(&lake).await;
    assert_eq!(a.commit(&commit(&[0, 1, 2], None)).await.unwrap(), CommitOutcome::Committed { version: 1 });
    // The same rows again, continuing from nothing: refused.
    let again = a.commit(&commit(&[0, 1, 2], None)).await.unwrap();
    assert!(matches!(again, CommitOutcome::Refused { found: Some(2), .. }), "{again:?}");
    // A second writer that has not seen the commit checks again on the latest version and
    // refuses: those offsets were moved by the first.
    assert!(matches!(b.commit(&commit(&[0, 1], None)).await.unwrap(), CommitOutcome::Refused { found: Some(2), .. }));
    // A concurrent commit that does not touch our partitions is no conflict: it lands on top.
    let other = TableCommit {
        batches: vec![rejected_rows(&[7])],
        txns: vec![OffsetTxn { topic: "t".into(), partition: 9, expected: None, last: 7 }],
    };
    assert!(matches!(a.commit(&other).await.unwrap(), CommitOutcome::Committed { .. }));
    // Continuing from the right version works, from either writer.
    assert!(matches!(b.commit(&commit(&[3, 4], Some(2))).await.unwrap(), CommitOutcome::Committed { .. }));
    a.reload().await.unwrap();
    assert_eq!(a.txn_version("t", 0).await.unwrap(), Some(4));
    assert_eq!(a.txn_version("t", 1).await.unwrap(), None);
    let n = lake.query("SELECT count(*) FROM rejected").await.unwrap();
    let count = deltalake::arrow::array::AsArray::as_primitive::<deltalake::arrow::datatypes::Int64Type>(n[0].column(0)).value(0);
    assert_eq!(count, 6);
}

#[tokio::test]
async fn a_fenced_writer_stops_at_another_writers_commit_once_and_keeps_its_files() {
    let (_dir, lake) = temp_lake();
    let mut a = rejected_writer(&lake).await;
    a.fence();
    let mut b = rejected_writer(&lake).await;
    assert!(matches!(a.commit(&commit(&[0], None)).await.unwrap(), CommitOutcome::Committed { .. }));
    // B's commit takes the version A expects next: A reports it instead of committing...
    b.reload().await.unwrap();
    let other = TableCommit { batches: vec![rejected_rows(&[5])], txns: vec![OffsetTxn { topic: "t".into(), partition: 9, expected: None, last: 5 }] };
    assert!(matches!(b.commit(&other).await.unwrap(), CommitOutcome::Committed { .. }));
    assert_eq!(a.commit(&commit(&[1], Some(0))).await.unwrap(), CommitOutcome::Fenced);
    // ...once: asked again, it lands on top.
    assert!(matches!(a.commit(&commit(&[1], Some(0))).await.unwrap(), CommitOutcome::Committed { .. }));
    let n = lake.query("SELECT count(*) FROM rejected").await.unwrap();
    let count = deltalake::arrow::array::AsArray::as_primitive::<deltalake::arrow::datatypes::Int64Type>(n[0].column(0)).value(0);
    assert_eq!(count, 3, "no row lost or doubled (the staged file was committed once)");
    // An unfenced writer never reports it.
    b.commit(&txn_only(9, Some(5), 6)).await.unwrap();
}

#[tokio::test]
async fn a_batch_of_one_date_is_one_file_and_a_mixed_one_is_split_by_date() {
    let (dir, lake) = temp_lake();
    let mut w = rejected_writer(&lake).await;
    let one = rejected_rows(&[0, 1, 2]);
    let mut mixed = rejected_rows(&[3, 4, 5, 6]);
    let mut cols = mixed.columns().to_vec();
    cols[8] = Arc::new(Date32Array::from(vec![19_676, 19_675, 19_676, 19_677]));
    mixed = RecordBatch::try_new(mixed.schema(), cols).unwrap();
    let c = TableCommit {
        batches: vec![one, mixed],
        txns: vec![OffsetTxn { topic: "t".into(), partition: 0, expected: None, last: 6 }],
    };
    assert!(matches!(w.commit(&c).await.unwrap(), CommitOutcome::Committed { .. }));
    let mut dates: Vec<String> = std::fs::read_dir(dir.path().join("rejected"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("rejected_date="))
        .collect();
    dates.sort();
    assert_eq!(dates, ["rejected_date=2023-11-14", "rejected_date=2023-11-15", "rejected_date=2023-11-16"]);
    let got = lake
        .query("SELECT CAST(rejected_date AS VARCHAR) d, count(*) n, min(\"offset\") o FROM rejected GROUP BY 1 ORDER BY 1")
        .await
        .unwrap();
    let got = deltalake::arrow::util::pretty::pretty_format_batches(&got).unwrap().to_string();
    for row in ["| 2023-11-14 | 4 | 0 |", "| 2023-11-15 | 2 | 3 |", "| 2023-11-16 | 1 | 6 |"] {
        assert!(got.contains(row), "{row} missing from\n{got}");
    }
}

#[tokio::test]
async fn a_txn_only_commit_advances_the_position() {
    let (_dir, lake) = temp_lake();
    let mut w = rejected_writer(&lake).await;
    let c = txn_only(3, None, 99);
    assert!(matches!(w.commit(&c).await.unwrap(), CommitOutcome::Committed { .. }));
    let mut fresh = rejected_writer(&lake).await;
    assert_eq!(fresh.txn_version("t", 3).await.unwrap(), Some(99));
    assert_eq!(fresh.txn_version("t", 3).await.unwrap(), Some(99));
}

#[tokio::test]
async fn interleaved_writers_land_every_commit_once_past_checkpoints() {
    // Two writers on distinct partitions: each commit of one takes the version the other
    // expected next, so the other reloads and lands on top. Across the 50-commit
    // checkpoints, where each writer swaps in the snapshot its maintenance brought forward.
    let (_dir, lake) = temp_lake();
    let mut a = rejected_writer(&lake).await;
    let mut b = rejected_writer(&lake).await;
    let mut expected = None;
    for i in 0..70i64 {
        let (x, y) = (2 * i, 2 * i + 1);
        let got = a.commit(&commit_to(0, &[x, y], expected)).await.unwrap();
        assert!(matches!(got, CommitOutcome::Committed { .. }), "a at {i}: {got:?}");
        if i % 3 == 0 {
            let got = b.commit(&commit_to(1, &[i], (i >= 3).then(|| i - 3))).await.unwrap();
            assert!(matches!(got, CommitOutcome::Committed { .. }), "b at {i}: {got:?}");
        }
        expected = Some(y);
    }
    // A's own view is exact for its partition even with its snapshot behind, and it still
    // refuses offsets that B moved.
    assert_eq!(a.txn_version("t", 0).await.unwrap(), Some(139));
    let stale = a.commit(&commit_to(1, &[1000], Some(63))).await.unwrap();
    assert!(matches!(stale, CommitOutcome::Refused { found: Some(69), .. }), "{stale:?}");
    a.maintenance_done().await;
    b.maintenance_done().await;
    let latest = lake.open_or_create(TableKind::Rejected).await.unwrap().version();
    assert_eq!(a.version(), latest);
    let n = lake.query("SELECT count(*) FROM rejected").await.unwrap();
    let count = deltalake::arrow::array::AsArray::as_primitive::<deltalake::arrow::datatypes::Int64Type>(n[0].column(0)).value(0);
    assert_eq!(count, 140 + 24);
    let mut fresh = rejected_writer(&lake).await;
    assert_eq!(fresh.txn_version("t", 0).await.unwrap(), Some(139));
    assert_eq!(fresh.txn_version("t", 1).await.unwrap(), Some(69));
}

#[tokio::test]
async fn the_log_is_checkpointed_every_50_commits() {
    let (dir, lake) = temp_lake();
    let mut w = rejected_writer(&lake).await;
    let mut expected = None;
    for last in 0..55 {
        let c = txn_only(0, expected, last);
        assert!(matches!(w.commit(&c).await.unwrap(), CommitOutcome::Committed { .. }));
        expected = Some(last);
    }
    // In the background: commits do not wait for it.
    w.maintenance_done().await;
    let log = dir.path().join("rejected/_delta_log");
    assert!(log.join("_last_checkpoint").exists(), "no checkpoint after 55 commits");
    let mut fresh = rejected_writer(&lake).await;
    assert_eq!(fresh.txn_version("t", 0).await.unwrap(), Some(54));
}
