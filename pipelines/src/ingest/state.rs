//! What the consumer holds between two flushes: per-partition positions, the rows being
//! buffered for each table, the dedup set, and the flush cut from them.

use std::sync::Arc;
use std::time::Instant;

use campo_lake::{OffsetTxn, TableCommit};
use rustc_hash::FxHashMap;

use crate::contract::{Contract, Reason, Rejection, decode_activity, decode_reading, scrubbed_record};
use crate::dedup::{Dedup, fingerprint, unix_minute};
use crate::rows::{ActivityRows, Provenance, ReadingRows, RejectedRecord, RejectedRows};
use crate::windows::Watermarks;
use crate::windows::watermark::PartKey;

use super::{Counts, Flush};

/// Where one assigned partition stands.
#[derive(Debug, Clone)]
pub struct PartitionPosition {
    pub contract: Contract,
    pub topic: Arc<str>,
    pub partition: i32,
    /// The primary (bronze) table's txn version: every record up to it is committed.
    pub bronze_v: Option<i64>,
    /// The `rejected` table's txn version: invalid records up to it are in `rejected`.
    pub rejected_v: Option<i64>,
    /// The largest event time among the partition's last committed records (restores the
    /// partition's watermark; see `read_positions`).
    pub max_event_us: Option<i64>,
}

impl PartitionPosition {
    /// Where consumption resumes: right after the last committed offset.
    pub fn resume_at(&self) -> Option<i64> {
        self.bronze_v.map(|v| v + 1)
    }
}

struct Part {
    pos: PartitionPosition,
    /// Last offset taken into the buffers (or committed).
    last_seen: Option<i64>,
}

impl Part {
    /// The last offset taken since the last cut, if records were: `pos.bronze_v` is where
    /// the last cut ended (it advances at every cut), so nothing is kept per record.
    fn covered(&self) -> Option<i64> {
        self.last_seen.filter(|&l| self.pos.bronze_v.is_none_or(|b| l > b))
    }
}

pub struct IngestState {
    max_record_bytes: usize,
    /// Looked up for every record: Fx, not SipHash (the keys are ours, not an attacker's).
    parts: FxHashMap<(Contract, i32), Part>,
    readings: ReadingRows,
    activity: ActivityRows,
    rejected: RejectedRows,
    /// Invalid records already in `rejected` whose DLQ message may not have been sent.
    dlq_replay: Vec<RejectedRecord>,
    keys: [Vec<u64>; 2],
    counts: Counts,
    pub dedup: Dedup,
    pub epoch: u64,
    /// Bumped at every (re)assignment: the window stage rebuilds its state from bronze when a
    /// flush of a new generation reaches it.
    pub generation: u64,
    /// Whether this instance is assigned every partition of both input topics (only then does
    /// it see whole windows).
    pub whole: bool,
    pub buffered_since: Option<Instant>,
    /// A flush that was cut but not yet handed to the writer (it is full).
    pub held: Option<Flush>,
    /// Event-time watermarks of the assigned partitions.
    pub wm: Watermarks,
    /// The watermark the last cut carried.
    last_cut_wm: Option<i64>,
    /// When the watermark last advanced.
    pub advanced_at: Option<Instant>,
}

fn idx(c: Contract) -> usize {
    match c {
        Contract::Reading => 0,
        Contract::Activity => 1,
    }
}

impl IngestState {
    /// The state with the configured record size bound and watermarks (closing no window
    /// at or before `closed_through`).
    pub fn from_config(config: &crate::config::Config, dedup: Dedup, closed_through: Option<i64>) -> Self {
        let w = &config.windows;
        let wm = Watermarks::new(w.size, w.allowed_lateness, w.idle_timeout, closed_through);
        Self::new(config.ingest.max_record_bytes, dedup, wm)
    }

    pub fn new(max_record_bytes: usize, dedup: Dedup, wm: Watermarks) -> Self {
        Self {
            max_record_bytes,
            parts: FxHashMap::default(),
            readings: ReadingRows::default(),
            activity: ActivityRows::default(),
            rejected: RejectedRows::default(),
            dlq_replay: Vec::new(),
            keys: [Vec::new(), Vec::new()],
            counts: Counts::default(),
            dedup,
            epoch: 1,
            generation: 0,
            whole: false,
            buffered_since: None,
            held: None,
            wm,
            last_cut_wm: None,
            advanced_at: None,
        }
    }

    /// Whether the watermark moved past what the last cut carried (a cut is due to close windows).
    pub fn watermark_moved(&self) -> bool {
        self.wm.closed_through() != self.last_cut_wm
    }

    /// Assigned partitions with the last offset taken, for end-of-partition checks.
    pub fn partitions(&self) -> Vec<(PartKey, Arc<str>, i32, Option<i64>)> {
        self.parts
            .iter()
            .map(|((c, p), part)| ((idx(*c), *p), part.pos.topic.clone(), *p, part.last_seen))
            .collect()
    }

    pub fn buffered_rows(&self) -> usize {
        self.readings.len() + self.activity.len() + self.rejected.len() + self.dlq_replay.len()
    }

    pub fn has_data(&self) -> bool {
        self.parts.values().any(|p| p.covered().is_some())
    }

    pub fn assigned(&self) -> usize {
        self.parts.len()
    }

    /// Replaces the assignment with these positions and the dedup set rebuilt with them
    /// (buffers must be empty).
    pub fn assign(&mut self, positions: Vec<PartitionPosition>, dedup: Dedup) {
        self.generation += 1;
        self.dedup = dedup;
        self.wm.assign(positions.iter().map(|p| (idx(p.contract), p.partition)), Instant::now());
        for p in &positions {
            if let Some(t) = p.max_event_us {
                self.wm.restore((idx(p.contract), p.partition), t);
            }
        }
        self.parts = positions
            .into_iter()
            .map(|pos| ((pos.contract, pos.partition), Part { last_seen: pos.bronze_v, pos }))
            .collect();
    }

    /// Drops every buffered row and the held flush, forgetting their dedup keys; positions are
    /// then stale, so callers re-read them from the lake or clear the assignment.
    pub fn drop_buffers(&mut self) {
        if let Some(f) = self.held.take() {
            self.dedup.forget(&f.keys[0]);
            self.dedup.forget(&f.keys[1]);
        }
        for k in &mut self.keys {
            self.dedup.forget(k);
            k.clear();
        }
        self.readings.finish();
        self.activity.finish();
        self.rejected.finish();
        self.dlq_replay.clear();
        // Nothing taken since the last cut is kept.
        for part in self.parts.values_mut() {
            part.last_seen = part.pos.bronze_v;
        }
        self.counts = Counts::default();
        self.buffered_since = None;
        // The dropped flush may have carried the watermark: the next cut carries it again.
        self.last_cut_wm = None;
    }

    pub fn clear_assignment(&mut self) {
        self.drop_buffers();
        self.parts.clear();
        self.wm.assign([], Instant::now());
    }

    /// Takes one consumed record into the buffers. Records of partitions not assigned, and
    /// offsets already taken or committed, are ignored.
    pub fn process(
        &mut self,
        contract: Contract,
        partition: i32,
        offset: i64,
        payload: Option<&[u8]>,
        now_us: i64,
        now: Instant,
    ) {
        let Some(part) = self.parts.get_mut(&(contract, partition)) else { return };
        if part.last_seen.is_some_and(|l| offset <= l) {
            return;
        }
        part.last_seen = Some(offset);
        let part = &*part;
        let replayed_reject = part.pos.rejected_v.is_some_and(|r| offset <= r);
        let topic: &str = &part.pos.topic;
        self.buffered_since.get_or_insert_with(Instant::now);
        let prov = Provenance { topic, partition, offset, ingested_at_us: now_us, late: false };
        let i = idx(contract);
        let key = (i, partition);
        self.wm.touch(key, now);
        let bytes = payload.unwrap_or_default();
        let result = match contract {
            Contract::Reading => decode_reading(bytes, self.max_record_bytes).map(|r| {
                let fp = fingerprint(contract, &r.envelope.idempotency_key);
                let fresh = self.dedup.admit(fp, unix_minute(now_us));
                let late = self.wm.is_late(r.envelope.occurred_at_us);
                if fresh {
                    self.wm.observe(key, r.envelope.occurred_at_us, now);
                    self.readings.push(&r, &Provenance { late, ..prov });
                }
                (fp, fresh, late)
            }),
            Contract::Activity => decode_activity(bytes, self.max_record_bytes).map(|a| {
                let fp = fingerprint(contract, &a.envelope.idempotency_key);
                let fresh = self.dedup.admit(fp, unix_minute(now_us));
                let late = self.wm.is_late(a.envelope.occurred_at_us);
                if fresh {
                    self.wm.observe(key, a.envelope.occurred_at_us, now);
                    self.activity.push(&a, &Provenance { late, ..prov });
                }
                (fp, fresh, late)
            }),
        };
        match result {
            Ok((fp, true, late)) => {
                self.keys[i].push(fp);
                self.counts.bronze[i] += 1;
                self.counts.late[i] += u64::from(late);
            }
            Ok((_, false, _)) => self.counts.duplicate[i] += 1,
            Err(rejection) => {
                let rejection = if payload.is_none() {
                    Rejection { reason: Reason::NotJson, message: "record has no value (tombstone)".into() }
                } else {
                    rejection
                };
                *self.counts.rejected.entry((i, rejection.reason)).or_default() += 1;
                let rec = rejected_record(topic, partition, offset, bytes, rejection, now_us);
                if replayed_reject {
                    self.dlq_replay.push(rec);
                } else {
                    self.rejected.push(rec);
                }
            }
        }
    }

    /// Cuts everything buffered into one flush, advancing the expected txn versions.
    /// A flush is cut when rows are buffered or the watermark moved (an empty flush then
    /// carries it to the window stage).
    pub fn cut(&mut self) -> Option<Flush> {
        if !self.has_data() && !self.watermark_moved() {
            return None;
        }
        let watermark = self.wm.closed_through();
        self.last_cut_wm = watermark;
        let has_rejected = !self.rejected.is_empty();
        let mut tables: [TableCommit; 2] = Default::default();
        let mut rejected = TableCommit::default();
        let mut positions = Vec::new();
        // In partition order, as the txn actions have always been written.
        let mut covered: Vec<_> = self.parts.iter().filter_map(|(&k, p)| p.covered().map(|last| (k, last))).collect();
        covered.sort_unstable();
        for ((contract, partition), last) in covered {
            let part = self.parts.get_mut(&(contract, partition)).expect("covered partitions are assigned");
            let topic = part.pos.topic.to_string();
            tables[idx(contract)].txns.push(OffsetTxn {
                topic: topic.clone(),
                partition,
                expected: part.pos.bronze_v,
                last,
            });
            part.pos.bronze_v = Some(last);
            if has_rejected && part.pos.rejected_v.is_none_or(|r| last > r) {
                rejected.txns.push(OffsetTxn { topic: topic.clone(), partition, expected: part.pos.rejected_v, last });
                part.pos.rejected_v = Some(last);
            }
            positions.push((topic, partition, last));
        }
        if !self.readings.is_empty() {
            tables[0].batches.push(self.readings.finish());
        }
        if !self.activity.is_empty() {
            tables[1].batches.push(self.activity.finish());
        }
        let mut dlq = std::mem::take(&mut self.dlq_replay);
        if has_rejected {
            let (batch, records) = self.rejected.finish();
            rejected.batches.push(batch);
            dlq.extend(records);
        }
        let [readings, activity] = tables;
        self.buffered_since = None;
        Some(Flush {
            epoch: self.epoch,
            generation: self.generation,
            whole: self.whole,
            readings,
            activity,
            rejected,
            dlq,
            keys: std::mem::take(&mut self.keys),
            counts: std::mem::take(&mut self.counts),
            positions,
            watermark,
            trace: self.advanced_at.map(|a| super::CloseTrace { cut: Some(Instant::now()), ..super::CloseTrace::new(a) }),
        })
    }
}

fn rejected_record(
    topic: &str,
    partition: i32,
    offset: i64,
    bytes: &[u8],
    rejection: Rejection,
    now_us: i64,
) -> RejectedRecord {
    let at = chrono::DateTime::from_timestamp_micros(now_us).unwrap_or_default();
    let record = scrubbed_record(bytes, rejection.reason != Reason::TooLarge);
    RejectedRecord {
        source_topic: topic.to_string(),
        partition,
        offset,
        reason: rejection.reason.code(),
        message: rejection.message,
        size_bytes: bytes.len() as i64,
        rejected_at: at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        record,
        rejected_at_us: now_us,
    }
}
