//! The writer task: commits each flush to the lake in protocol order and sends DLQ records.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use campo_lake::{CommitOutcome, TableCommit, TableKind, TableWriter};
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::contract::Reason;
use crate::windows::WindowInput;

use super::erased::{ErasureGuard, Part};
use super::{Flush, IngestError, Shared, Shutdown, Stats, WriterEvent};

enum Step {
    Done,
    /// Offsets moved underneath this commit.
    Refused(String),
    /// Shutting down while the lake cannot be written: nothing more is committed.
    GaveUp,
}

struct Tables {
    readings: TableWriter,
    activity: TableWriter,
    rejected: TableWriter,
    /// The erased users every commit is checked against.
    guard: ErasureGuard,
}

pub(crate) async fn run(
    shared: Arc<Shared>,
    mut flushes: tokio::sync::mpsc::Receiver<Flush>,
    events: std::sync::mpsc::Sender<WriterEvent>,
    windows: Option<tokio::sync::mpsc::UnboundedSender<WindowInput>>,
) -> Result<(), IngestError> {
    let pipeline = &shared.config.ingest.pipeline;
    let mut tables = Tables {
        readings: TableWriter::open(&shared.lake, TableKind::Readings, pipeline).await?,
        activity: TableWriter::open(&shared.lake, TableKind::Activity, pipeline).await?,
        rejected: TableWriter::open(&shared.lake, TableKind::Rejected, pipeline).await?,
        guard: ErasureGuard::open(&shared).await?,
    };
    // Another writer's commit (an erasure's DELETE) makes a commit re-check the erased users.
    for w in [&mut tables.readings, &mut tables.activity, &mut tables.rejected] {
        w.fence();
    }
    shared.stats.lake_ready.store(true, Ordering::SeqCst);
    let producer = dlq_producer(&shared)?;
    let mut refused_epoch = 0;
    let mut window_generation = None;
    while let Some(mut flush) = flushes.recv().await {
        if flush.epoch <= refused_epoch {
            // Cut before the consumer resynchronised: continues from offsets that were refused.
            let keys = flush.keys.concat();
            let _ = events.send(WriterEvent::Dropped { keys, refused: false });
        } else {
            let started = std::time::Instant::now();
            let trace = flush.trace.map(|t| super::CloseTrace { started: Some(started), ..t });
            let outcome = commit_flush(&shared, &mut tables, &producer, &mut flush).await;
            match outcome {
                (Step::Done, _) => {
                    record_counts(&shared, &flush);
                    shared.stats.flushes.fetch_add(1, Ordering::Relaxed);
                    metrics::histogram!("campo_flush_seconds").record(started.elapsed().as_secs_f64());
                    let _ = events.send(WriterEvent::Committed { positions: flush.positions.clone() });
                    if let Some(w) = &windows {
                        // The first flush of an assignment pins the bronze versions the stage
                        // rebuilds from: the latest, other instances' commits included.
                        if window_generation != Some(flush.generation) {
                            window_generation = Some(flush.generation);
                            for t in [&mut tables.readings, &mut tables.activity] {
                                if let Err(e) = t.reload().await {
                                    tracing::warn!(error = %e, table = t.name(), "cannot bring the table to its latest version");
                                }
                            }
                        }
                        // Only committed rows reach the windows; a closed channel means the
                        // stage stopped, and it stops the ingest itself.
                        let _ = w.send(WindowInput {
                            readings: flush.readings.batches.clone(),
                            activity: flush.activity.batches.clone(),
                            watermark: flush.watermark,
                            trace: trace.map(|t| super::CloseTrace { committed: Some(std::time::Instant::now()), ..t }),
                            generation: flush.generation,
                            whole: flush.whole,
                            bronze_versions: [tables.readings.version(), tables.activity.version()],
                        });
                    }
                }
                (Step::Refused(why), uncommitted) => {
                    tracing::warn!(%why, "commit refused: offsets moved underneath it");
                    shared.stats.refused.fetch_add(1, Ordering::Relaxed);
                    refused_epoch = flush.epoch;
                    let _ = events.send(WriterEvent::Dropped { keys: uncommitted, refused: true });
                }
                (Step::GaveUp, uncommitted) => {
                    tracing::warn!("shutting down with the lake unwritable: the uncommitted flush will be re-read on restart");
                    refused_epoch = flush.epoch;
                    let _ = events.send(WriterEvent::Dropped { keys: uncommitted, refused: false });
                }
            }
        }
        shared.stats.pending_flushes.fetch_sub(1, Ordering::SeqCst);
    }
    producer_flush(&producer);
    Ok(())
}

fn producer_flush(producer: &FutureProducer) {
    use rdkafka::producer::Producer;
    let _ = producer.flush(Duration::from_secs(10));
}

fn dlq_producer(shared: &Shared) -> Result<FutureProducer, IngestError> {
    let mut c = crate::protect::outbox::client_config(&shared.config, "campo-dlq");
    c.set("enable.idempotence", "true").set("linger.ms", "5").set("message.timeout.ms", "30000");
    Ok(c.create()?)
}

/// Commits one flush: `rejected`, then the DLQ records, then `readings` and `activity`, each
/// checked against the erased users first (their rows leave the flush).
/// Returns the step reached and the dedup keys of bronze rows that were not committed.
async fn commit_flush(shared: &Shared, t: &mut Tables, producer: &FutureProducer, f: &mut Flush) -> (Step, Vec<u64>) {
    let all_keys = |f: &Flush| f.keys.concat();
    if f.rejected.rows() > 0 {
        match commit_table(shared, &mut t.rejected, &mut t.guard, f, Part::Rejected).await {
            Step::Done => {}
            other => return (other, all_keys(f)),
        }
    } else if !f.dlq.is_empty()
        && let Err(e) = t.guard.apply(shared, f, Part::Rejected)
    {
        tracing::warn!(error = %e, "checking DLQ records against erased users");
        return (Step::GaveUp, all_keys(f));
    }
    if !f.dlq.is_empty() {
        if let Step::GaveUp = send_dlq(shared, producer, f).await {
            return (Step::GaveUp, all_keys(f));
        }
    }
    if !f.readings.txns.is_empty() {
        match commit_table(shared, &mut t.readings, &mut t.guard, f, Part::Readings).await {
            Step::Done => {}
            other => return (other, all_keys(f)),
        }
    }
    if !f.activity.txns.is_empty() {
        match commit_table(shared, &mut t.activity, &mut t.guard, f, Part::Activity).await {
            Step::Done => {}
            other => return (other, f.keys[1].clone()),
        }
    }
    (Step::Done, Vec::new())
}

/// Commits one table of a flush, retrying with backoff while the lake cannot be written. The
/// rows are checked against the erased users before every attempt that follows another
/// writer's commit (see `erased.rs`).
async fn commit_table(shared: &Shared, w: &mut TableWriter, guard: &mut ErasureGuard, f: &mut Flush, part: Part) -> Step {
    let mut force = false;
    let mut backoff = Duration::from_millis(200);
    loop {
        let checked = match guard.refresh(shared, force).await {
            Ok(()) => guard.apply(shared, f, part),
            Err(e) => Err(e),
        };
        match checked {
            Ok(changed) => {
                if changed {
                    // The staged files hold the rows that just went.
                    w.discard_staged().await;
                }
            }
            Err(e) => {
                tracing::warn!(table = w.name(), error = %e, "cannot read the erased users; the commit waits");
                if shared.shutdown.is_triggered() {
                    return Step::GaveUp;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
                force = true;
                continue;
            }
        }
        let c = match part {
            Part::Readings => &f.readings,
            Part::Activity => &f.activity,
            Part::Rejected => &f.rejected,
        };
        match commit_retrying(w, c, &shared.stats, &shared.shutdown).await {
            Ok(CommitOutcome::Committed { .. }) => return Step::Done,
            Ok(CommitOutcome::Refused { app_id, expected, found }) => {
                return Step::Refused(format!("{}: {app_id} expected txn version {expected:?}, found {found:?}", w.name()));
            }
            Ok(CommitOutcome::Fenced) => force = true,
            Err(_) => return Step::GaveUp,
        }
    }
}

/// Commits `c`, retrying with backoff (and logging once per state change) while the lake
/// cannot be written; `stats.lake_ready` follows. A refusal is returned, not retried. Once
/// shutdown is triggered a failing commit is abandoned and its last error returned.
pub(crate) async fn commit_retrying(
    w: &mut TableWriter,
    c: &TableCommit,
    stats: &Stats,
    shutdown: &Shutdown,
) -> Result<CommitOutcome, campo_lake::LakeError> {
    let mut backoff = Duration::from_millis(100);
    let mut failing = false;
    loop {
        match w.commit(c).await {
            Ok(outcome) => {
                if let CommitOutcome::Committed { version } = outcome {
                    if failing {
                        tracing::info!(table = w.name(), version, "lake writable again");
                    }
                    stats.lake_ready.store(true, Ordering::SeqCst);
                }
                return Ok(outcome);
            }
            Err(e) => {
                if !failing {
                    tracing::error!(table = w.name(), error = %e, "lake not writable; consumption pauses, retrying with backoff");
                    failing = true;
                }
                stats.lake_ready.store(false, Ordering::SeqCst);
                if shutdown.is_triggered() {
                    w.abandon();
                    return Err(e);
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
                if let Err(e) = w.reload().await {
                    tracing::debug!(error = %e, "reload failed");
                }
            }
        }
    }
}

/// Sends the flush's DLQ records and waits for every acknowledgement, retrying failures.
async fn send_dlq(shared: &Shared, producer: &FutureProducer, f: &Flush) -> Step {
    let topic = &shared.config.kafka.dlq_topic;
    let payloads: Vec<(String, Vec<u8>)> = f
        .dlq
        .iter()
        .map(|r| (format!("{}/{}", r.source_topic, r.partition), serde_json::to_vec(r).expect("serializable")))
        .collect();
    let mut todo: Vec<usize> = (0..payloads.len()).collect();
    let mut backoff = Duration::from_millis(200);
    loop {
        let sends = todo.iter().map(|&i| {
            let (key, payload) = &payloads[i];
            let rec = FutureRecord::to(topic).key(key.as_str()).payload(payload.as_slice());
            async move { (i, producer.send(rec, Duration::from_secs(30)).await) }
        });
        let results = futures_util::future::join_all(sends).await;
        let failed: Vec<usize> = results.iter().filter(|(_, r)| r.is_err()).map(|(i, _)| *i).collect();
        if failed.is_empty() {
            return Step::Done;
        }
        if let Some((_, Err((e, _)))) = results.iter().find(|(_, r)| r.is_err()) {
            tracing::warn!(error = %e, failed = failed.len(), "DLQ send failed; retrying");
        }
        if shared.shutdown.is_triggered() {
            return Step::GaveUp;
        }
        todo = failed;
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

fn record_counts(shared: &Shared, f: &Flush) {
    let k = &shared.config.kafka;
    let topics = [k.readings_topic.clone(), k.activity_topic.clone()];
    for i in 0..2 {
        let c = &f.counts;
        shared.stats.bronze[i].fetch_add(c.bronze[i], Ordering::Relaxed);
        shared.stats.duplicate[i].fetch_add(c.duplicate[i], Ordering::Relaxed);
        shared.stats.late[i].fetch_add(c.late[i], Ordering::Relaxed);
        shared.stats.erased[i].fetch_add(c.erased[i], Ordering::Relaxed);
        metrics::counter!("campo_records_total", "topic" => topics[i].clone(), "outcome" => "erased").increment(c.erased[i]);
        metrics::counter!("campo_late_total", "topic" => topics[i].clone()).increment(c.late[i]);
        metrics::counter!("campo_records_total", "topic" => topics[i].clone(), "outcome" => "bronze").increment(c.bronze[i]);
        metrics::counter!("campo_records_total", "topic" => topics[i].clone(), "outcome" => "duplicate").increment(c.duplicate[i]);
    }
    for ((i, reason), n) in &f.counts.rejected {
        shared.stats.dlq[*i].fetch_add(*n, Ordering::Relaxed);
        metrics::counter!("campo_records_total", "topic" => topics[*i].clone(), "outcome" => "dlq").increment(*n);
        metrics::counter!("campo_rejected_total", "topic" => topics[*i].clone(), "reason" => Reason::code(*reason)).increment(*n);
    }
}
