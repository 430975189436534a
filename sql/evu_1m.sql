-- evu_1m (SPEC 4): the EVU experience score per region and closed window.
--
-- Inputs: the closing windows' state (sql/state/): `requests` and `activity_by_region`, partial
-- aggregates of the window's non-late activity (every measure is summed), and `region_metrics`
-- (region_metrics_1m's rows for the same windows, for `low_share`). ${apdex_t_ms} is Apdex's T
-- (300 ms by default). `evu` uses the configured component weights (equal by default). A region
-- appears when it has readings or activity.
WITH req AS (
    SELECT region, window_start,
           sum(n) AS requests,
           apdex(latency_ms, status, ${apdex_t_ms}, n) AS latency,
           1.0 - CAST(sum(CASE WHEN status IN (401, 403, 429) OR waf_blocked THEN n ELSE 0 END) AS DOUBLE)
               / sum(n) AS security,
           CAST(sum(CASE WHEN status >= 500 THEN n ELSE 0 END) AS DOUBLE) / sum(n) AS error_rate,
           quantile_cont(latency_ms, 0.95, n) AS latency_p95_ms
    FROM requests
    GROUP BY region, window_start
),
feed AS (
    SELECT region, window_start,
           1.0 - CAST(sum(feed_entropy_sum) AS DOUBLE) / nullif(sum(feed_entropy_n), 0) AS coherence
    FROM activity_by_region
    GROUP BY region, window_start
),
windows AS (
    SELECT DISTINCT region, window_start, window_end FROM activity_by_region
    UNION
    SELECT region, window_start, window_end FROM region_metrics
)
SELECT w.region, w.window_start, w.window_end,
       coalesce(r.requests, 0) AS requests,
       r.latency,
       f.coherence,
       1.0 - m.low_share AS emotional,
       r.security,
       evu(r.latency, f.coherence, 1.0 - m.low_share, r.security) AS evu,
       r.error_rate,
       r.latency_p95_ms
FROM windows w
LEFT JOIN req r ON r.region = w.region AND r.window_start = w.window_start
LEFT JOIN feed f ON f.region = w.region AND f.window_start = w.window_start
LEFT JOIN region_metrics m ON m.region = w.region AND m.window_start = w.window_start
ORDER BY w.region, w.window_start
