//! Command-line surface, in the manner of `rpk`, `kcat` and `datafusion-cli`: every flag names
//! its config key and its `CAMPO__...` variable.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "campo",
    version,
    about = "Streaming analytics for the FriendApp collective field: Kafka in, Delta Lake out, exactly once.",
    after_help = "Configuration: defaults < campo.toml (--config) < CAMPO__SECTION__KEY variables < flags.\n\
                  Exit codes: 0 success (also a clean stop on Ctrl-C/SIGTERM), 1 runtime failure, 2 usage or configuration error.\n\
                  Start here: `campo demo` runs everything embedded and prints where to look."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Debug, Clone)]
pub struct GlobalArgs {
    /// Log output format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human, env = "CAMPO_LOG_FORMAT")]
    pub log_format: LogFormat,
    /// Log filter (tracing EnvFilter syntax), e.g. `info,campo_pipelines=debug`.
    #[arg(long, global = true, env = "CAMPO_LOG", default_value = "info")]
    pub log: String,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Consume the topics and write the bronze Delta tables, exactly once, until stopped.
    Run(RunArgs),
    /// Generate realistic FriendApp traffic into Kafka or a JSON-lines file.
    Simulate(crate::simulate_cmd::SimulateArgs),
    /// The embedded demo: in-process Kafka, the simulator and the pipeline, writing ./lake.
    Demo(crate::demo::DemoArgs),
    /// Score the collapse forecast on history (a lake, or a simulated scenario) against
    /// persistence and the damped trend: Brier skill, calibration, lead times.
    Backtest(crate::backtest_cmd::BacktestArgs),
    /// Serve the HTTP API and dashboard over an existing lake (no Kafka needed).
    Serve(crate::api_cmd::ServeArgs),
    /// Mint an API token signed with the lake's key; prints the token on stdout.
    Token(crate::api_cmd::TokenArgs),
    /// SQL over the lake's tables: an interactive shell, or one-shot with -c / -f (read-only).
    Sql(crate::sql_cmd::SqlArgs),
    /// Lake maintenance by hand: status, optimize (compaction, z-order), vacuum, checkpoint.
    Lake(crate::lake_cmd::LakeArgs),
    /// Erase users: delete every row of these user_hash values from the lake, the files and
    /// the log history that held them, and record the request (SPEC 8).
    Forget(crate::forget_cmd::ForgetArgs),
}

/// Flags shared by every command that runs the pipeline.
#[derive(Args, Debug, Clone, Default)]
pub struct PipelineArgs {
    /// Config file (TOML); see campo.example.toml.
    #[arg(long, short = 'c', env = "CAMPO_CONFIG")]
    pub config: Option<PathBuf>,
    /// Kafka bootstrap servers [config: kafka.brokers].
    #[arg(long, env = "CAMPO__KAFKA__BROKERS")]
    pub brokers: Option<String>,
    /// Consumer group for partition assignment [config: kafka.group_id].
    #[arg(long, env = "CAMPO__KAFKA__GROUP_ID")]
    pub group_id: Option<String>,
    /// Lake root: a path or object-store URL [config: lake.path].
    #[arg(long, env = "CAMPO__LAKE__PATH")]
    pub lake: Option<String>,
    /// Flush to Delta at least this often, e.g. 1s, 500ms [config: ingest.flush_interval].
    #[arg(long, env = "CAMPO__INGEST__FLUSH_INTERVAL")]
    pub flush_interval: Option<String>,
    /// Flush as soon as this many rows are buffered [config: ingest.max_batch_rows].
    #[arg(long, env = "CAMPO__INGEST__MAX_BATCH_ROWS")]
    pub max_batch_rows: Option<usize>,
    /// Tumbling window size, e.g. 1m [config: windows.size].
    #[arg(long, env = "CAMPO__WINDOWS__SIZE")]
    pub window_size: Option<String>,
    /// How far the watermark trails the largest event time, e.g. 30s [config: windows.allowed_lateness].
    #[arg(long, env = "CAMPO__WINDOWS__ALLOWED_LATENESS")]
    pub allowed_lateness: Option<String>,
    /// A partition read to its end with no record for this long stops holding the watermark
    /// back, e.g. 10s [config: windows.idle_timeout].
    #[arg(long, env = "CAMPO__WINDOWS__IDLE_TIMEOUT")]
    pub idle_timeout: Option<String>,
    /// Prometheus /metrics address, empty to disable [config: metrics.listen].
    #[arg(long, env = "CAMPO__METRICS__LISTEN")]
    pub metrics_listen: Option<String>,
    /// HTTP API and dashboard address, empty to disable [config: api.listen].
    #[arg(long, env = "CAMPO__API__LISTEN")]
    pub api_listen: Option<String>,
    /// Extra librdkafka property KEY=VALUE, repeatable [config: kafka.properties.KEY].
    #[arg(long = "kafka-property", short = 'X', value_name = "KEY=VALUE")]
    pub kafka_properties: Vec<String>,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub pipeline: PipelineArgs,
    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    pub print_config: bool,
}

pub fn init_tracing(g: &GlobalArgs) {
    use tracing_subscriber::EnvFilter;
    // librdkafka and delta-kernel report every failed connect or absent table at ERROR; campo
    // reports the state changes itself, once each. Name their targets in --log to see them.
    let mut spec = g.log.clone();
    for (target, quiet) in [("rdkafka", "rdkafka=off,librdkafka=off"), ("kernel", "buoyant_kernel=off,delta_kernel=off"), ("deltalake", "deltalake_core=error")] {
        if !spec.contains(target) {
            spec.push(',');
            spec.push_str(quiet);
        }
    }
    let filter = EnvFilter::try_new(&spec).unwrap_or_else(|e| {
        eprintln!("warning: bad --log filter {:?} ({e}); using info", g.log);
        EnvFilter::new("info")
    });
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match g.log_format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
