//! `apdex(latency_ms DOUBLE, status INT, t_ms DOUBLE [, weight BIGINT]) -> DOUBLE` (SPEC 4): over requests,
//! (satisfied + tolerating / 2) / requests, where satisfied is latency <= T, tolerating is
//! T < latency <= 4T, and status >= 500 is frustrated whatever the latency. Rows with a null
//! latency are not requests; null when there are none. `t_ms` is read from the first row. With
//! `weight`, each row stands for `weight` requests (pre-aggregated rows; a null weight is 0).

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray};
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Float64Type, Int32Type, Int64Type};
use datafusion::common::{Result, ScalarValue, exec_err};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{Accumulator, AggregateUDFImpl, Signature, Volatility};

#[derive(Debug, PartialEq, Eq, Hash)]
pub struct Apdex {
    signature: Signature,
}

impl Apdex {
    pub fn new() -> Self {
        Self { signature: Signature::user_defined(Volatility::Immutable) }
    }
}

impl Default for Apdex {
    fn default() -> Self {
        Self::new()
    }
}

impl AggregateUDFImpl for Apdex {
    fn name(&self) -> &str {
        "apdex"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        match arg_types.len() {
            3 => Ok(vec![DataType::Float64, DataType::Int32, DataType::Float64]),
            4 => Ok(vec![DataType::Float64, DataType::Int32, DataType::Float64, DataType::Int64]),
            _ => exec_err!("apdex takes (latency_ms, status, t_ms [, weight])"),
        }
    }

    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(DataType::Float64)
    }

    fn accumulator(&self, _args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        Ok(Box::new(ApdexAcc::default()))
    }

    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        let f = |n: &str| Arc::new(Field::new(format!("{}_{n}", args.name), DataType::Int64, false));
        Ok(vec![f("satisfied"), f("tolerating"), f("requests")])
    }
}

#[derive(Debug, Default)]
struct ApdexAcc {
    satisfied: u64,
    tolerating: u64,
    requests: u64,
}

impl Accumulator for ApdexAcc {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        let latency = values[0].as_primitive::<Float64Type>();
        let status = values[1].as_primitive::<Int32Type>();
        let t = values[2].as_primitive::<Float64Type>();
        let weights = values.get(3).map(|w| w.as_primitive::<Int64Type>());
        for i in 0..latency.len() {
            if latency.is_null(i) {
                continue;
            }
            if t.is_null(i) || !(t.value(i) > 0.0) {
                return exec_err!("apdex threshold t_ms must be > 0");
            }
            let w = match weights {
                None => 1,
                Some(w) => match w.is_valid(i).then(|| w.value(i)).unwrap_or(0) {
                    w if w < 0 => return exec_err!("apdex: weight must be >= 0, got {w}"),
                    w => w as u64,
                },
            };
            let (l, t) = (latency.value(i), t.value(i));
            self.requests += w;
            if status.is_valid(i) && status.value(i) >= 500 {
                continue;
            }
            if l <= t {
                self.satisfied += w;
            } else if l <= 4.0 * t {
                self.tolerating += w;
            }
        }
        Ok(())
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        Ok(ScalarValue::Float64(
            (self.requests > 0).then(|| (self.satisfied as f64 + self.tolerating as f64 / 2.0) / self.requests as f64),
        ))
    }

    fn size(&self) -> usize {
        size_of_val(self)
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        Ok([self.satisfied, self.tolerating, self.requests].map(|v| ScalarValue::Int64(Some(v as i64))).to_vec())
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        let sum = |a: &ArrayRef| a.as_primitive::<Int64Type>().iter().flatten().map(|c| c as u64).sum::<u64>();
        self.satisfied += sum(&states[0]);
        self.tolerating += sum(&states[1]);
        self.requests += sum(&states[2]);
        Ok(())
    }
}
