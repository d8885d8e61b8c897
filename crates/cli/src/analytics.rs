//! Builds the analytics stage from config and follows the rules file while running.

use anyhow::{Context, Result};
use cartpulse_analytics::live::{AnalyticsConfig, CartAnalytics, RulesFile};
use cartpulse_engine::{Api, Operator};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

fn read_rules(path: &Path) -> Result<RulesFile> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read rules file {}", path.display()))?;
    RulesFile::parse(&text).map_err(|e| anyhow::anyhow!("rules file {}: {e}", path.display()))
}

/// The analytics stage, or `None` when `[analytics] enabled = false`. Every rule is compiled
/// and checked here, so a bad rule stops start-up with its name, position and reason.
pub fn operator(cfg: &AnalyticsConfig, origin: &str) -> Result<Option<Box<dyn Operator>>> {
    if !cfg.enabled {
        return Ok(None);
    }
    let file = match &cfg.rules_file {
        Some(p) => read_rules(p)?,
        None => RulesFile::default(),
    };
    let op = CartAnalytics::new(cfg.clone(), file)
        .map_err(|e| anyhow::anyhow!("{origin}: [analytics] {e}"))?;
    Ok(Some(Box::new(op)))
}

fn mtime(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

/// Reloads the rules file when it changes; a rejected file is logged and the running rules
/// stay.
pub fn watch_rules(path: PathBuf, api: Api) {
    std::thread::Builder::new()
        .name("rules-watch".into())
        .spawn(move || {
            let mut seen = mtime(&path);
            loop {
                std::thread::sleep(Duration::from_secs(1));
                let now = mtime(&path);
                if now == seen {
                    continue;
                }
                seen = now;
                let text = match std::fs::read_to_string(&path) {
                    Ok(t) => t,
                    Err(e) => {
                        tracing::warn!(path = %path.display(), error = %e, "cannot read rules file; keeping the running rules");
                        continue;
                    }
                };
                match api.analytics("reload_rules", serde_json::json!({ "toml": text })) {
                    Some(Ok(v)) => tracing::info!(path = %path.display(), rules = %v["rules"], "rules reloaded"),
                    Some(Err(why)) => tracing::error!(path = %path.display(), error = %why, "rules file rejected; the running rules stay"),
                    None => return, // the pipeline has stopped
                }
            }
        })
        .expect("spawn rules watcher");
}
