use thiserror::Error;

/// Errors of the lake crate.
#[derive(Debug, Error)]
pub enum LakeError {
    #[error("lake location {location:?} is not a valid path or URL: {reason}")]
    BadLocation { location: String, reason: String },
    #[error("Delta table {table}: {source}")]
    Delta {
        table: String,
        #[source]
        source: deltalake::DeltaTableError,
    },
    #[error("query over table {table}: {source}")]
    Query {
        table: String,
        #[source]
        source: deltalake::datafusion::error::DataFusionError,
    },
    #[error("erasure: {0}")]
    Erasure(String),
    #[error("table {table} has schema that campo cannot write: {reason}")]
    Schema { table: String, reason: String },
}

pub type Result<T, E = LakeError> = std::result::Result<T, E>;

pub(crate) fn delta(table: &str) -> impl FnOnce(deltalake::DeltaTableError) -> LakeError + '_ {
    move |source| LakeError::Delta { table: table.to_string(), source }
}
