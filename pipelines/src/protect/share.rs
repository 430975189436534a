//! campo's collapse model, [`super::Model::ShareTrend`] (`share_logit_trend`): the share of
//! users under `low_hz` and the sensorial entropy as leading signals.
//!
//! A region's mean is a mixture, `hz_mean = mu_high - gap * low_share`, where `gap` is the
//! distance between the users above and below the threshold. A collapse spreads from user to
//! user, so `low_share` follows an S-curve whose logit grows about linearly from the first
//! minutes while `hz_mean` barely moves until many users have dropped, and the readings'
//! entropy jumps when it starts.
//! - `LogitKalman` follows the share's empirical logit with a local linear trend whose
//!   observation variance is the binomial sampling variance (a share of 1 in 300 users is weak
//!   evidence, 30% strong), with interventions: sensorial entropy robustly far above its median
//!   sets the slope to at least a spreading collapse's and frees it; an observation far from its
//!   prediction releases the level (a spread or a recovery is followed at once); a CUSUM of the
//!   errors frees the slope when the share drifts without entropy. Noise and damping come from
//!   a grid by predictive likelihood.
//! - `gap` is a regression of `hz_mean` on `low_share`, shrunk towards a prior gap when the
//!   share has not varied.
//! - A collapse under way or foreseen lasts at least `COLLAPSE_MIN_MIN` and then ends at a
//!   rate learnt from the region's history: the forecast mixes "the course goes on" with "the
//!   region is back at its calm level".
//!
//! The share's forecast distribution is mapped through the mixture (plus the robust spread of
//! `mu_high`'s changes over the horizon) by quadrature: a proper predictive distribution, so
//! the intervals and `p_collapse` come from one place.

use super::forecast::{Forecast, HORIZONS_MIN, SD_FLOOR_HZ, WindowPoint, rms_diff, std_normal};
use statrs::distribution::ContinuousCDF;

/// campo's model: the share under the threshold, in logit space, followed by a local linear
/// trend Kalman filter, mapped through the region's mixture `hz_mean = mu_high - gap * low_share`.
#[derive(Debug, Clone, Copy)]
pub(super) struct ShareTrend {
    share: LogitKalman,
    gap: f64,
    mu_high: f64,
    /// Spread of `mu_high`'s change over each horizon of [`HORIZONS_MIN`] (Hz).
    mu_sd: [f64; 4],
    /// The region's calm `hz_mean` (the median of its windows above the threshold), if any.
    calm_hz: Option<f64>,
    /// Windows the region has been under the threshold for (0: not collapsed).
    collapsed_for: usize,
    /// The first window ahead (up to the longest horizon) where the share's median path puts
    /// `hz_mean` under the threshold.
    crossing: Option<usize>,
    /// The posterior rate (per minute) at which a collapse ends once it has lasted
    /// [`COLLAPSE_MIN_MIN`].
    end_rate: f64,
    step_min: f64,
}

/// Of the users under the threshold, the mean Hz is taken a priori as this share of it (the
/// gap's prior; the data take over as soon as the share varies).
const LOW_GROUP_PRIOR: f64 = 0.85;
/// Weight of the prior gap, in units of the share's sum of squared deviations: as much as 5
/// windows 0.1 away from the mean share.
const GAP_PRIOR_WEIGHT: f64 = 0.05;

fn logit(p: f64) -> f64 {
    (p / (1.0 - p)).ln()
}

pub(super) fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// The filter's grid: (level noise, slope noise, damping), variances in logit units² per window.
/// The parameters with the highest one-step predictive likelihood on the history are used.
const KALMAN_GRID: [(f64, f64, f64); 18] = {
    let (ql, qb, phi) = ([0.01, 0.05, 0.2], [0.001, 0.01, 0.05], [0.9, 0.95]);
    let mut out = [(0.0, 0.0, 0.0); 18];
    let mut i = 0;
    while i < 18 {
        out[i] = (ql[i / 6], qb[(i / 2) % 3], phi[i % 2]);
        i += 1;
    }
    out
};
/// Sensorial entropy this many robust standard deviations above its median marks unrest.
const UNREST_Z: f64 = 4.0;
/// No entropy spread is taken as smaller than this (entropy is in 0..1).
const UNREST_SCALE_FLOOR: f64 = 0.01;
/// At the onset of unrest the share's logit is expected to grow at least this fast (per
/// minute), with as much uncertainty: the intervention of West and Harrison's monitoring
/// (a collapse spreads, and entropy moves at its start, before the share does).
const UNREST_SLOPE_PER_MIN: f64 = 0.5;
/// While unrest lasts the slope may change this many times faster.
const UNREST_SLOPE_NOISE: f64 = 10.0;
/// An observation this many standard deviations from its prediction is a level shift (a
/// collapse's spread or a recovery), not noise: the level is released to follow it at once,
/// and the likelihood counts it no more than an error of this size.
const SHIFT_Z: f64 = 4.0;
/// Unrest frees the slope for this long (minutes): the spread's speed is learnt from the
/// share, then the slope settles.
const UNREST_SPREAD_MIN: f64 = 6.0;
/// How long a collapse lasts, a priori: at least this long (minutes), then ending at the rate
/// [`COLLAPSE_END_RATE`] (the seed's collapses last about 15 minutes; SPEC 6 holds an alert
/// for at least 15). The rate is a Gamma posterior updated with the region's own collapses
/// in the history: prior weight of one collapse.
const COLLAPSE_MIN_MIN: f64 = 10.0;
const COLLAPSE_END_RATE: f64 = 1.0 / 15.0;
/// CUSUM of standardized errors: allowance and decision interval (Page's test).
const CUSUM_K: f64 = 0.5;
const CUSUM_H: f64 = 3.0;
/// The first windows fit the filter's start, not its parameters.
const KALMAN_BURN_IN: usize = 3;

/// The empirical logit of a window's share and its sampling variance: `k` of `n` users under
/// the threshold give `ln((k + 1/2) / (n - k + 1/2))` with variance `1/(k + 1/2) + 1/(n - k + 1/2)`,
/// so a share of 0 or 3 in 300 users is weak evidence and a share of 30% strong.
fn logit_observation(p: &WindowPoint) -> Option<(f64, f64)> {
    if p.users <= 0 || !p.low_share.is_finite() {
        return None;
    }
    let n = p.users as f64;
    let k = (p.low_share * n).round().clamp(0.0, n);
    Some((((k + 0.5) / (n - k + 0.5)).ln(), 1.0 / (k + 0.5) + 1.0 / (n - k + 0.5)))
}

/// The median of `v` (sorted in place).
fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 { v[n / 2] } else { 0.5 * (v[n / 2 - 1] + v[n / 2]) }
}

/// Median and robust standard deviation (1.4826 times the median absolute deviation).
fn robust_location_scale(v: &[f64]) -> Option<(f64, f64)> {
    if v.is_empty() {
        return None;
    }
    let mut w = v.to_vec();
    let med = median(&mut w);
    let mut dev: Vec<f64> = v.iter().map(|x| (x - med).abs()).collect();
    Some((med, 1.4826 * median(&mut dev)))
}

/// Per window, whether the sensorial entropy is unusually high for the region.
fn unrest(history: &[WindowPoint]) -> Vec<bool> {
    let values: Vec<f64> = history.iter().filter_map(|p| p.sensorial_entropy).filter(|e| e.is_finite()).collect();
    let Some((med, scale)) = robust_location_scale(&values) else { return vec![false; history.len()] };
    let scale = scale.max(UNREST_SCALE_FLOOR);
    history.iter().map(|p| p.sensorial_entropy.is_some_and(|e| (e - med) / scale >= UNREST_Z)).collect()
}

type Mat2 = [[f64; 2]; 2];

/// A local linear trend with a damped slope on the share's logit:
/// `level' = level + phi slope + w_l`, `slope' = phi slope + w_b`, observed with the
/// binomial sampling variance of [`logit_observation`].
#[derive(Debug, Clone, Copy)]
struct LogitKalman {
    phi: f64,
    ql: f64,
    qb: f64,
    x: [f64; 2],
    p: Mat2,
    loglik: f64,
}

impl LogitKalman {
    /// `x = F x`, `P = F P F' + Q`.
    fn step(x: &mut [f64; 2], p: &mut Mat2, phi: f64, ql: f64, qb: f64) {
        *x = [x[0] + phi * x[1], phi * x[1]];
        let (a, b, d) = (p[0][0], p[0][1], p[1][1]);
        let p00 = a + 2.0 * phi * b + phi * phi * d + ql;
        let p01 = phi * b + phi * phi * d;
        let p11 = phi * phi * d + qb;
        *p = [[p00, p01], [p01, p11]];
    }

    fn run(obs: &[Option<(f64, f64)>], unrest: &[bool], step_min: f64, (ql, qb, phi): (f64, f64, f64)) -> Self {
        let slope_floor = UNREST_SLOPE_PER_MIN * step_min;
        let spread_windows = (UNREST_SPREAD_MIN / step_min).round().max(1.0) as usize;
        let mut unrest_for = 0usize;
        let (y0, r0) = obs.iter().flatten().next().copied().unwrap_or((logit(0.01), 4.0));
        let mut x = [y0, 0.0];
        let mut p: Mat2 = [[r0, 0.0], [0.0, qb.max(0.01)]];
        let mut loglik = 0.0;
        let mut seen = 0usize;
        let mut cusum = [0.0f64; 2];
        for t in 0..obs.len() {
            unrest_for = if unrest[t] { unrest_for + 1 } else { 0 };
            if seen > 0 {
                let qb_t = if (1..=spread_windows).contains(&unrest_for) { qb * UNREST_SLOPE_NOISE } else { qb };
                Self::step(&mut x, &mut p, phi, ql, qb_t);
            }
            if unrest_for == 1 {
                x[1] = x[1].max(slope_floor);
                p[1][1] += slope_floor * slope_floor;
            }
            let Some((y, r)) = obs[t] else { continue };
            seen += 1;
            if seen == 1 {
                continue;
            }
            let e = y - x[0];
            let mut s = p[0][0] + r;
            let u = e / s.sqrt();
            // Monitoring (a two-sided CUSUM of the standardized errors): a run of errors of
            // one sign is a change of slope the noise model cannot follow quickly.
            cusum = [(cusum[0] + u - CUSUM_K).max(0.0), (cusum[1] - u - CUSUM_K).max(0.0)];
            if cusum[0] > CUSUM_H || cusum[1] > CUSUM_H {
                p[1][1] += slope_floor * slope_floor;
                cusum = [0.0, 0.0];
            }
            if u * u > SHIFT_Z * SHIFT_Z {
                // A level shift: release the level to follow it (and the slope a quarter of it).
                p[0][0] += e * e;
                p[1][1] += (0.25 * e).powi(2);
                s = p[0][0] + r;
            }
            if seen > KALMAN_BURN_IN {
                loglik -= 0.5 * ((2.0 * std::f64::consts::PI * s).ln() + (e * e / s).min(SHIFT_Z * SHIFT_Z));
            }
            let k = [p[0][0] / s, p[0][1] / s];
            x = [x[0] + k[0] * e, x[1] + k[1] * e];
            let (p00, p01, p11) = (p[0][0], p[0][1], p[1][1]);
            p = [[p00 - k[0] * p00, p01 - k[0] * p01], [p01 - k[0] * p01, p11 - k[1] * p01]];
        }
        Self { phi, ql, qb, x, p, loglik }
    }

    /// The grid's most likely filter (first wins on ties).
    fn fit(history: &[WindowPoint], step_min: f64) -> Self {
        let obs: Vec<Option<(f64, f64)>> = history.iter().map(logit_observation).collect();
        let unrest = unrest(history);
        let mut best: Option<Self> = None;
        for params in KALMAN_GRID {
            let m = Self::run(&obs, &unrest, step_min, params);
            if best.is_none_or(|b| m.loglik > b.loglik) {
                best = Some(m);
            }
        }
        best.expect("a non-empty grid")
    }

    /// Mean and variance of the logit's level `h` windows ahead.
    fn predict(&self, h: usize) -> (f64, f64) {
        let (mut x, mut p) = (self.x, self.p);
        for _ in 0..h {
            Self::step(&mut x, &mut p, self.phi, self.ql, self.qb);
        }
        (x[0], p[0][0])
    }
}

/// Robust spread of the `lag`-window changes of `y`; None with fewer than 8 changes.
fn robust_change_sd(y: &[f64], lag: usize) -> Option<f64> {
    if y.len() < lag + 8 {
        return None;
    }
    let changes: Vec<f64> = y.windows(lag + 1).map(|w| w[lag] - w[0]).collect();
    robust_location_scale(&changes).map(|(_, s)| s)
}

impl ShareTrend {
    pub(super) fn fit(history: &[WindowPoint], step_min: f64, low_hz: f64) -> Self {
        let share = LogitKalman::fit(history, step_min);
        // The gap: least squares of hz_mean on low_share, shrunk towards the prior.
        let n = history.len() as f64;
        let s_mean = history.iter().map(|p| p.low_share).sum::<f64>() / n;
        let hz_mean = history.iter().map(|p| p.hz_mean).sum::<f64>() / n;
        let (mut sxx, mut sxy) = (0.0, 0.0);
        for p in history {
            sxx += (p.low_share - s_mean).powi(2);
            sxy -= (p.low_share - s_mean) * (p.hz_mean - hz_mean);
        }
        let last = history[history.len() - 1];
        let prior_high = (last.hz_mean - last.low_share * LOW_GROUP_PRIOR * low_hz) / (1.0 - last.low_share).max(0.05);
        let prior_gap = (prior_high - LOW_GROUP_PRIOR * low_hz).max(1.0);
        let gap = ((GAP_PRIOR_WEIGHT * prior_gap + sxy) / (GAP_PRIOR_WEIGHT + sxx)).max(1.0);
        // mu_high per window, smoothed: its level now, and the robust spread of its changes
        // over each horizon (a collapse's transitions, where the mixture fits worst, are the
        // outliers the median ignores), growing as a random walk's where history is short.
        let highs: Vec<f64> = history.iter().map(|p| p.hz_mean + gap * p.low_share).collect();
        let mut mu_high = highs[0];
        for h in &highs[1..] {
            mu_high += 0.5 * (h - mu_high);
        }
        let sd1 = robust_change_sd(&highs, 1).unwrap_or_else(|| rms_diff(&highs));
        let mut mu_sd = [0.0; 4];
        let mut floor = SD_FLOOR_HZ;
        for (i, &h) in HORIZONS_MIN.iter().enumerate() {
            let steps = (h as f64 / step_min).round().max(1.0) as usize;
            let sd = robust_change_sd(&highs, steps).unwrap_or(sd1 * (steps as f64).sqrt());
            floor = floor.max(sd);
            mu_sd[i] = floor;
        }
        // How collapses end: the runs of windows under the threshold in the history.
        let (mut ended, mut exposure_min) = (0.0, 0.0);
        let mut run = 0usize;
        for (i, p) in history.iter().enumerate() {
            if p.hz_mean < low_hz {
                run += 1;
            }
            let last = i + 1 == history.len();
            if run > 0 && (p.hz_mean >= low_hz || last) {
                exposure_min += (run as f64 * step_min - COLLAPSE_MIN_MIN).max(0.0);
                if p.hz_mean >= low_hz {
                    ended += 1.0;
                    run = 0;
                }
            }
        }
        let end_rate = (1.0 + ended) / (1.0 / COLLAPSE_END_RATE + exposure_min);
        let collapsed_for = history.iter().rev().take_while(|p| p.hz_mean < low_hz).count();
        let mut calm: Vec<f64> = history.iter().map(|p| p.hz_mean).filter(|&h| h >= low_hz).collect();
        let calm_hz = (!calm.is_empty()).then(|| median(&mut calm));
        let max_steps = (HORIZONS_MIN[HORIZONS_MIN.len() - 1] as f64 / step_min).round().max(1.0) as usize;
        let (mut x, mut p) = (share.x, share.p);
        let crossing = (1..=max_steps).find(|_| {
            LogitKalman::step(&mut x, &mut p, share.phi, share.ql, share.qb);
            mu_high - gap * sigmoid(x[0]) < low_hz
        });
        Self { share, gap, mu_high, mu_sd, calm_hz, collapsed_for, crossing, end_rate, step_min }
    }

    /// P(a collapse lasts longer than `windows`).
    fn lasts_beyond(&self, windows: usize) -> f64 {
        (-self.end_rate * (windows as f64 * self.step_min - COLLAPSE_MIN_MIN).max(0.0)).exp()
    }

    /// The weight of "the current course goes on" `steps` windows ahead, against "the region is
    /// back to its calm level": a collapse under way or foreseen (the share's median path
    /// crossing the threshold) ends as [`COLLAPSE_END_RATE`] says.
    fn course_weight(&self, steps: usize) -> f64 {
        if self.calm_hz.is_none() {
            return 1.0;
        }
        if self.collapsed_for > 0 {
            return self.lasts_beyond(self.collapsed_for + steps) / self.lasts_beyond(self.collapsed_for);
        }
        self.crossing.filter(|&c| c <= steps).map_or(1.0, |cross| self.lasts_beyond(steps - cross + 1))
    }

    /// The predictive distribution `steps` windows ahead, by quadrature over the share's
    /// logit-normal forecast.
    pub(super) fn predict(&self, horizon: usize, steps: usize, low_hz: f64) -> Forecast {
        let (m, v) = self.share.predict(steps);
        let sd_logit = v.sqrt().max(1e-6);
        let sd_high = self.mu_sd[horizon];
        // Equal-weight nodes at the standard normal's quantiles (i + 0.5) / N.
        const N: usize = 64;
        let nodes: Vec<(f64, f64)> = (0..N)
            .map(|i| {
                let zq = std_normal().inverse_cdf((i as f64 + 0.5) / N as f64);
                let s = sigmoid(m + sd_logit * zq);
                (self.mu_high - self.gap * s, sd_high)
            })
            .collect();
        let w = self.course_weight(steps);
        let calm = self.calm_hz.unwrap_or(self.mu_high);
        let cdf = |x: f64| {
            let course = nodes.iter().map(|(mu, sd)| std_normal().cdf((x - mu) / sd)).sum::<f64>() / N as f64;
            w * course + (1.0 - w) * std_normal().cdf((x - calm) / sd_high)
        };
        let lo = nodes.iter().map(|n| n.0).fold(calm, f64::min) - 6.0 * sd_high;
        let hi = nodes.iter().map(|n| n.0).fold(calm, f64::max) + 6.0 * sd_high;
        let quantile = |q: f64| {
            let (mut a, mut b) = (lo, hi);
            // 40 halvings of a range of a few hundred Hz: far below a millihertz.
            for _ in 0..40 {
                let mid = 0.5 * (a + b);
                if cdf(mid) < q { a = mid } else { b = mid }
            }
            0.5 * (a + b)
        };
        Forecast {
            horizon_min: HORIZONS_MIN[horizon],
            hz: quantile(0.5),
            lo80: quantile(0.1),
            hi80: quantile(0.9),
            lo95: quantile(0.025),
            hi95: quantile(0.975),
            p_collapse: cdf(low_hz),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protect::forecast::{MIN_HISTORY, Model};

    /// A region of 300 users: calm (0 to 3 users under the threshold, entropy 0.32 with noise),
    /// then, from window `onset` when `spread`, entropy at 0.6 and a logistic spread whose
    /// logit grows 0.8 per minute.
    fn region(n: usize, onset: usize, spread: bool, entropy: bool) -> Vec<WindowPoint> {
        (0..n)
            .map(|i| {
                let noise = ((i * 7919) % 13) as f64 / 13.0 - 0.5;
                let calm_k = ((i * 31) % 4) as f64;
                let share = if spread && i >= onset {
                    sigmoid(-5.5 + 0.8 * (i - onset) as f64).max(calm_k / 300.0)
                } else {
                    calm_k / 300.0
                };
                let unrest = spread && i >= onset;
                WindowPoint {
                    window_end_us: (i as i64 + 1) * 60_000_000,
                    hz_mean: 548.0 + 4.0 * noise - 170.0 * share,
                    low_share: (share * 300.0).round() / 300.0,
                    users: 300,
                    sensorial_entropy: entropy.then_some(if unrest { 0.6 } else { 0.32 + 0.01 * noise }),
                }
            })
            .collect()
    }

    fn p10(history: &[WindowPoint]) -> f64 {
        Model::ShareTrend.forecast(history, 1.0, 420.0).unwrap()[1].p_collapse
    }

    #[test]
    fn the_entropy_jump_brings_the_flag_forward() {
        let (onset, n) = (80, 100);
        let with = region(n, onset, true, true);
        let without = region(n, onset, true, false);
        // The window the mean first falls under the threshold.
        let cross = with.iter().position(|p| p.hz_mean < 420.0).unwrap();
        let flagged = |h: &[WindowPoint]| (onset..cross).find(|&i| p10(&h[..=i]) >= 0.8);
        let early = flagged(&with).expect("flagged with entropy");
        assert!(cross - early >= 4, "flagged {} windows ahead with entropy", cross - early);
        assert!(flagged(&without).is_some(), "the share alone is seen too");
        // With entropy the probability rises from the first window of unrest, before the share
        // has moved; without it, only once the share has.
        for i in onset..onset + 2 {
            assert!(p10(&with[..=i]) > 0.02 && p10(&without[..=i]) < 0.01, "window {i}");
        }
        // Before the onset, nothing.
        assert!((20..onset).all(|i| p10(&with[..=i]) < 0.01));
    }

    #[test]
    fn a_calm_noisy_region_and_an_entropy_blip_stay_unflagged() {
        let mut calm = region(120, 0, false, true);
        let blip = 70..76;
        for p in &mut calm[blip.clone()] {
            p.sensorial_entropy = Some(0.7);
        }
        for i in MIN_HISTORY..calm.len() {
            let f = Model::ShareTrend.forecast(&calm[..=i], 1.0, 420.0).unwrap();
            if (blip.start..blip.end + 5).contains(&i) {
                // Unrest alone raises the odds, but the share not moving keeps them low.
                assert!(f[1].p_collapse < 0.3, "window {i}: {:?}", f[1]);
                continue;
            }
            assert!(f.iter().all(|f| f.p_collapse < 0.01), "window {i}: {f:?}");
            // The bands stay near the data: a few Hz, not tens.
            assert!(f[1].hi80 - f[1].lo80 < 30.0, "window {i}: {:?}", f[1]);
        }
    }
}
