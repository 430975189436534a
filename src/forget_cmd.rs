//! `campo forget USER_HASH...`: erasure of users (SPEC 8). Every row of those users goes from
//! every lake table that holds user rows, with the files and the log history that held them,
//! and the request is recorded in `erasures` (keyed hashes only). A running ingest, and any
//! later replay of the topics, drops their records from then on.

use std::io::BufRead;
use std::path::PathBuf;

use campo_lake::{Lake, TableKind};
use clap::Args;

use crate::cli::PipelineArgs;
use crate::load_config::{self, ConfigProblem};

#[derive(Args, Debug)]
pub struct ForgetArgs {
    /// The user_hash values to erase.
    #[arg(value_name = "USER_HASH", required_unless_present = "from_file")]
    pub users: Vec<String>,
    /// Read user_hash values from a file, one per line (`-`: standard input), so that they
    /// appear in no shell history or process list.
    #[arg(long, value_name = "FILE")]
    pub from_file: Option<PathBuf>,
    /// Config file (TOML), for `lake.path`, `lake.storage_options` and `lifecycle.keys_dir`.
    #[arg(long, short = 'c', env = "CAMPO_CONFIG")]
    pub config: Option<PathBuf>,
    /// Lake root: a path or object-store URL [config: lake.path].
    #[arg(long, env = "CAMPO__LAKE__PATH")]
    pub lake: Option<String>,
    /// Files that no log entry names are deleted once older than this; a younger one may be an
    /// ingest commit in progress.
    #[arg(long, default_value = "1h", value_name = "DURATION")]
    pub orphan_grace: humantime::Duration,
    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(args: ForgetArgs) -> anyhow::Result<()> {
    let cfg = load_config::load(&PipelineArgs { config: args.config.clone(), lake: args.lake.clone(), ..Default::default() })?;
    let lake = Lake::new(&cfg.lake.path, cfg.lake.storage_options.clone().into_iter().collect())
        .map_err(|e| ConfigProblem(format!("config key `lake.path` ({}): {e}", cfg.lake.path)))?;
    let mut users = args.users.clone();
    if let Some(path) = &args.from_file {
        let read: Box<dyn BufRead> = if path.as_os_str() == "-" {
            Box::new(std::io::stdin().lock())
        } else {
            Box::new(std::io::BufReader::new(
                std::fs::File::open(path).map_err(|e| ConfigProblem(format!("--from-file {}: {e}", path.display())))?,
            ))
        };
        for line in read.lines() {
            let line = line.map_err(|e| ConfigProblem(format!("--from-file {}: {e}", path.display())))?;
            if !line.trim().is_empty() {
                users.push(line.trim().to_string());
            }
        }
    }
    if users.is_empty() || users.iter().any(|u| u.trim().is_empty()) {
        return Err(ConfigProblem("no user_hash to erase (an empty value is not a user)".into()).into());
    }
    let mut present = false;
    for kind in TableKind::USER_ROWS {
        present |= lake.open(kind.name()).await.is_ok();
    }
    if !present {
        return Err(ConfigProblem(format!("{} is not a campo lake: it has no readings, activity or rejected table", lake.root())).into());
    }
    let dir = cfg.lifecycle.keys_dir_for(&lake).map_err(|e| ConfigProblem(e.to_string()))?;
    let keys = campo_lake::lifecycle::PeriodKeys::open(&dir, &lake).map_err(|e| ConfigProblem(format!("config key `lifecycle.keys_dir`: {e}")))?;
    eprintln!("erasing {} user(s) from {} ...", users.len(), lake.root());
    let r = lake.forget(&users, &keys, *args.orphan_grace).await?;
    if args.json {
        println!("{}", serde_json::to_string(&r)?);
        return Ok(());
    }
    println!("erasure {} of {} user(s), requested {}, completed {}", r.request_id, r.users, r.requested_at, r.completed_at);
    for (table, n) in &r.rows {
        println!("{table}: {n} rows deleted");
    }
    println!(
        "{} data files deleted, {} log files scrubbed of the users; {} DELETE pass(es); {} ms",
        r.files_removed, r.log_entries_scrubbed, r.delete_passes, r.elapsed_ms
    );
    Ok(())
}
