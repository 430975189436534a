//! campo's DataFusion functions (SPEC 3 and 4), registered once per session with [`register`]
//! and available to the signal pipelines in `sql/` and to analysts' ad-hoc SQL alike.
//!
//! | function | kind | meaning |
//! |---|---|---|
//! | `hz_bucket(hz)` | scalar | `min(10, floor(hz / 100))`, the bucket a reading without one gets |
//! | `bucket_entropy(bucket [, weight])` | aggregate | Shannon entropy of the bucket distribution / log2(11); 0 with fewer than 2 buckets |
//! | `apdex(latency_ms, status, t_ms [, weight])` | aggregate | (satisfied + tolerating / 2) / requests; status >= 500 is frustrated |
//! | `quantile_cont(x, q [, weight])` | aggregate | exact q-quantile, linear between closest ranks |
//! | `evu(latency, coherence, emotional, security [, w1, w2, w3, w4])` | scalar | 100 x weighted mean of the non-null components |
//!
//! The aggregates take an optional `weight` (a row count): each row then stands for `weight`
//! equal rows. The window stage keeps open windows as pre-aggregated `(value, count)` rows, and
//! a weighted aggregate over them equals the plain aggregate over the events they came from.

mod apdex;
mod entropy;
mod quantile;
mod scalar;

use datafusion::execution::FunctionRegistry;
use datafusion::logical_expr::{AggregateUDF, ScalarUDF};
use datafusion::prelude::SessionContext;

pub use apdex::Apdex;
pub use entropy::BucketEntropy;
pub use quantile::{QuantileCont, quantile_linear, quantile_weighted};
pub use scalar::{Evu, HzBucket};

/// Number of `hz_bucket` values (0..=10).
pub const BUCKETS: usize = 11;

/// The bucket of a reading: `min(10, floor(hz / 100))`, never below 0.
pub fn bucket_of(hz: f64) -> i32 {
    (hz / 100.0).floor().clamp(0.0, 10.0) as i32
}

/// Shannon entropy of bucket counts divided by log2(11); 0 when fewer than 2 buckets occur.
pub fn normalized_entropy(counts: &[u64; BUCKETS]) -> f64 {
    let occupied = counts.iter().filter(|&&c| c > 0).count();
    if occupied < 2 {
        return 0.0;
    }
    let total: u64 = counts.iter().sum();
    let h: f64 = counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = c as f64 / total as f64;
            -p * p.log2()
        })
        .sum();
    h / (BUCKETS as f64).log2()
}

/// EVU from its components (each 0..1 or null) and weights: 100 x sum(w c) / sum(w) over the
/// components that have data; `None` when none has.
pub fn evu_score(components: [Option<f64>; 4], weights: [f64; 4]) -> Option<f64> {
    let (mut num, mut den) = (0.0, 0.0);
    for (c, w) in components.iter().zip(weights) {
        if let Some(c) = c {
            num += w * c;
            den += w;
        }
    }
    (den > 0.0).then(|| 100.0 * num / den)
}

/// Registers every campo function on `ctx`; `evu_weights` are the default weights of the
/// four-argument `evu` (latency, coherence, emotional, security).
pub fn register(ctx: &SessionContext, evu_weights: [f64; 4]) {
    ctx.register_udf(ScalarUDF::from(HzBucket::new()));
    ctx.register_udf(ScalarUDF::from(Evu::new(evu_weights)));
    ctx.register_udaf(AggregateUDF::from(BucketEntropy::new()));
    ctx.register_udaf(AggregateUDF::from(Apdex::new()));
    ctx.register_udaf(AggregateUDF::from(QuantileCont::new()));
}

/// Names of the functions [`register`] adds, for listings and tests.
pub const FUNCTIONS: [&str; 5] = ["hz_bucket", "bucket_entropy", "apdex", "evu", "quantile_cont"];

/// Whether every campo function is registered on `ctx`.
pub fn registered(ctx: &SessionContext) -> bool {
    let state = ctx.state();
    ["hz_bucket", "evu"].iter().all(|n| state.udf(n).is_ok())
        && ["bucket_entropy", "apdex", "quantile_cont"].iter().all(|n| state.udaf(n).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_follow_the_spec() {
        assert_eq!(bucket_of(0.5), 0);
        assert_eq!(bucket_of(99.99), 0);
        assert_eq!(bucket_of(100.0), 1);
        assert_eq!(bucket_of(419.0), 4);
        assert_eq!(bucket_of(999.0), 9);
        assert_eq!(bucket_of(1000.0), 10);
        assert_eq!(bucket_of(2000.0), 10);
    }

    #[test]
    fn entropy_is_zero_below_two_buckets_and_one_when_uniform() {
        let mut c = [0u64; BUCKETS];
        assert_eq!(normalized_entropy(&c), 0.0);
        c[4] = 7;
        assert_eq!(normalized_entropy(&c), 0.0);
        let uniform = [3u64; BUCKETS];
        assert!((normalized_entropy(&uniform) - 1.0).abs() < 1e-12);
        let mut two = [0u64; BUCKETS];
        two[1] = 5;
        two[9] = 5;
        assert!((normalized_entropy(&two) - 1.0 / 11f64.log2()).abs() < 1e-12);
    }

    #[test]
    fn evu_skips_components_without_data() {
        assert_eq!(evu_score([None; 4], [1.0; 4]), None);
        assert_eq!(evu_score([Some(0.5), None, None, None], [1.0; 4]), Some(50.0));
        assert_eq!(evu_score([Some(1.0), Some(0.0), None, None], [3.0, 1.0, 1.0, 1.0]), Some(75.0));
    }
}
