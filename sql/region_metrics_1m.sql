-- region_metrics_1m (SPEC 3): per region and closed window, from the window's readings.
--
-- Input `readings`: the closing windows' non-late readings, with `window_start`/`window_end`
-- added by the engine (tumbling, aligned to the UTC minute). ${low_hz} and ${high_hz} are the
-- configured thresholds (420 and 700 by default), substituted as numeric literals.
WITH per_user AS (
    SELECT region, window_start, window_end, user_hash, avg(hz) AS user_hz
    FROM readings
    GROUP BY region, window_start, window_end, user_hash
),
users AS (
    SELECT region, window_start, window_end,
           count(*) AS users,
           CAST(sum(CASE WHEN user_hz < ${low_hz} THEN 1 ELSE 0 END) AS DOUBLE) / count(*) AS low_share
    FROM per_user
    GROUP BY region, window_start, window_end
),
agg AS (
    SELECT region, window_start, window_end,
           count(*) AS readings,
           avg(hz) AS hz_mean,
           quantile_cont(hz, 0.5) AS hz_p50,
           quantile_cont(hz, 0.95) AS hz_p95,
           bucket_entropy(hz_bucket) AS entropy,
           avg(entropy) AS sensorial_entropy,
           avg(mood_delta) AS mood_mean
    FROM readings
    GROUP BY region, window_start, window_end
)
SELECT a.region, a.window_start, a.window_end,
       a.readings, u.users, a.hz_mean, a.hz_p50, a.hz_p95, u.low_share,
       a.entropy, 1.0 - a.entropy AS stability, a.sensorial_entropy, a.mood_mean,
       CASE WHEN a.hz_mean < ${low_hz} THEN 'collapse'
            WHEN a.hz_mean >= ${high_hz} THEN 'expansion'
            ELSE 'neutral' END AS state
FROM agg a
JOIN users u ON u.region = a.region AND u.window_start = a.window_start
ORDER BY a.region, a.window_start
