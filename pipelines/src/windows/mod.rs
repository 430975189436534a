//! Event-time windows and the SQL signal pipelines (SPEC 2, 3, 4).
//!
//! The consumer thread keeps the per-partition [`Watermarks`], flags late events in bronze and
//! attaches the watermark to every flush it cuts (a window's advance cuts a flush at once). After
//! a flush is committed to bronze, the writer hands its rows and watermark to the [`stage`]:
//! it folds the non-late rows into the open windows' state (`sql/state/*.sql`: partial
//! aggregates per key, merged by summing) and, for every window the watermark has passed, runs
//! `sql/region_metrics_1m.sql` and `sql/evu_1m.sql` in DataFusion over that window's state, and
//! commits the results with one Delta txn per table (app id `{pipeline}-windows-0`, version =
//! end of the last window closed, in microseconds).
//!
//! Why this is exactly once and deterministic: a row that is not `late` is in a flush cut no
//! later than the one whose watermark closes its window, so when that flush is committed the
//! window's rows are all in bronze, and the window is computed from exactly the bronze rows
//! with `late = false` in it. The state's measures are counts and exact decimal sums, so the
//! result does not depend on how rows were split into flushes or ordered. A restart rebuilds
//! the open windows' state from bronze and resumes the watermark from the last window written;
//! a window already written is never written again (its commit would be refused by the txn
//! version).

pub mod sql;
pub mod stage;
mod state;
pub mod watermark;

pub use stage::{RegionSignal, WindowInput, WindowStage};
pub use watermark::Watermarks;
