//! Erasure of users (SPEC 8): what `campo forget` and `POST /v1/erasure` run.
//!
//! An erasure of some `user_hash` values:
//! 1. records the request in `erasures`: a request id, and for each user only a keyed hash
//!    (HMAC-SHA256 with the lake's erasure key, which lives outside the lake) and a keyed
//!    64-bit fingerprint. From then on the ingest drops every record of those users that
//!    occurred at or before the request, a replay of the topic included ([`ErasedUsers`]);
//! 2. deletes their rows from `readings` and `activity` (by `user_hash`) and from `rejected`
//!    (rows whose raw `record` mentions them), under the lake's maintenance lock, again until
//!    none is left: an ingest commit racing the first DELETE is caught by the next, and every
//!    ingest commit after a DELETE re-checks the erased users first (`TableWriter::fence`);
//! 3. deletes the files that held them: every file the latest version no longer references
//!    (vacuum with no retention, whatever the normal one), and files no log entry names once
//!    they are older than `orphan_grace` (a file younger than that may be an ingest commit in
//!    progress);
//! 4. removes the log history: a checkpoint of the latest version, then every log entry and
//!    checkpoint before it, because the per-file statistics of old commits (the min and max of
//!    `user_hash`, of `record`) can carry the identifier. Time travel to before the erasure
//!    goes with them, as it must;
//! 5. records completion: the time, the rows removed per table and the files deleted.
//!
//! The predicates are functions (`campo_erased(user_hash)`, `campo_mentions_erased(record)`)
//! that hold the identifiers in memory, so the commit log records their names, never a user.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use deltalake::arrow::array::{
    ArrayRef, AsArray, BooleanArray, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use deltalake::arrow::datatypes::{DataType, TimestampMicrosecondType};
use deltalake::datafusion::common::ScalarValue;
use deltalake::datafusion::logical_expr::{Expr, col, lit};
use rustc_hash::FxHashMap;

use crate::error::{LakeError, Result, delta};
use crate::lake::{Lake, TableKind};
use crate::lifecycle::{PeriodKeys, pseudonym};
use crate::writer::{CommitOutcome, TableCommit, TableWriter};

/// The lake's erasure key: names a user in `erasures` without naming them in clear.
#[derive(Debug, Clone)]
pub struct ErasureKey {
    key: [u8; 32],
    seed: u64,
}

impl ErasureKey {
    pub fn new(key: [u8; 32]) -> Self {
        let derived = pseudonym(&key, "campo-erasure-fingerprint");
        let seed = u64::from_str_radix(&derived[..16], 16).expect("HMAC hex");
        Self { key, seed }
    }

    /// HMAC-SHA256(key, user_hash), hex: what `erasures.user_key` holds.
    pub fn user_key(&self, user_hash: &str) -> String {
        pseudonym(&self.key, user_hash)
    }

    /// A keyed 64-bit fingerprint (XXH3 with a seed derived from the key): cheap enough to
    /// look up for every ingested row; a hit is confirmed with [`ErasureKey::user_key`].
    pub fn fingerprint(&self, user_hash: &str) -> i64 {
        xxhash_rust::xxh3::xxh3_64_with_seed(user_hash.as_bytes(), self.seed) as i64
    }
}

/// The users erased so far, as the ingest checks its rows against them.
#[derive(Debug, Clone, Default)]
pub struct ErasedUsers {
    key: Option<Arc<ErasureKey>>,
    /// Fingerprint -> (user key, when the erasure was requested, µs).
    by_fp: FxHashMap<i64, Vec<(String, i64)>>,
}

/// Separators around an identifier in a raw record (JSON punctuation, quotes, white space).
fn is_separator(c: char) -> bool {
    c.is_whitespace() || matches!(c, '"' | '\'' | '{' | '}' | '[' | ']' | ',' | ':' | ';' | '=' | '\\' | '(' | ')' | '<' | '>')
}

impl ErasedUsers {
    pub fn len(&self) -> usize {
        self.by_fp.values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.by_fp.is_empty()
    }

    /// When the user was last asked to be erased (µs), if ever.
    pub fn erased_at(&self, user_hash: &str) -> Option<i64> {
        let key = self.key.as_ref()?;
        let entries = self.by_fp.get(&key.fingerprint(user_hash))?;
        let user_key = key.user_key(user_hash);
        entries.iter().filter(|(k, _)| *k == user_key).map(|(_, t)| *t).max()
    }

    /// Whether a raw record mentions an erased user: any of its words (split at JSON
    /// punctuation, quotes and white space) is one.
    pub fn mentioned_in(&self, text: &str) -> bool {
        !self.is_empty() && text.split(is_separator).any(|w| !w.is_empty() && self.erased_at(w).is_some())
    }

    /// Removes from a `readings` or `activity` batch the rows of erased users that occurred at
    /// or before their erasure; returns the batch left and how many rows went.
    pub fn filter_bronze(&self, batch: &RecordBatch) -> Result<(RecordBatch, usize)> {
        if self.is_empty() || batch.num_rows() == 0 {
            return Ok((batch.clone(), 0));
        }
        let users = string_column(batch, "user_hash")?;
        let at = batch
            .column_by_name("occurred_at")
            .and_then(|c| c.as_primitive_opt::<TimestampMicrosecondType>())
            .ok_or_else(|| LakeError::Erasure("the batch has no occurred_at timestamp column".into()))?;
        let keep: BooleanArray = (0..batch.num_rows())
            .map(|i| Some(!self.erased_at(users.value(i)).is_some_and(|t| at.value(i) <= t)))
            .collect();
        filtered(batch, &keep)
    }

    /// Removes from a `rejected` batch the rows whose raw record mentions an erased user.
    pub fn filter_rejected(&self, batch: &RecordBatch) -> Result<(RecordBatch, usize)> {
        if self.is_empty() || batch.num_rows() == 0 {
            return Ok((batch.clone(), 0));
        }
        let records = string_column(batch, "record")?;
        let keep: BooleanArray = (0..batch.num_rows()).map(|i| Some(!self.mentioned_in(records.value(i)))).collect();
        filtered(batch, &keep)
    }
}

fn string_column<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a StringArray> {
    batch
        .column_by_name(name)
        .and_then(|c| c.as_string_opt::<i32>())
        .ok_or_else(|| LakeError::Erasure(format!("the batch has no {name} string column")))
}

fn filtered(batch: &RecordBatch, keep: &BooleanArray) -> Result<(RecordBatch, usize)> {
    let kept = keep.true_count();
    if kept == batch.num_rows() {
        return Ok((batch.clone(), 0));
    }
    let out = deltalake::arrow::compute::filter_record_batch(batch, keep)
        .map_err(|e| LakeError::Erasure(format!("filtering a batch: {e}")))?;
    Ok((out, batch.num_rows() - kept))
}

/// What an erasure did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ErasureReport {
    pub request_id: String,
    pub users: usize,
    pub requested_at: String,
    pub completed_at: String,
    /// Rows deleted, per table.
    pub rows: BTreeMap<&'static str, u64>,
    /// Data files deleted from storage (those that held the rows, and older unreferenced ones).
    pub files_removed: u64,
    /// Log entries rewritten without the identifiers, and older checkpoints deleted.
    pub log_entries_scrubbed: u64,
    /// DELETE passes until no row was left (more than one when an ingest commit raced).
    pub delete_passes: u32,
    pub elapsed_ms: u64,
}

fn ts_lit(us: i64) -> Expr {
    lit(ScalarValue::TimestampMicrosecond(Some(us), Some("UTC".into())))
}

fn iso(us: i64) -> String {
    chrono::DateTime::from_timestamp_micros(us).unwrap_or_default().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

impl Lake {
    /// The users erased in this lake, for the ingest. An `erasures` table with rows but no
    /// erasure key in `keys` is an error: those erasures could not be enforced.
    pub async fn erased_users(&self, keys: &PeriodKeys) -> Result<ErasedUsers> {
        let name = TableKind::Erasures.name();
        if self.open(name).await.is_err() {
            return Ok(ErasedUsers::default());
        }
        let ctx = self.session_of(&[TableKind::Erasures]).await?;
        let q = |source| LakeError::Query { table: name.into(), source };
        let batches = ctx
            .sql("SELECT user_key, user_fp, CAST(requested_at AS BIGINT) FROM erasures")
            .await
            .map_err(q)?
            .collect()
            .await
            .map_err(q)?;
        let mut out = ErasedUsers::default();
        for b in &batches {
            use deltalake::arrow::datatypes::Int64Type;
            // Strings may come back as views: cast to plain Utf8.
            let user_key = deltalake::arrow::compute::cast(b.column(0), &DataType::Utf8)
                .map_err(|e| LakeError::Erasure(format!("reading erasures: {e}")))?;
            let (user_key, fp, at) = (user_key.as_string::<i32>(), b.column(1).as_primitive::<Int64Type>(), b.column(2).as_primitive::<Int64Type>());
            for i in 0..b.num_rows() {
                out.by_fp.entry(fp.value(i)).or_default().push((user_key.value(i).to_string(), at.value(i)));
            }
        }
        if !out.is_empty() {
            let key = keys.erasure_key(false)?.ok_or_else(|| {
                LakeError::Erasure(format!(
                    "the lake records {} erased users but the erasure key is missing from {}: they cannot be \
                     recognized; restore erasure.key there (it is never rotated)",
                    out.len(),
                    keys.dir().display()
                ))
            })?;
            out.key = Some(Arc::new(ErasureKey::new(key)));
        }
        Ok(out)
    }

    /// The latest version of `erasures`, `None` when the lake has none (cheap enough to poll).
    pub async fn erasures_version(&self) -> Option<u64> {
        self.open(TableKind::Erasures.name()).await.ok().and_then(|t| t.version()).map(|v| v as u64)
    }

    /// Erases the users: see the module documentation for the steps.
    pub async fn forget(&self, users: &[String], keys: &PeriodKeys, orphan_grace: Duration) -> Result<ErasureReport> {
        let started = Instant::now();
        let users: Vec<String> = users.iter().map(|u| u.trim().to_string()).collect::<BTreeSet<_>>().into_iter().collect();
        if users.is_empty() || users.iter().any(String::is_empty) {
            return Err(LakeError::Erasure("no user_hash given (an empty one is not a user)".into()));
        }
        let key = ErasureKey::new(keys.erasure_key(true)?.expect("created when missing"));
        let request_id = uuid::Uuid::new_v4().to_string();
        let requested_at = Utc::now().timestamp_micros();

        // 1. The request: from here on the ingest drops these users' records.
        self.open_or_create(TableKind::Erasures).await?;
        let n = users.len();
        let none_i64 = || Arc::new(Int64Array::from(vec![None::<i64>; n])) as ArrayRef;
        let request = RecordBatch::try_new(
            TableKind::Erasures.schema(),
            vec![
                Arc::new(StringArray::from(vec![request_id.as_str(); n])),
                Arc::new(StringArray::from(users.iter().map(|u| key.user_key(u)).collect::<Vec<_>>())),
                Arc::new(Int64Array::from(users.iter().map(|u| key.fingerprint(u)).collect::<Vec<_>>())),
                Arc::new(TimestampMicrosecondArray::from(vec![requested_at; n]).with_timezone("UTC")),
                Arc::new(TimestampMicrosecondArray::from(vec![None::<i64>; n]).with_timezone("UTC")),
                none_i64(),
                none_i64(),
                none_i64(),
                none_i64(),
            ],
        )
        .map_err(|e| LakeError::Erasure(format!("building the request rows: {e}")))?;
        let mut w = TableWriter::open(self, TableKind::Erasures, "erasure").await?;
        match w.commit(&TableCommit { batches: vec![request], txns: Vec::new() }).await? {
            CommitOutcome::Committed { .. } => {}
            other => return Err(LakeError::Erasure(format!("recording the request: {other:?}"))),
        }
        tracing::info!(request_id, users = n, "erasure requested");

        // 2. The rows, 3. the files, 4. the log history: under the maintenance lock.
        let lock = self.exclusive().await?;
        // Built-in predicates: delta-rs re-parses a DELETE's predicate with a plain session
        // when an ingest commit races it, so campo's own functions cannot appear there (and
        // `IN` lets the file statistics skip most files). The DELETE commits name the users;
        // step 4 removes them with the rest of the history.
        let by_user = col("user_hash").in_list(users.iter().map(|u| lit(u.as_str())).collect(), false);
        let by_record = users
            .iter()
            .map(|u| deltalake::datafusion::functions::unicode::expr_fn::strpos(col("record"), lit(u.as_str())).gt(lit(0i64)))
            .reduce(Expr::or)
            .expect("at least one user");
        let mut rows = BTreeMap::new();
        let mut passes = 0;
        let mut files_removed = 0u64;
        let mut log_entries_scrubbed = 0u64;
        for kind in TableKind::USER_ROWS {
            if self.open(kind.name()).await.is_err() {
                continue;
            }
            let (predicate, left) = if kind == TableKind::Rejected {
                (by_record.clone(), by_record.clone())
            } else {
                // Rows that occurred after the request are the user's new activity, not what
                // was asked to be erased (and an ingest may be writing them right now).
                (by_user.clone(), by_user.clone().and(col("occurred_at").lt_eq(ts_lit(requested_at))))
            };
            let mut deleted = 0;
            for pass in 1..=10u32 {
                deleted += self.delete_locked(&lock, kind, predicate.clone()).await?;
                passes = passes.max(pass);
                let remaining = self.count_where(kind, left.clone()).await?;
                if remaining == 0 {
                    break;
                }
                if pass == 10 {
                    return Err(LakeError::Erasure(format!(
                        "{}: {remaining} rows of the users are still there after 10 DELETE passes",
                        kind.name()
                    )));
                }
                tracing::info!(table = kind.name(), remaining, "rows committed during the erasure; deleting again");
            }
            rows.insert(kind.name(), deleted);
            files_removed += self.vacuum_locked(&lock, kind, Duration::ZERO, false, false).await?.files_deleted as u64;
            files_removed += self.vacuum_locked(&lock, kind, orphan_grace, false, true).await?.files_deleted as u64;
            log_entries_scrubbed += self.scrub_history(kind, &users).await?;
            self.check_log_clean(kind, &users).await?;
        }
        drop(lock);

        // 5. Completion.
        let completed_at = Utc::now().timestamp_micros();
        let table = self.open(TableKind::Erasures.name()).await?;
        let count = |t: TableKind| lit(rows.get(t.name()).copied().unwrap_or(0) as i64);
        table
            .update()
            .with_predicate(col("request_id").eq(lit(request_id.as_str())))
            .with_update("completed_at", ts_lit(completed_at))
            .with_update("readings_rows", count(TableKind::Readings))
            .with_update("activity_rows", count(TableKind::Activity))
            .with_update("rejected_rows", count(TableKind::Rejected))
            .with_update("files_removed", lit(files_removed as i64))
            .with_writer_properties(crate::writer::writer_properties())
            .await
            .map_err(delta(TableKind::Erasures.name()))?;
        let report = ErasureReport {
            request_id,
            users: n,
            requested_at: iso(requested_at),
            completed_at: iso(completed_at),
            rows,
            files_removed,
            log_entries_scrubbed,
            delete_passes: passes,
            elapsed_ms: started.elapsed().as_millis() as u64,
        };
        tracing::info!(request_id = report.request_id, rows = ?report.rows, files = files_removed, elapsed_ms = report.elapsed_ms, "erasure completed");
        Ok(report)
    }

    /// Rows of a table matching `predicate` (at its latest version).
    async fn count_where(&self, kind: TableKind, predicate: Expr) -> Result<u64> {
        let ctx = self.session_of(&[kind]).await?;
        let q = |source| LakeError::Query { table: kind.name().into(), source };
        let n = ctx.table(kind.name()).await.map_err(q)?.filter(predicate).map_err(q)?.count().await.map_err(q)?;
        Ok(n as u64)
    }

    /// Fails when a log entry left still holds one of the identifiers.
    async fn check_log_clean(&self, kind: TableKind, users: &[String]) -> Result<()> {
        use deltalake::logstore::object_store::ObjectStoreExt;
        use futures_util::TryStreamExt;
        let name = kind.name();
        let table = self.open(name).await?;
        let store = table.log_store().object_store(None);
        let files: Vec<_> = store.list(Some(&deltalake::Path::from("_delta_log"))).try_collect().await.map_err(|e| delta(name)(e.into()))?;
        for f in files {
            let bytes = store.get(&f.location).await.map_err(|e| delta(name)(e.into()))?.bytes().await.map_err(|e| delta(name)(e.into()))?;
            if mentions_any(&bytes, users) {
                return Err(LakeError::Erasure(format!("{name}: the log entry {} still names an erased user; run the erasure again", f.location)));
            }
        }
        Ok(())
    }

    /// Checkpoints the latest version, deletes every older checkpoint, and rewrites every log
    /// entry up to that version that names one of `users` without its file statistics and
    /// operation parameters (where the identifiers are); returns how many files went or were
    /// rewritten. Checked twice, a second apart: a writer's checkpoint of an older version
    /// finishing meanwhile is removed again, and the latest checkpoint rewritten.
    ///
    /// The entries are rewritten, not deleted: a writer whose view of the table predates the
    /// erasure writes its next entry at the version after the last one it saw, and only an
    /// occupied version turns it away (Delta's put-if-absent). A deleted entry would let that
    /// commit land below the checkpoint, where no reader looks: its rows and its offsets
    /// would be lost while the writer believed them committed.
    async fn scrub_history(&self, kind: TableKind, users: &[String]) -> Result<u64> {
        use deltalake::logstore::object_store::ObjectStoreExt;
        use futures_util::TryStreamExt;
        let name = kind.name();
        let err = |e: deltalake::logstore::object_store::Error| delta(name)(e.into());
        let mut touched = 0;
        // Entries up to a round's version are scrubbed by it (and occupied: none is written
        // again), so the next round reads only the newer ones.
        let mut scrubbed_through = None;
        for round in 0..2 {
            if round > 0 {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            let table = self.open(name).await?;
            let version = table.version().unwrap_or(0) as u64;
            deltalake::checkpoints::create_checkpoint(&table, None).await.map_err(delta(name))?;
            let store = table.log_store().object_store(None);
            let log = deltalake::Path::from("_delta_log");
            let files: Vec<_> = store.list(Some(&log)).try_collect().await.map_err(err)?;
            for f in files {
                let file = f.location.filename().unwrap_or_default();
                let Some(v) = file.get(..20).filter(|d| d.bytes().all(|b| b.is_ascii_digit())).and_then(|d| d.parse::<u64>().ok()) else {
                    continue;
                };
                if file.ends_with(".json") && v <= version && scrubbed_through.is_none_or(|s| v > s) {
                    let bytes = store.get(&f.location).await.map_err(err)?.bytes().await.map_err(err)?;
                    if mentions_any(&bytes, users) {
                        let scrubbed = scrub_log_entry(&bytes).map_err(|e| LakeError::Erasure(format!("{name}: rewriting {}: {e}", f.location)))?;
                        store.put(&f.location, scrubbed.into()).await.map_err(err)?;
                        touched += 1;
                    }
                } else if !file.ends_with(".json") && v < version {
                    store.delete(&f.location).await.map_err(err)?;
                    touched += 1;
                }
            }
            scrubbed_through = Some(version);
        }
        Ok(touched)
    }
}

fn mentions_any(bytes: &[u8], users: &[String]) -> bool {
    users.iter().any(|u| bytes.windows(u.len()).any(|w| w == u.as_bytes()))
}

/// A log entry without what can carry a user identifier: the statistics of its files (the
/// min and max of `user_hash`, of `record`) and the parameters of its operation (a DELETE's
/// predicate). Every action stays, so the entry still describes the same version.
fn scrub_log_entry(bytes: &[u8]) -> std::result::Result<Vec<u8>, serde_json::Error> {
    let mut out = Vec::with_capacity(bytes.len());
    for line in bytes.split(|&b| b == b'\n').filter(|l| !l.iter().all(u8::is_ascii_whitespace)) {
        let mut action: serde_json::Value = serde_json::from_slice(line)?;
        if let Some(obj) = action.as_object_mut() {
            for (kind, body) in obj.iter_mut() {
                let Some(body) = body.as_object_mut() else { continue };
                match kind.as_str() {
                    "add" | "remove" | "cdc" => {
                        body.remove("stats");
                        body.remove("stats_parsed");
                    }
                    "commitInfo" => {
                        if body.remove("operationParameters").is_some() {
                            body.insert("operationParameters".into(), serde_json::json!({"scrubbed": "erasure"}));
                        }
                    }
                    _ => {}
                }
            }
        }
        serde_json::to_writer(&mut out, &action)?;
        out.push(b'\n');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_and_rows_of_erased_users_are_recognized_and_no_others() {
        let key = ErasureKey::new([3u8; 32]);
        let mut erased = ErasedUsers { key: Some(Arc::new(key.clone())), ..Default::default() };
        erased.by_fp.entry(key.fingerprint("u_gone")).or_default().push((key.user_key("u_gone"), 1_000));
        assert_eq!(erased.erased_at("u_gone"), Some(1_000));
        assert_eq!(erased.erased_at("u_stays"), None);
        assert!(erased.mentioned_in(r#"{"user_hash":"u_gone","hz":"x"}"#));
        assert!(erased.mentioned_in("garbage u_gone more"));
        assert!(!erased.mentioned_in(r#"{"user_hash":"u_gone2"}"#));
        assert!(!ErasedUsers::default().mentioned_in("u_gone"));
        // A fingerprint collision without the same HMAC is not a match.
        erased.by_fp.entry(key.fingerprint("u_other")).or_default().push(("not its key".into(), 1_000));
        assert_eq!(erased.erased_at("u_other"), None);
    }

    /// Rejected rows whose raw record names `user`.
    fn rejected_of(user: &str, offsets: &[i64], expected: Option<i64>) -> TableCommit {
        let mut c = crate::writer::tests::commit(offsets, expected);
        let b = &c.batches[0];
        let mut columns = b.columns().to_vec();
        columns[7] = Arc::new(StringArray::from(vec![format!("{{\"user_hash\":\"{user}\"}}"); offsets.len()]));
        c.batches[0] = RecordBatch::try_new(b.schema(), columns).unwrap();
        c
    }

    async fn rows(lake: &Lake) -> usize {
        let ctx = lake.session_of(&[TableKind::Rejected]).await.unwrap();
        ctx.table("rejected").await.unwrap().count().await.unwrap()
    }

    /// A writer whose view of the table predates the erasure commits after it: its entry must
    /// land where readers see it (the erasure keeps every version occupied), not below the
    /// erasure's checkpoint with its rows and offsets lost.
    #[tokio::test]
    async fn a_writer_behind_an_erasure_commits_where_readers_see_it() {
        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::new(dir.path().join("lake").to_str().unwrap(), Default::default()).unwrap();
        let keys = PeriodKeys::open(dir.path().join("keys"), &lake).unwrap();
        let mut w = crate::TableWriter::open(&lake, TableKind::Rejected, "p").await.unwrap();
        for (user, offsets, expected) in [("u_gone", [0, 1, 2], None), ("u_stays", [3, 4, 5], Some(2))] {
            assert!(matches!(w.commit(&rejected_of(user, &offsets, expected)).await.unwrap(), CommitOutcome::Committed { .. }));
        }
        let report = lake.forget(&["u_gone".into()], &keys, Duration::ZERO).await.unwrap();
        assert_eq!(report.rows.get("rejected"), Some(&3));
        assert!(report.log_entries_scrubbed > 0, "the DELETE's entry names the user: {report:?}");
        assert_eq!(rows(&lake).await, 3);

        let outcome = w.commit(&rejected_of("u_new", &[6, 7], Some(5))).await.unwrap();
        assert!(matches!(outcome, CommitOutcome::Committed { .. }), "{outcome:?}");
        assert_eq!(rows(&lake).await, 5, "the stale writer's rows are visible");
        let mut fresh = crate::TableWriter::open(&lake, TableKind::Rejected, "p").await.unwrap();
        assert_eq!(fresh.txn_version("t", 0).await.unwrap(), Some(7), "and so are its offsets");
        // The scrubbed history still loads: every version up to the latest.
        let latest = lake.open("rejected").await.unwrap().version().unwrap() as u64;
        for v in 0..=latest {
            lake.open_at("rejected", v).await.unwrap_or_else(|e| panic!("version {v}: {e}"));
        }
    }

    #[test]
    fn a_scrubbed_log_entry_keeps_its_actions_and_loses_statistics_and_parameters() {
        let entry = concat!(
            r#"{"commitInfo":{"operation":"DELETE","operationParameters":{"predicate":"user_hash IN ('u_gone')"},"readVersion":3}}"#, "\n",
            r#"{"add":{"path":"a.parquet","size":10,"partitionValues":{},"dataChange":true,"stats":"{\"minValues\":{\"user_hash\":\"u_gone\"}}"}}"#, "\n",
            r#"{"remove":{"path":"b.parquet","dataChange":true,"deletionTimestamp":1}}"#, "\n",
            r#"{"txn":{"appId":"p-t-0","version":7}}"#, "\n",
        );
        let out = String::from_utf8(scrub_log_entry(entry.as_bytes()).unwrap()).unwrap();
        assert!(!out.contains("u_gone"), "{out}");
        let actions: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(actions.len(), 4);
        assert_eq!(actions[0]["commitInfo"]["readVersion"], 3);
        assert_eq!(actions[1]["add"]["path"], "a.parquet");
        assert_eq!(actions[2]["remove"]["path"], "b.parquet");
        assert_eq!(actions[3]["txn"]["version"], 7);
    }
}
