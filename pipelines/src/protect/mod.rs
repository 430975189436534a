//! Collapse forecasts and protective mode (SPEC 5 and 6).
//!
//! At every window close, per region: the [`forecast`] of `hz_mean` at 5, 10, 15 and 30 minutes
//! with intervals and `p_collapse`, written to `collapse_forecast`; then the protective-mode
//! state machine of [`levels`], whose changes are written to `alerts` (the outbox) and sent to
//! `system.protect`. [`backtest`] scores the forecast models on history.

pub mod backtest;
pub mod forecast;
pub mod levels;
pub mod outbox;
pub mod share;
pub mod stage;

pub use forecast::{Forecast, Model, WindowPoint};
pub use levels::{Level, LevelChange, RegionLevel, Rules, WindowSignals};
pub use outbox::Outbox;
pub use stage::{ClosedWindow, ProtectStage, RegionProtect};
