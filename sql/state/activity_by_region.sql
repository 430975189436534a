-- Window state (all activity, per region): which regions had activity in each window, and the
-- feeds' entropy for evu_1m's coherence.
--
-- Keys: region, window_start, window_end. Measures: n, feed_entropy_n, feed_entropy_sum
-- (exact DECIMAL(38, 9)).
SELECT region, window_start, window_end,
       count(*) AS n,
       count(CASE WHEN kind = 'feed.rendered' THEN entropy END) AS feed_entropy_n,
       sum(CASE WHEN kind = 'feed.rendered' THEN CAST(entropy AS DECIMAL(38, 9)) END) AS feed_entropy_sum
FROM activity
GROUP BY region, window_start, window_end
