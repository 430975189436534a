//! `campo sql` golden tests: one-shot queries in every output format, meta commands, time
//! travel, and every error an analyst meets (bad SQL, unknown table or column, a refused write,
//! a path that is not a campo lake), against a lake the simulator writes (seeded, so the
//! answers are fixed). `CAMPO_UPDATE_GOLDEN=1` rewrites the files under tests/golden/sql.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::harness::campo_bin;

/// The shared lake: 30 simulated minutes of seed 7 (three regions, planted collapses).
fn lake() -> &'static Path {
    static LAKE: OnceLock<tempfile::TempDir> = OnceLock::new();
    LAKE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new(campo_bin())
            .args(["backtest", "--scenario", "--minutes", "30", "--seed", "7", "--lake"])
            .arg(dir.path().join("lake"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        dir
    })
    .path()
    .join("lake")
    .leak()
}

fn sql(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(campo_bin()).arg("sql").arg("--lake").arg(lake()).arg("-q").args(args).output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

/// Compares what a run printed with its golden file (or rewrites it).
fn golden(name: &str, (code, out, err): (i32, String, String)) {
    let got = format!("exit {code}\n--- stdout\n{out}--- stderr\n{err}");
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/sql").join(format!("{name}.txt"));
    if std::env::var_os("CAMPO_UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &got).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e} (CAMPO_UPDATE_GOLDEN=1 writes it)", path.display()));
    assert_eq!(got, want, "campo sql output differs from {}", path.display());
}

const BY_REGION: &str =
    "SELECT region, count(*) AS readings, round(avg(hz), 2) AS hz_mean, min(occurred_at) AS first FROM readings GROUP BY region ORDER BY region";

#[test]
fn one_shot_queries_in_every_format() {
    golden("table", sql(&["-c", BY_REGION]));
    for f in ["csv", "json", "ndjson"] {
        golden(f, sql(&["--format", f, "-c", BY_REGION]));
    }
    // Several statements, a meta command among them, a campo UDF, and an empty answer.
    golden(
        "script",
        sql(&[
            "--format",
            "csv",
            "-c",
            "SELECT region, round(low_share, 3) AS low FROM region_metrics_1m WHERE window_start = (SELECT max(window_start) FROM region_metrics_1m) ORDER BY region; \\d alerts",
            "-c",
            "SELECT count(*) AS n FROM alerts WHERE region = 'nowhere'; SELECT hz_bucket(432.5) AS bucket",
        ]),
    );
    golden("json_empty", sql(&["--format", "json", "-c", "SELECT region FROM readings WHERE hz < 0"]));

    // A file of statements gives the same answer as -c.
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("q.sql");
    std::fs::write(&f, format!("-- by region\n{BY_REGION};\n")).unwrap();
    assert_eq!(sql(&["-f", f.to_str().unwrap()]), sql(&["-c", BY_REGION]));

    // Statements on standard input (not a terminal) run as a script, as with psql.
    let mut child = Command::new(campo_bin())
        .arg("sql")
        .arg("--lake")
        .arg(lake())
        .arg("-q")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(format!("{BY_REGION};\n").as_bytes()).unwrap();
    }
    let piped = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&piped.stdout), sql(&["-c", BY_REGION]).1);

    // Parquet goes to a file, and reads back as the same rows.
    let p = dir.path().join("out.parquet");
    let (code, out, err) = sql(&["--format", "parquet", "-o", p.to_str().unwrap(), "-c", BY_REGION]);
    assert_eq!((code, out.as_str()), (0, ""), "{err}");
    let file = std::fs::File::open(&p).unwrap();
    let reader = campo_lake::deltalake::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file).unwrap();
    let names: Vec<String> = reader.schema().fields().iter().map(|f| f.name().clone()).collect();
    assert_eq!(names, ["region", "readings", "hz_mean", "first"]);
    let rows: usize = reader.build().unwrap().map(|b| b.unwrap().num_rows()).sum();
    assert_eq!(rows, 3);
    let (code, _, err) = sql(&["--format", "parquet", "-c", "SELECT 1"]);
    assert!(code == 2 && err.contains("-o FILE"), "{err}");

    // -o writes the answer to a file instead of standard output.
    let o = dir.path().join("out.csv");
    let (code, out, _) = sql(&["--format", "csv", "-o", o.to_str().unwrap(), "-c", BY_REGION]);
    assert_eq!((code, out.as_str()), (0, ""));
    assert_eq!(std::fs::read_to_string(&o).unwrap(), sql(&["--format", "csv", "-c", BY_REGION]).1);
}

#[test]
fn meta_commands_list_tables_and_schemas() {
    golden("describe_all", sql(&["-c", "\\d"]));
    golden("describe_readings", sql(&["-c", "\\d readings"]));
    golden("describe_unknown", sql(&["-c", "\\d nope"]));
}

#[test]
fn time_travel_reads_a_table_as_it_was() {
    let count = "SELECT count(*) AS n FROM readings";
    golden("as_of_version", sql(&["--as-of", "readings=1", "-c", count]));
    let latest = sql(&["--format", "csv", "-c", count]).1;
    let first = sql(&["--format", "csv", "--as-of", "readings=1", "-c", count]).1;
    assert_ne!(latest, first, "version 1 holds fewer readings than the latest");
    // Every table as of now is the latest; before the lake existed there is nothing to read.
    let now = chrono::Utc::now().to_rfc3339();
    assert_eq!(sql(&["--format", "csv", "--as-of", &now, "-c", count]).1, latest);
    golden("as_of_before_the_lake", sql(&["--as-of", "2020-01-01", "-c", count]));
    golden("as_of_past_the_latest", sql(&["--as-of", "readings=100000", "-c", count]));
    golden("as_of_garbage", sql(&["--as-of", "yesterday-ish", "-c", count]));
}

#[test]
fn errors_are_clear_and_writes_are_refused() {
    golden("bad_sql", sql(&["-c", "SELEC region FROM readings"]));
    golden("unknown_table", sql(&["-c", "SELECT * FROM nope"]));
    golden("unknown_column", sql(&["-c", "SELECT nope FROM alerts"]));
    golden("refused_insert", sql(&["-c", "INSERT INTO alerts SELECT * FROM alerts"]));
    golden("refused_delete", sql(&["-c", "DELETE FROM readings"]));
    golden("refused_create", sql(&["-c", "CREATE TABLE t AS SELECT * FROM readings"]));
    golden("refused_copy", sql(&["-c", "COPY (SELECT * FROM readings) TO '/tmp/campo-sql-copy.csv'"]));
    golden("refused_path", sql(&["-c", "SELECT * FROM '/etc/passwd'"]));
    assert!(!Path::new("/tmp/campo-sql-copy.csv").exists());
    // The first failing statement stops a script.
    let (code, out, err) = sql(&["--format", "csv", "-c", "SELECT 1 AS a; SELECT * FROM nope; SELECT 2 AS b"]);
    assert_eq!(code, 1);
    assert_eq!(out, "a\n1\n");
    assert!(err.contains("nope"), "{err}");
    // Nothing in the lake changed: every refused statement left the versions as they were.
    golden("describe_all", sql(&["-c", "\\d"]));

    let not_a_lake = tempfile::tempdir().unwrap();
    let out = Command::new(campo_bin()).args(["sql", "--lake"]).arg(not_a_lake.path()).args(["-c", "SELECT 1"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("is not a campo lake") && err.contains("readings"), "{err}");
}
