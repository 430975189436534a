//! The HTTP API in the binary: started beside the pipeline (`campo run`, `campo demo`), on its
//! own over an existing lake (`campo serve`), and the tokens it accepts (`campo token`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use campo_api::{AppState, Keys, Limits, MetricsRender, ReadyCheck, Scope};
use campo_lake::Lake;
use campo_pipelines::Config;
use campo_pipelines::ingest::{Shutdown, Stats};
use clap::Args;

use crate::cli::PipelineArgs;
use crate::load_config::{self, ConfigProblem};

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Config file (TOML); see campo.example.toml.
    #[arg(long, short = 'c', env = "CAMPO_CONFIG")]
    pub config: Option<PathBuf>,
    /// Lake root: a path or object-store URL [config: lake.path].
    #[arg(long, env = "CAMPO__LAKE__PATH")]
    pub lake: Option<String>,
    /// Address to listen on [config: api.listen].
    #[arg(long, env = "CAMPO__API__LISTEN")]
    pub listen: Option<String>,
}

#[derive(Args, Debug)]
pub struct TokenArgs {
    /// Config file (TOML); see campo.example.toml.
    #[arg(long, short = 'c', env = "CAMPO_CONFIG")]
    pub config: Option<PathBuf>,
    /// Lake root whose signing key signs the token [config: lake.path].
    #[arg(long, env = "CAMPO__LAKE__PATH")]
    pub lake: Option<String>,
    /// A scope the token grants, repeatable: signals:read, alerts:read, sql:query, admin.
    #[arg(long = "scope", required = true, value_name = "SCOPE")]
    pub scopes: Vec<Scope>,
    /// How long the token is valid, e.g. 1h, 30d.
    #[arg(long, default_value = "24h")]
    pub ttl: humantime::Duration,
    /// Whom the token is for (its `sub`); rate limits count per subject.
    #[arg(long, default_value = "campo-cli")]
    pub subject: String,
}

/// `campo serve`: the API over an existing lake, until Ctrl-C / SIGTERM.
pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let cfg = load_config::load(&PipelineArgs { config: args.config, lake: args.lake, api_listen: args.listen, ..Default::default() })?;
    if cfg.api.listen.is_empty() {
        return Err(ConfigProblem("config key `api.listen` (or --listen): `campo serve` needs an address to listen on".into()).into());
    }
    let mut metrics_cfg = cfg.clone();
    metrics_cfg.metrics.listen.clear(); // the API serves /metrics itself
    let metrics = crate::run_cmd::install_metrics(&metrics_cfg)?;
    let state = state(&cfg, None, Some(metrics))?;
    let lake_root = state.lake.root().to_string();
    let shutdown = Shutdown::default();
    let api = start(&cfg.api.listen, state, shutdown.clone()).await?;
    eprintln!("campo serve: the API over {lake_root} at http://{}/ (dashboard), /openapi.json", api.addr);
    eprintln!("  mint a token: campo token --lake {} --scope signals:read --scope alerts:read", cfg.lake.path);
    crate::run_cmd::stop_on_signal(shutdown.clone());
    shutdown.triggered().await;
    api.stop().await;
    Ok(())
}

/// `campo token`: prints a token signed with the lake's key (or the configured one).
pub async fn token(args: TokenArgs) -> anyhow::Result<()> {
    let cfg = load_config::load(&PipelineArgs { config: args.config, lake: args.lake, ..Default::default() })?;
    let lake = open_lake(&cfg)?;
    let keys = keys(&cfg, &lake)?;
    let token = keys.mint(&args.subject, &args.scopes, *args.ttl).map_err(|e| anyhow::anyhow!("{}", e.message))?;
    let until = chrono::Utc::now() + chrono::Duration::from_std(*args.ttl).unwrap_or(chrono::Duration::MAX);
    eprintln!(
        "token for `{}` with {}, valid until {}",
        args.subject,
        args.scopes.iter().map(|s| s.name()).collect::<Vec<_>>().join(" "),
        until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    );
    println!("{token}");
    Ok(())
}

fn open_lake(cfg: &Config) -> anyhow::Result<Lake> {
    Lake::new(&cfg.lake.path, cfg.lake.storage_options.clone().into_iter().collect())
        .map_err(|e| ConfigProblem(format!("config key `lake.path` ({}): {e}", cfg.lake.path)).into())
}

/// The signing key: `api.signing_key_file` when set (it must exist), else the one beside a local
/// lake, created on first use.
pub fn keys(cfg: &Config, lake: &Lake) -> anyhow::Result<Keys> {
    let key = if !cfg.api.signing_key_file.is_empty() {
        campo_api::auth::load_key(std::path::Path::new(&cfg.api.signing_key_file))
            .map_err(|e| ConfigProblem(format!("config key `api.signing_key_file`: {e}")))?
    } else {
        let root = lake.local_root().ok_or_else(|| {
            ConfigProblem(format!(
                "config key `api.signing_key_file`: must be set when the lake ({}) is not on the local filesystem",
                lake.root()
            ))
        })?;
        campo_api::auth::load_or_create_key(&campo_api::auth::default_key_path(&root))?
    };
    Ok(Keys::new(&key, &cfg.api.audience))
}

pub fn limits(cfg: &Config) -> Limits {
    let a = &cfg.api;
    Limits {
        rate_per_s: a.rate_limit_per_s,
        burst: a.rate_limit_burst,
        max_body_bytes: a.max_body_bytes,
        sql_memory_bytes: a.sql_memory_mb << 20,
        sql_timeout: a.sql_timeout,
        sql_max_rows: a.sql_max_rows,
    }
}

/// Everything the API needs from this process's configuration.
pub fn state(cfg: &Config, ready: Option<ReadyCheck>, metrics: Option<MetricsRender>) -> anyhow::Result<AppState> {
    let lake = open_lake(cfg)?;
    let keys = keys(cfg, &lake)?;
    let mut state = AppState::new(lake, keys);
    state.ready = ready;
    state.metrics = metrics;
    state.limits = limits(cfg);
    // Erasure needs the key directory; without one (an object-store lake that sets none) the
    // route says so.
    state.erasure_keys = cfg
        .lifecycle
        .keys_dir_for(&state.lake)
        .ok()
        .and_then(|dir| campo_lake::lifecycle::PeriodKeys::open(dir, &state.lake).map_err(|e| tracing::warn!(error = %e, "no erasures over the API")).ok());
    Ok(state)
}

/// `/readyz` beside a running ingest: connected to Kafka, holding an assignment, lake writable.
pub fn ready_check(stats: Arc<Stats>) -> ReadyCheck {
    Arc::new(move || {
        vec![
            ("kafka_connected", stats.kafka_ready.load(Ordering::Relaxed)),
            ("assignment_held", stats.assigned_partitions.load(Ordering::Relaxed) > 0),
            ("lake_writable", stats.lake_ready.load(Ordering::Relaxed)),
        ]
    })
}

/// A running API server, on a runtime of its own: the pipeline's CPU-bound work (decoding,
/// the window SQL) never delays an answer behind it on a shared worker.
pub struct RunningApi {
    pub addr: SocketAddr,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for RunningApi {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl RunningApi {
    /// Waits for the server to finish after `shutdown` (open requests get 5 s, then are dropped).
    pub async fn stop(mut self) {
        let Some(task) = self.task.take() else { return };
        let abort = task.abort_handle();
        match tokio::time::timeout(Duration::from_secs(5), task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "the API server stopped with an error"),
            Ok(Err(_)) => {}
            Err(_) => {
                tracing::warn!("the API server did not finish its open requests within 5 s; dropping them");
                abort.abort();
            }
        }
    }
}

/// Binds `listen` and serves the API until `shutdown` is triggered.
pub async fn start(listen: &str, state: AppState, shutdown: Shutdown) -> anyhow::Result<RunningApi> {
    let addr: SocketAddr = listen.parse().map_err(|e| ConfigProblem(format!("config key `api.listen` ({listen}): {e}")))?;
    let listener = std::net::TcpListener::bind(addr)
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr} (config key `api.listen`): {e}"))?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("campo-api")
        .enable_all()
        .build()
        .map_err(|e| anyhow::anyhow!("cannot start the API runtime: {e}"))?;
    tracing::info!(%addr, "API at http://{addr}/");
    let task = runtime.spawn(async move {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        campo_api::serve(listener, state, async move { shutdown.triggered().await }).await
    });
    Ok(RunningApi { addr, task: Some(task), runtime: Some(runtime) })
}
