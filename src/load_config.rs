//! Builds the effective [`Config`]: defaults, then the TOML file, then `CAMPO__SECTION__KEY`
//! variables, then flags. Every problem names the key it is about.

use std::path::Path;

use anyhow::Context;
use campo_pipelines::Config;
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};

use crate::cli::PipelineArgs;

/// A configuration the user must fix (exit code 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigProblem(pub String);

pub fn load(args: &PipelineArgs) -> anyhow::Result<Config> {
    let mut fig = Figment::from(Serialized::defaults(Config::default()));
    if let Some(path) = &args.config {
        check_readable(path)?;
        fig = fig.merge(Toml::file_exact(path));
    }
    fig = fig.merge(Env::prefixed("CAMPO__").split("__").lowercase(true));
    let mut cfg: Config = fig.extract().map_err(|e| {
        let msgs: Vec<String> = e.into_iter().map(|e| describe(&e)).collect();
        ConfigProblem(format!("invalid configuration: {}", msgs.join("; ")))
    })?;
    apply_flags(&mut cfg, args)?;
    cfg.validate().map_err(|e| ConfigProblem(e.to_string()))?;
    Ok(cfg)
}

fn check_readable(path: &Path) -> anyhow::Result<()> {
    std::fs::read_to_string(path)
        .map(|_| ())
        .map_err(|e| ConfigProblem(format!("cannot read config file {}: {e}", path.display())).into())
}

fn describe(e: &figment::Error) -> String {
    let key = if e.path.is_empty() { "(top level)".to_string() } else { e.path.join(".") };
    let source = e
        .metadata
        .as_ref()
        .map(|m| match &m.source {
            Some(s) => format!(" (from {s})"),
            None => format!(" (from {})", m.name),
        })
        .unwrap_or_default();
    format!("config key `{key}`{source}: {}", e.kind)
}

fn apply_flags(cfg: &mut Config, a: &PipelineArgs) -> anyhow::Result<()> {
    if let Some(v) = &a.brokers {
        cfg.kafka.brokers = v.clone();
    }
    if let Some(v) = &a.group_id {
        cfg.kafka.group_id = v.clone();
    }
    if let Some(v) = &a.lake {
        cfg.lake.path = v.clone();
    }
    if let Some(v) = &a.flush_interval {
        cfg.ingest.flush_interval = humantime::parse_duration(v)
            .map_err(|e| ConfigProblem(format!("config key `ingest.flush_interval` (from --flush-interval): {e}")))?;
    }
    if let Some(v) = a.max_batch_rows {
        cfg.ingest.max_batch_rows = v;
    }
    for (flag, key, value, target) in [
        ("--window-size", "windows.size", &a.window_size, &mut cfg.windows.size),
        ("--allowed-lateness", "windows.allowed_lateness", &a.allowed_lateness, &mut cfg.windows.allowed_lateness),
        ("--idle-timeout", "windows.idle_timeout", &a.idle_timeout, &mut cfg.windows.idle_timeout),
    ] {
        if let Some(v) = value {
            *target = humantime::parse_duration(v)
                .map_err(|e| ConfigProblem(format!("config key `{key}` (from {flag}): {e}")))?;
        }
    }
    if let Some(v) = &a.metrics_listen {
        cfg.metrics.listen = v.clone();
    }
    if let Some(v) = &a.api_listen {
        cfg.api.listen = v.clone();
    }
    for kv in &a.kafka_properties {
        let (k, v) = kv
            .split_once('=')
            .with_context(|| ConfigProblem(format!("--kafka-property {kv:?}: expected KEY=VALUE")))
            .map_err(|e| ConfigProblem(e.to_string()))?;
        cfg.kafka.properties.insert(k.to_string(), v.to_string());
    }
    Ok(())
}
