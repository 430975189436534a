-- Window state (readings, per user): partial aggregates of a batch of the open windows'
-- readings, merged into the state as flushes arrive (see sql/state/README.md).
--
-- Keys: region, window_start, window_end, user_hash. Measures: row and value counts and exact
-- DECIMAL(38, 9) sums, so partials of any split of the events sum to the same state.
SELECT region, window_start, window_end, user_hash,
       count(*) AS n,
       sum(CAST(hz AS DECIMAL(38, 9))) AS hz_sum,
       count(entropy) AS entropy_n,
       sum(CAST(entropy AS DECIMAL(38, 9))) AS entropy_sum,
       count(mood_delta) AS mood_n,
       sum(CAST(mood_delta AS DECIMAL(38, 9))) AS mood_sum
FROM readings
GROUP BY region, window_start, window_end, user_hash
