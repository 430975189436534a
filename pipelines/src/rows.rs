//! Arrow row builders for the bronze and rejected tables, in the lake's column order.

use std::sync::Arc;

use campo_lake::arrow::array::{
    ArrayRef, ArrowPrimitiveType, AsArray, BooleanBuilder, Date32Builder, Float64Builder, Int32Builder, Int64Builder,
    PrimitiveBuilder, StringBuilder, TimestampMicrosecondBuilder,
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

fn ts_builder(capacity: usize) -> TimestampMicrosecondBuilder {
    TimestampMicrosecondBuilder::with_capacity(capacity).with_timezone("UTC")
}

/// Builder capacities for the next batch: those of the last one, plus an eighth. A finished
/// builder starts over empty, and growing a column from nothing by doubling copies it about
/// once more; flushes of one table are of similar size, so the last one is a good guess.
#[derive(Clone, Copy, Default)]
struct Sizing<'b>(Option<&'b RecordBatch>);

impl Sizing<'_> {
    fn rows(&self) -> usize {
        self.0.map_or(1024, |b| b.num_rows() + b.num_rows() / 8)
    }
    fn str(&self, name: &str) -> StringBuilder {
        debug_assert!(self.0.is_none_or(|b| b.column_by_name(name).is_some()), "no column {name}");
        let bytes = self.0.and_then(|b| b.column_by_name(name)).map_or(1024, |c| {
            let n = c.as_string::<i32>().values().len();
            n + n / 8
        });
        StringBuilder::with_capacity(self.rows(), bytes)
    }
    fn num<T: ArrowPrimitiveType>(&self) -> PrimitiveBuilder<T> {
        PrimitiveBuilder::with_capacity(self.rows())
    }
    fn ts(&self) -> TimestampMicrosecondBuilder {
        ts_builder(self.rows())
    }
    fn bool(&self) -> BooleanBuilder {
        BooleanBuilder::with_capacity(self.rows())
    }
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
    fn new(s: Sizing<'_>) -> Self {
        Self {
            event_id: s.str("event_id"),
            schema_version: s.str("schema_version"),
            occurred_at: s.ts(),
            producer: s.str("producer"),
            idempotency_key: s.str("idempotency_key"),
            trace_id: s.str("trace_id"),
        }
    }
    fn push(&mut self, e: &Envelope<'_>) {
        self.event_id.append_value(&e.event_id);
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
    fn new(s: Sizing<'_>) -> Self {
        Self {
            topic: s.str("kafka_topic"),
            partition: s.num(),
            offset: s.num(),
            ingested_at: s.ts(),
            late: s.bool(),
            event_date: s.num(),
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
        Self::new(Sizing::default())
    }
}

impl ReadingRows {
    fn new(s: Sizing<'_>) -> Self {
        Self {
            len: 0,
            env: EnvelopeCols::new(s),
            user_hash: s.str("user_hash"),
            region: s.str("region"),
            hz: s.num(),
            hz_bucket: s.num(),
            hz_bucket_derived: s.bool(),
            mood_delta: s.num(),
            entropy: s.num(),
            action_type: s.str("action_type"),
            prov: ProvenanceCols::new(s),
        }
    }
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
        let batch = RecordBatch::try_new(schema::READINGS.clone(), cols).expect("builders match the readings schema");
        *self = Self::new(Sizing(Some(&batch)));
        batch
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
        Self::new(Sizing::default())
    }
}

impl ActivityRows {
    fn new(s: Sizing<'_>) -> Self {
        Self {
            len: 0,
            env: EnvelopeCols::new(s),
            kind: s.str("kind"),
            user_hash: s.str("user_hash"),
            region: s.str("region"),
            route: s.str("route"),
            status: s.num(),
            latency_ms: s.num(),
            waf_blocked: s.bool(),
            items_count: s.num(),
            entropy: s.num(),
            prov: ProvenanceCols::new(s),
        }
    }
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
        let batch = RecordBatch::try_new(schema::ACTIVITY.clone(), cols).expect("builders match the activity schema");
        *self = Self::new(Sizing(Some(&batch)));
        batch
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
        let mut at = ts_builder(records.len());
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

#[cfg(test)]
mod tests {
    use campo_lake::arrow::datatypes::Float64Type;

    use super::*;
    use crate::contract::decode_reading;

    fn reading(i: usize) -> String {
        format!(
            r#"{{"event_id":"7d3f2a4e-9a43-4a8e-b0c1-{i:012x}","schema_version":"1.0.0","occurred_at":"2026-11-23T10:15:30Z","producer":"p","idempotency_key":"key-{i}","trace_id":"t","user_hash":"u_{i}","region":"sa-east-1","hz":{}.5}}"#,
            300 + i % 500
        )
    }

    /// Builders are sized from the previous batch; a larger batch after a small one (and a small
    /// one after that) must still hold every row, in order.
    #[test]
    fn batches_of_any_size_after_the_first_keep_every_row() {
        let mut rows = ReadingRows::default();
        let p = Provenance { topic: "r", partition: 0, offset: 0, ingested_at_us: 0, late: false };
        let mut next = 0;
        for size in [3, 5000, 10, 0, 7000] {
            let records: Vec<String> = (next..next + size).map(reading).collect();
            for r in &records {
                rows.push(&decode_reading(r.as_bytes(), 1 << 20).unwrap(), &p);
            }
            assert_eq!(rows.len(), size);
            let batch = rows.finish();
            assert_eq!(batch.num_rows(), size);
            assert!(rows.is_empty());
            let keys = batch.column_by_name("idempotency_key").unwrap().as_string::<i32>();
            let users = batch.column_by_name("user_hash").unwrap().as_string::<i32>();
            let hz = batch.column_by_name("hz").unwrap().as_primitive::<Float64Type>();
            for (j, i) in (next..next + size).enumerate() {
                assert_eq!(keys.value(j), format!("key-{i}"));
                assert_eq!(users.value(j), format!("u_{i}"));
                assert_eq!(hz.value(j), (300 + i % 500) as f64 + 0.5);
            }
            next += size;
        }
    }
}
