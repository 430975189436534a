//! Independent readers (Python deltalake, polars, duckdb) read the lake campo wrote and agree
//! with campo's own counts.

use std::process::Command;

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_deltalake_polars_and_duckdb_agree_on_the_bronze_tables() {
    let python = python();
    let dir = tempfile::tempdir().unwrap();
    let lake_path = dir.path().join("lake");
    // The embedded demo writes a lake by itself.
    let out = Command::new(campo_bin())
        .args(["demo", "--lake", lake_path.to_str().unwrap(), "--duration", "6s", "--rate", "3000", "--metrics-listen", ""])
        .env("CAMPO_LOG", "warn")
        .output()
        .unwrap();
    assert!(out.status.success(), "campo demo: {}", String::from_utf8_lossy(&out.stderr));
    let lake = lake(&lake_path);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/read_lake.py");
    let out = Command::new(&python).arg(script).arg(&lake_path).output().unwrap();
    assert!(out.status.success(), "read_lake.py: {}", String::from_utf8_lossy(&out.stderr));
    let counts: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for table in ["readings", "activity", "rejected"] {
        let ours = scalar(&lake, &format!("SELECT count(*) FROM {table}")).await;
        assert!(ours > 0 || table == "rejected", "{table} is empty");
        for reader in ["deltalake", "polars", "duckdb"] {
            assert_eq!(counts[reader][table].as_i64(), Some(ours), "{reader} reads {table}");
        }
    }
    // Same per-region split and the same mean Hz, computed by a reader that is not campo.
    let ours = counts_by(&lake, "SELECT region, count(*) FROM readings GROUP BY region").await;
    let theirs: std::collections::BTreeMap<String, i64> = serde_json::from_value(counts["polars_by_region"].clone()).unwrap();
    assert_eq!(ours, theirs);
}
