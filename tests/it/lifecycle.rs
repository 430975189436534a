//! Retention and pseudonymization with a clock the test controls (`campo lake retain --now`):
//! rows older than 90 days are gone, rows older than 30 days no longer carry their `user_hash`,
//! the rest and the aggregates are untouched, and a month's key is destroyed once it is done.

use std::path::Path;
use std::process::Command;

use crate::harness::{campo_bin, counts_by, lake, scalar};

fn retain(lake_dir: &Path, now: &str) -> String {
    let out = Command::new(campo_bin()).args(["lake", "--lake"]).arg(lake_dir).args(["retain", "--now", now]).output().unwrap();
    assert!(out.status.success(), "campo lake retain: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn copy_dir(from: &Path, to: &Path) {
    let ok = Command::new("cp").arg("-r").arg(from).arg(to).status().unwrap().success();
    assert!(ok);
}

/// Rows before 08:15 on the scenario's day (it runs 08:00 to 08:30, 2026-11-02).
const CUT: &str = "TIMESTAMP '2026-11-02T08:15:00Z'";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_rows_expire_older_ones_are_pseudonymized_and_aggregates_stay() {
    let dir = tempfile::tempdir().unwrap();
    let original = dir.path().join("original");
    let out = Command::new(campo_bin())
        .args(["backtest", "--scenario", "--minutes", "30", "--events-per-minute", "2000", "--seed", "5", "--lake"])
        .arg(&original)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let before = lake(&original);
    let q_old = format!("SELECT count(*) FROM readings WHERE occurred_at < {CUT}");
    let q_new = format!("SELECT count(*) FROM readings WHERE occurred_at >= {CUT}");
    let (old, new) = (scalar(&before, &q_old).await, scalar(&before, &q_new).await);
    assert!(old > 1000 && new > 1000, "{old} {new}");
    let users_new = scalar(&before, &format!("SELECT count(DISTINCT user_hash) FROM readings WHERE occurred_at >= {CUT}")).await;
    let aggregates = "SELECT region || '/' || CAST(window_start AS VARCHAR), CAST(round(hz_mean * 1000) AS BIGINT) FROM region_metrics_1m";
    let agg_before = counts_by(&before, aggregates).await;
    let evu_before = scalar(&before, "SELECT count(*) FROM evu_1m").await;

    // 30 days and a quarter of an hour after 08:00: the first quarter hour is past 30 days.
    let at30 = dir.path().join("at30");
    copy_dir(&original, &at30);
    let said = retain(&at30, "2026-12-02T08:15:00Z");
    assert!(said.contains(&format!("readings: 0 rows past retention deleted, {old} rows pseudonymized")), "{said}");
    let l = lake(&at30);
    assert_eq!(scalar(&l, "SELECT count(*) FROM readings").await, old + new, "nothing deleted at 30 days");
    assert_eq!(scalar(&l, &format!("SELECT count(*) FROM readings WHERE occurred_at < {CUT} AND starts_with(user_hash, 'u_')")).await, 0);
    assert_eq!(
        scalar(&l, &format!("SELECT count(*) FROM readings WHERE occurred_at < {CUT} AND length(user_hash) = 64")).await,
        old,
        "old rows carry a 64-hex HMAC"
    );
    assert_eq!(scalar(&l, &format!("SELECT count(*) FROM readings WHERE occurred_at >= {CUT} AND starts_with(user_hash, 'u_')")).await, new);
    // None of the pseudonyms is an original user_hash of the lake.
    let clash = scalar(
        &l,
        &format!("SELECT count(*) FROM readings a JOIN (SELECT DISTINCT user_hash FROM readings WHERE occurred_at >= {CUT}) b ON a.user_hash = b.user_hash WHERE a.occurred_at < {CUT}"),
    )
    .await;
    assert_eq!(clash, 0);
    // The month is not over at the cutoff: its key lives on; a second pass changes nothing.
    let keys = dir.path().join("at30.keys");
    assert!(keys.join("pseudonym-2026-11.key").exists());
    let again = retain(&at30, "2026-12-02T08:15:00Z");
    assert!(again.contains("readings: 0 rows past retention deleted, 0 rows pseudonymized"), "{again}");

    // 90 days and a quarter of an hour after: the first quarter hour is gone, the rest (older
    // than 30 days) pseudonymized, November is done and its key destroyed.
    let at90 = dir.path().join("at90");
    copy_dir(&original, &at90);
    let said = retain(&at90, "2027-01-31T08:15:00Z");
    assert!(said.contains("keys destroyed: 2026-11"), "{said}");
    let l = lake(&at90);
    assert_eq!(scalar(&l, &format!("SELECT count(*) FROM readings WHERE occurred_at < {CUT}")).await, 0, "past 90 days: deleted");
    assert_eq!(scalar(&l, "SELECT count(*) FROM readings").await, new);
    assert_eq!(scalar(&l, "SELECT count(*) FROM readings WHERE starts_with(user_hash, 'u_')").await, 0);
    assert_eq!(scalar(&l, "SELECT count(*) FROM activity WHERE starts_with(user_hash, 'u_')").await, 0);
    // One key a month: the same user keeps one pseudonym, so distinct users still count.
    assert_eq!(scalar(&l, "SELECT count(DISTINCT user_hash) FROM readings").await, users_new);
    assert!(!dir.path().join("at90.keys").join("pseudonym-2026-11.key").exists(), "November's key destroyed");
    // Aggregates are kept (730 days), row for row.
    assert_eq!(counts_by(&l, aggregates).await, agg_before);
    assert_eq!(scalar(&l, "SELECT count(*) FROM evu_1m").await, evu_before);
}
