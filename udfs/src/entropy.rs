//! `bucket_entropy(bucket INT [, weight BIGINT]) -> DOUBLE`: normalized Shannon entropy of the
//! bucket distribution (SPEC 3). Nulls and values outside 0..=10 are ignored. With `weight`,
//! each row counts `weight` times (pre-aggregated `(bucket, count)` rows; a null weight is 0).

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray};
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Int32Type, Int64Type};
use datafusion::common::{Result, ScalarValue, exec_err};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{Accumulator, AggregateUDFImpl, Signature, Volatility};

use crate::BUCKETS;

#[derive(Debug, PartialEq, Eq, Hash)]
pub struct BucketEntropy {
    signature: Signature,
}

impl BucketEntropy {
    pub fn new() -> Self {
        Self { signature: Signature::user_defined(Volatility::Immutable) }
    }
}

impl Default for BucketEntropy {
    fn default() -> Self {
        Self::new()
    }
}

impl AggregateUDFImpl for BucketEntropy {
    fn name(&self) -> &str {
        "bucket_entropy"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        match arg_types.len() {
            1 => Ok(vec![DataType::Int32]),
            2 => Ok(vec![DataType::Int32, DataType::Int64]),
            _ => exec_err!("bucket_entropy takes (bucket [, weight])"),
        }
    }

    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(DataType::Float64)
    }

    fn accumulator(&self, _args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        Ok(Box::new(EntropyAcc { counts: [0; BUCKETS] }))
    }

    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        Ok((0..BUCKETS)
            .map(|b| Arc::new(Field::new(format!("{}_b{b}", args.name), DataType::Int64, false)))
            .collect())
    }
}

#[derive(Debug)]
struct EntropyAcc {
    counts: [u64; BUCKETS],
}

impl Accumulator for EntropyAcc {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        let buckets = values[0].as_primitive::<Int32Type>();
        let weights = values.get(1).map(|w| w.as_primitive::<Int64Type>());
        for (i, b) in buckets.iter().enumerate() {
            let Some(b) = b.filter(|b| (0..BUCKETS as i32).contains(b)) else { continue };
            let w = match weights {
                None => 1,
                Some(w) => match w.is_valid(i).then(|| w.value(i)).unwrap_or(0) {
                    w if w < 0 => return exec_err!("bucket_entropy: weight must be >= 0, got {w}"),
                    w => w as u64,
                },
            };
            self.counts[b as usize] += w;
        }
        Ok(())
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        Ok(ScalarValue::Float64(Some(crate::normalized_entropy(&self.counts))))
    }

    fn size(&self) -> usize {
        size_of_val(self)
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        Ok(self.counts.iter().map(|&c| ScalarValue::Int64(Some(c as i64))).collect())
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        for (b, col) in states.iter().enumerate().take(BUCKETS) {
            self.counts[b] += col.as_primitive::<Int64Type>().iter().flatten().map(|c| c as u64).sum::<u64>();
        }
        Ok(())
    }
}
