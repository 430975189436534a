-- evu_1m (SPEC 4): the EVU experience score per region and closed window.
--
-- Inputs: `activity` (the closing windows' non-late activity events, with `window_start` and
-- `window_end`) and `region_metrics` (region_metrics_1m's rows for the same windows, for
-- `low_share`). ${apdex_t_ms} is Apdex's T (300 ms by default). `evu` uses the configured
-- component weights (equal by default). A region appears when it has readings or activity.
WITH req AS (
    SELECT region, window_start,
           count(*) AS requests,
           apdex(latency_ms, status, ${apdex_t_ms}) AS latency,
           1.0 - CAST(sum(CASE WHEN status IN (401, 403, 429) OR coalesce(waf_blocked, false) THEN 1 ELSE 0 END) AS DOUBLE)
               / count(*) AS security,
           CAST(sum(CASE WHEN status >= 500 THEN 1 ELSE 0 END) AS DOUBLE) / count(*) AS error_rate,
           quantile_cont(latency_ms, 0.95) AS latency_p95_ms
    FROM activity
    WHERE kind = 'api.request'
    GROUP BY region, window_start
),
feed AS (
    SELECT region, window_start, 1.0 - avg(entropy) AS coherence
    FROM activity
    WHERE kind = 'feed.rendered' AND entropy IS NOT NULL
    GROUP BY region, window_start
),
windows AS (
    SELECT DISTINCT region, window_start, window_end FROM activity
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
