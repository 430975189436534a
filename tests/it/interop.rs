//! Independent readers (Python deltalake, polars, duckdb) read the lake campo wrote and agree
//! with campo's own counts.

use std::process::Command;

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_deltalake_polars_and_duckdb_agree_on_the_bronze_tables() {
    let python = python();
    let dir = tempfile::tempdir().unwrap();
    let lake_path = dir.path().join("lake");
    // The embedded demo writes a lake by itself; Ctrl-C stops it with everything committed.
    let demo = Command::new(campo_bin())
        .args(["demo", "--lake", lake_path.to_str().unwrap(), "--rate", "3000", "--metrics-listen", "", "--api-listen", ""])
        .env("CAMPO_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let lake = lake(&lake_path);
    wait_until(std::time::Duration::from_secs(60), "the demo committed rows", || {
        let l = lake.clone();
        async move { l.open("activity").await.is_ok() && scalar(&l, "SELECT count(*) FROM readings").await > 5000 }
    })
    .await;
    Command::new("kill").args(["-INT", &demo.id().to_string()]).status().unwrap();
    let out = demo.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "campo demo: {}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("stopped cleanly"), "{stdout}");
    // What the demo says it wrote is what the lake holds.
    let said = stdout.lines().find(|l| l.trim_start().starts_with("readings")).unwrap();
    let said: i64 = said.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert_eq!(said, scalar(&lake, "SELECT count(*) FROM readings").await);
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
