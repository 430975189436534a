-- Window state (readings, per value): how many readings had each `hz` (and its bucket), for
-- the exact quantiles and the bucket entropy of region_metrics_1m.
--
-- Keys: region, window_start, window_end, hz, hz_bucket. Measure: n.
SELECT region, window_start, window_end, hz, hz_bucket, count(*) AS n
FROM readings
GROUP BY region, window_start, window_end, hz, hz_bucket
