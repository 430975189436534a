//! `campo run`: the bronze ingest against a Kafka cluster.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use campo_pipelines::Config;
use campo_pipelines::ingest::{self, Shutdown, Stats};

use crate::api_cmd;
use crate::cli::RunArgs;
use crate::load_config;

pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let cfg = load_config::load(&args.pipeline)?;
    if args.print_config {
        print!("{}", toml::to_string_pretty(&cfg)?);
        return Ok(());
    }
    let metrics = install_metrics(&cfg)?;
    let stats = Arc::new(Stats::default());
    let shutdown = Shutdown::default();
    let api = if cfg.api.listen.is_empty() {
        None
    } else {
        let state = api_cmd::state(&cfg, Some(api_cmd::ready_check(stats.clone())), Some(metrics))?;
        Some(api_cmd::start(&cfg.api.listen, state, shutdown.clone()).await?)
    };
    stop_on_signal(shutdown.clone());
    let progress = tokio::spawn(log_progress(stats.clone(), Duration::from_secs(10)));
    let result = ingest::run(cfg, stats.clone(), shutdown.clone()).await;
    progress.abort();
    shutdown.trigger();
    if let Some(api) = api {
        api.stop().await;
    }
    result?;
    tracing::info!(committed = stats.committed_total(), "stopped; everything consumed is committed");
    Ok(())
}

/// Installs the Prometheus recorder: its text is served at the API's `/metrics`, and also on
/// `metrics.listen` when that is set (for scrapers that should not reach the API).
pub fn install_metrics(cfg: &Config) -> anyhow::Result<campo_api::MetricsRender> {
    let builder = metrics_exporter_prometheus::PrometheusBuilder::new();
    let handle = if cfg.metrics.listen.is_empty() {
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        metrics::set_global_recorder(recorder).map_err(|e| anyhow::anyhow!("metrics recorder: {e}"))?;
        let upkeep = handle.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                upkeep.run_upkeep();
            }
        });
        handle
    } else {
        let addr: std::net::SocketAddr = cfg.metrics.listen.parse()?;
        let (recorder, exporter) = builder
            .with_http_listener(addr)
            .build()
            .map_err(|e| anyhow::anyhow!("metrics endpoint on {addr} (config key `metrics.listen`): {e}"))?;
        let handle = recorder.handle();
        metrics::set_global_recorder(recorder).map_err(|e| anyhow::anyhow!("metrics recorder: {e}"))?;
        tokio::spawn(exporter);
        tracing::info!(%addr, "Prometheus metrics at http://{addr}/metrics");
        handle
    };
    Ok(std::sync::Arc::new(move || handle.render()))
}

/// Ctrl-C or SIGTERM: stop consuming, commit what is buffered, exit 0.
pub fn stop_on_signal(shutdown: Shutdown) {
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let term = std::future::pending::<()>();
        tokio::select! {
            _ = ctrl_c => {},
            _ = term => {},
        }
        tracing::info!("stopping: committing what is buffered (press Ctrl-C again to abort)");
        shutdown.trigger();
        let _ = tokio::signal::ctrl_c().await;
        std::process::exit(130);
    });
}

async fn log_progress(stats: Arc<Stats>, every: Duration) {
    let mut last = 0;
    loop {
        tokio::time::sleep(every).await;
        let consumed = stats.consumed.load(Ordering::Relaxed);
        let r = |a: &[std::sync::atomic::AtomicU64; 2]| a[0].load(Ordering::Relaxed) + a[1].load(Ordering::Relaxed);
        tracing::info!(
            consumed,
            rate_per_s = (consumed - last) / every.as_secs().max(1),
            bronze = r(&stats.bronze),
            duplicates = r(&stats.duplicate),
            dlq = r(&stats.dlq),
            flushes = stats.flushes.load(Ordering::Relaxed),
            lag = stats.consumer_lag.load(Ordering::Relaxed),
            partitions = stats.assigned_partitions.load(Ordering::Relaxed),
            kafka_ready = stats.kafka_ready.load(Ordering::Relaxed),
            lake_ready = stats.lake_ready.load(Ordering::Relaxed),
            "progress"
        );
        last = consumed;
    }
}
