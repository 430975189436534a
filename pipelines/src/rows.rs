//! Arrow row builders for the bronze and rejected tables, in the lake's column order.

use std::sync::Arc;

use campo_lake::arrow::array::{
    ArrayRef, BooleanBuilder, Date32Builder, Float64Builder, Int32Builder, Int64Builder, StringBuilder,
    TimestampMicrosecondBuilder,
};
use campo_lake::arrow::record_batch::RecordBatch;
use campo_lake::schema;

use crate::contract::{Activity, Envelope, Reading};

const MICROS_PER_DAY: i64 = 86_400_000_000;

/// Where a row came from and when it arrived.
#[derive(Debug, Clone, Copy)]
pub struct Provenance<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub ingested_at_us: i64,
    pub late: bool,
}

fn ts_builder() -> TimestampMicrosecondBuilder {
    TimestampMicrosecondBuilder::new().with_timezone("UTC")
}

fn date_of(us: i64) -> i32 {
    us.div_euclid(MICROS_PER_DAY) as i32
}

struct EnvelopeCols {
    event_id: StringBuilder,
    schema_version: StringBuilder,
    occurred_at: TimestampMicrosecondBuilder,
    producer: StringBuilder,
    idempotency_key: StringBuilder,
    trace_id: StringBuilder,
}

impl EnvelopeCols {
    fn new() -> Self {
        Self {
            event_id: StringBuilder::new(),
            schema_version: StringBuilder::new(),
            occurred_at: ts_builder(),
            producer: StringBuilder::new(),
            idempotency_key: StringBuilder::new(),
            trace_id: StringBuilder::new(),
        }
    }
    fn push(&mut self, e: &Envelope<'_>) {
        let mut buf = uuid::Uuid::encode_buffer();
        self.event_id.append_value(e.event_id.hyphenated().encode_lower(&mut buf));
        self.schema_version.append_value(&e.schema_version);
        self.occurred_at.append_value(e.occurred_at_us);
        self.producer.append_value(&e.producer);
        self.idempotency_key.append_value(&e.idempotency_key);
        self.trace_id.append_value(&e.trace_id);
    }
    fn finish(&mut self, cols: &mut Vec<ArrayRef>) {
        cols.push(Arc::new(self.event_id.finish()));
        cols.push(Arc::new(self.schema_version.finish()));
        cols.push(Arc::new(self.occurred_at.finish()));
        cols.push(Arc::new(self.producer.finish()));
        cols.push(Arc::new(self.idempotency_key.finish()));
        cols.push(Arc::new(self.trace_id.finish()));
    }
}

struct ProvenanceCols {
    topic: StringBuilder,
    partition: Int32Builder,
    offset: Int64Builder,
    ingested_at: TimestampMicrosecondBuilder,
    late: BooleanBuilder,
    event_date: Date32Builder,
}

impl ProvenanceCols {
    fn new() -> Self {
        Self {
            topic: StringBuilder::new(),
            partition: Int32Builder::new(),
            offset: Int64Builder::new(),
            ingested_at: ts_builder(),
            late: BooleanBuilder::new(),
            event_date: Date32Builder::new(),
        }
    }
    fn push(&mut self, p: &Provenance<'_>, occurred_at_us: i64) {
        self.topic.append_value(p.topic);
        self.partition.append_value(p.partition);
        self.offset.append_value(p.offset);
        self.ingested_at.append_value(p.ingested_at_us);
        self.late.append_value(p.late);
        self.event_date.append_value(date_of(occurred_at_us));
    }
    fn finish(&mut self, cols: &mut Vec<ArrayRef>) {
        cols.push(Arc::new(self.topic.finish()));
        cols.push(Arc::new(self.partition.finish()));
        cols.push(Arc::new(self.offset.finish()));
        cols.push(Arc::new(self.ingested_at.finish()));
        cols.push(Arc::new(self.late.finish()));
        cols.push(Arc::new(self.event_date.finish()));
    }
}

/// Rows of the `readings` table.
pub struct ReadingRows {
    len: usize,
    env: EnvelopeCols,
    user_hash: StringBuilder,
    region: StringBuilder,
    hz: Float64Builder,
    hz_bucket: Int32Builder,
    hz_bucket_derived: BooleanBuilder,
    mood_delta: Float64Builder,
    entropy: Float64Builder,
    action_type: StringBuilder,
    prov: ProvenanceCols,
}

impl Default for ReadingRows {
    fn default() -> Self {
        Self {
            len: 0,
            env: EnvelopeCols::new(),
            user_hash: StringBuilder::new(),
            region: StringBuilder::new(),
            hz: Float64Builder::new(),
            hz_bucket: Int32Builder::new(),
            hz_bucket_derived: BooleanBuilder::new(),
            mood_delta: Float64Builder::new(),
            entropy: Float64Builder::new(),
            action_type: StringBuilder::new(),
            prov: ProvenanceCols::new(),
        }
    }
}

impl ReadingRows {
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn push(&mut self, r: &Reading<'_>, p: &Provenance<'_>) {
        self.len += 1;
        self.env.push(&r.envelope);
        self.user_hash.append_value(&r.user_hash);
        self.region.append_value(&r.region);
        self.hz.append_value(r.hz);
        self.hz_bucket.append_value(r.hz_bucket);
        self.hz_bucket_derived.append_value(r.hz_bucket_derived);
        self.mood_delta.append_option(r.mood_delta);
        self.entropy.append_option(r.entropy);
        self.action_type.append_option(r.action_type.as_deref());
        self.prov.push(p, r.envelope.occurred_at_us);
    }
    pub fn finish(&mut self) -> RecordBatch {
        let mut cols = Vec::with_capacity(22);
        self.env.finish(&mut cols);
        cols.push(Arc::new(self.user_hash.finish()));
        cols.push(Arc::new(self.region.finish()));
        cols.push(Arc::new(self.hz.finish()));
        cols.push(Arc::new(self.hz_bucket.finish()));
        cols.push(Arc::new(self.hz_bucket_derived.finish()));
        cols.push(Arc::new(self.mood_delta.finish()));
        cols.push(Arc::new(self.entropy.finish()));
        cols.push(Arc::new(self.action_type.finish()));
        self.prov.finish(&mut cols);
        self.len = 0;
        RecordBatch::try_new(schema::READINGS.clone(), cols).expect("builders match the readings schema")
    }
}

/// Rows of the `activity` table.
pub struct ActivityRows {
    len: usize,
    env: EnvelopeCols,
    kind: StringBuilder,
    user_hash: StringBuilder,
    region: StringBuilder,
    route: StringBuilder,
    status: Int32Builder,
    latency_ms: Float64Builder,
    waf_blocked: BooleanBuilder,
    items_count: Int64Builder,
    entropy: Float64Builder,
    prov: ProvenanceCols,
}

impl Default for ActivityRows {
    fn default() -> Self {
        Self {
            len: 0,
            env: EnvelopeCols::new(),
            kind: StringBuilder::new(),
            user_hash: StringBuilder::new(),
            region: StringBuilder::new(),
            route: StringBuilder::new(),
            status: Int32Builder::new(),
            latency_ms: Float64Builder::new(),
            waf_blocked: BooleanBuilder::new(),
            items_count: Int64Builder::new(),
            entropy: Float64Builder::new(),
            prov: ProvenanceCols::new(),
        }
    }
}

impl ActivityRows {
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn push(&mut self, a: &Activity<'_>, p: &Provenance<'_>) {
        self.len += 1;
        self.env.push(&a.envelope);
        self.kind.append_value(a.kind.as_str());
        self.user_hash.append_value(&a.user_hash);
        self.region.append_value(&a.region);
        self.route.append_option(a.route.as_deref());
        self.status.append_option(a.status);
        self.latency_ms.append_option(a.latency_ms);
        self.waf_blocked.append_option(a.waf_blocked);
        self.items_count.append_option(a.items_count);
        self.entropy.append_option(a.entropy);
        self.prov.push(p, a.envelope.occurred_at_us);
    }
    pub fn finish(&mut self) -> RecordBatch {
        let mut cols = Vec::with_capacity(22);
        self.env.finish(&mut cols);
        cols.push(Arc::new(self.kind.finish()));
        cols.push(Arc::new(self.user_hash.finish()));
        cols.push(Arc::new(self.region.finish()));
        cols.push(Arc::new(self.route.finish()));
        cols.push(Arc::new(self.status.finish()));
        cols.push(Arc::new(self.latency_ms.finish()));
        cols.push(Arc::new(self.waf_blocked.finish()));
        cols.push(Arc::new(self.items_count.finish()));
        cols.push(Arc::new(self.entropy.finish()));
        self.prov.finish(&mut cols);
        self.len = 0;
        RecordBatch::try_new(schema::ACTIVITY.clone(), cols).expect("builders match the activity schema")
    }
}

/// A rejected record, as it goes to the `rejected` table and the DLQ topic.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RejectedRecord {
    pub source_topic: String,
    pub partition: i32,
    pub offset: i64,
    pub reason: &'static str,
    pub message: String,
    pub size_bytes: i64,
    /// RFC 3339, UTC.
    pub rejected_at: String,
    pub record: String,
    #[serde(skip)]
    pub rejected_at_us: i64,
}

/// Rows of the `rejected` table.
#[derive(Default)]
pub struct RejectedRows {
    records: Vec<RejectedRecord>,
}

impl RejectedRows {
    pub fn len(&self) -> usize {
        self.records.len()
    }
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
    pub fn push(&mut self, r: RejectedRecord) {
        self.records.push(r);
    }
    /// The batch and the records it holds (for the DLQ topic).
    pub fn finish(&mut self) -> (RecordBatch, Vec<RejectedRecord>) {
        let records = std::mem::take(&mut self.records);
        let mut topic = StringBuilder::new();
        let mut partition = Int32Builder::new();
        let mut offset = Int64Builder::new();
        let mut reason = StringBuilder::new();
        let mut message = StringBuilder::new();
        let mut size = Int64Builder::new();
        let mut at = ts_builder();
        let mut record = StringBuilder::new();
        let mut date = Date32Builder::new();
        for r in &records {
            topic.append_value(&r.source_topic);
            partition.append_value(r.partition);
            offset.append_value(r.offset);
            reason.append_value(r.reason);
            message.append_value(&r.message);
            size.append_value(r.size_bytes);
            at.append_value(r.rejected_at_us);
            record.append_value(&r.record);
            date.append_value(date_of(r.rejected_at_us));
        }
        let cols: Vec<ArrayRef> = vec![
            Arc::new(topic.finish()),
            Arc::new(partition.finish()),
            Arc::new(offset.finish()),
            Arc::new(reason.finish()),
            Arc::new(message.finish()),
            Arc::new(size.finish()),
            Arc::new(at.finish()),
            Arc::new(record.finish()),
            Arc::new(date.finish()),
        ];
        let batch = RecordBatch::try_new(schema::REJECTED.clone(), cols).expect("builders match the rejected schema");
        (batch, records)
    }
}
