//! `quantile_cont(x DOUBLE, q DOUBLE) -> DOUBLE`: the exact q-quantile of the non-null values
//! with linear interpolation between closest ranks (numpy's and polars' `linear`): at position
//! `q * (n - 1)` of the sorted values. Null when there are none. `q` is read from the first row.
//! (DataFusion's `percentile_cont` interpolates with fixed-point arithmetic and can be off in
//! the fourth significant digit; signals are recomputed independently, so campo pins its own.)

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray};
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Float64Type};
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
        if arg_types.len() != 2 {
            return exec_err!("quantile_cont takes (value, q)");
        }
        Ok(vec![DataType::Float64, DataType::Float64])
    }

    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(DataType::Float64)
    }

    fn accumulator(&self, _args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        Ok(Box::new(QuantileAcc::default()))
    }

    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        let item = Arc::new(Field::new_list_field(DataType::Float64, true));
        Ok(vec![
            Arc::new(Field::new(format!("{}_values", args.name), DataType::List(item), true)),
            Arc::new(Field::new(format!("{}_q", args.name), DataType::Float64, true)),
        ])
    }
}

#[derive(Debug, Default)]
struct QuantileAcc {
    values: Vec<f64>,
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

impl Accumulator for QuantileAcc {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        let x = values[0].as_primitive::<Float64Type>();
        let q = values[1].as_primitive::<Float64Type>();
        for i in 0..x.len() {
            if x.is_valid(i) {
                if q.is_null(i) {
                    return exec_err!("quantile_cont: q is null");
                }
                self.set_q(q.value(i))?;
                self.values.push(x.value(i));
            }
        }
        Ok(())
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        Ok(ScalarValue::Float64(quantile_linear(&mut self.values, self.q.unwrap_or(0.5))))
    }

    fn size(&self) -> usize {
        size_of_val(self) + self.values.capacity() * 8
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        let values: Vec<ScalarValue> = self.values.iter().map(|v| ScalarValue::Float64(Some(*v))).collect();
        Ok(vec![ScalarValue::List(ScalarValue::new_list_nullable(&values, &DataType::Float64)), ScalarValue::Float64(self.q)])
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        let lists = states[0].as_list::<i32>();
        let qs = states[1].as_primitive::<Float64Type>();
        for i in 0..lists.len() {
            if qs.is_valid(i) {
                self.set_q(qs.value(i))?;
            }
            if lists.is_valid(i) {
                let inner = lists.value(i);
                self.values.extend(inner.as_primitive::<Float64Type>().iter().flatten());
            }
        }
        Ok(())
    }
}
