//! Protect-event benchmark: the time from a window's close (the watermark passing its end) to
//! the `system.protect` event it raised being readable on the broker.
//!
//! Starts tansu (CAMPO_TANSU, or the one scripts/test.sh caches), produces simulated traffic at
//! a steady rate into it with a collapse planted in every region, one after another, runs the
//! whole engine in-process (`campo_pipelines::ingest::run`: bronze, windows, forecasts, alerts),
//! and reads `system.protect` with its own consumer, matching each event to the close that
//! raised it. Prints the count and p50/p99/max latency.
//!
//! CAMPO_BENCH_RATE (default 5000 events/s), CAMPO_BENCH_SPEED (default 30 simulated seconds per
//! second: a window closes every 2 s), CAMPO_BENCH_REGIONS (default 20). Run:
//! `cargo bench --bench protect`.

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use campo_pipelines::Config;
use campo_pipelines::ingest::{self, CloseTrace, Shutdown, Stats};
use campo_pipelines::simulate::{SimConfig, Simulator};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

fn env(name: &str, default: f64) -> f64 {
    std::env::var(name).ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

fn tansu() -> String {
    std::env::var("CAMPO_TANSU").unwrap_or_else(|_| format!("{}/.cache/campo/tansu-0.6.0/bin/tansu", std::env::var("HOME").unwrap()))
}

fn main() {
    let rate = env("CAMPO_BENCH_RATE", 5000.0);
    let speed = env("CAMPO_BENCH_SPEED", 30.0);
    let regions_n = env("CAMPO_BENCH_REGIONS", 20.0) as usize;
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("tcp://127.0.0.1:{port}");
    let mut broker = Command::new(tansu())
        .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url, "--storage-engine", "memory://tansu/"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start tansu (run scripts/test.sh once to install it, or set CAMPO_TANSU)");
    let addr = format!("127.0.0.1:{port}");
    while std::net::TcpStream::connect(&addr).is_err() {
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut cfg = Config::default();
    let dir = tempfile::tempdir().unwrap();
    cfg.lake.path = dir.path().join("lake").to_str().unwrap().into();
    cfg.kafka.brokers = addr.clone();
    cfg.kafka.group_id = "bench-protect".into();
    cfg.ingest.flush_interval = Duration::from_millis(250);
    cfg.windows.idle_timeout = Duration::from_secs(2);
    cfg.metrics.listen = String::new();
    for (t, p) in [(&cfg.kafka.readings_topic, 4), (&cfg.kafka.activity_topic, 4), (&cfg.kafka.dlq_topic, 1), (&cfg.protect.topic, 1)] {
        let ok = Command::new(tansu()).args(["topic", "create", "--broker", &url, "--partitions", &p.to_string(), t]).stdout(Stdio::null()).status().unwrap();
        assert!(ok.success());
    }
    // Region i collapses from minute 12 + 4i for 12 minutes, spreading over 3: soft, medium, off.
    let regions: Vec<String> = (0..regions_n).map(|i| format!("region-{i:02}")).collect();
    let collapses = (0..regions_n).map(|i| format!("region-{i:02}@{}+12:0.8/3", 12 + 4 * i).parse().unwrap()).collect();
    let sim_minutes = 12.0 + 4.0 * regions_n as f64 + 12.0 + 8.0;
    let wall_secs = sim_minutes * 60.0 / speed;
    let sim_cfg = SimConfig {
        regions,
        users_per_region: 100,
        rate,
        speed,
        seed: 5,
        invalid_share: 0.0,
        duplicate_share: 0.0,
        late_share: 0.0,
        out_of_order_share: 0.01,
        pii_share: 0.0,
        collapses,
        ..SimConfig::default()
    };
    println!("protect benchmark: {regions_n} regions, {rate:.0} events/s at {speed}x for {wall_secs:.0}s ({sim_minutes:.0} simulated minutes)");

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let stats = Arc::new(Stats::default());
    let shutdown = Shutdown::default();
    let engine = rt.spawn(ingest::run(cfg.clone(), stats.clone(), shutdown.clone()));

    // The producer, paced to the rate.
    let stop = Arc::new(AtomicBool::new(false));
    let producer_thread = {
        let (addr, stop) = (addr.clone(), stop.clone());
        std::thread::spawn(move || {
            let producer: ThreadedProducer<DefaultProducerContext> =
                ClientConfig::new().set("bootstrap.servers", &addr).set("linger.ms", "5").create().unwrap();
            let mut sim = Simulator::new(sim_cfg);
            let started = Instant::now();
            let mut n = 0u64;
            while started.elapsed().as_secs_f64() < wall_secs && !stop.load(Ordering::Relaxed) {
                let due = Duration::from_secs_f64(n as f64 / rate);
                if let Some(w) = due.checked_sub(started.elapsed()) {
                    std::thread::sleep(w);
                }
                for _ in 0..100 {
                    let r = sim.next_record();
                    let mut rec = BaseRecord::to(&r.topic).key(&r.key).payload(&r.value);
                    loop {
                        match producer.send(rec) {
                            Ok(()) => break,
                            Err((_, back)) => {
                                rec = back;
                                producer.poll(Duration::from_millis(5));
                            }
                        }
                    }
                    n += 1;
                }
            }
            producer.flush(Duration::from_secs(30)).unwrap();
            n
        })
    };

    // The reader of system.protect.
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &addr)
        .set("group.id", "bench-protect-reader")
        .set("fetch.wait.max.ms", "10")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&cfg.protect.topic, 0, Offset::Beginning).unwrap();
    consumer.assign(&tpl).unwrap();
    let mut latencies = Vec::new();
    let mut traces = Vec::new();
    let mut levels: HashMap<String, u32> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs_f64(wall_secs + 30.0);
    while Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(50)) {
            let read = Instant::now();
            let v: serde_json::Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
            let id = v["event_id"].as_str().unwrap().to_string();
            *levels.entry(v["level"].as_str().unwrap().to_string()).or_default() += 1;
            if let Some(t) = stats.protect_traces.lock().unwrap().get(&id) {
                latencies.push(read.duration_since(t.advanced).as_secs_f64());
                traces.push(*t);
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    let produced = producer_thread.join().unwrap();
    shutdown.trigger();
    rt.block_on(engine).unwrap().unwrap();
    let _ = Command::new("kill").args(["-TERM", &broker.id().to_string()]).status();
    let _ = broker.wait();
    let mut sorted = latencies.clone();
    let q = |v: &mut Vec<f64>, p: f64| campo_udfs::quantile_linear(v, p).unwrap_or(f64::NAN);
    println!("  produced {produced} events; windows closed {}", stats.windows_closed.load(Ordering::Relaxed));
    println!("  system.protect events read: {} ({levels:?}), {} matched to their window close", levels.values().sum::<u32>(), latencies.len());
    println!(
        "  window close -> event readable on the broker: p50 {:.3}s, p99 {:.3}s, max {:.3}s",
        q(&mut sorted, 0.5),
        q(&mut sorted, 0.99),
        q(&mut sorted, 1.0)
    );
    // Where the time goes: each step's share of the path, as the time since the previous step.
    println!("  step (seconds since the previous step)        p50     p99     max");
    let names: Vec<&str> = CloseTrace::STEPS.iter().copied().chain(["read by the consumer"]).collect();
    let steps: Vec<Vec<Option<f64>>> = traces
        .iter()
        .zip(&latencies)
        .map(|(t, read)| t.steps().into_iter().chain([Some(*read)]).collect())
        .collect();
    for (i, name) in names.iter().enumerate() {
        let mut d: Vec<f64> = steps
            .iter()
            .filter_map(|s| {
                // The latest earlier step reached (the close itself before any).
                let prev = s[..i].iter().rev().flatten().next().copied().unwrap_or(0.0);
                s[i].map(|at| at - prev)
            })
            .collect();
        println!("    {name:<44} {:.3}   {:.3}   {:.3}", q(&mut d, 0.5), q(&mut d, 0.99), q(&mut d, 1.0));
    }
}
