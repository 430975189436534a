-- Window state (api.request events): how many requests had each latency, status and WAF
-- verdict, for Apdex, security, the error rate and the latency p95 of evu_1m.
--
-- Keys: region, window_start, window_end, latency_ms, status, waf_blocked. Measure: n.
SELECT region, window_start, window_end, latency_ms, status,
       coalesce(waf_blocked, false) AS waf_blocked,
       count(*) AS n
FROM activity
WHERE kind = 'api.request'
GROUP BY region, window_start, window_end, latency_ms, status, coalesce(waf_blocked, false)
