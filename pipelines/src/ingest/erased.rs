//! Erased users in the ingest (SPEC 8): a record of a user erased after it occurred never
//! lands in the lake again, whether it is read for the first time, re-read after a crash, or
//! replayed from the start of the topic.
//!
//! The writer checks every flush against the users recorded in `erasures` just before
//! committing it: bronze rows of an erased user that occurred at or before the erasure, and
//! `rejected` rows (and their DLQ messages) whose raw record mentions one, are dropped and
//! counted as `erased`. The set is re-read when `erasures` moves (polled every couple of
//! seconds) and whenever a bronze commit finds that another writer committed first
//! (`TableWriter::fence`): an erasure's DELETE is such a commit, so no commit of this ingest
//! lands after it unchecked.

use std::time::{Duration, Instant};

use campo_lake::arrow::array::{AsArray, BooleanArray};
use campo_lake::erasure::ErasedUsers;
use campo_lake::lifecycle::PeriodKeys;
use campo_lake::{LakeError, TableCommit};

use crate::contract::Reason;

use super::{Flush, Shared};

/// How often the writer looks for a new erasure (besides at every fenced commit).
const POLL: Duration = Duration::from_secs(2);

pub(crate) struct ErasureGuard {
    keys: Option<PeriodKeys>,
    erased: ErasedUsers,
    version: Option<u64>,
    polled: Instant,
}

/// Which table of a flush to check.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Part {
    Readings,
    Activity,
    Rejected,
}

impl ErasureGuard {
    /// Reads the erased users; an unusable key directory is an error only once the lake has
    /// erasures to enforce.
    pub async fn open(shared: &Shared) -> Result<Self, LakeError> {
        let keys = match shared.config.lifecycle.keys_dir_for(&shared.lake) {
            Ok(dir) => match PeriodKeys::open(dir, &shared.lake) {
                Ok(k) => Some(k),
                Err(e) => {
                    tracing::warn!(error = %e, "the key directory cannot be used; erasures, if any, cannot be enforced");
                    None
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, "no key directory; erasures, if any, cannot be enforced");
                None
            }
        };
        let mut guard = Self { keys, erased: ErasedUsers::default(), version: None, polled: Instant::now() };
        guard.reload(shared).await?;
        Ok(guard)
    }

    /// Re-reads the erased users when `erasures` moved (or `force`).
    pub async fn refresh(&mut self, shared: &Shared, force: bool) -> Result<(), LakeError> {
        if !force && self.polled.elapsed() < POLL {
            return Ok(());
        }
        self.polled = Instant::now();
        let version = shared.lake.erasures_version().await;
        if force || version != self.version {
            self.reload(shared).await?;
        }
        Ok(())
    }

    async fn reload(&mut self, shared: &Shared) -> Result<(), LakeError> {
        let version = shared.lake.erasures_version().await;
        self.erased = match &self.keys {
            Some(keys) => shared.lake.erased_users(keys).await?,
            None if version.is_none_or(|v| v == 0) => ErasedUsers::default(),
            None => {
                return Err(LakeError::Erasure(
                    "the lake records erasures but the key directory (lifecycle.keys_dir) cannot be used".into(),
                ));
            }
        };
        if version != self.version && !self.erased.is_empty() {
            tracing::info!(users = self.erased.len(), "erased users read; their records are dropped");
        }
        self.version = version;
        Ok(())
    }

    /// Drops the rows of erased users from one table of the flush (and the DLQ records with
    /// `rejected`), moving them from their outcome to `erased` in the flush's counts. Returns
    /// whether any row went.
    pub fn apply(&self, shared: &Shared, f: &mut Flush, part: Part) -> Result<bool, LakeError> {
        if self.erased.is_empty() {
            return Ok(false);
        }
        let mut any = false;
        match part {
            Part::Readings | Part::Activity => {
                let i = matches!(part, Part::Activity) as usize;
                let commit = if i == 0 { &mut f.readings } else { &mut f.activity };
                let removed = filter(commit, |b| self.erased.filter_bronze(b))?;
                f.counts.bronze[i] -= removed.min(f.counts.bronze[i]);
                f.counts.erased[i] += removed;
                any = removed > 0;
            }
            Part::Rejected => {
                let k = &shared.config.kafka;
                for b in &mut f.rejected.batches {
                    let record = b.column_by_name("record").map(|c| c.as_string::<i32>().clone());
                    let Some(record) = record else { continue };
                    let keep: BooleanArray = (0..b.num_rows()).map(|r| Some(!self.erased.mentioned_in(record.value(r)))).collect();
                    if keep.true_count() == b.num_rows() {
                        continue;
                    }
                    let (topic, reason) = (b.column(0).as_string::<i32>(), b.column(3).as_string::<i32>());
                    for r in (0..b.num_rows()).filter(|&r| !keep.value(r)) {
                        let i = usize::from(topic.value(r) == k.activity_topic);
                        if let Some(reason) = Reason::ALL.into_iter().find(|x| x.code() == reason.value(r))
                            && let Some(n) = f.counts.rejected.get_mut(&(i, reason))
                        {
                            *n = n.saturating_sub(1);
                        }
                        f.counts.erased[i] += 1;
                    }
                    *b = campo_lake::arrow::compute::filter_record_batch(b, &keep)
                        .map_err(|e| LakeError::Erasure(format!("filtering rejected rows: {e}")))?;
                    any = true;
                }
                f.counts.rejected.retain(|_, n| *n > 0);
                f.dlq.retain(|r| !self.erased.mentioned_in(&r.record));
            }
        }
        Ok(any)
    }
}

fn filter(
    commit: &mut TableCommit,
    f: impl Fn(&campo_lake::arrow::array::RecordBatch) -> Result<(campo_lake::arrow::array::RecordBatch, usize), LakeError>,
) -> Result<u64, LakeError> {
    let mut removed = 0;
    for b in &mut commit.batches {
        let (kept, n) = f(b)?;
        if n > 0 {
            *b = kept;
            removed += n as u64;
        }
    }
    Ok(removed)
}
