//! Effectively-once `system.protect` without Kafka transactions (the test broker has none).
//!
//! The `alerts` table is the outbox: a change is committed there first and sent after. On
//! start, the stage reads back the tail of `system.protect` (the last [`READ_BACK`] records of
//! every partition) and sends, in window order, only the changes of the recent `alerts` rows
//! whose `event_id` is not there. A crash between the commit and the acknowledgement therefore
//! sends the change on restart, once; a change already on the topic is never sent again. Sends
//! are acknowledged one by one (idempotent producer, `acks=all`), so a failed send keeps its
//! place in line and is retried with backoff, by a task of its own: the window stage never
//! waits for the broker.

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use super::levels::LevelChange;
use crate::config::Config;
use crate::ingest::Stats;

/// Records per partition read back on start.
pub const READ_BACK: i64 = 10_000;
/// How far back (event time) `alerts` rows are checked against the topic on start.
const LOOKBACK_US: i64 = 24 * 3600 * 1_000_000;

/// The JSON of a `system.protect` event (SPEC 1: the envelope plus region, level, reason,
/// window_end, expires_at). Every field derives from the change, so a re-send is byte-identical.
pub fn event_json(c: &LevelChange) -> String {
    let ts = |us: i64| {
        chrono::DateTime::from_timestamp_micros(us)
            .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
            .unwrap_or_default()
    };
    serde_json::json!({
        "event_id": c.event_id,
        "schema_version": "1.0.0",
        "occurred_at": ts(c.window_end_us),
        "producer": "campo",
        "idempotency_key": c.event_id,
        "trace_id": c.event_id.replace('-', ""),
        "region": c.region,
        "level": c.level.name(),
        "previous_level": c.previous.name(),
        "reason": c.reason,
        "window_end": ts(c.window_end_us),
        "expires_at": ts(c.expires_at_us),
    })
    .to_string()
}

/// Producer-safe librdkafka properties of the configuration (consumer-only keys dropped).
pub(crate) fn client_config(config: &Config, client_id: &str) -> ClientConfig {
    let k = &config.kafka;
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &k.brokers).set("client.id", client_id);
    for (key, v) in &k.properties {
        if !key.starts_with("group.") && !key.starts_with("session.") && !key.starts_with("auto.offset")
            && !key.starts_with("partition.assignment") && !key.starts_with("max.poll")
        {
            c.set(key, v);
        }
    }
    c
}

/// The sending side of the outbox: a task that owns the producer, so a slow or unreachable
/// broker never holds up a window close.
pub struct Outbox {
    tx: Option<tokio::sync::mpsc::UnboundedSender<Vec<LevelChange>>>,
    task: Option<tokio::task::JoinHandle<()>>,
    pending: Arc<AtomicUsize>,
}

impl Outbox {
    /// Starts the task: it first sends the `recent` changes (already committed to `alerts`)
    /// that the topic's tail does not hold, then every change handed to [`Outbox::send`], in
    /// order, retrying with backoff.
    pub fn start(config: &Config, recent: Vec<LevelChange>, stats: Arc<Stats>) -> Result<Self, rdkafka::error::KafkaError> {
        let producer: FutureProducer = client_config(config, "campo-protect")
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "0")
            .set("message.timeout.ms", "10000")
            .create()?;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let pending = Arc::new(AtomicUsize::new(recent.len()));
        let sender = Sender { config: config.clone(), producer, topic: config.protect.topic.clone(), queue: VecDeque::new(), failing: false, pending: pending.clone(), stats };
        let task = tokio::spawn(sender.run(recent, rx));
        Ok(Self { tx: Some(tx), task: Some(task), pending })
    }

    pub fn lookback_us() -> i64 {
        LOOKBACK_US
    }

    /// Changes not yet acknowledged by the broker.
    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::Relaxed)
    }

    /// Hands over changes just committed to `alerts`.
    pub fn send(&self, changes: Vec<LevelChange>) {
        if changes.is_empty() {
            return;
        }
        self.pending.fetch_add(changes.len(), Ordering::Relaxed);
        if let Some(tx) = &self.tx {
            let _ = tx.send(changes);
        }
    }

    /// Stops taking changes and waits (at most [`CLOSE_WAIT`]) for the queued ones to be sent;
    /// what is left is in `alerts` and is sent by the next start.
    pub async fn close(mut self) {
        self.tx = None;
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(CLOSE_WAIT + Duration::from_secs(1), task).await;
        }
    }
}

/// How long a stopping outbox keeps trying to send what is queued.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

struct Sender {
    config: Config,
    producer: FutureProducer,
    topic: String,
    /// Changes committed to `alerts` and not yet acknowledged, in order.
    queue: VecDeque<LevelChange>,
    failing: bool,
    pending: Arc<AtomicUsize>,
    stats: Arc<Stats>,
}

impl Sender {
    async fn run(mut self, recent: Vec<LevelChange>, mut rx: tokio::sync::mpsc::UnboundedReceiver<Vec<LevelChange>>) {
        let mut backoff = Duration::from_millis(200);
        // 1. Read the topic back until it answers, then queue what it lacks.
        let mut unverified = (!recent.is_empty()).then_some(recent);
        let mut closing: Option<Instant> = None;
        loop {
            if let Some(recent) = unverified.take() {
                let (config, topic) = (self.config.clone(), self.topic.clone());
                match tokio::task::spawn_blocking(move || sent_event_ids(&config, &topic, READ_BACK)).await.expect("read-back task") {
                    Ok(sent) => {
                        let n = recent.len();
                        let missing: Vec<LevelChange> = recent.into_iter().filter(|c| !sent.contains(&c.event_id)).collect();
                        self.pending.fetch_sub(n - missing.len(), Ordering::Relaxed);
                        if !missing.is_empty() {
                            tracing::info!(changes = missing.len(), topic = self.topic, "sending level changes committed to alerts but not on the topic");
                        }
                        // They precede anything queued since.
                        for c in missing.into_iter().rev() {
                            self.queue.push_front(c);
                        }
                    }
                    Err(e) => {
                        if !self.failing {
                            tracing::warn!(error = %e, topic = self.topic, "cannot read back the protect topic; retrying before sending");
                            self.failing = true;
                        }
                        unverified = Some(recent);
                    }
                }
            }
            if unverified.is_none() && self.flush().await {
                backoff = Duration::from_millis(200);
            }
            let idle = unverified.is_none() && self.queue.is_empty();
            if closing.is_some_and(|t| idle || t.elapsed() >= CLOSE_WAIT) {
                if !idle {
                    tracing::warn!(unsent = self.pending.load(Ordering::Relaxed), "stopping with protect events unsent; they are in alerts and are sent at the next start");
                }
                return;
            }
            if idle && closing.is_none() {
                match rx.recv().await {
                    Some(changes) => self.queue.extend(changes),
                    None => closing = Some(Instant::now()),
                }
                continue;
            }
            // Something failed: wait, taking new changes meanwhile.
            tokio::select! {
                got = rx.recv(), if closing.is_none() => match got {
                    Some(changes) => self.queue.extend(changes),
                    None => closing = Some(Instant::now()),
                },
                _ = tokio::time::sleep(backoff) => backoff = (backoff * 2).min(Duration::from_secs(5)),
            }
        }
    }

    /// Sends the queue in order, each acknowledged before the next; false when one failed.
    async fn flush(&mut self) -> bool {
        while let Some(c) = self.queue.front() {
            let payload = event_json(c);
            let record = FutureRecord::to(&self.topic).key(&c.region).payload(&payload);
            match self.producer.send(record, Duration::from_secs(10)).await {
                Ok(_) => {
                    if self.failing {
                        tracing::info!(topic = self.topic, "protect topic writable again");
                        self.failing = false;
                    }
                    metrics::counter!("campo_protect_events_total", "level" => c.level.name()).increment(1);
                    self.stats.record_protect_acked(&c.event_id);
                    self.queue.pop_front();
                    self.pending.fetch_sub(1, Ordering::Relaxed);
                }
                Err((e, _)) => {
                    if !self.failing {
                        tracing::error!(error = %e, topic = self.topic, queued = self.queue.len(), "cannot send protect events; retrying with backoff");
                        self.failing = true;
                    }
                    return false;
                }
            }
        }
        true
    }
}

/// The `event_id`s among the last `per_partition` records of every partition of `topic`
/// (empty when the topic does not exist yet).
pub fn sent_event_ids(config: &Config, topic: &str, per_partition: i64) -> Result<BTreeSet<String>, rdkafka::error::KafkaError> {
    let consumer: BaseConsumer = client_config(config, "campo-protect-readback")
        .set("group.id", format!("{}-protect-readback", config.kafka.group_id))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()?;
    let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let partitions: Vec<i32> = md
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    let mut tpl = TopicPartitionList::new();
    let mut ends = std::collections::BTreeMap::new();
    for p in partitions {
        let (low, high) = consumer.fetch_watermarks(topic, p, Duration::from_secs(10))?;
        if high > low {
            tpl.add_partition_offset(topic, p, Offset::Offset(low.max(high - per_partition)))?;
            ends.insert(p, high);
        }
    }
    let mut ids = BTreeSet::new();
    if ends.is_empty() {
        return Ok(ids);
    }
    consumer.assign(&tpl)?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ends.is_empty() {
        if Instant::now() > deadline {
            return Err(rdkafka::error::KafkaError::MessageConsumption(rdkafka::types::RDKafkaErrorCode::OperationTimedOut));
        }
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                if let Some(id) = m
                    .payload()
                    .and_then(|p| serde_json::from_slice::<serde_json::Value>(p).ok())
                    .and_then(|v| v.get("event_id").and_then(|x| x.as_str()).map(str::to_string))
                {
                    ids.insert(id);
                }
                if ends.get(&m.partition()).is_some_and(|end| m.offset() + 1 >= *end) {
                    ends.remove(&m.partition());
                }
            }
            Some(Err(e)) => return Err(e),
            None => {}
        }
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protect::levels::Level;

    #[test]
    fn events_carry_the_envelope_and_are_identical_on_resend() {
        let c = LevelChange {
            event_id: super::super::levels::event_id("sa-east-1", 1_764_000_000_000_000, Level::Medium),
            region: "sa-east-1".into(),
            level: Level::Medium,
            previous: Level::Soft,
            reason: "low_share >= 0.65 in each of the last 3 windows".into(),
            window_end_us: 1_764_000_000_000_000,
            expires_at_us: 1_764_000_900_000_000,
        };
        let a = event_json(&c);
        assert_eq!(a, event_json(&c.clone()));
        let v: serde_json::Value = serde_json::from_str(&a).unwrap();
        for field in ["event_id", "schema_version", "occurred_at", "producer", "idempotency_key", "trace_id", "region", "level", "reason", "window_end", "expires_at"] {
            assert!(v.get(field).is_some(), "{field} missing in {a}");
        }
        assert_eq!(v["level"], "medium");
        assert_eq!(v["expires_at"], "2025-11-24T16:15:00Z");
        assert_eq!(v["trace_id"].as_str().unwrap().len(), 32);
    }
}
