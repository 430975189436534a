//! Reading consumer positions and dedup keys back from the lake.

use campo_lake::{Lake, LakeError, TableKind, TableWriter};

use crate::config::IngestConfig;
use crate::contract::Contract;
use crate::dedup::{Dedup, fingerprint, unix_minute};

use super::PartitionPosition;

pub(crate) fn primary_table(contract: Contract) -> TableKind {
    match contract {
        Contract::Reading => TableKind::Readings,
        Contract::Activity => TableKind::Activity,
    }
}

/// Committed records per partition whose event times restore its watermark.
const RESTORE_RECORDS: i64 = 1000;

/// The committed position of each `(contract, topic, partition)`, read from the Delta log, and
/// the largest event time among its last [`RESTORE_RECORDS`] committed records (the
/// partition's watermark is restored from it: as good as the event time seen before, unless
/// records more than that far back were further ahead).
pub async fn read_positions(
    lake: &Lake,
    pipeline: &str,
    partitions: &[(Contract, String, i32)],
) -> Result<Vec<PartitionPosition>, LakeError> {
    let mut readings = TableWriter::open(lake, TableKind::Readings, pipeline).await?;
    let mut activity = TableWriter::open(lake, TableKind::Activity, pipeline).await?;
    let mut rejected = TableWriter::open(lake, TableKind::Rejected, pipeline).await?;
    let mut out = Vec::with_capacity(partitions.len());
    for (contract, topic, partition) in partitions {
        let primary = match contract {
            Contract::Reading => &mut readings,
            Contract::Activity => &mut activity,
        };
        out.push(PartitionPosition {
            contract: *contract,
            topic: topic.as_str().into(),
            partition: *partition,
            bronze_v: primary.txn_version(topic, *partition).await?,
            rejected_v: rejected.txn_version(topic, *partition).await?,
            max_event_us: None,
        });
    }
    for contract in [Contract::Reading, Contract::Activity] {
        let recent: Vec<String> = out
            .iter()
            .filter(|p| p.contract == contract)
            .filter_map(|p| {
                let v = p.bronze_v?;
                let topic = p.topic.replace('\'', "''");
                Some(format!("(kafka_topic = '{topic}' AND kafka_partition = {} AND kafka_offset > {})", p.partition, v - RESTORE_RECORDS))
            })
            .collect();
        if recent.is_empty() {
            continue;
        }
        let sql = format!(
            "SELECT kafka_topic, kafka_partition, CAST(max(occurred_at) AS BIGINT) FROM {} \
             WHERE {} GROUP BY kafka_topic, kafka_partition",
            primary_table(contract).name(),
            recent.join(" OR ")
        );
        for batch in lake.query(&sql).await? {
            use campo_lake::arrow::array::{Array, AsArray};
            use campo_lake::arrow::datatypes::{Int32Type, Int64Type};
            let topic = campo_lake::arrow::compute::cast(batch.column(0), &campo_lake::arrow::datatypes::DataType::Utf8)
                .expect("kafka_topic casts to Utf8");
            let (topic, partition, max) =
                (topic.as_string::<i32>(), batch.column(1).as_primitive::<Int32Type>(), batch.column(2).as_primitive::<Int64Type>());
            for i in 0..batch.num_rows() {
                let found = out.iter_mut().find(|p| p.contract == contract && *p.topic == *topic.value(i) && p.partition == partition.value(i));
                if let (Some(p), true) = (found, max.is_valid(i)) {
                    p.max_event_us = Some(max.value(i));
                }
            }
        }
    }
    Ok(out)
}

/// Rebuilds the dedup set from the keys committed to bronze within the horizon.
pub(crate) async fn rebuild_dedup(lake: &Lake, cfg: &IngestConfig) -> Result<Dedup, LakeError> {
    let mut dedup = Dedup::from_config(cfg);
    let now_us = chrono::Utc::now().timestamp_micros();
    let since_us = now_us - cfg.dedup_horizon.as_micros() as i64;
    let started = std::time::Instant::now();
    let mut total = 0;
    for contract in [Contract::Reading, Contract::Activity] {
        let table = primary_table(contract).name();
        let sql = format!(
            "SELECT idempotency_key, CAST(to_unixtime(ingested_at) AS BIGINT) AS at \
             FROM {table} WHERE ingested_at >= to_timestamp_micros({since_us})"
        );
        let batches = lake.query(&sql).await?;
        for batch in batches {
            use campo_lake::arrow::array::{Array, AsArray};
            use campo_lake::arrow::datatypes::Int64Type;
            let keys = campo_lake::arrow::compute::cast(batch.column(0), &campo_lake::arrow::datatypes::DataType::Utf8)
                .expect("idempotency_key casts to Utf8");
            let keys = keys.as_string::<i32>();
            let at = batch.column(1).as_primitive::<Int64Type>();
            for i in 0..keys.len() {
                dedup.remember(fingerprint(contract, keys.value(i)), unix_minute(at.value(i) * 1_000_000));
            }
            total += keys.len();
        }
    }
    tracing::info!(keys = total, elapsed_ms = started.elapsed().as_millis() as u64, "dedup set rebuilt from bronze");
    Ok(dedup)
}
