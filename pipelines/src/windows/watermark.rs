//! Event-time watermarks (SPEC 2), per partition: the watermark is the minimum, over assigned
//! partitions that are not idle, of the largest event time seen, minus the allowed lateness.
//! A partition is idle only when the consumer has read up to its end offset *and* no record
//! arrived for `idle_timeout`; a partition with unread records always holds the watermark back.
//! When every partition is idle, none holds it back and the largest event time seen counts.
//!
//! Windows are tumbling and aligned to multiples of the window size since the Unix epoch (the
//! UTC minute for 1-minute windows). `closed_through` is the end of the last closed window: it
//! only moves forward, survives rebalances, and on start resumes from the last window written.

use rustc_hash::FxHashMap;
use std::time::{Duration, Instant};

/// A partition's key: (contract index, partition).
pub type PartKey = (usize, i32);

#[derive(Debug, Clone)]
struct PartWm {
    max_event_us: Option<i64>,
    last_record: Instant,
    caught_up: bool,
}

#[derive(Debug, Clone)]
pub struct Watermarks {
    size_us: i64,
    lateness_us: i64,
    idle_timeout: Duration,
    parts: FxHashMap<PartKey, PartWm>,
    closed_through: Option<i64>,
}

impl Watermarks {
    pub fn new(size: Duration, lateness: Duration, idle_timeout: Duration, closed_through: Option<i64>) -> Self {
        Self {
            size_us: size.as_micros() as i64,
            lateness_us: lateness.as_micros() as i64,
            idle_timeout,
            parts: FxHashMap::default(),
            closed_through,
        }
    }

    pub fn size_us(&self) -> i64 {
        self.size_us
    }

    /// Start of the window holding `t_us`.
    pub fn window_start(&self, t_us: i64) -> i64 {
        t_us.div_euclid(self.size_us) * self.size_us
    }

    /// End of the last closed window, if any window was ever closed.
    pub fn closed_through(&self) -> Option<i64> {
        self.closed_through
    }

    /// Replaces the assigned partitions. Per-partition event times start afresh (the consumer
    /// then restores them from bronze with [`Watermarks::restore`]); `closed_through` stays, so
    /// nothing reopens.
    pub fn assign(&mut self, parts: impl IntoIterator<Item = PartKey>, now: Instant) {
        self.parts = parts
            .into_iter()
            .map(|k| (k, PartWm { max_event_us: None, last_record: now, caught_up: false }))
            .collect();
    }

    /// Sets an assigned partition's largest event time as read back from bronze, so a
    /// restarted or rebalanced consumer closes the windows its predecessor had seen the end of
    /// without waiting for new records.
    pub fn restore(&mut self, part: PartKey, max_event_us: i64) {
        if let Some(p) = self.parts.get_mut(&part) {
            p.max_event_us = Some(p.max_event_us.map_or(max_event_us, |m| m.max(max_event_us)));
        }
    }

    /// Whether an event belongs to a window that is already closed.
    pub fn is_late(&self, event_us: i64) -> bool {
        self.closed_through.is_some_and(|c| self.window_start(event_us) + self.size_us <= c)
    }

    /// A record of `part` with event time `event_us` arrived.
    pub fn observe(&mut self, part: PartKey, event_us: i64, now: Instant) {
        if let Some(p) = self.parts.get_mut(&part) {
            p.max_event_us = Some(p.max_event_us.map_or(event_us, |m| m.max(event_us)));
            p.last_record = now;
        }
    }

    /// A record of `part` arrived (valid or not): the partition is not idle.
    pub fn touch(&mut self, part: PartKey, now: Instant) {
        if let Some(p) = self.parts.get_mut(&part) {
            p.last_record = now;
        }
    }

    /// Whether the consumer has read everything the broker holds for `part`.
    pub fn set_caught_up(&mut self, part: PartKey, caught_up: bool) {
        if let Some(p) = self.parts.get_mut(&part) {
            p.caught_up = caught_up;
        }
    }

    fn idle(&self, p: &PartWm, now: Instant) -> bool {
        p.caught_up && now.saturating_duration_since(p.last_record) >= self.idle_timeout
    }

    /// The current watermark (event time, microseconds), or `None` while a partition that is
    /// not idle has no event time yet (or nothing is assigned).
    pub fn watermark(&self, now: Instant) -> Option<i64> {
        let mut active = self.parts.values().filter(|p| !self.idle(p, now)).peekable();
        let max = if active.peek().is_some() {
            let mut min: Option<i64> = None;
            for p in active {
                let m = p.max_event_us?;
                min = Some(min.map_or(m, |x| x.min(m)));
            }
            min?
        } else {
            self.parts.values().filter_map(|p| p.max_event_us).max()?
        };
        Some(max - self.lateness_us)
    }

    /// Moves `closed_through` to the last window end the watermark has reached; returns it
    /// when it moved.
    pub fn advance(&mut self, now: Instant) -> Option<i64> {
        let wm = self.watermark(now)?;
        let through = wm.div_euclid(self.size_us) * self.size_us;
        if self.closed_through.is_some_and(|c| c >= through) {
            return None;
        }
        self.closed_through = Some(through);
        Some(through)
    }

    /// Partitions currently holding the watermark back (for progress output).
    pub fn idle_partitions(&self, now: Instant) -> usize {
        self.parts.values().filter(|p| self.idle(p, now)).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000_000;
    const SEC: i64 = 1_000_000;

    fn wms(closed: Option<i64>) -> Watermarks {
        Watermarks::new(Duration::from_secs(60), Duration::from_secs(30), Duration::from_secs(10), closed)
    }

    #[test]
    fn minimum_over_partitions_minus_lateness_closes_windows() {
        let t0 = Instant::now();
        let mut w = wms(None);
        w.assign([(0, 0), (0, 1)], t0);
        w.observe((0, 0), 10 * MIN + 45 * SEC, t0);
        // Partition 1 has no event time yet and is not idle: it holds the watermark back.
        assert_eq!(w.watermark(t0), None);
        assert_eq!(w.advance(t0), None);
        w.observe((0, 1), 11 * MIN + 40 * SEC, t0);
        assert_eq!(w.watermark(t0), Some(10 * MIN + 15 * SEC));
        assert_eq!(w.advance(t0), Some(10 * MIN));
        assert!(w.is_late(9 * MIN + 59 * SEC));
        assert!(!w.is_late(10 * MIN));
        // Out of order below the maximum does not move it back.
        w.observe((0, 0), 3 * MIN, t0);
        assert_eq!(w.watermark(t0), Some(10 * MIN + 15 * SEC));
        assert_eq!(w.advance(t0), None);
        // The window [10, 11) closes when the watermark reaches 11:00.
        w.observe((0, 0), 11 * MIN + 30 * SEC, t0);
        assert_eq!(w.advance(t0), Some(11 * MIN));
    }

    #[test]
    fn idle_partitions_do_not_hold_back_only_when_caught_up() {
        let t0 = Instant::now();
        let mut w = wms(None);
        w.assign([(0, 0), (1, 0)], t0);
        w.observe((0, 0), 20 * MIN, t0);
        let later = t0 + Duration::from_secs(11);
        // No record for 11 s, but records are still waiting in (1, 0): it holds back.
        assert_eq!(w.watermark(later), None);
        w.set_caught_up((1, 0), true);
        assert_eq!(w.watermark(later), Some(20 * MIN - 30 * SEC));
        // Before idle_timeout it still holds back, caught up or not.
        assert_eq!(w.watermark(t0 + Duration::from_secs(5)), None);
        // Everything idle: the largest event time counts.
        w.set_caught_up((0, 0), true);
        assert_eq!(w.watermark(later), Some(20 * MIN - 30 * SEC));
        // A new record makes the partition active again.
        w.observe((1, 0), 15 * MIN, later);
        w.set_caught_up((1, 0), false);
        assert_eq!(w.watermark(later), Some(15 * MIN - 30 * SEC));
    }

    #[test]
    fn closed_through_never_moves_back_and_survives_rebalances() {
        let t0 = Instant::now();
        let mut w = wms(Some(30 * MIN));
        w.assign([(0, 0)], t0);
        assert!(w.is_late(29 * MIN));
        w.observe((0, 0), 5 * MIN, t0);
        assert_eq!(w.advance(t0), None);
        assert_eq!(w.closed_through(), Some(30 * MIN));
        w.assign([(0, 0), (0, 1)], t0);
        assert_eq!(w.closed_through(), Some(30 * MIN));
        assert!(w.is_late(29 * MIN + 59 * SEC));
        assert!(!w.is_late(30 * MIN));
    }

    #[test]
    fn restored_event_times_close_windows_without_new_records() {
        let t0 = Instant::now();
        let mut w = wms(None);
        w.assign([(0, 0), (0, 1)], t0);
        w.restore((0, 0), 12 * MIN);
        w.restore((0, 1), 12 * MIN + 50 * SEC);
        w.restore((0, 2), 99 * MIN); // not assigned: ignored
        assert_eq!(w.watermark(t0), Some(11 * MIN + 30 * SEC));
        assert_eq!(w.advance(t0), Some(11 * MIN));
        // A record older than the restored time does not move it back.
        w.observe((0, 1), 12 * MIN, t0);
        assert_eq!(w.watermark(t0), Some(11 * MIN + 30 * SEC));
    }

    #[test]
    fn windows_align_to_the_minute_before_the_epoch_too() {
        let w = wms(None);
        assert_eq!(w.window_start(61 * SEC), MIN);
        assert_eq!(w.window_start(-1), -MIN);
    }
}
