//! `campo demo`: everything embedded. An in-process mock Kafka cluster, the simulator producing
//! realistic traffic (with a planted collapse), and the pipeline writing `./lake`.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use campo_pipelines::Config;
use campo_pipelines::ingest::{self, Shutdown, Stats};
use campo_pipelines::simulate::Simulator;
use clap::Args;
use rdkafka::mocking::MockCluster;

use campo_api::Scope;

use crate::api_cmd;
use crate::simulate_cmd::{self, SimulateArgs};

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Where to write the lake.
    #[arg(long, default_value = "./lake")]
    pub lake: String,
    /// Events per second the simulator produces.
    #[arg(long, default_value_t = 3000.0)]
    pub rate: f64,
    /// Simulated seconds per second.
    #[arg(long, default_value_t = 15.0)]
    pub speed: f64,
    /// Stop by itself after this long (default: run until Ctrl-C).
    #[arg(long)]
    pub duration: Option<humantime::Duration>,
    /// Prometheus /metrics address, empty to disable.
    #[arg(long, default_value = "127.0.0.1:9464")]
    pub metrics_listen: String,
    /// HTTP API and dashboard address, empty to disable.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub api_listen: String,
    /// API requests per second per caller; 0 disables the limit (e.g. for a load test).
    #[arg(long, default_value_t = 200)]
    pub api_rate_limit: u32,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let cluster = MockCluster::new(1)?;
    let brokers = cluster.bootstrap_servers();
    let mut cfg = Config::default();
    cfg.kafka.brokers = brokers.clone();
    cfg.kafka.group_id = "campo-demo".into();
    cfg.lake.path = args.lake.clone();
    cfg.metrics.listen = args.metrics_listen.clone();
    cfg.api.listen = args.api_listen.clone();
    cfg.api.rate_limit_per_s = args.api_rate_limit;
    cfg.validate()?;
    for (t, p) in [(&cfg.kafka.readings_topic, 4), (&cfg.kafka.activity_topic, 4), (&cfg.kafka.dlq_topic, 1), (&cfg.protect.topic, 1)] {
        cluster.create_topic(t, p, 1)?;
    }
    let metrics = crate::run_cmd::install_metrics(&cfg)?;
    let stats = Arc::new(Stats::default());
    let shutdown = Shutdown::default();
    let api = if cfg.api.listen.is_empty() {
        None
    } else {
        let state = api_cmd::state(&cfg, Some(api_cmd::ready_check(stats.clone())), Some(metrics))?;
        let token = state
            .keys
            .mint("campo-demo", &[Scope::SignalsRead, Scope::AlertsRead, Scope::SqlQuery], Duration::from_secs(7 * 24 * 3600))
            .map_err(|e| anyhow::anyhow!("{}", e.message))?;
        Some((api_cmd::start(&cfg.api.listen, state, shutdown.clone()).await?, token))
    };
    crate::run_cmd::stop_on_signal(shutdown.clone());
    println!("campo demo: embedded Kafka at {brokers}, writing the lake to {}", args.lake);
    println!(
        "  simulating {:.0} events/s at {}x speed: a collapse spreads through sa-east-1 from minute 11 (over 5 minutes, \
         then 3 minutes deep, then recovery), another through us-east-1 from minute 30 for 40 minutes",
        args.rate, args.speed
    );
    println!("  forecasts appear once a region has 10 closed windows; protective-mode changes go to `{}`", cfg.protect.topic);
    if let Some((api, token)) = &api {
        let base = format!("http://{}", api.addr);
        println!("  the API is at {base}/ (readiness {base}/readyz, metrics {base}/metrics); try it with this token (7 days,");
        println!("  signals:read alerts:read sql:query; `campo token --lake {} --scope ...` mints more):", args.lake);
        println!("    curl -s -H 'Authorization: Bearer {token}' {base}/v1/regions");
        println!("  the dashboard, live: {base}/#token={token}");
    }
    println!("  Ctrl-C stops cleanly with everything committed.\n");

    let sim_args = SimulateArgs {
        rate: args.rate,
        speed: args.speed,
        seed: args.seed,
        count: None,
        duration: None,
        start: None,
        regions: campo_pipelines::simulate::DEFAULT_REGIONS.iter().map(|s| s.to_string()).collect(),
        users_per_region: 500,
        collapses: vec![
            "sa-east-1@11+8:0.8/5".parse().map_err(anyhow::Error::msg)?,
            "us-east-1@30+40:0.85/8".parse().map_err(anyhow::Error::msg)?,
        ],
        activity_share: 0.4,
        invalid_share: 0.01,
        duplicate_share: 0.01,
        late_share: 0.005,
        out_of_order_share: 0.02,
        output: None,
        brokers: brokers.clone(),
        readings_topic: cfg.kafka.readings_topic.clone(),
        activity_topic: cfg.kafka.activity_topic.clone(),
        partitions: 0,
        producer_properties: vec![],
        json: false,
    };
    let sim_stop = Shutdown::default();
    let producer_thread = {
        let stop = sim_stop.clone();
        let sim_args = sim_args.clone();
        std::thread::spawn(move || -> anyhow::Result<()> {
            let producer = simulate_cmd::kafka_producer(&sim_args.brokers, &[])?;
            let sim = Simulator::new(sim_args.sim_config()?);
            simulate_cmd::drive(sim, &sim_args, &stop, |r| simulate_cmd::send(&producer, r))?;
            use rdkafka::producer::Producer;
            producer.flush(Duration::from_secs(10))?;
            Ok(())
        })
    };
    if let Some(d) = args.duration {
        let s = shutdown.clone();
        tokio::spawn(async move {
            tokio::time::sleep(*d).await;
            s.trigger();
        });
    }
    {
        let s = shutdown.clone();
        let stop = sim_stop.clone();
        tokio::spawn(async move {
            s.triggered().await;
            stop.trigger();
        });
    }
    let progress = tokio::spawn(show_progress(stats.clone()));
    let result = ingest::run(cfg.clone(), stats.clone(), shutdown.clone()).await;
    progress.abort();
    shutdown.trigger();
    if let Some((api, _)) = api {
        api.stop().await;
    }
    sim_stop.trigger();
    let _ = tokio::task::spawn_blocking(move || producer_thread.join()).await;
    result?;
    summary(&cfg, &stats).await?;
    drop(cluster);
    Ok(())
}

async fn show_progress(stats: Arc<Stats>) {
    let started = Instant::now();
    let header = || {
        println!(
            "{:>6}  {:>9}  {:>9}  {:>9}  {:>6}  {:>6}  {:>5}  {:>7}  {:>5}  {}",
            "time", "consumed", "readings", "activity", "dups", "dlq", "late", "flushes", "lag", "state"
        )
    };
    header();
    let mut shown_windows = 0;
    let mut seen_changes = std::collections::HashSet::new();
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let l = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        let state = match (stats.kafka_ready.load(Ordering::Relaxed), stats.lake_ready.load(Ordering::Relaxed)) {
            (true, true) => "ok",
            (false, _) => "kafka not ready",
            (_, false) => "lake not writable",
        };
        println!(
            "{:>5}s  {:>9}  {:>9}  {:>9}  {:>6}  {:>6}  {:>5}  {:>7}  {:>5}  {}",
            started.elapsed().as_secs(),
            l(&stats.consumed),
            l(&stats.bronze[0]),
            l(&stats.bronze[1]),
            l(&stats.duplicate[0]) + l(&stats.duplicate[1]),
            l(&stats.dlq[0]) + l(&stats.dlq[1]),
            l(&stats.late[0]) + l(&stats.late[1]),
            l(&stats.flushes),
            stats.consumer_lag.load(Ordering::Relaxed),
            state
        );
        for c in stats.protect_changes.lock().expect("protect changes").iter() {
            if seen_changes.insert(c.event_id.clone()) {
                let at = campo_pipelines::windows::stage::fmt_us(c.window_end_us);
                println!("\n  >> PROTECTIVE MODE {}: {} -> {} at window {at}: {}", c.region, c.previous.name(), c.level.name(), c.reason);
                println!("     (sent to system.protect, written to alerts)\n");
            }
        }
        let closed = l(&stats.windows_closed);
        if closed != shown_windows {
            shown_windows = closed;
            print_signals(&stats);
            header();
        }
    }
}

/// The latest closed window of every region, as written to region_metrics_1m and evu_1m.
fn print_signals(stats: &Stats) {
    let signals = stats.signals.lock().expect("signals").clone();
    if signals.is_empty() {
        return;
    }
    let protect = stats.protect.lock().expect("protect").clone();
    let through = campo_pipelines::windows::stage::fmt_us(stats.closed_through.load(Ordering::Relaxed));
    println!("\n  signals, windows closed through {through} (event time):");
    println!(
        "  {:<14} {:>20} {:>8} {:>8} {:>9} {:>10} {:>6}  {:>22} {:>6}  {}",
        "region", "window end", "readings", "hz_mean", "low_share", "state", "evu", "hz in 10 min (80%)", "p_coll", "protect"
    );
    for (region, s) in &signals {
        let end = campo_pipelines::windows::stage::fmt_us(s.window_end_us);
        let evu = s.evu.map_or("-".to_string(), |e| format!("{e:.1}"));
        let p = protect.get(region);
        let band = p.and_then(|p| p.forecast_10).map_or("-".to_string(), |(f, lo, hi)| format!("{f:.0} [{lo:.0}, {hi:.0}]"));
        let pc = p.and_then(|p| p.p_collapse_10).map_or("-".to_string(), |x| format!("{x:.2}"));
        let level = p.map_or("off", |p| p.level.name());
        let level = if level == "off" { "-".to_string() } else { format!("** {} **", level.to_uppercase()) };
        println!(
            "  {region:<14} {end:>20} {:>8} {:>8.1} {:>9.2} {:>10} {evu:>6}  {band:>22} {pc:>6}  {level}",
            s.readings, s.hz_mean, s.low_share, s.state
        );
    }
    println!();
}

async fn summary(cfg: &Config, stats: &Stats) -> anyhow::Result<()> {
    let lake = campo_lake::Lake::new(&cfg.lake.path, Default::default())?;
    println!("\nstopped cleanly; everything consumed is committed ({} records).", stats.committed_total());
    println!("lake at {}:", lake.root());
    for kind in campo_lake::TableKind::ALL {
        let rows = lake.query(&format!("SELECT count(*) AS n FROM {}", kind.name())).await?;
        let n = rows
            .first()
            .map(|b| campo_lake::arrow::array::AsArray::as_primitive::<campo_lake::arrow::datatypes::Int64Type>(b.column(0)).value(0))
            .unwrap_or(0);
        println!("  {:<18} {n:>9} rows", kind.name());
    }
    let path = lake.local_root().map(|p| p.display().to_string()).unwrap_or_else(|| lake.root().to_string());
    let path = path.trim_end_matches('/');
    println!("\nlook at it:");
    println!("  python3 -c \"import polars as pl; print(pl.read_delta('{path}/readings').group_by('region').len())\"");
    println!("  python3 -c \"from deltalake import DeltaTable; print(DeltaTable('{path}/rejected').to_pandas()[['reason','message']].head())\"");
    println!("  python3 -c \"import polars as pl; print(pl.read_delta('{path}/region_metrics_1m').sort('window_start').tail(12))\"");
    println!("  python3 -c \"import polars as pl; print(pl.read_delta('{path}/evu_1m').group_by('region').agg(pl.col('evu').mean()))\"");
    println!("  python3 -c \"import polars as pl; print(pl.read_delta('{path}/alerts').sort('window_end').select('region','window_end','level','reason'))\"");
    println!("  python3 -c \"import polars as pl; print(pl.read_delta('{path}/collapse_forecast').filter(pl.col('horizon_min') == 10).sort('issued_at').tail(12))\"");
    println!("  campo backtest --lake {path}     # how good the forecast was on this history");
    println!("  duckdb -c \"LOAD delta; SELECT kind, count(*) FROM delta_scan('{path}/activity') GROUP BY 1\"");
    println!("  (scripts/test.sh leaves a venv with all three readers under ~/.cache/campo/venv-*)");
    Ok(())
}
