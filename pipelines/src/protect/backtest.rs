//! The forecast backtest: replays regions' closed windows in order, issues every model's
//! forecast at each window as the engine would, and scores `p_collapse` against what happened.
//!
//! Scores per horizon: the Brier score of each model, the skill score of campo's model against
//! persistence and against the damped trend (`1 - BS / BS_ref`), a reliability table
//! (calibration) of campo's model, and, for every collapse episode (the first window with
//! `hz_mean` under the threshold after at least [`CALM_BEFORE`] windows above it), how many
//! minutes before it each model raised the forecast flag of SPEC 6 (`p_collapse` at 10 minutes
//! at or above `protect.soft_p_collapse`) and held it until the collapse, as SPEC 6's
//! hysteresis holds a `soft` alert: a raised flag is cleared only by the `off` condition (the
//! flag down, `hz_mean` at or above `recover_hz` and `low_share` under `soft_low_share` in each
//! of the `off_windows` windows after it was raised).

use std::collections::BTreeMap;
use std::fmt;

use super::forecast::{HORIZONS_MIN, Model, WindowPoint};
use super::levels::Rules;

/// Windows above the threshold before a collapse counts as a new episode.
pub const CALM_BEFORE: usize = 5;
const BINS: usize = 10;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Score {
    pub n: u64,
    pub brier_sum: f64,
}

impl Score {
    pub fn brier(&self) -> f64 {
        if self.n == 0 { f64::NAN } else { self.brier_sum / self.n as f64 }
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Bin {
    pub n: u64,
    pub p_sum: f64,
    pub hits: u64,
}

/// One collapse episode and how far ahead each model flagged it.
#[derive(Debug, Clone, PartialEq)]
pub struct Episode {
    pub region: String,
    /// End of the first window under the threshold.
    pub onset_us: i64,
    /// Minutes before the onset the flag went up and stayed up (None: not flagged before it).
    pub lead_min: BTreeMap<Model, Option<f64>>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    pub regions: usize,
    pub windows: usize,
    /// (model, horizon) -> score.
    pub scores: BTreeMap<(Model, u32), Score>,
    /// horizon -> reliability bins of campo's model.
    pub reliability: BTreeMap<u32, Vec<Bin>>,
    pub episodes: Vec<Episode>,
    /// Positive outcomes per horizon (targets under the threshold).
    pub positives: BTreeMap<u32, u64>,
}

impl Report {
    pub fn brier(&self, model: Model, horizon: u32) -> f64 {
        self.scores.get(&(model, horizon)).map_or(f64::NAN, Score::brier)
    }

    /// `1 - BS(model) / BS(reference)`.
    pub fn skill(&self, model: Model, reference: Model, horizon: u32) -> f64 {
        1.0 - self.brier(model, horizon) / self.brier(reference, horizon)
    }
}

/// Progress callback: (windows done, windows in all).
pub type Progress<'a> = &'a mut dyn FnMut(usize, usize);

/// Backtests every model on the regions' windows (each series oldest first).
pub fn run(
    series: &BTreeMap<String, Vec<WindowPoint>>,
    step_min: f64,
    rules: &Rules,
    progress: Progress<'_>,
) -> Report {
    let (low_hz, flag_p) = (rules.low_hz, rules.soft_p_collapse);
    let total: usize = series.values().map(Vec::len).sum();
    let mut report = Report { regions: series.len(), windows: total, ..Report::default() };
    for h in HORIZONS_MIN {
        report.reliability.insert(h, vec![Bin::default(); BINS]);
    }
    let mut done = 0;
    let step_us = (step_min * 60e6).round() as i64;
    for (region, points) in series {
        let index: BTreeMap<i64, usize> = points.iter().enumerate().map(|(i, p)| (p.window_end_us, i)).collect();
        // flags[model][i]: the flag was up at window i.
        let mut flags: BTreeMap<Model, Vec<bool>> = Model::ALL.iter().map(|m| (*m, vec![false; points.len()])).collect();
        for i in 0..points.len() {
            done += 1;
            if done % 500 == 0 {
                progress(done, total);
            }
            for model in Model::ALL {
                let Some(forecasts) = model.forecast(&points[..=i], step_min, low_hz) else { continue };
                for f in &forecasts {
                    if f.horizon_min == 10 && f.p_collapse >= flag_p {
                        flags.get_mut(&model).expect("every model")[i] = true;
                    }
                    let target = points[i].window_end_us + f.horizon_min as i64 * 60_000_000;
                    let Some(&j) = index.get(&target) else { continue };
                    let hit = points[j].hz_mean < low_hz;
                    let s = report.scores.entry((model, f.horizon_min)).or_default();
                    s.n += 1;
                    s.brier_sum += (f.p_collapse - if hit { 1.0 } else { 0.0 }).powi(2);
                    if model == Model::ShareTrend {
                        let bin = ((f.p_collapse * BINS as f64) as usize).min(BINS - 1);
                        let b = &mut report.reliability.get_mut(&f.horizon_min).expect("every horizon")[bin];
                        b.n += 1;
                        b.p_sum += f.p_collapse;
                        b.hits += hit as u64;
                        *report.positives.entry(f.horizon_min).or_default() += hit as u64;
                    }
                }
            }
        }
        // Episodes: the first window under the threshold after CALM_BEFORE windows above it.
        for i in CALM_BEFORE..points.len() {
            let calm = points[i - CALM_BEFORE..i].iter().all(|p| p.hz_mean >= low_hz);
            if !(calm && points[i].hz_mean < low_hz) {
                continue;
            }
            let lead_min = flags
                .iter()
                .map(|(m, up)| {
                    let lead = held_since(points, up, rules, i)
                        .map(|k| (points[i].window_end_us - points[k].window_end_us) as f64 / step_us as f64 * step_min);
                    (*m, lead)
                })
                .collect();
            report.episodes.push(Episode { region: region.clone(), onset_us: points[i].window_end_us, lead_min });
        }
    }
    progress(total, total);
    report
}

/// The window whose flag is still held (SPEC 6's hysteresis) in the window before `onset`.
fn held_since(points: &[WindowPoint], up: &[bool], rules: &Rules, onset: usize) -> Option<usize> {
    let mut raised = None;
    for j in 0..onset {
        if up[j] && raised.is_none() {
            raised = Some(j);
        }
        let n = rules.off_windows.max(1);
        let off = raised.is_some_and(|r| j >= r + n)
            && (j + 1 - n..=j).all(|k| !up[k] && points[k].hz_mean >= rules.recover_hz && points[k].low_share < rules.soft_low_share);
        if off {
            raised = None;
        }
    }
    raised
}

impl Report {
    /// The figures as JSON: per horizon each model's Brier score and campo's skill scores,
    /// and every episode's lead per model.
    pub fn to_json(&self) -> serde_json::Value {
        let num = |x: f64| if x.is_finite() { serde_json::json!(x) } else { serde_json::Value::Null };
        let horizons: Vec<serde_json::Value> = HORIZONS_MIN
            .iter()
            .map(|&h| {
                let mut brier = serde_json::Map::new();
                for m in Model::ALL {
                    brier.insert(m.name().into(), num(self.brier(m, h)));
                }
                serde_json::json!({
                    "horizon_min": h,
                    "targets": self.scores.get(&(Model::ShareTrend, h)).map_or(0, |s| s.n),
                    "positives": self.positives.get(&h).copied().unwrap_or(0),
                    "brier": brier,
                    "skill_vs_persistence": num(self.skill(Model::ShareTrend, Model::Persistence, h)),
                    "skill_vs_damped_trend": num(self.skill(Model::ShareTrend, Model::DampedTrend, h)),
                })
            })
            .collect();
        let episodes: Vec<serde_json::Value> = self
            .episodes
            .iter()
            .map(|e| {
                let mut lead = serde_json::Map::new();
                for (m, l) in &e.lead_min {
                    lead.insert(m.name().into(), l.map_or(serde_json::Value::Null, |x| serde_json::json!(x)));
                }
                serde_json::json!({"region": e.region, "onset_us": e.onset_us, "lead_min": lead})
            })
            .collect();
        serde_json::json!({"regions": self.regions, "windows": self.windows, "horizons": horizons, "episodes": episodes})
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "backtest: {} regions, {} windows", self.regions, self.windows)?;
        writeln!(f)?;
        writeln!(
            f,
            "{:>7} {:>8} {:>12} {:>12} {:>17} {:>14} {:>14}",
            "horizon", "targets", "persistence", "damped_trend", "share_logit_trend", "skill_vs_pers", "skill_vs_damped"
        )?;
        for h in HORIZONS_MIN {
            let n = self.scores.get(&(Model::ShareTrend, h)).map_or(0, |s| s.n);
            writeln!(
                f,
                "{:>5}m {:>8} {:>12.5} {:>12.5} {:>17.5} {:>14.3} {:>14.3}",
                h,
                n,
                self.brier(Model::Persistence, h),
                self.brier(Model::DampedTrend, h),
                self.brier(Model::ShareTrend, h),
                self.skill(Model::ShareTrend, Model::Persistence, h),
                self.skill(Model::ShareTrend, Model::DampedTrend, h),
            )?;
        }
        writeln!(f, "(Brier score of p_collapse per model; lower is better. Skill = 1 - BS / BS_reference.)")?;
        writeln!(f)?;
        writeln!(f, "reliability of share_logit_trend (forecasts per p_collapse bin: mean forecast / observed frequency)")?;
        write!(f, "{:>7}", "bin")?;
        for h in HORIZONS_MIN {
            write!(f, " {:>22}", format!("{h}m"))?;
        }
        writeln!(f)?;
        for b in 0..BINS {
            write!(f, "{:>3.1}-{:<3.1}", b as f64 / BINS as f64, (b + 1) as f64 / BINS as f64)?;
            for h in HORIZONS_MIN {
                let bin = &self.reliability[&h][b];
                if bin.n == 0 {
                    write!(f, " {:>22}", "-")?;
                } else {
                    let cell = format!("{} {:.2}/{:.2}", bin.n, bin.p_sum / bin.n as f64, bin.hits as f64 / bin.n as f64);
                    write!(f, " {cell:>22}")?;
                }
            }
            writeln!(f)?;
        }
        writeln!(f)?;
        writeln!(f, "collapse episodes ({}): minutes flagged ahead (p_collapse at 10 min >= the soft threshold, held until the collapse)", self.episodes.len())?;
        for e in &self.episodes {
            let at = chrono::DateTime::from_timestamp_micros(e.onset_us).map(|d| d.to_rfc3339()).unwrap_or_default();
            write!(f, "  {:<14} collapse at {at}:", e.region)?;
            for (m, lead) in &e.lead_min {
                match lead {
                    Some(l) => write!(f, " {} {l:.0} min", m.name())?,
                    None => write!(f, " {} not ahead", m.name())?,
                }
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_planted_spread_is_scored_and_flagged_ahead() {
        // 90 calm windows, then a logistic spread over ~15 windows to 80% of users, 30 windows
        // of collapse, and recovery.
        let share = |i: usize| -> f64 {
            let x = i as f64;
            if i < 90 { 0.02 } else if i < 135 { 0.02 + 0.78 / (1.0 + (-(x - 100.0) / 2.5).exp()) } else { 0.02 }
        };
        let noise = |i: usize| ((i * 7919) % 11) as f64 - 5.0;
        let points: Vec<WindowPoint> = (0..180)
            .map(|i| WindowPoint {
                window_end_us: (i as i64 + 1) * 60_000_000,
                hz_mean: 560.0 - 200.0 * share(i) + noise(i),
                low_share: share(i),
                users: 500,
                sensorial_entropy: Some(if (90..135).contains(&i) { 0.6 } else { 0.32 }),
            })
            .collect();
        let series = BTreeMap::from([("sa-east-1".to_string(), points)]);
        let mut calls = 0;
        let r = run(&series, 1.0, &Rules::default(), &mut |_, _| calls += 1);
        assert!(calls >= 1);
        assert_eq!(r.episodes.len(), 1, "{r}");
        let lead = r.episodes[0].lead_min[&Model::ShareTrend];
        assert!(lead.is_some_and(|l| l >= 3.0), "{r}");
        assert!(r.skill(Model::ShareTrend, Model::Persistence, 10) > 0.0, "{r}");
        let text = r.to_string();
        assert!(text.contains("share_logit_trend") && text.contains("collapse episodes (1)"), "{text}");
    }
}
