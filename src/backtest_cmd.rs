//! `campo backtest`: replays history (from a lake, or from a simulator scenario run through the
//! pipeline without Kafka) and scores the collapse forecast against persistence and the damped
//! trend, per horizon, with a reliability table and the lead time of every collapse.

use std::collections::BTreeMap;
use std::io::Write;

use anyhow::Context;
use campo_pipelines::protect::backtest;
use campo_pipelines::protect::forecast::WindowPoint;
use campo_pipelines::simulate::{Collapse, SimConfig};
use clap::Args;

use crate::cli::PipelineArgs;

#[derive(Args, Debug)]
pub struct BacktestArgs {
    #[command(flatten)]
    pub pipeline: PipelineArgs,
    /// Build the history from a simulator scenario first (into --lake, or a temporary lake).
    #[arg(long)]
    pub scenario: bool,
    /// Scenario: simulated minutes of traffic.
    #[arg(long, default_value_t = 240)]
    pub minutes: u64,
    /// Scenario: events per simulated minute.
    #[arg(long, default_value_t = 4000)]
    pub events_per_minute: u64,
    /// Scenario: regions, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "sa-east-1,us-east-1,eu-west-1")]
    pub regions: Vec<String>,
    #[arg(long, default_value_t = 300)]
    pub users_per_region: usize,
    /// Scenario: planted collapses, REGION@START_MIN+MINUTES[:LOW_SHARE][/ONSET_MIN], repeatable
    /// [default: four spreading collapses in sa-east-1 and us-east-1; eu-west-1 stays calm].
    #[arg(long = "collapse")]
    pub collapses: Vec<Collapse>,
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Scenario: share of invalid records (they land in `rejected` with their reason).
    #[arg(long, default_value_t = 0.0)]
    pub invalid_share: f64,
    /// Scenario: share of records sent twice (the second is dropped as a duplicate).
    #[arg(long, default_value_t = 0.0)]
    pub duplicate_share: f64,
    /// Scenario: share of records that arrive after their window closed (flagged `late`).
    #[arg(long, default_value_t = 0.0)]
    pub late_share: f64,
    /// Also print, for this region, every window's signals and campo's forecast at 10 minutes.
    #[arg(long, value_name = "REGION")]
    pub trace: Option<String>,
    /// Print the figures as JSON on stdout (the tables go to stderr).
    #[arg(long)]
    pub json: bool,
}

const DEFAULT_COLLAPSES: [&str; 4] = ["sa-east-1@40+25:0.8/10", "us-east-1@90+30:0.85/12", "sa-east-1@150+20:0.75/8", "us-east-1@195+20:0.8/6"];

pub async fn run(args: BacktestArgs) -> anyhow::Result<()> {
    let mut config = crate::load_config::load(&args.pipeline)?;
    let _tmp;
    if args.scenario {
        if args.pipeline.lake.is_none() {
            let dir = tempfile::tempdir().context("creating a temporary lake")?;
            config.lake.path = dir.path().join("lake").to_string_lossy().into_owned();
            _tmp = dir;
        }
        let collapses = if args.collapses.is_empty() {
            DEFAULT_COLLAPSES.iter().map(|c| c.parse().expect("valid default")).collect()
        } else {
            args.collapses.clone()
        };
        let start: chrono::DateTime<chrono::Utc> = "2026-11-02T08:00:00Z".parse().expect("valid");
        let sim = SimConfig {
            regions: args.regions.clone(),
            users_per_region: args.users_per_region,
            rate: args.events_per_minute as f64 / 60.0,
            speed: 1.0,
            seed: args.seed,
            start,
            invalid_share: args.invalid_share,
            duplicate_share: args.duplicate_share,
            late_share: args.late_share,
            out_of_order_share: 0.02,
            pii_share: 0.0,
            collapses,
            ..SimConfig::default()
        };
        let records = args.minutes * args.events_per_minute;
        eprintln!("backtest: replaying {} simulated minutes ({records} events) through the pipeline into {}", args.minutes, config.lake.path);
        let started = std::time::Instant::now();
        campo_pipelines::replay::run(sim, &config, records, move |n| {
            eprint!("\r  {n} / {records} events ({:.0}%), {:.0}s", 100.0 * n as f64 / records as f64, started.elapsed().as_secs_f64());
            let _ = std::io::stderr().flush();
        })
        .await?;
        eprintln!();
    }
    let lake = campo_lake::Lake::new(&config.lake.path, config.lake.storage_options.clone().into_iter().collect())?;
    let series = read_series(&lake).await.with_context(|| format!("reading region_metrics_1m from {}", lake.root()))?;
    if series.is_empty() {
        anyhow::bail!("{} has no closed windows in region_metrics_1m to backtest", lake.root());
    }
    let step_min = config.windows.size.as_secs_f64() / 60.0;
    if let Some(region) = &args.trace {
        let points = series.get(region).with_context(|| format!("no region {region} in region_metrics_1m"))?;
        trace(points, step_min, config.signals.low_hz);
    }
    let total: usize = series.values().map(Vec::len).sum();
    eprintln!("backtest: {} regions, {total} windows", series.len());
    let rules = campo_pipelines::protect::levels::Rules::new(&config);
    let report = backtest::run(&series, step_min, &rules, &mut |done, all| {
        eprint!("\r  forecasting window {done} / {all}");
        let _ = std::io::stderr().flush();
    });
    eprintln!();
    if args.json {
        eprintln!("{report}");
        println!("{}", report.to_json());
    } else {
        println!("{report}");
    }
    Ok(())
}

/// One line per window: its signals and campo's 10- and 30-minute forecasts.
fn trace(points: &[WindowPoint], step_min: f64, low_hz: f64) {
    println!("{:<20} {:>7} {:>6} {:>6} {:>8} {:>6} {:>18} {:>6}", "window_end", "hz", "low", "sens_e", "hz@10", "p@10", "80% band @10", "p@30");
    for i in 0..points.len() {
        let p = &points[i];
        let at = chrono::DateTime::from_timestamp_micros(p.window_end_us).map(|d| d.format("%Y-%m-%dT%H:%M").to_string()).unwrap_or_default();
        let sens = p.sensorial_entropy.map_or("-".into(), |e| format!("{e:.3}"));
        match campo_pipelines::protect::forecast::Model::ShareTrend.forecast(&points[..=i], step_min, low_hz) {
            Some(f) => println!(
                "{at:<20} {:>7.1} {:>6.3} {sens:>6} {:>8.1} {:>6.3} {:>18} {:>6.3}",
                p.hz_mean,
                p.low_share,
                f[1].hz,
                f[1].p_collapse,
                format!("[{:.1}, {:.1}]", f[1].lo80, f[1].hi80),
                f[3].p_collapse
            ),
            None => println!("{at:<20} {:>7.1} {:>6.3} {sens:>6}", p.hz_mean, p.low_share),
        }
    }
}

/// Every region's closed windows, oldest first.
async fn read_series(lake: &campo_lake::Lake) -> anyhow::Result<BTreeMap<String, Vec<WindowPoint>>> {
    use campo_lake::arrow::array::{Array, AsArray};
    use campo_lake::arrow::datatypes::{DataType, Float64Type, Int64Type};
    let sql = "SELECT CAST(region AS VARCHAR), CAST(window_end AS BIGINT), hz_mean, low_share, users, sensorial_entropy \
               FROM region_metrics_1m ORDER BY 1, 2";
    let mut out: BTreeMap<String, Vec<WindowPoint>> = BTreeMap::new();
    for b in lake.query(sql).await? {
        let region = campo_lake::arrow::compute::cast(b.column(0), &DataType::Utf8)?;
        let region = region.as_string::<i32>();
        let (end, hz, low, users, sensorial) = (
            b.column(1).as_primitive::<Int64Type>(),
            b.column(2).as_primitive::<Float64Type>(),
            b.column(3).as_primitive::<Float64Type>(),
            b.column(4).as_primitive::<Int64Type>(),
            b.column(5).as_primitive::<Float64Type>(),
        );
        for i in 0..b.num_rows() {
            out.entry(region.value(i).to_string()).or_default().push(WindowPoint {
                window_end_us: end.value(i),
                hz_mean: hz.value(i),
                low_share: low.value(i),
                users: users.value(i),
                sensorial_entropy: sensorial.is_valid(i).then(|| sensorial.value(i)),
            });
        }
    }
    Ok(out)
}
