//! The signal pipelines' SQL (files under `sql/`), rendered with the configured thresholds,
//! the window-state queries they read (`sql/state/`), and the DataFusion session they run in.

use datafusion::prelude::{SessionConfig, SessionContext};

use crate::config::SignalsConfig;

/// `sql/region_metrics_1m.sql`.
pub const REGION_METRICS_1M: &str = include_str!("../../../sql/region_metrics_1m.sql");
/// `sql/evu_1m.sql`.
pub const EVU_1M: &str = include_str!("../../../sql/evu_1m.sql");

/// Which bronze events a window-state query reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Readings,
    Activity,
}

impl Source {
    /// The table name the state query reads.
    pub fn table(self) -> &'static str {
        match self {
            Source::Readings => "readings",
            Source::Activity => "activity",
        }
    }
}

/// A window-state query (`sql/state/{name}.sql`): partial aggregates of a batch of events.
#[derive(Debug)]
pub struct StateQuery {
    pub name: &'static str,
    pub source: Source,
    pub sql: &'static str,
}

/// The state `region_metrics_1m` reads.
pub const REGION_METRICS_STATE: [StateQuery; 2] = [
    StateQuery { name: "readings_by_user", source: Source::Readings, sql: include_str!("../../../sql/state/readings_by_user.sql") },
    StateQuery { name: "readings_by_hz", source: Source::Readings, sql: include_str!("../../../sql/state/readings_by_hz.sql") },
];
/// The state `evu_1m` reads (besides `region_metrics`).
pub const EVU_STATE: [StateQuery; 2] = [
    StateQuery { name: "requests", source: Source::Activity, sql: include_str!("../../../sql/state/requests.sql") },
    StateQuery { name: "activity_by_region", source: Source::Activity, sql: include_str!("../../../sql/state/activity_by_region.sql") },
];

/// Whether a state column is a measure (summed when partials merge) rather than a key.
pub fn is_measure(column: &str) -> bool {
    column == "n" || column.ends_with("_n") || column.ends_with("_sum")
}

/// The query that merges partial state rows (table `state`) into one row per key.
pub fn merge_sql(columns: &[&str]) -> String {
    let q = |c: &str| format!("\"{}\"", c.replace('"', "\"\""));
    let keys: Vec<String> = columns.iter().filter(|c| !is_measure(c)).map(|c| q(c)).collect();
    let select: Vec<String> =
        columns.iter().map(|c| if is_measure(c) { format!("sum({}) AS {}", q(c), q(c)) } else { q(c) }).collect();
    format!("SELECT {} FROM state GROUP BY {}", select.join(", "), keys.join(", "))
}

/// A pipeline straight over events: each state table it reads becomes a common table
/// expression over `readings` / `activity` (for tests and analysts' ad-hoc SQL).
pub fn over_events(pipeline: &str, states: &[StateQuery]) -> String {
    let code = |sql: &str| sql.lines().filter(|l| !l.trim_start().starts_with("--")).collect::<Vec<_>>().join("\n");
    let body = code(pipeline);
    let rest = body.trim_start().strip_prefix("WITH").expect("pipeline SQL starts with WITH");
    let ctes: Vec<String> = states.iter().map(|s| format!("{} AS (\n{}\n)", s.name, code(s.sql).trim())).collect();
    format!("WITH {},{rest}", ctes.join(",\n"))
}

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

/// A session for the signal pipelines: campo's functions registered, and one partition (the
/// window stage's queries are small; the other core keeps ingesting). Results do not depend on
/// the order of rows: state measures are exact.
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

    #[test]
    fn merge_sums_measures_and_groups_by_keys() {
        assert_eq!(
            merge_sql(&["region", "user_hash", "n", "hz_sum", "entropy_n"]),
            r#"SELECT "region", "user_hash", sum("n") AS "n", sum("hz_sum") AS "hz_sum", sum("entropy_n") AS "entropy_n" FROM state GROUP BY "region", "user_hash""#
        );
    }

    #[test]
    fn over_events_inlines_the_state_queries() {
        let q = over_events(REGION_METRICS_1M, &REGION_METRICS_STATE);
        assert!(q.starts_with("WITH readings_by_user AS (\nSELECT"), "{q}");
        assert!(q.contains("readings_by_hz AS (") && q.contains("per_user AS ("));
        assert!(!q.contains("--"));
    }
}
