//! Replays simulated traffic through the pipeline without Kafka, as fast as it goes: the
//! consumer's state (decode, validate, dedup, watermarks, cuts), the bronze writer and the
//! window stage (with forecasts and protective mode, lake only) write a lake exactly as
//! `campo run` would from the same records. `campo backtest --scenario` uses it to build a
//! history; partitions are assigned by region, as the message key would.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use campo_lake::{Lake, LakeError, TableKind, TableWriter};

use crate::config::Config;
use crate::contract::Contract;
use crate::dedup::Dedup;
use crate::ingest::{IngestState, PartitionPosition, Shutdown, Stats};
use crate::simulate::{SimConfig, Simulator};
use crate::windows::{WindowInput, WindowStage};

const PARTITIONS: i32 = 4;
/// Records between cuts (a cut also happens whenever the watermark moves).
const CUT_EVERY: u64 = 50_000;

/// Runs `records` simulated records into the lake at `config.lake.path`; `progress` is called
/// with the records fed so far, about every 100,000.
pub async fn run(sim_cfg: SimConfig, config: &Config, records: u64, mut progress: impl FnMut(u64) + Send + 'static) -> Result<Arc<Stats>, LakeError> {
    let lake = Lake::new(&config.lake.path, config.lake.storage_options.clone().into_iter().collect())?;
    for kind in TableKind::ALL {
        lake.open_or_create(kind).await?;
    }
    let stats = Arc::new(Stats::default());
    let pipeline = config.ingest.pipeline.clone();
    let mut readings = TableWriter::open(&lake, TableKind::Readings, &pipeline).await?;
    let mut activity = TableWriter::open(&lake, TableKind::Activity, &pipeline).await?;
    let mut rejected = TableWriter::open(&lake, TableKind::Rejected, &pipeline).await?;
    let stage = WindowStage::open_offline(&lake, config, stats.clone(), Shutdown::default()).await?;
    let (win_tx, win_rx) = tokio::sync::mpsc::unbounded_channel::<WindowInput>();
    let stage = tokio::spawn(stage.run(win_rx));
    let (flush_tx, mut flush_rx) = tokio::sync::mpsc::channel(2);
    let config = config.clone();
    let feeder = std::thread::spawn(move || {
        let regions = sim_cfg.regions.clone();
        // Every partition gets records (the watermark waits for each; none goes idle here).
        let parts = (regions.len() as i32).clamp(1, PARTITIONS);
        let readings_topic = sim_cfg.readings_topic.clone();
        let mut sim = Simulator::new(sim_cfg.clone());
        // The ingest's settings, as `campo run` has them.
        let mut st = IngestState::from_config(&config, Dedup::from_config(&config.ingest), None);
        let mut positions = Vec::new();
        for (contract, topic) in [(Contract::Reading, &sim_cfg.readings_topic), (Contract::Activity, &sim_cfg.activity_topic)] {
            for p in 0..parts {
                positions.push(PartitionPosition { contract, topic: topic.as_str().into(), partition: p, bronze_v: None, rejected_v: None, max_event_us: None });
            }
        }
        st.assign(positions, Dedup::from_config(&config.ingest));
        st.whole = true;
        let mut offsets = [[0i64; PARTITIONS as usize]; 2];
        let (mut n, mut since_cut) = (0u64, 0u64);
        while n < records {
            let now = Instant::now();
            let now_us = chrono::Utc::now().timestamp_micros();
            for _ in 0..1000.min(records - n) {
                let r = sim.next_record();
                let (contract, c) = if r.topic == readings_topic { (Contract::Reading, 0) } else { (Contract::Activity, 1) };
                let p = regions.iter().position(|x| *x == r.key).unwrap_or(0) as i32 % parts;
                let off = offsets[c][p as usize];
                offsets[c][p as usize] += 1;
                st.process(contract, p, off, Some(r.value.as_bytes()), now_us, now);
                n += 1;
                since_cut += 1;
            }
            if st.wm.advance(now).is_some() {
                st.advanced_at = Some(now);
            }
            if since_cut >= CUT_EVERY || st.watermark_moved() || n >= records {
                since_cut = 0;
                if let Some(f) = st.cut() {
                    if flush_tx.blocking_send(f).is_err() {
                        break;
                    }
                }
            }
            if n % 100_000 < 1000 {
                progress(n);
            }
        }
        progress(n);
    });
    while let Some(f) = flush_rx.recv().await {
        // Invalid records land in `rejected` (there is no DLQ topic without Kafka).
        if !f.rejected.txns.is_empty() {
            rejected.commit(&f.rejected).await?;
        }
        if !f.readings.txns.is_empty() {
            readings.commit(&f.readings).await?;
        }
        if !f.activity.txns.is_empty() {
            activity.commit(&f.activity).await?;
        }
        stats.bronze[0].fetch_add(f.counts.bronze[0], Ordering::Relaxed);
        stats.bronze[1].fetch_add(f.counts.bronze[1], Ordering::Relaxed);
        for i in 0..2 {
            stats.duplicate[i].fetch_add(f.counts.duplicate[i], Ordering::Relaxed);
            stats.late[i].fetch_add(f.counts.late[i], Ordering::Relaxed);
        }
        for ((i, _), n) in &f.counts.rejected {
            stats.dlq[*i].fetch_add(*n, Ordering::Relaxed);
        }
        let _ = win_tx.send(WindowInput {
            readings: f.readings.batches,
            activity: f.activity.batches,
            watermark: f.watermark,
            trace: f.trace.map(|t| crate::ingest::CloseTrace { committed: Some(std::time::Instant::now()), ..t }),
            generation: f.generation,
            whole: f.whole,
            bronze_versions: [readings.version(), activity.version()],
        });
    }
    drop(win_tx);
    feeder.join().map_err(|_| LakeError::BadLocation { location: "(replay)".into(), reason: "the feeder thread panicked".into() })?;
    stage.await.map_err(|e| LakeError::BadLocation { location: "(replay)".into(), reason: e.to_string() })??;
    Ok(stats)
}
