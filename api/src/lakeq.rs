//! Reading the lake for the API: queries built from validated values only, results as JSON rows.

use campo_lake::arrow::record_batch::RecordBatch;
use campo_lake::datafusion::prelude::SessionContext;
use campo_lake::{Lake, TableKind};
use serde_json::{Map, Value};

use crate::error::{ApiError, Result};

/// A session over the tables `needs`, or `None` when one of them does not exist yet.
pub async fn session(lake: &Lake, needs: &[TableKind]) -> Result<Option<SessionContext>> {
    let ctx = lake.session_of(needs).await?;
    for t in needs {
        if !ctx.table_exist(t.name()).map_err(ApiError::internal)? {
            return Ok(None);
        }
    }
    Ok(Some(ctx))
}

/// Runs `sql` in a session from [`session`]; its rows as JSON objects.
pub async fn query(ctx: &SessionContext, sql: &str) -> Result<Vec<Map<String, Value>>> {
    let batches = ctx.sql(sql).await.map_err(ApiError::internal)?.collect().await.map_err(ApiError::internal)?;
    to_json(&batches)
}

/// Runs `sql` over the tables `needs`, or returns no rows when one of them does not exist yet.
pub async fn rows(lake: &Lake, needs: &[TableKind], sql: &str) -> Result<Vec<Map<String, Value>>> {
    match session(lake, needs).await? {
        Some(ctx) => query(&ctx, sql).await,
        None => Ok(Vec::new()),
    }
}

fn to_json(batches: &[RecordBatch]) -> Result<Vec<Map<String, Value>>> {
    let mut w = campo_lake::arrow::json::ArrayWriter::new(Vec::new());
    let refs: Vec<&RecordBatch> = batches.iter().filter(|b| b.num_rows() > 0).collect();
    if refs.is_empty() {
        return Ok(Vec::new());
    }
    w.write_batches(&refs).map_err(ApiError::internal)?;
    w.finish().map_err(ApiError::internal)?;
    serde_json::from_slice(&w.into_inner()).map_err(ApiError::internal)
}

/// A region name as campo writes them (`sa-east-1`, `europe-west1`): safe to put in SQL.
pub fn region(s: &str) -> Result<&str> {
    if !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_') {
        Ok(s)
    } else {
        Err(ApiError::bad_request("invalid_region", format!("{s:?} is not a region name ([a-z0-9_-], at most 64)")))
    }
}

/// An RFC 3339 time from a query parameter, as microseconds since the epoch.
pub fn time_param(name: &'static str, s: &str) -> Result<i64> {
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.timestamp_micros())
        .map_err(|e| ApiError::bad_request("invalid_time", format!("`{name}`: {s:?} is not an RFC 3339 time ({e})")))
}

/// The times a query may name, in microseconds since the epoch: years 1 to 9999 (what RFC 3339
/// can write, and what DataFusion's timestamp casts accept).
pub const TIME_RANGE_US: std::ops::RangeInclusive<i64> = -62_135_596_800_000_000..=253_402_300_799_999_999;

/// A SQL timestamp literal for microseconds since the epoch.
pub fn ts(us: i64) -> String {
    format!("to_timestamp_micros({us})")
}

pub const MAX_LIMIT: usize = 200;

/// `?limit=`: 1..=200, default 100.
pub fn limit(l: Option<usize>) -> Result<usize> {
    match l {
        None => Ok(100),
        Some(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        Some(n) => Err(ApiError::bad_request("invalid_limit", format!("limit {n} is out of range 1..={MAX_LIMIT}"))),
    }
}
