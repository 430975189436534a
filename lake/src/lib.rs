//! campo's Delta Lake: table schemas, opening and creating the lake, and the exactly-once
//! writer that commits rows together with one Delta transaction action per Kafka partition.
//!
//! Nothing here knows about Kafka: partitions are plain `(topic, partition)` pairs and offsets
//! plain integers. The pipelines crate decides what they mean.

mod error;
pub mod erasure;
pub mod guard;
mod lake;
pub mod lifecycle;
pub mod maintain;
mod query;
pub mod schema;
mod writer;

pub use error::{LakeError, Result};
pub use lake::{Lake, TableKind};
pub use writer::{CommitOutcome, OffsetTxn, TableCommit, TableWriter, app_id};

/// Re-exported so callers build batches with the same Arrow as the lake.
pub use deltalake;
pub use deltalake::arrow;
pub use deltalake::datafusion;
