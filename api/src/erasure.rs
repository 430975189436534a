//! `POST /v1/erasure` (scope `admin`): erases users as `campo forget` does (SPEC 8), and
//! answers once they are verifiably gone: every row deleted from every table that holds user
//! rows, the files and log history that held them deleted, the request recorded in
//! `erasures` with keyed hashes only.

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::AppState;
use crate::auth::{Principal, Scope};
use crate::error::{ApiError, Result};

/// At most this many users in one request.
const MAX_USERS: usize = 1000;

/// Files no log entry names are deleted once older than this (a younger one may be an ingest
/// commit in progress).
const ORPHAN_GRACE: std::time::Duration = std::time::Duration::from_secs(3600);

/// The request body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ErasureRequest {
    /// The `user_hash` values to erase (1 to 1000, none empty).
    pub user_hashes: Vec<String>,
}

/// What the erasure did.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErasureDone {
    pub request_id: String,
    pub users: usize,
    pub requested_at: String,
    pub completed_at: String,
    /// Rows deleted per table.
    pub rows: std::collections::BTreeMap<String, u64>,
    pub files_removed: u64,
    pub log_entries_scrubbed: u64,
    pub elapsed_ms: u64,
}

/// `POST /v1/erasure` (scope `admin`).
#[utoipa::path(post, path = "/v1/erasure", tag = "operations", security(("bearer" = [])), request_body = ErasureRequest,
    responses(
        (status = 200, description = "The users are erased", body = ErasureDone),
        (status = 400, description = "No user, an empty one, or too many", body = crate::openapi::ErrorBody),
        (status = 401, description = "No valid bearer token", body = crate::openapi::ErrorBody),
        (status = 403, description = "The token lacks admin", body = crate::openapi::ErrorBody),
        (status = 413, description = "The body is larger than api.max_body_bytes", body = crate::openapi::ErrorBody),
        (status = 415, description = "The body is not application/json", body = crate::openapi::ErrorBody),
        (status = 422, description = "A body that does not match", body = crate::openapi::ErrorBody),
        (status = 429, description = "Rate limit reached (see Retry-After)", body = crate::openapi::ErrorBody),
        (status = 503, description = "The lake has no key directory for erasures", body = crate::openapi::ErrorBody)))]
pub async fn erasure(State(s): State<AppState>, p: Principal, Json(req): Json<ErasureRequest>) -> Result<Json<ErasureDone>> {
    p.require(Scope::Admin)?;
    let users = req.user_hashes;
    if users.is_empty() || users.len() > MAX_USERS || users.iter().any(|u| u.trim().is_empty()) {
        return Err(ApiError::bad_request(
            "invalid_request",
            format!("user_hashes must hold 1 to {MAX_USERS} non-empty values (it held {})", users.len()),
        )
        .with_details(json!({"max_users": MAX_USERS})));
    }
    let keys = s.erasure_keys.clone().ok_or_else(|| {
        ApiError::unavailable("erasure needs the lake's key directory (config key `lifecycle.keys_dir`)")
    })?;
    // On the SQL runtime: the DELETEs are CPU-bound work that must not hold up other answers.
    let lake = s.lake.clone();
    let r = crate::sql::sql_runtime()
        .spawn(async move { lake.forget(&users, &keys, ORPHAN_GRACE).await })
        .await
        .map_err(|e| ApiError::internal(format!("the erasure task failed: {e}")))?
        .map_err(ApiError::internal)?;
    tracing::info!(request_id = r.request_id, subject = p.claims.sub, users = r.users, "erasure by API");
    metrics::counter!("campo_erasures_total").increment(1);
    Ok(Json(ErasureDone {
        request_id: r.request_id,
        users: r.users,
        requested_at: r.requested_at,
        completed_at: r.completed_at,
        rows: r.rows.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
        files_removed: r.files_removed,
        log_entries_scrubbed: r.log_entries_scrubbed,
        elapsed_ms: r.elapsed_ms,
    }))
}
