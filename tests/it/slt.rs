//! sqllogictest: every `.slt` file under `sql/tests/` runs against a DataFusion session with
//! campo's functions registered (`campo_udfs`) and the signal pipelines' SQL available as
//! `{region_metrics_1m}` and `{evu_1m}` (substituted as subqueries over `readings` / `activity`:
//! the window-state queries of `sql/state/` inlined into the pipeline, rendered with the default
//! thresholds), the same SQL the engine runs.
//!
//! Values print as sqllogictest expects: NULL, `(empty)` for an empty string, floats rounded
//! to 6 decimals with trailing zeros dropped.

use std::path::PathBuf;

use async_trait::async_trait;
use campo_pipelines::config::SignalsConfig;
use campo_pipelines::windows::sql;
use deltalake::arrow::array::{Array, AsArray};
use deltalake::arrow::datatypes::{DataType, Float32Type, Float64Type};
use deltalake::arrow::util::display::{ArrayFormatter, FormatOptions};
use deltalake::datafusion::error::DataFusionError;
use deltalake::datafusion::prelude::SessionContext;
use sqllogictest::{AsyncDB, DBOutput, DefaultColumnType};

struct Df {
    ctx: SessionContext,
}

fn float(v: f64) -> String {
    if v.is_nan() {
        return "NaN".into();
    }
    if v.is_infinite() {
        return if v > 0.0 { "Infinity".into() } else { "-Infinity".into() };
    }
    let s = format!("{v:.6}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" { "0".into() } else { s.into() }
}

#[async_trait]
impl AsyncDB for Df {
    type Error = DataFusionError;
    type ColumnType = DefaultColumnType;

    async fn run(&mut self, text: &str) -> Result<DBOutput<DefaultColumnType>, DataFusionError> {
        let s = SignalsConfig::default();
        let text = text
            .replace("{region_metrics_1m}", &format!("({})", sql::render(&sql::over_events(sql::REGION_METRICS_1M, &sql::REGION_METRICS_STATE), &s)))
            .replace("{evu_1m}", &format!("({})", sql::render(&sql::over_events(sql::EVU_1M, &sql::EVU_STATE), &s)));
        let df = self.ctx.sql(&text).await?;
        let schema = df.schema().as_arrow().clone();
        let batches = df.collect().await?;
        let first = text.trim_start().split_whitespace().next().unwrap_or_default().to_ascii_uppercase();
        if schema.fields().is_empty() || ["CREATE", "INSERT", "DROP", "SET"].contains(&first.as_str()) {
            return Ok(DBOutput::StatementComplete(0));
        }
        let opts = FormatOptions::default().with_null("NULL");
        let mut rows = Vec::new();
        for b in &batches {
            let formatters: Vec<_> =
                b.columns().iter().map(|c| ArrayFormatter::try_new(c.as_ref(), &opts)).collect::<Result<_, _>>()?;
            for r in 0..b.num_rows() {
                let row = b
                    .columns()
                    .iter()
                    .zip(&formatters)
                    .map(|(c, f)| {
                        if c.is_null(r) {
                            return "NULL".to_string();
                        }
                        match c.data_type() {
                            DataType::Float64 => float(c.as_primitive::<Float64Type>().value(r)),
                            DataType::Float32 => float(c.as_primitive::<Float32Type>().value(r) as f64),
                            _ => {
                                let v = f.value(r).to_string();
                                if v.is_empty() { "(empty)".into() } else { v }
                            }
                        }
                    })
                    .collect();
                rows.push(row);
            }
        }
        Ok(DBOutput::Rows { types: vec![DefaultColumnType::Any; schema.fields().len()], rows })
    }

    async fn shutdown(&mut self) {}

    fn engine_name(&self) -> &str {
        "datafusion"
    }
}

fn slt_files() -> Vec<PathBuf> {
    let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/sql/tests"));
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("sql/tests exists")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "slt"))
        .collect();
    files.sort();
    files
}

#[tokio::test]
async fn sqllogictest_files_pass() {
    let files = slt_files();
    assert!(files.len() >= 3, "expected the UDF and pipeline .slt files, found {files:?}");
    let mut failures = Vec::new();
    for file in &files {
        let mut runner = sqllogictest::Runner::new(|| async {
            Ok(Df { ctx: sql::session(&SignalsConfig::default()) })
        });
        if let Err(e) = runner.run_file_async(file).await {
            failures.push(format!("{}: {e}", file.display()));
        }
    }
    assert!(failures.is_empty(), "{} .slt file(s) failed:\n{}", failures.len(), failures.join("\n\n"));
}
