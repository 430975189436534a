//! The consumer thread: polls Kafka, feeds [`IngestState`], hands flushes to the writer, and
//! positions every assigned partition from the Delta log.

use std::sync::atomic::Ordering;
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use tokio::sync::mpsc::Sender;
use tokio::sync::mpsc::error::TrySendError;

use crate::contract::Contract;
use crate::dedup::Dedup;

use super::batch::{BatchQueue, RouteSlot};
use super::positions::rebuild_dedup;
use super::{Flush, IngestError, IngestState, Shared, WriterEvent, read_positions};

pub(crate) struct IngestContext {
    shared: Arc<Shared>,
    state: Mutex<IngestState>,
    /// Where assigned partitions' records go: the consumer thread's batch queue.
    route: RouteSlot,
}

impl IngestContext {
    /// Whether an assignment holds every partition of both input topics (a topic that does not
    /// exist yet has none to hold). Only such an instance sees whole windows.
    fn covers_every_partition(&self, consumer: &BaseConsumer<Self>, tpl: &TopicPartitionList) -> bool {
        let k = &self.shared.config.kafka;
        [&k.readings_topic, &k.activity_topic].into_iter().all(|topic| {
            let assigned = tpl.elements_for_topic(topic).len();
            match consumer.fetch_metadata(Some(topic), Duration::from_secs(10)) {
                Ok(md) => md.topics().iter().find(|t| t.name() == topic).map_or(0, |t| t.partitions().len()) == assigned,
                Err(e) => {
                    tracing::warn!(error = %e, topic, "cannot read the topic's partitions; treating the assignment as partial");
                    false
                }
            }
        })
    }

    fn contract_of(&self, topic: &str) -> Option<Contract> {
        let k = &self.shared.config.kafka;
        if topic == k.readings_topic {
            Some(Contract::Reading)
        } else if topic == k.activity_topic {
            Some(Contract::Activity)
        } else {
            None
        }
    }

    /// Flushes handed to the writer and not yet committed or dropped (the one it is writing
    /// included).
    fn pending(&self) -> usize {
        self.shared.stats.pending_flushes.load(Ordering::SeqCst)
    }

    /// Waits until the writer has finished every flush handed to it, or `limit` passes.
    fn wait_writer_idle(&self, limit: Duration) -> bool {
        let start = Instant::now();
        while self.pending() > 0 {
            if start.elapsed() > limit {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        true
    }

    /// Reads the committed positions of `tpl`'s partitions from the lake, and the dedup set
    /// from bronze (another instance may have committed keys since ours was built), retrying
    /// while the lake cannot be read (consumption of these partitions waits for it).
    fn positions_for(&self, tpl: &TopicPartitionList) -> Option<(Vec<super::PartitionPosition>, Dedup)> {
        let parts: Vec<_> = tpl
            .elements()
            .iter()
            .filter_map(|e| Some((self.contract_of(e.topic())?, e.topic().to_string(), e.partition())))
            .collect();
        let mut backoff = Duration::from_millis(200);
        let mut logged = false;
        loop {
            let r = self.shared.runtime.block_on(async {
                let positions =
                    read_positions(&self.shared.lake, &self.shared.config.ingest.pipeline, &parts).await?;
                let dedup = rebuild_dedup(&self.shared.lake, &self.shared.config.ingest).await?;
                Ok::<_, campo_lake::LakeError>((positions, dedup))
            });
            match r {
                Ok(p) => {
                    if logged {
                        tracing::info!("lake readable again; positions read");
                    }
                    return Some(p);
                }
                Err(e) => {
                    if !logged {
                        tracing::error!(error = %e, "cannot read positions from the lake; partitions wait until it can be read");
                        logged = true;
                    }
                    if self.shared.shutdown.is_triggered() {
                        return None;
                    }
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
        }
    }
}

impl ClientContext for IngestContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        match level {
            RDKafkaLogLevel::Emerg | RDKafkaLogLevel::Alert | RDKafkaLogLevel::Critical | RDKafkaLogLevel::Error => {
                tracing::debug!(target: "librdkafka", facility = fac, "{log_message}")
            }
            _ => tracing::trace!(target: "librdkafka", facility = fac, "{log_message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        // librdkafka retries brokers with backoff itself; say so once per state change.
        if self.shared.stats.kafka_ready.swap(false, Ordering::SeqCst) {
            tracing::warn!(%error, reason, "kafka not ready; librdkafka keeps retrying with backoff");
        } else {
            tracing::debug!(%error, reason, "kafka error");
        }
    }

    fn stats(&self, statistics: Statistics) {
        let mut total = 0;
        for (topic, t) in &statistics.topics {
            for (p, part) in &t.partitions {
                if *p >= 0 && part.consumer_lag >= 0 {
                    total += part.consumer_lag;
                    metrics::gauge!("campo_consumer_lag_messages", "topic" => topic.clone(), "partition" => p.to_string())
                        .set(part.consumer_lag as f64);
                }
            }
        }
        self.shared.stats.consumer_lag.store(total, Ordering::Relaxed);
    }
}

impl ConsumerContext for IngestContext {
    fn rebalance(&self, consumer: &BaseConsumer<Self>, err: RDKafkaRespErr, tpl: &mut TopicPartitionList) {
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                // Commits still in flight may move positions: let them land first.
                if !self.wait_writer_idle(Duration::from_secs(30)) {
                    tracing::warn!("writer still busy after 30 s; positions may be refreshed by a refused commit");
                }
                let Some((positions, dedup)) = self.positions_for(tpl) else { return };
                for p in &positions {
                    let offset = p.resume_at().map_or(Offset::Beginning, Offset::Offset);
                    if let Err(e) = tpl.set_partition_offset(&p.topic, p.partition, offset) {
                        tracing::error!(error = %e, "setting start offset");
                    }
                }
                tracing::info!(
                    partitions = positions.len(),
                    positions = ?positions.iter().map(|p| format!("{}/{}@{}", p.topic, p.partition, p.resume_at().map_or("start".into(), |o| o.to_string()))).collect::<Vec<_>>(),
                    "partitions assigned; resuming from the Delta log"
                );
                let whole = self.covers_every_partition(consumer, tpl);
                let mut state = self.state.lock().expect("state lock");
                state.assign(positions, dedup);
                state.whole = whole;
                self.shared.stats.assigned_partitions.store(state.assigned(), Ordering::Relaxed);
                drop(state);
                // Before assigning: librdkafka keeps a route set before it starts fetching.
                let routed = self.route.route(tpl);
                if routed < tpl.count() {
                    tracing::debug!(routed, partitions = tpl.count(), "partitions not routed to the batch queue are read one by one");
                }
                if let Err(e) = consumer.assign(tpl) {
                    tracing::error!(error = %e, "assign failed");
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let mut state = self.state.lock().expect("state lock");
                tracing::info!(partitions = tpl.count(), rows = state.buffered_rows(), "partitions revoked; dropping their buffered rows");
                state.clear_assignment();
                self.shared.stats.assigned_partitions.store(0, Ordering::Relaxed);
                drop(state);
                if let Err(e) = consumer.unassign() {
                    tracing::error!(error = %e, "unassign failed");
                }
            }
            other => {
                tracing::error!(error = ?other, "rebalance error; dropping the assignment");
                self.state.lock().expect("state lock").clear_assignment();
                let _ = consumer.unassign();
            }
        }
    }
}

fn client_config(shared: &Shared) -> ClientConfig {
    let k = &shared.config.kafka;
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &k.brokers)
        .set("group.id", &k.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        .set("statistics.interval.ms", "5000")
        .set("queued.max.messages.kbytes", "65536")
        // Topics created after campo started are picked up within seconds, not librdkafka's
        // default five minutes (the metadata may have been read before they existed).
        .set("topic.metadata.refresh.interval.ms", "10000")
        .set("client.id", "campo");
    for (key, v) in &k.properties {
        c.set(key, v);
    }
    c
}

fn consumer_error(shared: &Shared, e: &KafkaError) {
    if shared.stats.kafka_ready.swap(false, Ordering::SeqCst) {
        tracing::warn!(error = %e, "kafka consume error; retrying");
    }
}

/// Records taken in one burst at most.
const BURST: u64 = 2048;

pub(crate) fn run(
    shared: Arc<Shared>,
    dedup: Dedup,
    closed_through: Option<i64>,
    flush_tx: Sender<Flush>,
    events: Receiver<WriterEvent>,
) -> Result<(), IngestError> {
    let ctx = IngestContext {
        state: Mutex::new(IngestState::from_config(&shared.config, dedup, closed_through)),
        shared: shared.clone(),
        route: RouteSlot::default(),
    };
    let consumer: BaseConsumer<IngestContext> = client_config(&shared).create_with_context(ctx)?;
    let k = &shared.config.kafka;
    consumer.subscribe(&[&k.readings_topic, &k.activity_topic])?;
    tracing::info!(brokers = %k.brokers, group = %k.group_id, topics = ?[&k.readings_topic, &k.activity_topic], "consuming");
    // Dropped in reverse order: the route is cleared before the queue goes, and the queue
    // before the consumer.
    let mut queue = BatchQueue::new(consumer.client());
    let _route = consumer.context().route.set(&queue);
    let mut lp = Loop { consumer: &consumer, queue: &mut queue, shared: &shared, flush_tx: &flush_tx, events: &events };
    lp.main_loop();
    lp.finish();
    consumer.unsubscribe();
    Ok(())
}

struct Loop<'a, 'q> {
    consumer: &'a BaseConsumer<IngestContext>,
    queue: &'a mut BatchQueue<'q>,
    shared: &'a Shared,
    flush_tx: &'a Sender<Flush>,
    events: &'a Receiver<WriterEvent>,
}

impl Loop<'_, '_> {
    fn ctx(&self) -> &IngestContext {
        self.consumer.context()
    }

    fn main_loop(&mut self) {
        let cfg = &self.shared.config.ingest;
        let mut resync = false;
        let mut last_sweep = Instant::now();
        let mut last_whole_check = Instant::now();
        let mut last_end_check = Instant::now();
        while !self.shared.shutdown.is_triggered() {
            resync |= self.drain_events();
            if resync {
                self.resync();
                resync = false;
                continue;
            }
            self.try_send_held();
            // A burst: rebalances, errors and statistics from the consumer queue, then the
            // records already fetched, in one batch (waiting for the first one if there was
            // nothing else to do). One clock read and one lock per burst keeps the per-record
            // cost down.
            // While a cut flush waits for the writer, no record is taken: the batch queue
            // fills to librdkafka's prefetch bound (queued.max.messages.kbytes) and its
            // fetcher stops. That is the backpressure; unlike pausing the partitions it keeps
            // what was fetched (a pause discards it, and a resume fetches it again).
            let hold = self.ctx().state.lock().expect("state").held.is_some();
            let now = chrono::Utc::now().timestamp_micros();
            let now_i = Instant::now();
            let wait = Duration::from_millis(50);
            let mut taken = self.poll_control(if hold { wait } else { Duration::ZERO }, now, now_i);
            if !hold {
                taken += self.take_batch(if taken == 0 { wait } else { Duration::ZERO }, now, now_i);
            }
            if taken > 0 {
                self.shared.stats.consumed.fetch_add(taken, Ordering::Relaxed);
                if !self.shared.stats.kafka_ready.swap(true, Ordering::SeqCst) {
                    tracing::info!("kafka ready");
                }
            }
            if last_whole_check.elapsed() >= Duration::from_secs(10) {
                // A metadata error at the rebalance may have left the assignment judged partial.
                last_whole_check = Instant::now();
                let partial = {
                    let st = self.ctx().state.lock().expect("state");
                    !st.whole && st.assigned() > 0
                };
                if partial && let Ok(assignment) = self.consumer.assignment() {
                    let whole = self.ctx().covers_every_partition(&self.consumer, &assignment);
                    self.ctx().state.lock().expect("state").whole = whole;
                }
            }
            let mut st = self.ctx().state.lock().expect("state");
            let now_i = Instant::now();
            if taken == 0 || last_end_check.elapsed() >= Duration::from_millis(100) {
                last_end_check = now_i;
                self.update_caught_up(&mut st);
            }
            // Only an instance holding every partition knows the watermark: a partial one
            // leaves `closed_through` where the windows written put it (late = behind that).
            if st.whole && st.wm.advance(now_i).is_some() {
                st.advanced_at = Some(now_i);
            }
            // A window closing cuts at once: its rows reach the window stage without waiting
            // for the flush interval.
            let due = st.buffered_since.is_some_and(|t| t.elapsed() >= cfg.flush_interval)
                || st.buffered_rows() >= cfg.max_batch_rows
                || st.watermark_moved();
            if st.held.is_none() && due {
                st.held = st.cut();
            }
            // Once a minute: expired generations go, and early evictions (the bound is kept
            // as keys are admitted) are reported.
            if last_sweep.elapsed() >= Duration::from_secs(60) {
                last_sweep = Instant::now();
                let evicted = st.dedup.sweep(crate::dedup::unix_minute(chrono::Utc::now().timestamp_micros()));
                if evicted > 0 {
                    metrics::counter!("campo_dedup_evicted_total").increment(evicted);
                    tracing::warn!(evicted, max_keys = cfg.dedup_max_keys, "dedup set full: oldest keys forgotten early");
                }
            }
            self.shared.stats.buffered_rows.store(st.buffered_rows(), Ordering::Relaxed);
            self.shared.stats.dedup_keys.store(st.dedup.len(), Ordering::Relaxed);
        }
    }

    /// Serves the consumer queue, waiting up to `wait` for a first event: rebalances (through
    /// the context), errors and statistics. A record found there (a partition not routed to the
    /// batch queue) is taken as `poll` would. Returns the records taken.
    fn poll_control(&self, mut wait: Duration, now: i64, now_i: Instant) -> u64 {
        let mut taken = 0;
        while taken < BURST {
            match self.consumer.poll(wait) {
                Some(Ok(m)) => {
                    taken += 1;
                    wait = Duration::ZERO;
                    self.shared.stats.unbatched.fetch_add(1, Ordering::Relaxed);
                    if let Some(contract) = self.ctx().contract_of(m.topic()) {
                        let mut st = self.ctx().state.lock().expect("state");
                        st.process(contract, m.partition(), m.offset(), m.payload(), now, now_i);
                    }
                }
                Some(Err(e)) => {
                    consumer_error(self.shared, &e);
                    break;
                }
                None => break,
            }
        }
        taken
    }

    /// Takes one batch from the batch queue into the buffers: at most what fits before
    /// `max_batch_rows`, so a cut happens where it would record by record.
    fn take_batch(&mut self, wait: Duration, now: i64, now_i: Instant) -> u64 {
        let ctx = self.consumer.context();
        let room = {
            let st = ctx.state.lock().expect("state");
            self.shared.config.ingest.max_batch_rows.saturating_sub(st.buffered_rows()).clamp(1, BURST as usize)
        };
        let batch = self.queue.take(wait, room);
        if batch.is_empty() {
            return 0;
        }
        let mut st = ctx.state.lock().expect("state");
        // Topic name to contract, looked up once per topic handle.
        let mut last: Option<(usize, Option<Contract>)> = None;
        for m in batch.iter() {
            if let Some(code) = m.error() {
                consumer_error(self.shared, &KafkaError::MessageConsumption(code));
                continue;
            }
            let contract = match last {
                Some((h, c)) if h == m.topic_handle() => c,
                _ => {
                    let c = ctx.contract_of(m.topic());
                    last = Some((m.topic_handle(), c));
                    c
                }
            };
            if let Some(contract) = contract {
                st.process(contract, m.partition(), m.offset(), m.payload(), now, now_i);
            }
        }
        batch.len() as u64
    }

    /// Marks each assigned partition caught up when the next offset to read has reached the
    /// broker's end offset (librdkafka's cached high watermark, updated by every fetch).
    fn update_caught_up(&self, st: &mut IngestState) {
        let rk = self.consumer.client().native_ptr();
        for (key, topic, partition, last_seen) in st.partitions() {
            let Ok(topic) = std::ffi::CString::new(topic.as_bytes()) else { continue };
            let (mut lo, mut hi) = (-1i64, -1i64);
            // SAFETY: `rk` is the live client handle of `self.consumer`, `topic` a valid C string,
            // and both outputs point to locals; the call only reads librdkafka's cached offsets.
            let err = unsafe {
                rdkafka::bindings::rd_kafka_get_watermark_offsets(rk, topic.as_ptr(), partition, &mut lo, &mut hi)
            };
            let next = last_seen.map_or(0, |l| l + 1).max(lo);
            let caught_up = err == RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR && hi >= 0 && next >= hi;
            st.wm.set_caught_up(key, caught_up);
        }
    }

    /// Applies writer events; returns whether a commit was refused.
    fn drain_events(&self) -> bool {
        let mut refused = false;
        while let Ok(ev) = self.events.try_recv() {
            match ev {
                WriterEvent::Committed { positions } => {
                    let mut tpl = TopicPartitionList::new();
                    for (t, p, last) in positions {
                        let _ = tpl.add_partition_offset(&t, p, Offset::Offset(last + 1));
                    }
                    // Only for lag tools: positions come from the Delta log.
                    if let Err(e) = self.consumer.commit(&tpl, CommitMode::Async) {
                        tracing::debug!(error = %e, "group offset commit failed");
                    }
                }
                WriterEvent::Dropped { keys, refused: r } => {
                    self.ctx().state.lock().expect("state").dedup.forget(&keys);
                    refused |= r;
                }
            }
        }
        refused
    }

    fn try_send_held(&self) {
        let mut st = self.ctx().state.lock().expect("state");
        if self.ctx().pending() >= self.shared.config.ingest.max_pending_flushes {
            return;
        }
        let Some(flush) = st.held.take() else { return };
        self.shared.stats.pending_flushes.fetch_add(1, Ordering::SeqCst);
        match self.flush_tx.try_send(flush) {
            Ok(()) => {}
            Err(TrySendError::Full(f)) | Err(TrySendError::Closed(f)) => {
                self.shared.stats.pending_flushes.fetch_sub(1, Ordering::SeqCst);
                st.held = Some(f);
            }
        }
    }

    /// After a refused commit: drop everything uncommitted, wait for the writer to drain,
    /// re-read positions from the lake and seek there.
    fn resync(&mut self) {
        tracing::warn!("a commit was refused (offsets moved underneath it); resynchronising with the lake");
        {
            let mut st = self.ctx().state.lock().expect("state");
            st.epoch += 1;
            st.drop_buffers();
        }
        while !self.ctx().wait_writer_idle(Duration::from_millis(100)) {
            self.drain_events();
        }
        self.drain_events();
        let Ok(assignment) = self.consumer.assignment() else { return };
        let Some((positions, dedup)) = self.ctx().positions_for(&assignment) else { return };
        for p in &positions {
            let offset = p.resume_at().map_or(Offset::Beginning, Offset::Offset);
            if let Err(e) = self.consumer.seek(&p.topic, p.partition, offset, Duration::from_secs(10)) {
                tracing::error!(error = %e, topic = %p.topic, partition = p.partition, "seek failed");
            }
        }
        let mut st = self.ctx().state.lock().expect("state");
        st.assign(positions, dedup);
    }

    /// On shutdown: flush what is buffered and wait until the writer has committed it. If the
    /// writer is gone (it failed), what is buffered is dropped: none of it is committed, so a
    /// restart reads it again from Kafka.
    fn finish(&mut self) {
        loop {
            self.drain_events();
            {
                let mut st = self.ctx().state.lock().expect("state");
                if st.held.is_none() {
                    st.held = st.cut();
                }
                if st.held.is_none() {
                    break;
                }
                if self.flush_tx.is_closed() {
                    let rows = st.held.as_ref().map_or(0, Flush::rows);
                    tracing::warn!(rows, "the lake writer stopped: buffered records are not committed and will be read again on restart");
                    st.drop_buffers();
                    break;
                }
            }
            self.try_send_held();
            std::thread::sleep(Duration::from_millis(5));
        }
        while !self.ctx().wait_writer_idle(Duration::from_millis(100)) && !self.flush_tx.is_closed() {
            self.drain_events();
        }
        self.drain_events();
    }
}
