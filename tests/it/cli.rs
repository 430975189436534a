//! The command line: help, exit codes, and configuration errors that name their key.

use std::process::Command;

use crate::harness::campo_bin;

fn campo(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut c = Command::new(campo_bin());
    c.args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

#[test]
fn help_lists_every_subcommand_and_exit_codes() {
    let (code, out, _) = campo(&["--help"], &[]);
    assert_eq!(code, 0);
    for sub in ["run", "simulate", "demo", "backtest", "serve", "token", "sql"] {
        assert!(out.contains(sub), "--help lists {sub}");
    }
    assert!(out.contains("Exit codes"));
    let (_, out, _) = campo(&["run", "--help"], &[]);
    assert!(out.contains("CAMPO__KAFKA__BROKERS") && out.contains("config: kafka.brokers"), "{out}");
    assert!(out.contains("CAMPO__INGEST__FLUSH_INTERVAL") && out.contains("config: ingest.flush_interval"));
}

#[test]
fn a_bad_config_value_names_its_key_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("campo.toml");
    std::fs::write(&f, "[ingest]\nmax_batch_rows = \"lots\"\n").unwrap();
    let (code, _, err) = campo(&["run", "--config", f.to_str().unwrap()], &[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("ingest.max_batch_rows"), "{err}");

    std::fs::write(&f, "[ingest]\nflush_intervall = \"1s\"\n").unwrap();
    let (code, _, err) = campo(&["run", "--config", f.to_str().unwrap()], &[]);
    assert_eq!(code, 2);
    assert!(err.contains("flush_intervall"), "unknown keys are named: {err}");

    std::fs::write(&f, "[ingest]\nflush_interval = \"0s\"\n").unwrap();
    let (code, _, err) = campo(&["run", "--config", f.to_str().unwrap()], &[]);
    assert_eq!(code, 2);
    assert!(err.contains("ingest.flush_interval") && err.contains("greater than zero"), "{err}");

    let (code, _, err) = campo(&["run", "--config", "/nonexistent/campo.toml"], &[]);
    assert_eq!(code, 2);
    assert!(err.contains("cannot read config file"), "{err}");

    let (code, _, err) = campo(&["run", "--print-config"], &[("CAMPO__INGEST__MAX_RECORD_BYTES", "-5")]);
    assert_eq!(code, 2);
    assert!(err.contains("ingest.max_record_bytes"), "{err}");
}

#[test]
fn file_then_environment_then_flags() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("campo.toml");
    std::fs::write(&f, "[kafka]\nbrokers = \"file:1\"\ngroup_id = \"from-file\"\n[lake]\npath = \"/from/file\"\n").unwrap();
    let (code, out, err) = campo(
        &["run", "--config", f.to_str().unwrap(), "--print-config", "--lake", "/from/flag"],
        &[("CAMPO__KAFKA__GROUP_ID", "from-env"), ("CAMPO__LAKE__PATH", "/from/env")],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("brokers = \"file:1\""), "{out}");
    assert!(out.contains("group_id = \"from-env\""), "{out}");
    assert!(out.contains("path = \"/from/flag\""), "{out}");
}

#[test]
fn the_shipped_example_config_is_valid() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/campo.example.toml");
    let (code, out, err) = campo(&["run", "--config", example, "--print-config"], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("vibration.readings"));
}

#[test]
fn simulate_to_a_file_is_reproducible() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.jsonl"), dir.path().join("b.jsonl"));
    for p in [&a, &b] {
        let (code, _, err) = campo(
            &["simulate", "--count", "500", "--rate", "0", "--seed", "3", "--start", "2026-01-01T00:00:00Z", "-o", p.to_str().unwrap()],
            &[],
        );
        assert_eq!(code, 0, "{err}");
    }
    let (a, b) = (std::fs::read_to_string(a).unwrap(), std::fs::read_to_string(b).unwrap());
    assert_eq!(a.lines().count(), 500);
    assert_eq!(a, b);
    let first: serde_json::Value = serde_json::from_str(a.lines().next().unwrap()).unwrap();
    assert!(first["topic"].is_string() && first["key"].is_string() && first["value"].is_string());
}
