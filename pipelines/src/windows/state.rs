//! The open windows' state: per state query (`sql/state/`), partial aggregates merged by key
//! as flushes arrive, split off by window end when the watermark closes windows.

use std::sync::Arc;

use campo_lake::arrow::array::{AsArray, BooleanArray, RecordBatch};
use campo_lake::arrow::compute::{cast, concat_batches, filter_record_batch};
use campo_lake::arrow::datatypes::{Field, Schema, SchemaRef, TimestampMicrosecondType};
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;

use super::sql::StateQuery;

/// Partial rows of a state table are merged once they outnumber the merged rows (and at least
/// this many): merging costs amortized O(1) per partial row, and a window's close reads at most
/// about twice its merged state.
const MIN_MERGE_ROWS: usize = 65_536;

/// One state table of the open windows: merged rows plus partial rows not merged yet.
pub(super) struct State {
    pub(super) query: &'static StateQuery,
    /// The query's output schema, every column nullable (partial and merged rows share it).
    pub(super) schema: SchemaRef,
    merged: Vec<RecordBatch>,
    merged_rows: usize,
    partial: Vec<RecordBatch>,
    partial_rows: usize,
}

impl State {
    /// Plans the query over an empty batch of its events for the state's schema.
    pub(super) async fn new(ctx: &SessionContext, query: &'static StateQuery, events: SchemaRef) -> datafusion::error::Result<Self> {
        let _ = ctx.deregister_table(query.source.table())?;
        ctx.register_table(query.source.table(), Arc::new(MemTable::try_new(events, vec![vec![]])?))?;
        let planned = ctx.sql(query.sql).await?;
        let fields: Vec<Field> =
            planned.schema().as_arrow().fields().iter().map(|f| f.as_ref().clone().with_nullable(true)).collect();
        let schema = Arc::new(Schema::new(fields));
        Ok(Self { query, schema, merged: Vec::new(), merged_rows: 0, partial: Vec::new(), partial_rows: 0 })
    }

    pub(super) fn rows(&self) -> usize {
        self.merged_rows + self.partial_rows
    }

    pub(super) fn clear(&mut self) {
        self.merged.clear();
        self.partial.clear();
        self.merged_rows = 0;
        self.partial_rows = 0;
    }

    pub(super) fn bytes(&self) -> usize {
        self.merged.iter().chain(&self.partial).map(|b| b.get_array_memory_size()).sum()
    }

    /// Brings query output to the state's schema.
    pub(super) fn conform(&self, batches: Vec<RecordBatch>) -> datafusion::error::Result<Vec<RecordBatch>> {
        let mut out = Vec::with_capacity(batches.len());
        for b in batches.into_iter().filter(|b| b.num_rows() > 0) {
            let schema = self.schema.clone();
            let cols = b
                .columns()
                .iter()
                .zip(schema.fields())
                .map(|(c, f)| if c.data_type() == f.data_type() { Ok(c.clone()) } else { cast(c, f.data_type()) })
                .collect::<Result<Vec<_>, _>>()?;
            out.push(RecordBatch::try_new(schema, cols)?);
        }
        Ok(out)
    }

    /// Merged and partial rows in one batch.
    pub(super) fn all_rows(&self) -> datafusion::error::Result<RecordBatch> {
        Ok(concat_batches(&self.schema, self.merged.iter().chain(&self.partial))?)
    }

    /// Adds rows of one update; returns whether the partial rows are due to be merged.
    pub(super) fn push_partial(&mut self, rows: Vec<RecordBatch>) -> bool {
        self.partial_rows += rows.iter().map(|b| b.num_rows()).sum::<usize>();
        self.partial.extend(rows);
        self.partial_rows >= self.merged_rows.max(MIN_MERGE_ROWS)
    }

    /// Replaces the merged rows by `merged` (the merge of merged and partial rows).
    pub(super) fn set_merged(&mut self, merged: Vec<RecordBatch>) {
        self.merged_rows = merged.iter().map(|b| b.num_rows()).sum();
        self.merged = merged;
        self.partial.clear();
        self.partial_rows = 0;
    }

    /// Takes the rows of windows ending at or before `through`, merged and partial.
    pub(super) fn take_closed(&mut self, through: i64) -> Vec<RecordBatch> {
        let mut rows = take_closed(&mut self.merged, through);
        self.merged_rows = self.merged.iter().map(|b| b.num_rows()).sum();
        rows.extend(take_closed(&mut self.partial, through));
        self.partial_rows = self.partial.iter().map(|b| b.num_rows()).sum();
        rows
    }
}

/// Splits state rows into those of windows ending at or before `through` (returned) and
/// the rest (kept).
fn take_closed(open: &mut Vec<RecordBatch>, through: i64) -> Vec<RecordBatch> {
    let mut closed = Vec::new();
    let mut keep = Vec::new();
    for b in open.drain(..) {
        let mask = ended_by(&b, through);
        let n = mask.true_count();
        if n == b.num_rows() {
            closed.push(b);
        } else if n == 0 {
            keep.push(b);
        } else {
            closed.push(filter_record_batch(&b, &mask).expect("filter"));
            let rest = campo_lake::arrow::compute::not(&mask).expect("not");
            keep.push(filter_record_batch(&b, &rest).expect("filter"));
        }
    }
    *open = keep;
    closed
}

/// Which rows of `rows` belong to windows ending at or before `through`.
pub(super) fn ended_by(rows: &RecordBatch, through: i64) -> BooleanArray {
    let end = rows.column_by_name("window_end").expect("window_end").as_primitive::<TimestampMicrosecondType>();
    end.iter().map(|e| Some(e.is_some_and(|e| e <= through))).collect()
}
