//! Collapse forecasts (SPEC 5): `hz_mean` at 5, 10, 15 and 30 minutes with 80% and 95%
//! intervals and `p_collapse` = P(hz_mean at t+h < low_hz), from a region's closed windows.
//!
//! Three models, all fitted on the region's own history at every window close (deterministic:
//! the same history gives the same forecast, bit for bit):
//! - [`Model::Persistence`]: the last `hz_mean`, with a random walk's spread (the one-step
//!   changes' RMS times sqrt(h)). The baseline SPEC 5 names.
//! - [`Model::DampedTrend`]: exponential smoothing with a damped additive trend on `hz_mean`
//!   (ETS(A,Ad,N)), smoothing parameters chosen on a grid by one-step squared error, intervals
//!   from the model's h-step variance. What SPEC 5 asks for at least.
//! - [`Model::ShareTrend`], campo's model, which uses the share of users under `low_hz` and the
//!   sensorial entropy as leading signals: see [`super::share`].
//!
//! `campo backtest` compares the three on Brier score per horizon.

use statrs::distribution::{ContinuousCDF, Normal};

use super::share::ShareTrend;

/// Forecast horizons in minutes (SPEC 5).
pub const HORIZONS_MIN: [u32; 4] = [5, 10, 15, 30];
/// Closed windows a region needs before it is forecast (SPEC 5).
pub const MIN_HISTORY: usize = 10;
/// Windows of history a model looks at (older ones are dropped).
pub const MAX_HISTORY: usize = 120;

/// One closed window of a region, as the forecast sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WindowPoint {
    pub window_end_us: i64,
    pub hz_mean: f64,
    pub low_share: f64,
    pub users: i64,
    /// Mean of the readings' `entropy` field (`sensorial_entropy`; None when no reading had one).
    pub sensorial_entropy: Option<f64>,
}

/// One horizon's forecast.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Forecast {
    pub horizon_min: u32,
    pub hz: f64,
    pub lo80: f64,
    pub hi80: f64,
    pub lo95: f64,
    pub hi95: f64,
    pub p_collapse: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Model {
    Persistence,
    DampedTrend,
    ShareTrend,
}

impl Model {
    pub const ALL: [Model; 3] = [Model::Persistence, Model::DampedTrend, Model::ShareTrend];

    /// The name written to `collapse_forecast.model`.
    pub fn name(self) -> &'static str {
        match self {
            Model::Persistence => "persistence",
            Model::DampedTrend => "damped_trend",
            Model::ShareTrend => "share_logit_trend",
        }
    }

    /// Forecasts every horizon from a region's history (oldest first, the last point being the
    /// window just closed); `None` with fewer than [`MIN_HISTORY`] points. `step_min` is the
    /// window size in minutes.
    pub fn forecast(self, history: &[WindowPoint], step_min: f64, low_hz: f64) -> Option<Vec<Forecast>> {
        if history.len() < MIN_HISTORY {
            return None;
        }
        let history = &history[history.len().saturating_sub(MAX_HISTORY)..];
        let steps = |h: u32| (h as f64 / step_min).round().max(1.0) as usize;
        let out = match self {
            Model::Persistence => {
                let hz: Vec<f64> = history.iter().map(|p| p.hz_mean).collect();
                let last = *hz.last()?;
                let sd1 = rms_diff(&hz).max(SD_FLOOR_HZ);
                HORIZONS_MIN.map(|h| normal_forecast(h, last, sd1 * (steps(h) as f64).sqrt(), low_hz))
            }
            Model::DampedTrend => {
                let hz: Vec<f64> = history.iter().map(|p| p.hz_mean).collect();
                let fit = DampedTrend::fit(&hz, &HZ_GRID);
                HORIZONS_MIN.map(|h| {
                    let (mean, var) = fit.predict(steps(h));
                    normal_forecast(h, mean, var.sqrt().max(SD_FLOOR_HZ), low_hz)
                })
            }
            Model::ShareTrend => {
                let share = ShareTrend::fit(history, step_min, low_hz);
                std::array::from_fn::<_, 4, _>(|i| share.predict(i, steps(HORIZONS_MIN[i]), low_hz))
            }
        };
        Some(out.to_vec())
    }
}

/// No forecast is more certain than this (Hz): windows are samples.
pub(super) const SD_FLOOR_HZ: f64 = 0.5;

pub(super) fn std_normal() -> Normal {
    Normal::standard()
}

/// z of a two-sided central interval.
fn z(central: f64) -> f64 {
    std_normal().inverse_cdf(0.5 + central / 2.0)
}

fn normal_forecast(horizon_min: u32, mean: f64, sd: f64, low_hz: f64) -> Forecast {
    let (z80, z95) = (z(0.8), z(0.95));
    Forecast {
        horizon_min,
        hz: mean,
        lo80: mean - z80 * sd,
        hi80: mean + z80 * sd,
        lo95: mean - z95 * sd,
        hi95: mean + z95 * sd,
        p_collapse: std_normal().cdf((low_hz - mean) / sd),
    }
}

/// Root mean square of successive differences.
pub(super) fn rms_diff(y: &[f64]) -> f64 {
    if y.len() < 2 {
        return 0.0;
    }
    let ss: f64 = y.windows(2).map(|w| (w[1] - w[0]).powi(2)).sum();
    (ss / (y.len() - 1) as f64).sqrt()
}

/// Smoothing parameters: (alpha, beta as a share of alpha, phi).
type Grid = [(f64, f64, f64)];

const fn grid<const N: usize>(alphas: [f64; 4], betas: [f64; 3], phis: [f64; 3]) -> [(f64, f64, f64); N] {
    let mut out = [(0.0, 0.0, 0.0); N];
    let mut i = 0;
    let mut a = 0;
    while a < 4 {
        let mut b = 0;
        while b < 3 {
            let mut p = 0;
            while p < 3 {
                out[i] = (alphas[a], betas[b], phis[p]);
                i += 1;
                p += 1;
            }
            b += 1;
        }
        a += 1;
    }
    out
}

/// The damped-trend baseline's grid (ETS(A,Ad,N), as forecast::ets chooses among).
const HZ_GRID: [(f64, f64, f64); 36] = grid([0.2, 0.4, 0.6, 0.8], [0.05, 0.2, 0.5], [0.8, 0.9, 0.98]);
/// Exponential smoothing with a damped additive trend, in error-correction form:
/// `yhat = l + phi b; e = y - yhat; l = yhat + alpha e; b = phi b + beta e`.
#[derive(Debug, Clone, Copy)]
struct DampedTrend {
    alpha: f64,
    beta: f64,
    phi: f64,
    level: f64,
    trend: f64,
    /// One-step error variance.
    sigma2: f64,
}

impl DampedTrend {
    fn run(y: &[f64], alpha: f64, beta: f64, phi: f64) -> Self {
        let mut level = y[0];
        // Initial trend: the mean of the first differences (up to 4).
        let k = (y.len() - 1).min(4);
        let mut trend = if k > 0 { (y[k] - y[0]) / k as f64 } else { 0.0 };
        let (mut sse, mut n) = (0.0, 0usize);
        for (t, &obs) in y.iter().enumerate().skip(1) {
            let yhat = level + phi * trend;
            let e = obs - yhat;
            if t > k {
                sse += e * e;
                n += 1;
            }
            level = yhat + alpha * e;
            trend = phi * trend + beta * e;
        }
        let sigma2 = if n > 0 { sse / n as f64 } else { 0.0 };
        Self { alpha, beta, phi, level, trend, sigma2 }
    }

    /// The parameters of the grid with the least one-step squared error (first wins on ties).
    fn fit(y: &[f64], grid: &Grid) -> Self {
        let mut best: Option<Self> = None;
        for &(alpha, beta_share, phi) in grid {
            let m = Self::run(y, alpha, alpha * beta_share, phi);
            if best.is_none_or(|b| m.sigma2 < b.sigma2) {
                best = Some(m);
            }
        }
        best.expect("a non-empty grid")
    }

    /// Mean and variance `h` steps ahead (Hyndman et al., class 1 models).
    fn predict(&self, h: usize) -> (f64, f64) {
        let mut phi_sum = 0.0; // phi + phi^2 + ... + phi^h
        let mut pw = 1.0;
        let mut var_sum = 1.0;
        for j in 1..=h {
            if j > 1 {
                // c_{j-1} = alpha + beta * (phi + ... + phi^{j-1})
                let c = self.alpha + self.beta * phi_sum;
                var_sum += c * c;
            }
            pw *= self.phi;
            phi_sum += pw;
        }
        (self.level + phi_sum * self.trend, self.sigma2 * var_sum)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protect::share::sigmoid;

    fn series(hz: impl Fn(usize) -> f64, share: impl Fn(usize) -> f64, n: usize) -> Vec<WindowPoint> {
        (0..n)
            .map(|i| WindowPoint { window_end_us: (i as i64 + 1) * 60_000_000, hz_mean: hz(i), low_share: share(i), users: 500, sensorial_entropy: None })
            .collect()
    }

    #[test]
    fn too_little_history_gives_no_forecast() {
        let h = series(|_| 550.0, |_| 0.02, MIN_HISTORY - 1);
        for m in Model::ALL {
            assert!(m.forecast(&h, 1.0, 420.0).is_none());
        }
        let h = series(|_| 550.0, |_| 0.02, MIN_HISTORY);
        assert!(Model::ALL.iter().all(|m| m.forecast(&h, 1.0, 420.0).is_some()));
    }

    #[test]
    fn intervals_nest_and_probabilities_are_probabilities() {
        let h = series(|i| 550.0 + 3.0 * ((i * 7919) % 11) as f64, |i| 0.02 + 0.001 * ((i * 31) % 5) as f64, 60);
        for m in Model::ALL {
            let f = m.forecast(&h, 1.0, 420.0).unwrap();
            assert_eq!(f.iter().map(|f| f.horizon_min).collect::<Vec<_>>(), HORIZONS_MIN);
            for f in &f {
                assert!(f.lo95 <= f.lo80 && f.lo80 <= f.hz && f.hz <= f.hi80 && f.hi80 <= f.hi95, "{m:?} {f:?}");
                assert!((0.0..=1.0).contains(&f.p_collapse), "{m:?} {f:?}");
                // A stable region 130 Hz above the threshold is not collapsing.
                assert!(f.p_collapse < 0.01, "{m:?} {f:?}");
            }
            // Uncertainty grows with the horizon.
            assert!(f[3].hi95 - f[3].lo95 >= f[0].hi95 - f[0].lo95, "{m:?}");
        }
    }

    #[test]
    fn the_damped_trend_follows_a_linear_decline_and_damps_it() {
        let h = series(|i| 600.0 - 2.0 * i as f64, |_| 0.02, 40);
        let f = Model::DampedTrend.forecast(&h, 1.0, 420.0).unwrap();
        let last = 600.0 - 2.0 * 39.0;
        assert!(f[0].hz < last - 5.0, "follows the decline: {:?}", f[0]);
        assert!(f[3].hz > last - 60.0 - 1e-9, "damped: no faster than the trend: {:?}", f[3]);
        let p = Model::Persistence.forecast(&h, 1.0, 420.0).unwrap();
        assert_eq!(p[0].hz, last);
    }

    #[test]
    fn a_spreading_share_is_seen_before_the_mean_moves() {
        // Logistic spread without entropy: the share's logit grows 0.35 per minute from window
        // 30; the mean is the mixture.
        let share = |i: usize| sigmoid(-4.0 + 0.35 * (i as f64 - 30.0).max(0.0));
        let hz = |i: usize| 560.0 - 200.0 * share(i) + ((i * 7919) % 11) as f64 - 5.0;
        let h = series(hz, share, 60);
        let cross = h.iter().position(|p| p.hz_mean < 420.0).unwrap();
        let flagged = |m: Model| (MIN_HISTORY..cross).find(|&i| m.forecast(&h[..=i], 1.0, 420.0).unwrap()[1].p_collapse >= 0.8);
        let campo = flagged(Model::ShareTrend).expect("campo flags it before the mean crosses");
        assert!(h[campo].hz_mean > 500.0, "while the mean has barely moved: {:?}", h[campo]);
        let damped = flagged(Model::DampedTrend);
        assert!(damped.is_none_or(|d| campo < d), "earlier than the damped trend: {campo} vs {damped:?}, crossing at {cross}");
    }

    #[test]
    fn forecasts_are_deterministic() {
        let h = series(|i| 540.0 + (i as f64).sin() * 4.0, |i| 0.03 + 0.01 * (i as f64).cos().abs(), 50);
        for m in Model::ALL {
            assert_eq!(m.forecast(&h, 1.0, 420.0), m.forecast(&h, 1.0, 420.0));
        }
    }

    #[test]
    fn the_damped_trend_variance_matches_the_closed_form_for_h_2() {
        let m = DampedTrend { alpha: 0.5, beta: 0.1, phi: 0.9, level: 0.0, trend: 0.0, sigma2: 4.0 };
        let (_, v1) = m.predict(1);
        let (_, v2) = m.predict(2);
        assert!((v1 - 4.0).abs() < 1e-12);
        assert!((v2 - 4.0 * (1.0 + (0.5_f64 + 0.1 * 0.9).powi(2))).abs() < 1e-12);
    }
}
