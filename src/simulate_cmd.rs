//! `campo simulate`: realistic traffic into Kafka or a JSON-lines file.

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use campo_pipelines::ingest::Shutdown;
use campo_pipelines::simulate::{Collapse, SimConfig, SimTotals, Simulator};
use clap::Args;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::client::ClientContext;
use rdkafka::message::DeliveryResult;
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer};

use crate::load_config::ConfigProblem;

#[derive(Args, Debug, Clone)]
pub struct SimulateArgs {
    /// Events per second (wall clock); 0 = as fast as possible.
    #[arg(long, default_value_t = 2000.0)]
    pub rate: f64,
    /// Simulated seconds per wall-clock second (60 = an hour of traffic in a minute).
    #[arg(long, default_value_t = 1.0)]
    pub speed: f64,
    /// Seed: the same seed gives the same events.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Stop after this many records (default: run until Ctrl-C).
    #[arg(long)]
    pub count: Option<u64>,
    /// Stop after this much simulated time, e.g. 30m.
    #[arg(long)]
    pub duration: Option<humantime::Duration>,
    /// Event time of the first event, RFC 3339 (default: now).
    #[arg(long)]
    pub start: Option<chrono::DateTime<chrono::Utc>>,
    /// Regions, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "sa-east-1,us-east-1,eu-west-1,europe-west1,asia-east1,ap-south-1")]
    pub regions: Vec<String>,
    #[arg(long, default_value_t = 500)]
    pub users_per_region: usize,
    /// Plant a collapse: REGION@START_MIN+MINUTES[:LOW_SHARE][/ONSET_MIN], repeatable (e.g. sa-east-1@10+15:0.65,
    /// or sa-east-1@10+40:0.8/12 to spread it over 12 minutes).
    #[arg(long = "collapse")]
    pub collapses: Vec<Collapse>,
    #[arg(long, default_value_t = 0.4)]
    pub activity_share: f64,
    #[arg(long, default_value_t = 0.01)]
    pub invalid_share: f64,
    #[arg(long, default_value_t = 0.01)]
    pub duplicate_share: f64,
    #[arg(long, default_value_t = 0.005)]
    pub late_share: f64,
    #[arg(long, default_value_t = 0.02)]
    pub out_of_order_share: f64,
    /// Write JSON lines ({topic, key, value, planted}) to this file instead of Kafka.
    #[arg(long, short = 'o')]
    pub output: Option<PathBuf>,
    /// Kafka bootstrap servers.
    #[arg(long, env = "CAMPO__KAFKA__BROKERS", default_value = "127.0.0.1:9092")]
    pub brokers: String,
    #[arg(long, env = "CAMPO__KAFKA__READINGS_TOPIC", default_value = "vibration.readings")]
    pub readings_topic: String,
    #[arg(long, env = "CAMPO__KAFKA__ACTIVITY_TOPIC", default_value = "user.activity")]
    pub activity_topic: String,
    /// Create the topics with this many partitions when they do not exist (0 = do not create).
    #[arg(long, default_value_t = 4)]
    pub partitions: i32,
    /// Extra producer property KEY=VALUE, repeatable (e.g. batch.num.messages=1).
    #[arg(long = "producer-property", short = 'X', value_name = "KEY=VALUE")]
    pub producer_properties: Vec<String>,
    /// Print the totals as JSON on stdout at the end.
    #[arg(long)]
    pub json: bool,
}

impl SimulateArgs {
    pub fn sim_config(&self) -> anyhow::Result<SimConfig> {
        for (name, v) in [
            ("--activity-share", self.activity_share),
            ("--invalid-share", self.invalid_share),
            ("--duplicate-share", self.duplicate_share),
            ("--late-share", self.late_share),
            ("--out-of-order-share", self.out_of_order_share),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return Err(ConfigProblem(format!("{name} must be in 0..=1, got {v}")).into());
            }
        }
        if self.invalid_share + self.duplicate_share + self.late_share + self.out_of_order_share > 1.0 {
            return Err(ConfigProblem("the invalid, duplicate, late and out-of-order shares add up to more than 1".into()).into());
        }
        if self.speed <= 0.0 || self.rate < 0.0 {
            return Err(ConfigProblem("--speed must be > 0 and --rate >= 0".into()).into());
        }
        if self.regions.is_empty() || self.users_per_region == 0 {
            return Err(ConfigProblem("need at least one region and one user per region".into()).into());
        }
        Ok(SimConfig {
            regions: self.regions.clone(),
            users_per_region: self.users_per_region,
            rate: if self.rate > 0.0 { self.rate } else { 10_000.0 },
            speed: self.speed,
            seed: self.seed,
            start: self.start.unwrap_or_else(chrono::Utc::now),
            activity_share: self.activity_share,
            invalid_share: self.invalid_share,
            duplicate_share: self.duplicate_share,
            late_share: self.late_share,
            out_of_order_share: self.out_of_order_share,
            pii_share: 0.02,
            collapses: self.collapses.clone(),
            readings_topic: self.readings_topic.clone(),
            activity_topic: self.activity_topic.clone(),
        })
    }
}

pub async fn run(args: SimulateArgs) -> anyhow::Result<()> {
    let cfg = args.sim_config()?;
    let shutdown = Shutdown::default();
    crate::run_cmd::stop_on_signal(shutdown.clone());
    let json = args.json;
    let totals = tokio::task::spawn_blocking(move || -> anyhow::Result<SimTotals> {
        let sim = Simulator::new(cfg);
        match &args.output {
            Some(path) => {
                let file = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
                let mut out = std::io::BufWriter::new(file);
                drive(sim, &args, &shutdown, |r| {
                    serde_json::to_writer(&mut out, r)?;
                    out.write_all(b"\n")?;
                    Ok(())
                })
                .and_then(|t| {
                    out.flush()?;
                    Ok(t)
                })
            }
            None => {
                let topics = [args.readings_topic.as_str(), args.activity_topic.as_str()];
                let producer = kafka_producer(&args.brokers, &args.producer_properties)?;
                if args.partitions > 0 {
                    ensure_topics(&args.brokers, &topics, args.partitions)?;
                }
                let totals = drive(sim, &args, &shutdown, |r| send(&producer, r))?;
                flush_while_draining(&producer)?;
                check_delivered(&producer)?;
                Ok(totals)
            }
        }
    })
    .await??;
    if json {
        println!("{}", serde_json::to_string(&totals)?);
    } else {
        eprintln!("simulated {} records: {}", totals.records, serde_json::to_string(&totals)?);
    }
    Ok(())
}

pub type Producer_ = ThreadedProducer<Deliveries>;

/// Counts records the broker did not acknowledge, so a lossy run fails loudly instead of
/// reporting totals it did not deliver.
#[derive(Default)]
pub struct Deliveries {
    failed: std::sync::atomic::AtomicU64,
    first_error: std::sync::Mutex<Option<String>>,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = result {
            self.failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.first_error.lock().expect("first error").get_or_insert_with(|| e.to_string());
        }
    }
}

/// Fails when any record was not delivered.
/// Waits for every queued record to be delivered, as long as the queue keeps draining: a slow
/// broker is waited for (with progress), one that accepts nothing for a minute is an error.
pub fn flush_while_draining(p: &Producer_) -> anyhow::Result<()> {
    let (mut last, mut since) = (p.in_flight_count(), Instant::now());
    loop {
        match p.flush(Duration::from_secs(5)) {
            Ok(()) => return Ok(()),
            Err(e) => {
                let now = p.in_flight_count();
                if now < last {
                    tracing::info!(in_flight = now, "flushing the producer: still delivering");
                    (last, since) = (now, Instant::now());
                } else if since.elapsed() >= Duration::from_secs(60) {
                    return Err(e).context(format!("flushing the producer: {now} records undelivered, none delivered for 60 s"));
                }
            }
        }
    }
}

pub fn check_delivered(p: &Producer_) -> anyhow::Result<()> {
    let d = p.context();
    let failed = d.failed.load(std::sync::atomic::Ordering::Relaxed);
    if failed > 0 {
        let first = d.first_error.lock().expect("first error").clone().unwrap_or_default();
        anyhow::bail!("{failed} records were not delivered (first error: {first})");
    }
    Ok(())
}

pub fn kafka_producer(brokers: &str, props: &[String]) -> anyhow::Result<Producer_> {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "1000000")
        .set("client.id", "campo-simulate");
    for kv in props {
        let (k, v) = kv.split_once('=').ok_or_else(|| ConfigProblem(format!("producer property {kv:?}: expected KEY=VALUE")))?;
        c.set(k, v);
    }
    Ok(c.create_with_context(Deliveries::default())?)
}

/// Sends one record, waiting while the producer queue is full.
pub fn send(p: &Producer_, r: &campo_pipelines::simulate::SimRecord) -> anyhow::Result<()> {
    let mut rec = BaseRecord::to(&r.topic).key(r.key.as_str()).payload(r.value.as_str());
    loop {
        match p.send(rec) {
            Ok(()) => return Ok(()),
            Err((rdkafka::error::KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull), back)) => {
                rec = back;
                std::thread::sleep(Duration::from_millis(2));
            }
            Err((e, _)) => return Err(e.into()),
        }
    }
}

pub fn ensure_topics(brokers: &str, topics: &[&str], partitions: i32) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", brokers).create().context("admin client")?;
    let new: Vec<NewTopic> = topics.iter().map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(1))).collect();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let results = rt.block_on(admin.create_topics(&new, &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)))))?;
    for r in results {
        match r {
            Ok(_) => {}
            Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, e)) => anyhow::bail!("creating topic {t}: {e}"),
        }
    }
    Ok(())
}

/// Generates records at the configured pace until the count, duration or a stop.
pub fn drive(
    mut sim: Simulator,
    args: &SimulateArgs,
    stop: &Shutdown,
    mut emit: impl FnMut(&campo_pipelines::simulate::SimRecord) -> anyhow::Result<()>,
) -> anyhow::Result<SimTotals> {
    let started = Instant::now();
    let sim_start = sim.now();
    let mut last_report = Instant::now();
    let mut n: u64 = 0;
    loop {
        if stop.is_triggered() || args.count.is_some_and(|c| n >= c) {
            break;
        }
        if let Some(d) = args.duration {
            if (sim.now() - sim_start).to_std().unwrap_or_default() >= *d {
                break;
            }
        }
        if args.rate > 0.0 && n % 64 == 0 {
            let due = Duration::from_secs_f64(n as f64 / args.rate);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        let r = sim.next_record();
        emit(&r)?;
        n += 1;
        if last_report.elapsed() >= Duration::from_secs(10) {
            last_report = Instant::now();
            tracing::info!(records = n, sim_time = %sim.now(), "simulating");
        }
    }
    Ok(sim.totals.clone())
}
