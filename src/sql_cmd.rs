//! `campo sql`: an analyst's SQL shell over the lake, in the manner of `datafusion-cli` and
//! `duckdb`: interactive with line editing and history, or one-shot with `-c` / `-f`.
//!
//! Every lake table is registered by name with campo's functions. Read-only: a statement that
//! could change the lake (DDL, DML, COPY, CREATE EXTERNAL TABLE) is refused before it is
//! planned, and the plan is checked again by DataFusion. Meta commands: `\d` lists the tables,
//! `\d NAME` shows one table's columns, `\q` quits, `\?` helps.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, anyhow};
use campo_lake::arrow::array::{ArrayRef, RecordBatch, StringArray, UInt64Array};
use campo_lake::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use campo_lake::datafusion::prelude::{SessionConfig, SessionContext};
use campo_lake::guard::{self, Allow, Refusal};
use campo_lake::{Lake, TableKind};
use clap::{Args, ValueEnum};
use futures_util::StreamExt;

use crate::cli::PipelineArgs;
use crate::load_config::{self, ConfigProblem};

#[derive(Args, Debug)]
pub struct SqlArgs {
    /// Config file (TOML), for `lake.path` and `lake.storage_options`.
    #[arg(long, env = "CAMPO_CONFIG")]
    pub config: Option<PathBuf>,
    /// Lake root: a path or object-store URL [config: lake.path].
    #[arg(long, env = "CAMPO__LAKE__PATH")]
    pub lake: Option<String>,
    /// Run these statements (separated by `;`, or a meta command such as `\d readings`) and
    /// exit; repeatable, run in order.
    #[arg(short = 'c', long = "command", value_name = "SQL")]
    pub command: Vec<String>,
    /// Run the statements in this file and exit; repeatable, after any -c.
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: Vec<PathBuf>,
    /// Output format of results.
    #[arg(long, value_enum, default_value_t = OutFormat::Table)]
    pub format: OutFormat,
    /// Write results to FILE instead of standard output (needed for parquet).
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Read the tables as they were (Delta time travel): VERSION (every table at that version),
    /// NAME=VERSION (one table; repeatable), or a TIMESTAMP, RFC 3339 or YYYY-MM-DD in UTC
    /// (every table as of then).
    #[arg(long = "as-of", value_name = "VERSION|NAME=VERSION|TIMESTAMP")]
    pub as_of: Vec<String>,
    /// Print only results: no row counts or timings on standard error.
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutFormat {
    Table,
    Csv,
    Json,
    Ndjson,
    Parquet,
}

/// A statement or meta command that failed: the shell reports it and goes on; one-shot mode
/// stops at it and exits 1.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct StatementFailed(String);

pub async fn run(args: SqlArgs) -> anyhow::Result<()> {
    let cfg = load_config::load(&PipelineArgs { config: args.config.clone(), lake: args.lake.clone(), ..Default::default() })?;
    let lake = Lake::new(&cfg.lake.path, cfg.lake.storage_options.clone().into_iter().collect())
        .map_err(|e| ConfigProblem(format!("config key `lake.path` ({}): {e}", cfg.lake.path)))?;
    if args.format == OutFormat::Parquet && args.output.is_none() {
        return Err(ConfigProblem("--format parquet writes a file: give it with -o FILE".into()).into());
    }
    let present = present_tables(&lake).await;
    if present.is_empty() {
        return Err(ConfigProblem(format!(
            "{} is not a campo lake: none of its tables ({}) is there (give the lake root with --lake)",
            lake.root(),
            guard::table_names().join(", ")
        ))
        .into());
    }
    let pinned = resolve_as_of(&lake, &args.as_of, &present).await?;
    let shell = Shell::open(lake, pinned, args.format, args.output.clone(), args.quiet).await?;

    let one_shot = !args.command.is_empty() || !args.file.is_empty();
    if one_shot {
        for c in &args.command {
            shell.run_script(c).await?;
        }
        for f in &args.file {
            let text = std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
            shell.run_script(&text).await?;
        }
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        let text = std::io::read_to_string(std::io::stdin()).context("reading statements from standard input")?;
        return shell.run_script(&text).await;
    }
    shell.interactive().await
}

/// The lake tables that exist, with their latest version.
async fn present_tables(lake: &Lake) -> Vec<(TableKind, u64)> {
    let mut out = Vec::new();
    for kind in TableKind::ALL {
        if let Ok(t) = lake.open(kind.name()).await
            && let Some(v) = t.version()
        {
            out.push((kind, v as u64));
        }
    }
    out
}

/// `--as-of` values to per-table versions.
async fn resolve_as_of(lake: &Lake, values: &[String], present: &[(TableKind, u64)]) -> anyhow::Result<Vec<(TableKind, u64)>> {
    let mut pinned: Vec<(TableKind, u64)> = Vec::new();
    let mut pin = |kind: TableKind, v: u64| {
        pinned.retain(|(k, _)| *k != kind);
        pinned.push((kind, v));
    };
    let bad = |v: &str, why: String| ConfigProblem(format!("--as-of {v}: {why}"));
    for value in values {
        if let Some((name, version)) = value.split_once('=') {
            let kind = TableKind::ALL
                .into_iter()
                .find(|k| k.name() == name)
                .ok_or_else(|| bad(value, format!("no table {name:?} in a campo lake ({})", guard::table_names().join(", "))))?;
            let version: u64 = version.parse().map_err(|_| bad(value, format!("{version:?} is not a version number")))?;
            let latest = present.iter().find(|(k, _)| *k == kind).map(|(_, v)| *v);
            match latest {
                None => return Err(bad(value, format!("table {name} is not in this lake")).into()),
                Some(l) if version > l => {
                    return Err(bad(value, format!("table {name} has versions 0 to {l}")).into());
                }
                Some(_) => pin(kind, version),
            }
        } else if let Ok(version) = value.parse::<u64>() {
            let behind: Vec<String> =
                present.iter().filter(|(_, l)| version > *l).map(|(k, l)| format!("{} (latest {l})", k.name())).collect();
            if !behind.is_empty() {
                return Err(bad(value, format!("not every table has that version: {}; pin one table with NAME=VERSION", behind.join(", "))).into());
            }
            for (kind, _) in present {
                pin(*kind, version);
            }
        } else {
            let at = parse_time(value).ok_or_else(|| {
                bad(value, "not a version, NAME=VERSION, or a timestamp (RFC 3339, or YYYY-MM-DD in UTC)".into())
            })?;
            let mut found = false;
            for (kind, _) in present {
                match lake.open_as_of(kind.name(), at).await? {
                    Some(t) => {
                        pin(*kind, t.version().unwrap_or(0) as u64);
                        found = true;
                    }
                    // The table did not exist yet at that time: leave it out (unknown then).
                    None => pin(*kind, ABSENT),
                }
            }
            if !found {
                return Err(bad(value, "no table of the lake existed yet at that time".into()).into());
            }
        }
    }
    Ok(pinned)
}

/// The version pinned for a table that did not exist yet at the `--as-of` time.
const ABSENT: u64 = u64::MAX;

fn parse_time(s: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    use chrono::{NaiveDate, NaiveDateTime, TimeZone, Utc};
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    if let Ok(t) = NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S") {
        return Some(Utc.from_utc_datetime(&t));
    }
    let d = NaiveDate::parse_from_str(s, "%Y-%m-%d").ok()?;
    Some(Utc.from_utc_datetime(&d.and_hms_opt(0, 0, 0)?))
}

struct Shell {
    lake: Lake,
    ctx: SessionContext,
    /// Tables registered, with the version read.
    tables: Vec<(TableKind, u64)>,
    /// Tables left out because they did not exist at the `--as-of` time.
    absent: Vec<TableKind>,
    format: OutFormat,
    output: Option<PathBuf>,
    quiet: bool,
}

impl Shell {
    async fn open(
        lake: Lake,
        pinned: Vec<(TableKind, u64)>,
        format: OutFormat,
        output: Option<PathBuf>,
        quiet: bool,
    ) -> anyhow::Result<Self> {
        let absent: Vec<TableKind> = pinned.iter().filter(|(_, v)| *v == ABSENT).map(|(k, _)| *k).collect();
        let pins: Vec<(TableKind, u64)> = pinned.iter().copied().filter(|(_, v)| *v != ABSENT).collect();
        let kinds: Vec<TableKind> = TableKind::ALL.into_iter().filter(|k| !absent.contains(k)).collect();
        let ctx = SessionContext::new_with_config(SessionConfig::new().with_information_schema(true));
        lake.register_into(&ctx, &kinds, &pins).await.context("registering the lake's tables")?;
        let mut tables = Vec::new();
        for kind in kinds {
            if ctx.table_exist(kind.name())? {
                let v = match pins.iter().find(|(k, _)| *k == kind) {
                    Some((_, v)) => *v,
                    None => lake.open(kind.name()).await?.version().unwrap_or(0) as u64,
                };
                tables.push((kind, v));
            }
        }
        if let Some(out) = &output {
            // Start from an empty file, as a redirect would.
            std::fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
        }
        Ok(Self { lake, ctx, tables, absent, format, output, quiet })
    }

    /// Runs every statement and meta command of `text` in order; stops at the first failure.
    async fn run_script(&self, text: &str) -> anyhow::Result<()> {
        for item in split_script(text) {
            self.run_one(&item).await?;
        }
        Ok(())
    }

    async fn run_one(&self, item: &str) -> anyhow::Result<()> {
        let start = Instant::now();
        let rows = if let Some(meta) = item.strip_prefix('\\') {
            self.meta(meta.trim()).await?
        } else {
            self.statement(item).await?
        };
        if !self.quiet {
            let s = if rows == 1 { "" } else { "s" };
            eprintln!("{rows} row{s} in {:.3}s", start.elapsed().as_secs_f64());
        }
        Ok(())
    }

    async fn statement(&self, sql: &str) -> anyhow::Result<usize> {
        let fail = |e: String| anyhow::Error::new(StatementFailed(e));
        let allow = Allow { session_statements: true };
        let mut statements = guard::parse(sql).map_err(|r| fail(r.to_string()))?;
        // `split_script` cut the text at its semicolons; one that it could not see (inside a
        // construct it does not know) is refused rather than half run.
        if statements.len() > 1 {
            return Err(fail(format!("{} statements where one was expected; end each with `;` on its own", statements.len())));
        }
        let Some(statement) = statements.pop() else { return Ok(0) };
        guard::check_statement(&statement, allow).map_err(|r| fail(r.to_string()))?;
        match guard::lake_tables(&self.ctx.state(), &statement) {
            Ok(kinds) => {
                if let Some(k) = kinds.iter().find(|k| !self.tables.iter().any(|(t, _)| t == *k)) {
                    let why = if self.absent.contains(k) { "did not exist yet at the --as-of time" } else { "has no data in this lake yet" };
                    return Err(fail(format!("table {} {why}", k.name())));
                }
            }
            // The shell may read its own catalog (SHOW TABLES, information_schema.columns).
            Err(Refusal::NotALakeTable(t)) if t.starts_with("information_schema.") => {}
            Err(r) => return Err(fail(r.to_string())),
        }
        let plan = self.ctx.state().statement_to_plan(statement).await.map_err(|e| fail(plan_error(e)))?;
        guard::verify_plan(&plan, allow).map_err(|r| fail(r.to_string()))?;
        let df = self.ctx.execute_logical_plan(plan).await.map_err(|e| fail(plan_error(e)))?;
        let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
        let stream = df.execute_stream().await.map_err(|e| fail(plan_error(e)))?;
        self.write(schema, stream.map(|b| b.map_err(|e| fail(plan_error(e))))).await
    }

    async fn meta(&self, cmd: &str) -> anyhow::Result<usize> {
        let fail = |e: String| anyhow::Error::new(StatementFailed(e));
        let mut words = cmd.split_whitespace();
        match (words.next(), words.next()) {
            (Some("d"), None) => {
                let names: Vec<&str> = self.tables.iter().map(|(k, _)| k.name()).collect();
                let versions: Vec<u64> = self.tables.iter().map(|(_, v)| *v).collect();
                let mut columns = Vec::new();
                let mut parts = Vec::new();
                for (k, _) in &self.tables {
                    let provider = self.ctx.table_provider(k.name()).await?;
                    columns.push(provider.schema().fields().len() as u64);
                    parts.push(k.partition_columns().join(", "));
                }
                let schema = Arc::new(Schema::new(vec![
                    Field::new("table", DataType::Utf8, false),
                    Field::new("version", DataType::UInt64, false),
                    Field::new("columns", DataType::UInt64, false),
                    Field::new("partitioned_by", DataType::Utf8, false),
                ]));
                let cols: Vec<ArrayRef> = vec![
                    Arc::new(StringArray::from(names)),
                    Arc::new(UInt64Array::from(versions)),
                    Arc::new(UInt64Array::from(columns)),
                    Arc::new(StringArray::from(parts)),
                ];
                self.write_batch(RecordBatch::try_new(schema, cols)?).await
            }
            (Some("d"), Some(name)) => {
                let Some((kind, _)) = self.tables.iter().find(|(k, _)| k.name() == name) else {
                    return Err(fail(Refusal::UnknownTable(name.to_string()).to_string()));
                };
                let provider = self.ctx.table_provider(kind.name()).await?;
                let schema = provider.schema();
                let fields = schema.fields();
                let out = Arc::new(Schema::new(vec![
                    Field::new("column", DataType::Utf8, false),
                    Field::new("type", DataType::Utf8, false),
                    Field::new("nullable", DataType::Utf8, false),
                ]));
                let cols: Vec<ArrayRef> = vec![
                    Arc::new(StringArray::from_iter_values(fields.iter().map(|f| f.name().clone()))),
                    Arc::new(StringArray::from_iter_values(fields.iter().map(|f| f.data_type().to_string()))),
                    Arc::new(StringArray::from_iter_values(fields.iter().map(|f| if f.is_nullable() { "YES" } else { "NO" }))),
                ];
                self.write_batch(RecordBatch::try_new(out, cols)?).await
            }
            (Some("?"), None) | (Some("h"), None) => {
                eprintln!("{HELP}");
                Ok(0)
            }
            _ => Err(fail(format!("unknown meta command \\{cmd}; \\? lists them"))),
        }
    }

    async fn write_batch(&self, batch: RecordBatch) -> anyhow::Result<usize> {
        self.write(batch.schema(), futures_util::stream::iter([Ok(batch)])).await
    }

    /// Writes a result in the chosen format as its batches arrive (the table format needs them
    /// all for its column widths); returns the row count.
    async fn write(
        &self,
        schema: SchemaRef,
        mut batches: impl futures_util::Stream<Item = anyhow::Result<RecordBatch>> + Unpin,
    ) -> anyhow::Result<usize> {
        use campo_lake::arrow::{csv, json};
        let sink: Box<dyn Write + Send> = match &self.output {
            Some(path) => Box::new(std::io::BufWriter::new(
                std::fs::OpenOptions::new().append(true).open(path).with_context(|| format!("opening {}", path.display()))?,
            )),
            None => Box::new(std::io::BufWriter::new(std::io::stdout())),
        };
        let mut rows = 0;
        match self.format {
            OutFormat::Table => {
                let mut all = Vec::new();
                while let Some(b) = batches.next().await {
                    let b = b?;
                    rows += b.num_rows();
                    all.push(b);
                }
                let mut sink = sink;
                let table = campo_lake::arrow::util::pretty::pretty_format_batches_with_schema(schema, &all)?;
                writeln!(sink, "{table}")?;
                sink.flush()?;
            }
            OutFormat::Csv => {
                let mut w = csv::WriterBuilder::new().with_header(true).build(sink);
                let mut wrote = false;
                while let Some(b) = batches.next().await {
                    let b = b?;
                    rows += b.num_rows();
                    w.write(&b)?;
                    wrote = true;
                }
                if !wrote {
                    w.write(&RecordBatch::new_empty(schema))?;
                }
                w.into_inner().flush()?;
            }
            OutFormat::Json => {
                let mut w = json::ArrayWriter::new(sink);
                while let Some(b) = batches.next().await {
                    let b = b?;
                    rows += b.num_rows();
                    w.write(&b)?;
                }
                // For no rows arrow still writes `[]`: an empty array is an answer.
                w.finish()?;
                let mut sink = w.into_inner();
                writeln!(sink)?;
                sink.flush()?;
            }
            OutFormat::Ndjson => {
                let mut w = json::LineDelimitedWriter::new(sink);
                while let Some(b) = batches.next().await {
                    let b = b?;
                    rows += b.num_rows();
                    w.write(&b)?;
                }
                w.finish()?;
                w.into_inner().flush()?;
            }
            OutFormat::Parquet => {
                let path = self.output.as_ref().expect("checked at start");
                let file = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
                let mut w = campo_lake::deltalake::parquet::arrow::ArrowWriter::try_new(file, schema, None)?;
                while let Some(b) = batches.next().await {
                    let b = b?;
                    rows += b.num_rows();
                    w.write(&b)?;
                }
                w.close()?;
            }
        }
        Ok(rows)
    }

    async fn interactive(&self) -> anyhow::Result<()> {
        use rustyline::error::ReadlineError;
        let mut rl = rustyline::DefaultEditor::new().context("starting the line editor")?;
        let history = history_path();
        if let Some(h) = &history {
            let _ = rl.load_history(h);
        }
        let versions: Vec<String> = self.tables.iter().map(|(k, v)| format!("{}@{v}", k.name())).collect();
        eprintln!("campo sql over {} ({}).", self.lake.root(), versions.join(" "));
        eprintln!("End statements with `;`. \\d lists tables, \\d NAME shows one, \\? helps, \\q or Ctrl-D quits.");
        let mut buf = String::new();
        loop {
            let prompt = if buf.is_empty() { "campo> " } else { "   ..> " };
            match rl.readline(prompt) {
                Ok(line) => {
                    let trimmed = line.trim();
                    if buf.is_empty() && (trimmed == "\\q" || trimmed == "quit" || trimmed == "exit") {
                        break;
                    }
                    if buf.is_empty() && trimmed.starts_with('\\') {
                        let _ = rl.add_history_entry(trimmed);
                        self.report(self.run_one(trimmed).await);
                        continue;
                    }
                    if trimmed.is_empty() && buf.is_empty() {
                        continue;
                    }
                    buf.push_str(&line);
                    buf.push('\n');
                    if trimmed.ends_with(';') {
                        let text = std::mem::take(&mut buf);
                        let _ = rl.add_history_entry(text.trim());
                        for item in split_script(&text) {
                            if let Err(e) = self.run_one(&item).await {
                                self.report(Err(e));
                                break;
                            }
                        }
                    }
                }
                Err(ReadlineError::Interrupted) => buf.clear(),
                Err(ReadlineError::Eof) => break,
                Err(e) => return Err(anyhow!("reading the line: {e}")),
            }
        }
        if let Some(h) = &history {
            let _ = rl.save_history(h);
        }
        Ok(())
    }

    fn report(&self, r: anyhow::Result<()>) {
        if let Err(e) = r {
            eprintln!("error: {e:#}");
        }
    }
}

const HELP: &str = "\
\\d            list the lake's tables (version read, columns, partitioning)
\\d NAME       the columns of one table
\\q            quit (also Ctrl-D)
Statements end with `;`. Queries, EXPLAIN, SET and SHOW run; anything that would change the
lake (INSERT, UPDATE, DELETE, CREATE, DROP, COPY, CREATE EXTERNAL TABLE) is refused.";

fn history_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))?;
    let dir = base.join("campo");
    std::fs::create_dir_all(&dir).ok()?;
    Some(dir.join("sql_history"))
}

/// A DataFusion error as an analyst reads it: without the "Error during planning:" prefix and
/// with unknown tables named as such.
fn plan_error(e: campo_lake::datafusion::error::DataFusionError) -> String {
    let text = e.strip_backtrace();
    text.strip_prefix("Error during planning: ").unwrap_or(&text).to_string()
}

/// Splits a script into statements (at `;` outside quotes and comments) and meta commands (a
/// line starting with `\`).
fn split_script(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = text.chars().peekable();
    let (mut quote, mut line_start) = (None::<char>, true);
    while let Some(c) = chars.next() {
        if quote.is_none() && line_start && cur.trim().is_empty() && c == '\\' {
            let mut meta = String::from('\\');
            for c in chars.by_ref() {
                if c == '\n' {
                    break;
                }
                meta.push(c);
            }
            out.push(meta.trim().to_string());
            cur.clear();
            line_start = true;
            continue;
        }
        line_start = c == '\n';
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"') => quote = Some(c),
            (None, '-') if chars.peek() == Some(&'-') => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        break;
                    }
                }
                cur.push('\n');
                line_start = true;
                continue;
            }
            (None, ';') => {
                if !cur.trim().is_empty() {
                    out.push(cur.trim().to_string());
                }
                cur.clear();
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    if !cur.trim().is_empty() {
        out.push(cur.trim().to_string());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::split_script;

    #[test]
    fn scripts_split_at_semicolons_outside_quotes_and_comments() {
        let s = "SELECT 'a;b' AS x; -- one; two\n\\d readings\nSELECT \"c;d\"\nFROM t;\n\n";
        assert_eq!(split_script(s), vec!["SELECT 'a;b' AS x", "\\d readings", "SELECT \"c;d\"\nFROM t"]);
        assert_eq!(split_script("\\d"), vec!["\\d"]);
        assert!(split_script(" ; ;\n").is_empty());
    }
}
