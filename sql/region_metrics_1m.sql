-- region_metrics_1m (SPEC 3): per region and closed window.
--
-- Inputs: the closing windows' state (sql/state/): `readings_by_user` and `readings_by_hz`,
-- partial aggregates of the window's non-late readings (tumbling windows aligned to the UTC
-- minute). A state table may hold several partial rows per key; every measure is summed.
-- ${low_hz} and ${high_hz} are the configured thresholds (420 and 700 by default), substituted
-- as numeric literals.
WITH per_user AS (
    SELECT region, window_start, window_end,
           sum(n) AS n,
           sum(hz_sum) AS hz_sum,
           CAST(sum(hz_sum) AS DOUBLE) / sum(n) AS user_hz,
           sum(entropy_n) AS entropy_n,
           sum(entropy_sum) AS entropy_sum,
           sum(mood_n) AS mood_n,
           sum(mood_sum) AS mood_sum
    FROM readings_by_user
    GROUP BY region, window_start, window_end, user_hash
),
users AS (
    SELECT region, window_start, window_end,
           sum(n) AS readings,
           count(*) AS users,
           CAST(sum(hz_sum) AS DOUBLE) / sum(n) AS hz_mean,
           CAST(sum(CASE WHEN user_hz < ${low_hz} THEN 1 ELSE 0 END) AS DOUBLE) / count(*) AS low_share,
           CAST(sum(entropy_sum) AS DOUBLE) / nullif(sum(entropy_n), 0) AS sensorial_entropy,
           CAST(sum(mood_sum) AS DOUBLE) / nullif(sum(mood_n), 0) AS mood_mean
    FROM per_user
    GROUP BY region, window_start, window_end
),
dist AS (
    SELECT region, window_start,
           quantile_cont(hz, 0.5, n) AS hz_p50,
           quantile_cont(hz, 0.95, n) AS hz_p95,
           bucket_entropy(hz_bucket, n) AS entropy
    FROM readings_by_hz
    GROUP BY region, window_start
)
SELECT u.region, u.window_start, u.window_end,
       u.readings, u.users, u.hz_mean, d.hz_p50, d.hz_p95, u.low_share,
       d.entropy, 1.0 - d.entropy AS stability, u.sensorial_entropy, u.mood_mean,
       CASE WHEN u.hz_mean < ${low_hz} THEN 'collapse'
            WHEN u.hz_mean >= ${high_hz} THEN 'expansion'
            ELSE 'neutral' END AS state
FROM users u
JOIN dist d ON d.region = u.region AND d.window_start = u.window_start
ORDER BY u.region, u.window_start
