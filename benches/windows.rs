//! Window-close benchmark: feeds the real consumer state (decode, validate, dedup, watermarks),
//! bronze writer and window stage at a steady input rate, without Kafka, and prints the p50/p99
//! time from a window's close (the watermark passing its end) to its rows being committed to
//! `region_metrics_1m` and `evu_1m`, and the share of CPU spent in the SQL stage (folding each
//! flush into the window state, and the pipelines at close).
//!
//! CAMPO_BENCH_RATE (default 100000 events/s), CAMPO_BENCH_SPEED (default 6: simulated seconds
//! per wall second, so a 1-minute window closes every 10 s and holds rate x 60 / speed events),
//! CAMPO_BENCH_SECS (default 120). Run: `cargo bench --bench windows`.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use campo_lake::{Lake, TableKind, TableWriter};
use campo_pipelines::Config;
use campo_pipelines::contract::Contract;
use campo_pipelines::dedup::Dedup;
use campo_pipelines::ingest::{Flush, IngestState, PartitionPosition, Shutdown, Stats};
use campo_pipelines::simulate::{SimConfig, Simulator};
use campo_pipelines::windows::{WindowInput, WindowStage, Watermarks};

fn env(name: &str, default: f64) -> f64 {
    std::env::var(name).ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let f: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split_whitespace().collect();
    (f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap()) / 100.0
}

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: f64 = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap().split_whitespace().nth(1).unwrap().parse().unwrap();
    kb / 1024.0
}

fn quantile(v: &mut [f64], q: f64) -> f64 {
    campo_udfs::quantile_linear(v, q).unwrap_or(f64::NAN)
}

const PARTITIONS: i32 = 4;

fn main() {
    let rate = env("CAMPO_BENCH_RATE", 100_000.0);
    let speed = env("CAMPO_BENCH_SPEED", 6.0);
    let secs = env("CAMPO_BENCH_SECS", 120.0);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = Config::default();
    cfg.lake.path = dir.path().join("lake").to_str().unwrap().into();
    let lake = Lake::new(&cfg.lake.path, Default::default()).unwrap();
    let stats = Arc::new(Stats::default());
    let (flush_tx, mut flush_rx) = tokio::sync::mpsc::channel::<Flush>(2);
    let (win_tx, win_rx) = tokio::sync::mpsc::unbounded_channel::<WindowInput>();

    // The writer: bronze commits, then the committed rows to the window stage.
    let writer = {
        let (lake, cfg, stats) = (lake.clone(), cfg.clone(), stats.clone());
        rt.spawn(async move {
            let mut readings = TableWriter::open(&lake, TableKind::Readings, "bench").await.unwrap();
            let mut activity = TableWriter::open(&lake, TableKind::Activity, "bench").await.unwrap();
            let stage = WindowStage::open(&lake, &cfg, stats.clone(), Shutdown::default()).await.unwrap();
            let stage = tokio::spawn(stage.run(win_rx));
            while let Some(f) = flush_rx.recv().await {
                if !f.readings.txns.is_empty() {
                    readings.commit(&f.readings).await.unwrap();
                }
                if !f.activity.txns.is_empty() {
                    activity.commit(&f.activity).await.unwrap();
                }
                stats.bronze[0].fetch_add(f.counts.bronze[0], Ordering::Relaxed);
                stats.bronze[1].fetch_add(f.counts.bronze[1], Ordering::Relaxed);
                let _ = win_tx.send(WindowInput {
                    readings: f.readings.batches,
                    activity: f.activity.batches,
                    watermark: f.watermark,
                    trace: f.trace.map(|t| campo_pipelines::ingest::CloseTrace { committed: Some(std::time::Instant::now()), ..t }),
                    generation: f.generation,
                    whole: f.whole,
                    bronze_versions: [readings.version(), activity.version()],
                });
            }
            drop(win_tx);
            stage.await.unwrap().unwrap();
        })
    };

    // The consumer's part, in a thread of its own: generate, decode, dedup, watermark, cut.
    let (c0, w0) = (cpu_seconds(), Instant::now());
    let feeder = std::thread::spawn(move || {
        let sim_cfg = SimConfig {
            rate,
            speed,
            seed: 9,
            invalid_share: 0.0,
            duplicate_share: 0.0,
            late_share: 0.0,
            out_of_order_share: 0.02,
            pii_share: 0.0,
            ..SimConfig::default()
        };
        let regions = sim_cfg.regions.clone();
        let mut sim = Simulator::new(sim_cfg.clone());
        let w = Config::default().windows;
        let wm = Watermarks::new(w.size, w.allowed_lateness, w.idle_timeout, None);
        let mut st = IngestState::new(1 << 20, Dedup::new(Duration::from_secs(86_400), 50_000_000), wm);
        let mut positions = Vec::new();
        for (contract, topic) in [(Contract::Reading, &sim_cfg.readings_topic), (Contract::Activity, &sim_cfg.activity_topic)] {
            for p in 0..PARTITIONS {
                positions.push(PartitionPosition { contract, topic: topic.as_str().into(), partition: p, bronze_v: None, rejected_v: None, max_event_us: None });
            }
        }
        let dedup = Dedup::new(Duration::from_secs(86_400), 50_000_000);
        st.assign(positions, dedup);
        st.whole = true;
        let mut offsets = [[0i64; PARTITIONS as usize]; 2];
        let mut last_flush = Instant::now();
        let started = Instant::now();
        let mut n = 0u64;
        while started.elapsed().as_secs_f64() < secs {
            // Pace: the input rate is steady in wall-clock time.
            let due = Duration::from_secs_f64(n as f64 / rate);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(wait);
            }
            let now = Instant::now();
            let now_us = chrono::Utc::now().timestamp_micros();
            for _ in 0..1000 {
                let r = sim.next_record();
                let (contract, c) = if r.topic == sim_cfg.readings_topic { (Contract::Reading, 0) } else { (Contract::Activity, 1) };
                let p = regions.iter().position(|x| *x == r.key).unwrap_or(0) as i32 % PARTITIONS;
                let off = offsets[c][p as usize];
                offsets[c][p as usize] += 1;
                st.process(contract, p, off, Some(r.value.as_bytes()), now_us, now);
                n += 1;
            }
            if st.wm.advance(now).is_some() {
                st.advanced_at = Some(now);
            }
            if last_flush.elapsed() >= Duration::from_secs(1) || st.watermark_moved() {
                last_flush = Instant::now();
                if let Some(f) = st.cut() {
                    flush_tx.blocking_send(f).unwrap();
                }
            }
        }
        n
    });
    let fed = feeder.join().unwrap();
    let feed_wall = w0.elapsed().as_secs_f64();
    rt.block_on(writer).unwrap();
    let (cpu, wall) = (cpu_seconds() - c0, w0.elapsed().as_secs_f64());
    let t = stats.window_times.lock().unwrap();
    let mut v: Vec<f64> = t.close_to_visible.iter().copied().collect();
    let closes = v.len();
    println!("window close benchmark: {fed} events in {feed_wall:.1}s = {:.0} events/s input, speed {speed}x", fed as f64 / feed_wall);
    println!("  a 1-minute window holds ~{:.0} events; {closes} closes measured", rate * 60.0 / speed);
    println!(
        "  close -> visible in Delta: p50 {:.3}s, p99 {:.3}s, max {:.3}s",
        quantile(&mut v, 0.5),
        quantile(&mut v, 0.99),
        quantile(&mut v, 1.0)
    );
    let sql = t.sql_seconds + t.state_seconds;
    println!(
        "  SQL stage: {sql:.1}s of {cpu:.1}s process CPU ({:.1}%), {:.1}% of one core over {wall:.0}s \
         (state updates {:.1}s, window close {:.1}s)",
        100.0 * sql / cpu,
        100.0 * sql / wall,
        t.state_seconds,
        t.sql_seconds
    );
    println!("  bronze rows {} + {}; RSS at the end {:.0} MiB", stats.bronze[0].load(Ordering::Relaxed), stats.bronze[1].load(Ordering::Relaxed), rss_mib());
}
