//! `quantile_cont(x DOUBLE, q DOUBLE [, weight BIGINT]) -> DOUBLE`: the exact q-quantile of the
//! non-null values with linear interpolation between closest ranks (numpy's and polars'
//! `linear`): at position `q * (n - 1)` of the sorted values. Null when there are none. `q` is
//! read from the first row. With `weight`, each row stands for `weight` equal values (a null
//! weight counts 0), so the quantile of pre-aggregated `(value, count)` rows is the quantile of
//! the rows they came from, whatever way they were grouped.
//! (DataFusion's `percentile_cont` interpolates with fixed-point arithmetic and can be off in
//! the fourth significant digit; signals are recomputed independently, so campo pins its own.)

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray};
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Float64Type, Int64Type};
use datafusion::common::{Result, ScalarValue, exec_err};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{Accumulator, AggregateUDFImpl, Signature, Volatility};

#[derive(Debug, PartialEq, Eq, Hash)]
pub struct QuantileCont {
    signature: Signature,
}

impl QuantileCont {
    pub fn new() -> Self {
        Self { signature: Signature::user_defined(Volatility::Immutable) }
    }
}

impl Default for QuantileCont {
    fn default() -> Self {
        Self::new()
    }
}

impl AggregateUDFImpl for QuantileCont {
    fn name(&self) -> &str {
        "quantile_cont"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        match arg_types.len() {
            2 => Ok(vec![DataType::Float64, DataType::Float64]),
            3 => Ok(vec![DataType::Float64, DataType::Float64, DataType::Int64]),
            _ => exec_err!("quantile_cont takes (value, q [, weight])"),
        }
    }

    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(DataType::Float64)
    }

    fn accumulator(&self, _args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        Ok(Box::new(QuantileAcc::default()))
    }

    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        let list = |t: DataType| DataType::List(Arc::new(Field::new_list_field(t, true)));
        Ok(vec![
            Arc::new(Field::new(format!("{}_values", args.name), list(DataType::Float64), true)),
            Arc::new(Field::new(format!("{}_weights", args.name), list(DataType::Int64), true)),
            Arc::new(Field::new(format!("{}_q", args.name), DataType::Float64, true)),
        ])
    }
}

#[derive(Debug, Default)]
struct QuantileAcc {
    /// `(value, weight)`; unweighted rows weigh 1.
    values: Vec<(f64, u64)>,
    q: Option<f64>,
}

impl QuantileAcc {
    fn set_q(&mut self, q: f64) -> Result<()> {
        if !(0.0..=1.0).contains(&q) {
            return exec_err!("quantile_cont: q must be in [0, 1], got {q}");
        }
        self.q.get_or_insert(q);
        Ok(())
    }
}

/// The q-quantile of `values` (sorted in place), linear between closest ranks.
pub fn quantile_linear(values: &mut [f64], q: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let pos = q * (values.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    Some(values[lo] + (pos - lo as f64) * (values[hi] - values[lo]))
}

/// [`quantile_linear`] over `(value, weight)` pairs (sorted in place): the same result as over
/// the values each repeated `weight` times.
pub fn quantile_weighted(values: &mut [(f64, u64)], q: f64) -> Option<f64> {
    let n: u64 = values.iter().map(|v| v.1).sum();
    if n == 0 {
        return None;
    }
    values.sort_by(|a, b| a.0.total_cmp(&b.0));
    let pos = q * (n - 1) as f64;
    let (lo, hi) = (pos.floor() as u64, pos.ceil() as u64);
    // The value at 0-based rank r: the first pair whose cumulative weight exceeds r.
    let at = |r: u64| {
        let mut seen = 0;
        values.iter().find(|(_, w)| {
            seen += w;
            seen > r
        })
    };
    let (a, b) = (at(lo)?.0, at(hi)?.0);
    Some(a + (pos - lo as f64) * (b - a))
}

impl Accumulator for QuantileAcc {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        let x = values[0].as_primitive::<Float64Type>();
        let q = values[1].as_primitive::<Float64Type>();
        let w = values.get(2).map(|w| w.as_primitive::<Int64Type>());
        for i in 0..x.len() {
            if x.is_valid(i) {
                if q.is_null(i) {
                    return exec_err!("quantile_cont: q is null");
                }
                self.set_q(q.value(i))?;
                let weight = match w {
                    None => 1,
                    Some(w) if w.is_null(i) => 0,
                    Some(w) if w.value(i) < 0 => return exec_err!("quantile_cont: weight must be >= 0, got {}", w.value(i)),
                    Some(w) => w.value(i) as u64,
                };
                if weight > 0 {
                    self.values.push((x.value(i), weight));
                }
            }
        }
        Ok(())
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        Ok(ScalarValue::Float64(quantile_weighted(&mut self.values, self.q.unwrap_or(0.5))))
    }

    fn size(&self) -> usize {
        size_of_val(self) + self.values.capacity() * 16
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        let values: Vec<ScalarValue> = self.values.iter().map(|v| ScalarValue::Float64(Some(v.0))).collect();
        let weights: Vec<ScalarValue> = self.values.iter().map(|v| ScalarValue::Int64(Some(v.1 as i64))).collect();
        Ok(vec![
            ScalarValue::List(ScalarValue::new_list_nullable(&values, &DataType::Float64)),
            ScalarValue::List(ScalarValue::new_list_nullable(&weights, &DataType::Int64)),
            ScalarValue::Float64(self.q),
        ])
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        let (values, weights) = (states[0].as_list::<i32>(), states[1].as_list::<i32>());
        let qs = states[2].as_primitive::<Float64Type>();
        for i in 0..values.len() {
            if qs.is_valid(i) {
                self.set_q(qs.value(i))?;
            }
            if values.is_valid(i) && weights.is_valid(i) {
                let (v, w) = (values.value(i), weights.value(i));
                let pairs = v.as_primitive::<Float64Type>().iter().zip(w.as_primitive::<Int64Type>().iter());
                self.values.extend(pairs.filter_map(|(v, w)| Some((v?, w? as u64))));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Weighted rows give the quantile of the rows they stand for.
        #[test]
        fn weighted_equals_expanded(pairs in prop::collection::vec((0u32..50, 1u64..5), 1..40), q in 0.0f64..=1.0) {
            let mut expanded: Vec<f64> = pairs.iter().flat_map(|&(v, w)| std::iter::repeat_n(v as f64 / 4.0, w as usize)).collect();
            let mut weighted: Vec<(f64, u64)> = pairs.iter().map(|&(v, w)| (v as f64 / 4.0, w)).collect();
            prop_assert_eq!(quantile_linear(&mut expanded, q), quantile_weighted(&mut weighted, q));
        }
    }
}
