//! `POST /v1/sql`: read-only SQL over the lake tables, with campo's functions, in a session of
//! its own that has a memory limit, under a time limit and a row cap.
//!
//! What is refused, before anything is planned: more (or less) than one statement; any
//! statement but a query (DDL, DML, COPY, SET, CREATE EXTERNAL TABLE, EXPLAIN...); a table that
//! is not a lake table by its bare name (paths, URLs, other catalogs). The plan is then checked
//! again with DataFusion's own `SQLOptions` (no DDL, DML or statements) before it runs.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use campo_lake::guard::{self, Allow, Refusal};
use campo_lake::arrow::record_batch::RecordBatch;
use campo_lake::datafusion::error::DataFusionError;
use campo_lake::datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use campo_lake::datafusion::execution::runtime_env::RuntimeEnvBuilder;
use campo_lake::datafusion::prelude::{SessionConfig, SessionContext};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::json;

use crate::AppState;
use crate::auth::{Principal, Scope};
use crate::error::{ApiError, Result};

/// The request body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SqlRequest {
    /// One query.
    pub sql: String,
    /// `json` (default), `ndjson`, `csv` or `arrow` (Arrow IPC stream); else taken from `Accept`.
    #[serde(default)]
    pub format: Option<Format>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Json,
    Ndjson,
    Csv,
    Arrow,
}

impl Format {
    fn from_accept(headers: &HeaderMap) -> Format {
        let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("");
        if accept.contains("application/x-ndjson") {
            Format::Ndjson
        } else if accept.contains("text/csv") {
            Format::Csv
        } else if accept.contains("application/vnd.apache.arrow.stream") {
            Format::Arrow
        } else {
            Format::Json
        }
    }

    fn content_type(self) -> &'static str {
        match self {
            Format::Json => "application/json",
            Format::Ndjson => "application/x-ndjson",
            Format::Csv => "text/csv; charset=utf-8",
            Format::Arrow => "application/vnd.apache.arrow.stream",
        }
    }
}

/// `POST /v1/sql` (scope `sql:query`).
#[utoipa::path(post, path = "/v1/sql", tag = "sql", security(("bearer" = [])), request_body = SqlRequest,
    responses(
        (status = 200, description = "The answer, in the asked format", content(
            (crate::openapi::SqlAnswer = "application/json"),
            (String = "application/x-ndjson"),
            (String = "text/csv"),
            (Vec<u8> = "application/vnd.apache.arrow.stream"))),
        (status = 400, description = "Not valid SQL, several statements, an unknown table or column", body = crate::openapi::ErrorBody),
        (status = 401, description = "No valid bearer token", body = crate::openapi::ErrorBody),
        (status = 403, description = "Not a query (read_only), not a lake table (table_not_allowed), or the token lacks sql:query", body = crate::openapi::ErrorBody),
        (status = 408, description = "The query ran past api.sql_timeout", body = crate::openapi::ErrorBody),
        (status = 413, description = "The body is larger than api.max_body_bytes", body = crate::openapi::ErrorBody),
        (status = 415, description = "The body is not application/json", body = crate::openapi::ErrorBody),
        (status = 422, description = "A body that does not match, or the query hit its memory or row limit, or failed", body = crate::openapi::ErrorBody),
        (status = 429, description = "Rate limit reached (see Retry-After)", body = crate::openapi::ErrorBody)))]
pub async fn sql(State(s): State<AppState>, p: Principal, headers: HeaderMap, Json(req): Json<SqlRequest>) -> Result<Response> {
    p.require(Scope::SqlQuery)?;
    let format = req.format.unwrap_or_else(|| Format::from_accept(&headers));
    let limits = &s.limits;
    // On the SQL runtime, so a heavy query never starves the API's own workers and the time
    // limit answers on time; the task is aborted (its streams dropped) when the limit passes.
    let task = sql_runtime().spawn({
        let s = s.clone();
        async move { run(&s, &req.sql).await }
    });
    let abort = task.abort_handle();
    let batches = match tokio::time::timeout(limits.sql_timeout, task).await {
        Ok(Ok(r)) => r?,
        Ok(Err(e)) => return Err(ApiError::internal(format!("the query task failed: {e}"))),
        Err(_) => {
            abort.abort();
            return Err(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "query_timeout",
                format!("the query ran longer than the limit of {:?} (config key `api.sql_timeout`)", limits.sql_timeout),
            )
            .with_details(json!({"timeout_ms": limits.sql_timeout.as_millis() as u64})));
        }
    };
    let body = encode(&batches, format)?;
    metrics::counter!("campo_api_sql_queries_total", "format" => format!("{format:?}").to_lowercase()).increment(1);
    Ok(([(header::CONTENT_TYPE, format.content_type())], body).into_response())
}

/// The runtime `POST /v1/sql` queries and the live view's refreshes run on: two worker threads
/// of their own (as DataFusion advises for CPU-bound work beside network I/O), so no query
/// holds up the workers that answer requests.
pub(crate) fn sql_runtime() -> &'static tokio::runtime::Handle {
    static RT: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("campo-sql")
            .enable_all()
            .build()
            .expect("the SQL runtime starts")
    })
    .handle()
}

/// A guard's refusal as an API error: 403 for what is not allowed, 400 for what is wrong.
fn refusal(r: Refusal) -> ApiError {
    let details = match &r {
        Refusal::ReadOnly(what) => json!({"statement": what}),
        Refusal::NotALakeTable(t) | Refusal::UnknownTable(t) => json!({"table": t, "tables": guard::table_names()}),
        Refusal::Syntax(_) | Refusal::Empty => return invalid(r),
    };
    let status = match r {
        Refusal::UnknownTable(_) => StatusCode::BAD_REQUEST,
        _ => StatusCode::FORBIDDEN,
    };
    ApiError::new(status, r.code(), r.to_string()).with_details(details)
}

fn invalid(e: impl std::fmt::Display) -> ApiError {
    let text = e.to_string();
    let text = text.strip_prefix("Error during planning: ").unwrap_or(&text).to_string();
    ApiError::bad_request("invalid_sql", text)
}

/// Checks, plans and runs `sql`; its batches, within the row cap.
async fn run(s: &AppState, sql: &str) -> Result<Vec<RecordBatch>> {
    let limits = &s.limits;
    let mut statements = guard::parse(sql).map_err(refusal)?;
    let statement = match statements.len() {
        0 => return Err(refusal(Refusal::Empty)),
        1 => statements.pop().expect("one statement"),
        n => {
            return Err(ApiError::bad_request("multiple_statements", format!("one query per request; this has {n} statements"))
                .with_details(json!({"statements": n})));
        }
    };
    guard::check_statement(&statement, Allow::default()).map_err(refusal)?;

    let config = SessionConfig::new().with_information_schema(false);
    // No spilling: an API query writes no temporary files, and its memory limit is a limit.
    let runtime = RuntimeEnvBuilder::new()
        .with_memory_limit(limits.sql_memory_bytes, 1.0)
        .with_disk_manager_builder(DiskManagerBuilder::default().with_mode(DiskManagerMode::Disabled))
        .build_arc()
        .map_err(ApiError::internal)?;
    let ctx = SessionContext::new_with_config_rt(config, runtime);
    let kinds = guard::lake_tables(&ctx.state(), &statement).map_err(refusal)?;
    s.lake.register_into(&ctx, &kinds, &[]).await?;
    for kind in &kinds {
        if !ctx.table_exist(kind.name()).map_err(ApiError::internal)? {
            return Err(ApiError::bad_request("unknown_table", format!("table {:?} has no data in this lake yet", kind.name()))
                .with_details(json!({"table": kind.name(), "tables": guard::table_names()})));
        }
    }
    let plan = ctx.state().statement_to_plan(statement).await.map_err(invalid)?;
    guard::verify_plan(&plan, Allow::default()).map_err(refusal)?;
    let df = ctx.execute_logical_plan(plan).await.map_err(|e| exec_error(e, limits))?;
    let mut stream = df.execute_stream().await.map_err(|e| exec_error(e, limits))?;
    let (mut batches, mut rows) = (Vec::new(), 0usize);
    while let Some(b) = stream.next().await {
        let b = b.map_err(|e| exec_error(e, limits))?;
        rows += b.num_rows();
        if rows > limits.sql_max_rows {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "row_limit_exceeded",
                format!(
                    "the answer has more than {} rows (config key `api.sql_max_rows`); add a LIMIT or aggregate",
                    limits.sql_max_rows
                ),
            )
            .with_details(json!({"max_rows": limits.sql_max_rows})));
        }
        batches.push(b);
    }
    if batches.is_empty() {
        batches.push(RecordBatch::new_empty(stream.schema()));
    }
    Ok(batches)
}

fn exec_error(e: DataFusionError, limits: &crate::Limits) -> ApiError {
    if matches!(e.find_root(), DataFusionError::ResourcesExhausted(_)) {
        return ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "memory_limit_exceeded",
            format!(
                "the query needs more than its memory limit of {} MiB (config key `api.sql_memory_mb`)",
                limits.sql_memory_bytes >> 20
            ),
        )
        .with_details(json!({"memory_limit_bytes": limits.sql_memory_bytes, "cause": e.find_root().to_string()}));
    }
    match e.find_root() {
        DataFusionError::Plan(_) | DataFusionError::SchemaError(..) | DataFusionError::NotImplemented(_) => invalid(e),
        DataFusionError::ArrowError(..) | DataFusionError::Execution(_) => {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "query_failed", e.find_root().to_string())
        }
        _ => ApiError::internal(e),
    }
}

/// The batches in the asked format.
fn encode(batches: &[RecordBatch], format: Format) -> Result<Bytes> {
    use campo_lake::arrow;
    let refs: Vec<&RecordBatch> = batches.iter().collect();
    let out = match format {
        Format::Json => {
            let schema = batches[0].schema();
            let columns: Vec<_> =
                schema.fields().iter().map(|f| json!({"name": f.name(), "type": f.data_type().to_string()})).collect();
            let n: usize = batches.iter().map(RecordBatch::num_rows).sum();
            let rows = if n == 0 {
                b"[]".to_vec()
            } else {
                let mut w = arrow::json::ArrayWriter::new(Vec::new());
                w.write_batches(&refs).map_err(ApiError::internal)?;
                w.finish().map_err(ApiError::internal)?;
                w.into_inner()
            };
            let head = serde_json::to_string(&json!({"columns": columns, "row_count": n})).map_err(ApiError::internal)?;
            // {"columns":[...],"row_count":n,"rows":[...]}
            let mut body = head.into_bytes();
            body.pop();
            body.extend_from_slice(b",\"rows\":");
            body.extend_from_slice(&rows);
            body.push(b'}');
            body
        }
        Format::Ndjson => {
            let mut w = arrow::json::LineDelimitedWriter::new(Vec::new());
            w.write_batches(&refs).map_err(ApiError::internal)?;
            w.finish().map_err(ApiError::internal)?;
            w.into_inner()
        }
        Format::Csv => {
            let mut w = arrow::csv::WriterBuilder::new().with_header(true).build(Vec::new());
            for b in batches {
                w.write(b).map_err(ApiError::internal)?;
            }
            w.into_inner()
        }
        Format::Arrow => {
            let schema = batches[0].schema();
            let mut w = arrow::ipc::writer::StreamWriter::try_new(Vec::new(), &schema).map_err(ApiError::internal)?;
            for b in batches {
                w.write(b).map_err(ApiError::internal)?;
            }
            w.finish().map_err(ApiError::internal)?;
            w.into_inner().map_err(ApiError::internal)?
        }
    };
    Ok(Bytes::from(out))
}
