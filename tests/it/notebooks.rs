//! The analyst notebooks run headless (nbclient) on a lake the simulator writes, with a planted
//! collapse, invalid, duplicate and late events: no cell fails and each draws a figure.

use std::process::Command;

use crate::harness::{campo_bin, python};

#[test]
fn every_notebook_runs_headless_on_a_generated_lake_and_draws() {
    let python = python();
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    // 80 simulated minutes: sa-east-1 collapses from minute 40 for 25 minutes.
    let out = Command::new(campo_bin())
        .args(["backtest", "--scenario", "--minutes", "80", "--events-per-minute", "3000", "--seed", "11"])
        .args(["--invalid-share", "0.02", "--duplicate-share", "0.02", "--late-share", "0.01", "--lake"])
        .arg(&lake)
        .output()
        .unwrap();
    assert!(out.status.success(), "backtest: {}", String::from_utf8_lossy(&out.stderr));
    let root = env!("CARGO_MANIFEST_DIR");
    let notebooks = ["01_collective_field.ipynb", "02_anatomy_of_a_collapse.ipynb", "03_data_quality.ipynb"];
    let out = Command::new(&python)
        .arg(format!("{root}/tests/python/run_notebooks.py"))
        .arg(&lake)
        .args(notebooks.iter().map(|n| format!("{root}/notebooks/{n}")))
        .output()
        .unwrap();
    assert!(out.status.success(), "run_notebooks.py: {}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for n in notebooks {
        let r = &report[n];
        assert_eq!(r["errors"], 0, "{n}: {r}");
        assert!(r["cells"].as_u64().unwrap() >= 4, "{n}: {r}");
        assert!(r["figures"].as_u64().unwrap() >= 1, "{n} draws no figure: {r}");
    }
    // The notebooks only read: the committed files carry no outputs.
    for n in notebooks {
        let text = std::fs::read_to_string(format!("{root}/notebooks/{n}")).unwrap();
        assert!(!text.contains("image/png"), "{n} is committed with outputs");
    }
}
