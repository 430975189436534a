//! Scalar functions: `hz_bucket` and `evu`.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, Float64Array, Int32Array};
use datafusion::arrow::datatypes::{DataType, Float64Type};
use datafusion::common::{Result, exec_err};
use datafusion::logical_expr::{ColumnarValue, ScalarFunctionArgs, ScalarUDFImpl, Signature, TypeSignature, Volatility};

/// `hz_bucket(hz DOUBLE) -> INT`: `min(10, floor(hz / 100))`; null in, null out.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct HzBucket {
    signature: Signature,
}

impl HzBucket {
    pub fn new() -> Self {
        Self { signature: Signature::uniform(1, vec![DataType::Float64], Volatility::Immutable) }
    }
}

impl Default for HzBucket {
    fn default() -> Self {
        Self::new()
    }
}

impl ScalarUDFImpl for HzBucket {
    fn name(&self) -> &str {
        "hz_bucket"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(DataType::Int32)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let hz = arrays[0].as_primitive::<Float64Type>();
        let out: Int32Array = hz.iter().map(|v| v.map(crate::bucket_of)).collect();
        Ok(ColumnarValue::Array(Arc::new(out)))
    }
}

/// `evu(latency, coherence, emotional, security [, w_latency, w_coherence, w_emotional,
/// w_security]) -> DOUBLE`: 100 x the weighted mean of the components that are not null; null
/// when all are. Without weights, the session's configured weights apply.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct Evu {
    signature: Signature,
    /// Default weights, as bits (f64 is neither `Eq` nor `Hash`).
    weights: [u64; 4],
}

impl Evu {
    pub fn new(weights: [f64; 4]) -> Self {
        Self {
            signature: Signature::one_of(
                vec![
                    TypeSignature::Uniform(4, vec![DataType::Float64]),
                    TypeSignature::Uniform(8, vec![DataType::Float64]),
                ],
                Volatility::Immutable,
            ),
            weights: weights.map(f64::to_bits),
        }
    }
}

impl ScalarUDFImpl for Evu {
    fn name(&self) -> &str {
        "evu"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(DataType::Float64)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let arrays: Vec<ArrayRef> = ColumnarValue::values_to_arrays(&args.args)?;
        if arrays.len() != 4 && arrays.len() != 8 {
            return exec_err!("evu takes 4 components, optionally followed by their 4 weights");
        }
        let cols: Vec<&Float64Array> = arrays.iter().map(|a| a.as_primitive::<Float64Type>()).collect();
        let defaults = self.weights.map(f64::from_bits);
        let mut out = Vec::with_capacity(args.number_rows);
        for row in 0..args.number_rows {
            let get = |c: &Float64Array| c.is_valid(row).then(|| c.value(row));
            let components = [get(cols[0]), get(cols[1]), get(cols[2]), get(cols[3])];
            let mut weights = defaults;
            if cols.len() == 8 {
                for (k, w) in weights.iter_mut().enumerate() {
                    match get(cols[4 + k]) {
                        Some(v) if v >= 0.0 && v.is_finite() => *w = v,
                        Some(v) => return exec_err!("evu weight {} must be finite and >= 0, got {v}", k + 1),
                        None => return exec_err!("evu weight {} is null", k + 1),
                    }
                }
            }
            out.push(crate::evu_score(components, weights));
        }
        Ok(ColumnarValue::Array(Arc::new(Float64Array::from(out))))
    }
}
