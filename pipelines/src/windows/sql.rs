//! The signal pipelines' SQL (files under `sql/`), rendered with the configured thresholds,
//! and the DataFusion session they run in.

use datafusion::prelude::{SessionConfig, SessionContext};

use crate::config::SignalsConfig;

/// `sql/region_metrics_1m.sql`.
pub const REGION_METRICS_1M: &str = include_str!("../../../sql/region_metrics_1m.sql");
/// `sql/evu_1m.sql`.
pub const EVU_1M: &str = include_str!("../../../sql/evu_1m.sql");

/// Substitutes `${low_hz}`, `${high_hz}` and `${apdex_t_ms}` with the configured values as
/// numeric literals (validated numbers, never text from outside).
pub fn render(sql: &str, s: &SignalsConfig) -> String {
    let lit = |v: f64| format!("CAST({v:?} AS DOUBLE)");
    let out = sql
        .replace("${low_hz}", &lit(s.low_hz))
        .replace("${high_hz}", &lit(s.high_hz))
        .replace("${apdex_t_ms}", &lit(s.apdex_t_ms));
    assert!(!out.contains("${"), "unknown placeholder in pipeline SQL: {out}");
    out
}

/// A session for the signal pipelines: one partition (aggregates see rows in the order given,
/// so floating-point sums are reproducible) and campo's functions registered.
pub fn session(s: &SignalsConfig) -> SessionContext {
    let config = SessionConfig::new().with_target_partitions(1).with_information_schema(true);
    let ctx = SessionContext::new_with_config(config);
    campo_udfs::register(&ctx, s.evu_weights);
    ctx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_placeholder_is_substituted() {
        let s = SignalsConfig { low_hz: 400.5, ..Default::default() };
        let r = render(REGION_METRICS_1M, &s);
        assert!(r.contains("CAST(400.5 AS DOUBLE)") && r.contains("CAST(700.0 AS DOUBLE)"));
        assert!(render(EVU_1M, &s).contains("CAST(300.0 AS DOUBLE)"));
    }
}
