//! The protective-mode state machine (SPEC 6): per region, evaluated at each window close.
//!
//! A region's level rises at once to the highest level whose condition holds and never steps
//! down between `soft`, `medium` and `hard`; only the `off` condition clears it. A change is an
//! event whose id is derived from (region, window_end, level), so replaying the same windows
//! gives the same events, ids included.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::config::{Config, ProtectConfig};

/// The thresholds of SPEC 6: `[protect]` and `signals.low_hz`.
#[derive(Debug, Clone, PartialEq)]
pub struct Rules {
    pub low_hz: f64,
    pub protect: ProtectConfig,
}

impl Rules {
    pub fn new(config: &Config) -> Self {
        Self { low_hz: config.signals.low_hz, protect: config.protect.clone() }
    }
}

impl Default for Rules {
    fn default() -> Self {
        Self::new(&Config::default())
    }
}

impl std::ops::Deref for Rules {
    type Target = ProtectConfig;
    fn deref(&self) -> &ProtectConfig {
        &self.protect
    }
}

/// A protective-mode level, ordered by severity (`Off` is the absence of an alert).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Off,
    Soft,
    Medium,
    Hard,
}

impl Level {
    pub fn name(self) -> &'static str {
        match self {
            Level::Off => "off",
            Level::Soft => "soft",
            Level::Medium => "medium",
            Level::Hard => "hard",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "off" => Level::Off,
            "soft" => Level::Soft,
            "medium" => Level::Medium,
            "hard" => Level::Hard,
            _ => return None,
        })
    }

    /// The level as a number for gauges: off 0, soft 1, medium 2, hard 3.
    pub fn severity(self) -> u8 {
        self as u8
    }
}

/// What the state machine reads of one closed window of a region.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WindowSignals {
    pub window_end_us: i64,
    pub hz_mean: f64,
    pub low_share: f64,
    /// Share of requests with status >= 500 (None: no requests).
    pub error_rate: Option<f64>,
    pub latency_p95_ms: Option<f64>,
    /// `p_collapse` at 10 minutes of the forecast issued at this window (None: not enough
    /// history yet).
    pub p_collapse_10: Option<f64>,
}

/// A level change: one `alerts` row and one `system.protect` event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LevelChange {
    pub event_id: String,
    pub region: String,
    pub level: Level,
    pub previous: Level,
    pub reason: String,
    pub window_end_us: i64,
    /// `window_end` + 15 min while active; `window_end` for `off`.
    pub expires_at_us: i64,
}

/// The namespace of protect event ids (UUID v5 over `region/window_end_us/level`).
const EVENT_NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x3f7c_1d2e_9a4b_4c61_8e0f_5a6b_7c8d_9e01);
/// How long an active level holds without being renewed.
const EXPIRES_AFTER_US: i64 = 15 * 60 * 1_000_000;

/// The deterministic event id of a level change.
pub fn event_id(region: &str, window_end_us: i64, level: Level) -> String {
    uuid::Uuid::new_v5(&EVENT_NAMESPACE, format!("{region}/{window_end_us}/{}", level.name()).as_bytes()).to_string()
}

/// One region's protective state: its level and the windows its conditions look back on.
#[derive(Debug, Clone)]
pub struct RegionLevel {
    pub region: String,
    pub level: Level,
    /// End of the window the level was last changed at (None: not known, as for a new region).
    changed_at_us: Option<i64>,
    recent: VecDeque<WindowSignals>,
}

impl RegionLevel {
    pub fn new(region: impl Into<String>, level: Level) -> Self {
        Self { region: region.into(), level, changed_at_us: None, recent: VecDeque::new() }
    }

    /// A level set at the window ending at `window_end_us` (restored from `alerts`).
    pub fn changed_at(mut self, window_end_us: i64) -> Self {
        self.changed_at_us = Some(window_end_us);
        self
    }

    /// Windows kept: the longest look-back of any condition.
    fn keep(cfg: &Rules) -> usize {
        cfg.hard_windows.max(cfg.medium_windows).max(cfg.medium_share_windows).max(cfg.failure_windows).max(cfg.off_windows)
    }

    /// Feeds a window without evaluating it (rebuilding the look-back on start).
    pub fn remember(&mut self, w: WindowSignals, cfg: &Rules) {
        self.recent.push_back(w);
        while self.recent.len() > Self::keep(cfg) {
            self.recent.pop_front();
        }
    }

    /// Whether each of the last `n` windows satisfies `f` (false with fewer than `n`).
    fn each_of_last(&self, n: usize, f: impl Fn(&WindowSignals) -> bool) -> bool {
        n > 0 && self.recent.len() >= n && self.recent.iter().rev().take(n).all(f)
    }

    /// The highest level whose condition holds now, with the reason.
    fn condition(&self, cfg: &Rules) -> (Level, String) {
        let low = cfg.low_hz;
        if self.each_of_last(cfg.hard_windows, |w| w.hz_mean < low) {
            return (Level::Hard, format!("hz_mean < {low} in each of the last {} windows", cfg.hard_windows));
        }
        if self.each_of_last(cfg.failure_windows, |w| w.error_rate.is_some_and(|e| e > cfg.error_rate)) {
            return (Level::Hard, format!("error_rate > {} in each of the last {} windows (regional failure)", cfg.error_rate, cfg.failure_windows));
        }
        if self.each_of_last(cfg.failure_windows, |w| w.latency_p95_ms.is_some_and(|l| l > cfg.latency_p95_ms)) {
            return (
                Level::Hard,
                format!("latency_p95_ms > {} in each of the last {} windows (regional failure)", cfg.latency_p95_ms, cfg.failure_windows),
            );
        }
        if self.each_of_last(cfg.medium_windows, |w| w.hz_mean < low) {
            return (Level::Medium, format!("hz_mean < {low} in each of the last {} windows", cfg.medium_windows));
        }
        if self.each_of_last(cfg.medium_share_windows, |w| w.low_share >= cfg.medium_low_share) {
            return (
                Level::Medium,
                format!("low_share >= {} in each of the last {} windows", cfg.medium_low_share, cfg.medium_share_windows),
            );
        }
        let Some(last) = self.recent.back() else { return (Level::Off, String::new()) };
        if last.low_share >= cfg.soft_low_share {
            return (Level::Soft, format!("low_share {:.3} >= {} in the latest window", last.low_share, cfg.soft_low_share));
        }
        if let Some(p) = last.p_collapse_10.filter(|p| *p >= cfg.soft_p_collapse) {
            return (Level::Soft, format!("p_collapse at 10 min {p:.3} >= {}", cfg.soft_p_collapse));
        }
        (Level::Off, String::new())
    }

    /// Takes a closed window and returns the level change it causes, if any.
    pub fn observe(&mut self, w: WindowSignals, cfg: &Rules) -> Option<LevelChange> {
        self.remember(w, cfg);
        let (target, reason) = self.condition(cfg);
        let next = if target > self.level {
            target
        } else if self.level != Level::Off
            && target == Level::Off
            && self.each_of_last(cfg.off_windows, |w| {
                // The recovery windows come after the alert: a level raised by one window's
                // forecast is not cleared at the next by the calm windows before it.
                self.changed_at_us.is_none_or(|t| w.window_end_us > t) && w.hz_mean >= cfg.recover_hz && w.low_share < cfg.soft_low_share
            })
        {
            Level::Off
        } else {
            return None;
        };
        let reason = if next == Level::Off {
            format!(
                "recovered: no level's condition holds, hz_mean >= {} and low_share < {} in each of the last {} windows",
                cfg.recover_hz, cfg.soft_low_share, cfg.off_windows
            )
        } else {
            reason
        };
        let change = LevelChange {
            event_id: event_id(&self.region, w.window_end_us, next),
            region: self.region.clone(),
            level: next,
            previous: self.level,
            reason,
            window_end_us: w.window_end_us,
            expires_at_us: if next == Level::Off { w.window_end_us } else { w.window_end_us + EXPIRES_AFTER_US },
        };
        self.level = next;
        self.changed_at_us = Some(w.window_end_us);
        Some(change)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(i: i64, hz: f64, share: f64) -> WindowSignals {
        WindowSignals {
            window_end_us: i * 60_000_000,
            hz_mean: hz,
            low_share: share,
            error_rate: Some(0.01),
            latency_p95_ms: Some(300.0),
            p_collapse_10: Some(0.0),
        }
    }

    fn run(windows: &[WindowSignals]) -> Vec<(i64, Level)> {
        let cfg = Rules::default();
        let mut r = RegionLevel::new("sa-east-1", Level::Off);
        windows.iter().filter_map(|x| r.observe(*x, &cfg)).map(|c| (c.window_end_us / 60_000_000, c.level)).collect()
    }

    #[test]
    fn a_collapse_goes_soft_medium_hard_then_off_at_the_windows_spec_6_implies() {
        let mut ws = Vec::new();
        for i in 0..20 {
            ws.push(w(i, 560.0, 0.02));
        }
        // From window 20: half the users under 420, the mean still above it.
        ws.push(w(20, 460.0, 0.55));
        ws.push(w(21, 450.0, 0.60));
        // Window 22 on: deep collapse for 40 windows.
        for i in 22..62 {
            ws.push(w(i, 380.0, 0.8));
        }
        // Recovery: mean back above 440 and share under 0.5.
        for i in 62..80 {
            ws.push(w(i, 560.0, 0.03));
        }
        let got = run(&ws);
        // soft at 20 (share >= 0.5); medium at 24 (share >= 0.65 in 22, 23, 24); hard at 51
        // (hz < 420 in 22..=51, 30 windows); off at 66 (5 windows 62..=66 recovered).
        assert_eq!(got, vec![(20, Level::Soft), (24, Level::Medium), (51, Level::Hard), (66, Level::Off)]);
    }

    #[test]
    fn a_noisy_region_at_the_threshold_does_not_flap() {
        // The share wanders across 0.5 and back every window or two, the mean around 445 Hz:
        // raised once, then held, since the off condition needs 5 recovered windows in a row.
        let ws: Vec<_> = (0..200)
            .map(|i| {
                let noise = ((i * 7919) % 13) as f64 - 6.0;
                let share = if (i * 31) % 3 == 0 { 0.52 } else { 0.47 };
                w(i, 445.0 + noise, share)
            })
            .collect();
        assert_eq!(run(&ws), vec![(0, Level::Soft)]);
        // A stable region well above the thresholds raises nothing.
        let calm: Vec<_> = (0..200).map(|i| w(i, 560.0 + ((i * 31) % 9) as f64, 0.02 + 0.001 * (i % 7) as f64)).collect();
        assert!(run(&calm).is_empty());
    }

    #[test]
    fn levels_never_step_down_during_an_episode() {
        // Share >= 0.65 for 3 windows: soft at once, medium at the third.
        let mut ws: Vec<_> = (0..3).map(|i| w(i, 500.0, 0.7)).collect();
        // Then no condition holds, and the region has recovered (share < 0.5, hz >= 440).
        ws.extend((3..10).map(|i| w(i, 500.0, 0.45)));
        let got = run(&ws);
        assert_eq!(got[0], (0, Level::Soft));
        assert_eq!(got[1], (2, Level::Medium));
        // Off once share < 0.5 and hz >= 440 in 5 windows (3..=7).
        assert_eq!(got[2], (7, Level::Off));
        assert_eq!(got.len(), 3);
    }

    #[test]
    fn regional_failure_raises_hard_and_the_forecast_raises_soft() {
        let cfg = Rules::default();
        let mut r = RegionLevel::new("eu-west-1", Level::Off);
        let mut failing = w(1, 560.0, 0.02);
        failing.error_rate = Some(0.08);
        assert_eq!(r.observe(failing, &cfg), None);
        failing.window_end_us += 60_000_000;
        assert_eq!(r.observe(failing, &cfg), None);
        failing.window_end_us += 60_000_000;
        let c = r.observe(failing, &cfg).unwrap();
        assert_eq!((c.level, c.previous), (Level::Hard, Level::Off));
        assert!(c.reason.contains("error_rate"), "{}", c.reason);
        assert_eq!(c.expires_at_us, c.window_end_us + 15 * 60_000_000);

        let mut r = RegionLevel::new("eu-west-1", Level::Off);
        let mut x = w(1, 560.0, 0.02);
        x.p_collapse_10 = Some(0.85);
        let c = r.observe(x, &cfg).unwrap();
        assert_eq!(c.level, Level::Soft);
        assert!(c.reason.contains("p_collapse"));
    }

    #[test]
    fn a_forecast_alert_holds_for_the_recovery_windows_after_it() {
        // Calm, then one window whose forecast raises soft: the calm windows before it do not
        // clear it at the next window; five calm windows after it do.
        let mut ws: Vec<_> = (0..20).map(|i| w(i, 560.0, 0.02)).collect();
        ws[19].p_collapse_10 = Some(0.9);
        ws.extend((20..30).map(|i| w(i, 560.0, 0.02)));
        assert_eq!(run(&ws), vec![(19, Level::Soft), (24, Level::Off)]);
        // Restored from `alerts` with the window it was raised at, the level holds the same way.
        let cfg = Rules::default();
        let mut r = RegionLevel::new("sa-east-1", Level::Soft).changed_at(19 * 60_000_000);
        for x in &ws[..20] {
            r.remember(*x, &cfg);
        }
        let got: Vec<_> = ws[20..].iter().filter_map(|x| r.observe(*x, &cfg)).map(|c| (c.window_end_us / 60_000_000, c.level)).collect();
        assert_eq!(got, vec![(24, Level::Off)]);
    }

    #[test]
    fn event_ids_are_derived_from_region_window_and_level() {
        let a = event_id("sa-east-1", 60_000_000, Level::Soft);
        assert_eq!(a, event_id("sa-east-1", 60_000_000, Level::Soft));
        assert_ne!(a, event_id("sa-east-1", 60_000_000, Level::Medium));
        assert_ne!(a, event_id("sa-east-1", 120_000_000, Level::Soft));
        assert_ne!(a, event_id("us-east-1", 60_000_000, Level::Soft));
        assert_eq!(uuid::Uuid::parse_str(&a).unwrap().get_version_num(), 5);
    }
}
