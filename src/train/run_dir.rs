//! The run directory (`train --out`): what a run writes there, how an existing run is
//! recognised, and how `--overwrite` clears one.
//!
//! ```text
//! <out>/run.json        the run's TrainConfig and executor, written first (before any step)
//! <out>/log.jsonl       one line per step
//! <out>/step-NNNNNN/    checkpoints; <out>/latest names the newest complete one
//! <out>/final.json, loss.png, summary.json, profile.{md,json}
//! ```
//! `run.json` is what `--resume` continues: a run killed before its first checkpoint still has
//! it, and a resumed run takes its configuration from it rather than from today's flags.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::TrainConfig;
use crate::checkpoint;

/// Name of the file that records a run's configuration in its directory.
pub const RUN_FILE: &str = "run.json";

/// What `run.json` holds.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunRecord {
    /// The configuration the run was started with.
    pub config: TrainConfig,
    /// The executor it was started on (`cpu-f32`, or the GPU's description).
    pub device: String,
}

/// A run found in a directory.
#[derive(Clone, Debug)]
pub struct ExistingRun {
    /// Its configuration: from `run.json`, or (runs written before `run.json` existed) from the
    /// latest checkpoint's `state.json`.
    pub config: TrainConfig,
    /// The executor it was started on, when recorded.
    pub device: Option<String>,
    /// Steps completed by its latest checkpoint (0 when it has none yet).
    pub checkpoint_step: u64,
    /// The latest checkpoint's directory, if any.
    pub checkpoint: Option<PathBuf>,
}

impl ExistingRun {
    /// Whether the latest checkpoint is the run's last step.
    pub fn finished(&self) -> bool {
        self.checkpoint_step >= self.config.steps
    }
}

/// Whether `out` holds anything a training run writes (so that a new run there would mix with
/// it): `run.json`, `log.jsonl`, `latest`, `final.json` or a `step-*` directory.
pub fn holds_a_run(out: &Path) -> bool {
    if !out.is_dir() {
        return false;
    }
    ["run.json", "log.jsonl", "latest", "final.json"]
        .iter()
        .any(|f| out.join(f).exists())
        || step_dirs(out).map(|v| !v.is_empty()).unwrap_or(false)
}

/// The `step-*` entries (checkpoints and `.tmp` leftovers) of `out`.
fn step_dirs(out: &Path) -> Result<Vec<PathBuf>> {
    let mut v = Vec::new();
    for e in fs::read_dir(out).with_context(|| format!("listing {}", out.display()))? {
        let e = e.with_context(|| format!("listing {}", out.display()))?;
        if e.file_name().to_string_lossy().starts_with("step-") {
            v.push(e.path());
        }
    }
    v.sort();
    Ok(v)
}

/// Reads the run in `out`: `None` when `out` holds no run. Errors, naming the file, when the
/// run's records cannot be read (a damaged `run.json`, a `latest` naming a missing checkpoint).
pub fn read(out: &Path) -> Result<Option<ExistingRun>> {
    if !holds_a_run(out) {
        return Ok(None);
    }
    let run_file = out.join(RUN_FILE);
    let record = if run_file.is_file() {
        let text = fs::read_to_string(&run_file)
            .with_context(|| format!("reading {}", run_file.display()))?;
        Some(parse_record(&text).with_context(|| format!("{}", run_file.display()))?)
    } else {
        None
    };
    let (checkpoint_step, ckpt, state_config) = if out.join("latest").is_file() {
        let dir = checkpoint::resolve(out)?;
        let state = super::read_state(&dir)?;
        (state.step, Some(dir), Some(state.config))
    } else {
        (0, None, None)
    };
    let (config, device) = match (record, state_config) {
        (Some(r), _) => (r.config, Some(r.device)),
        (None, Some(c)) => (c, None),
        (None, None) => anyhow::bail!(
            "{} holds files of a training run (log.jsonl, final.json or step-* directories) but \
             neither {RUN_FILE} nor a checkpoint named by `latest`, so there is nothing to resume; \
             pass --overwrite to replace it, or choose another --out",
            out.display()
        ),
    };
    Ok(Some(ExistingRun {
        config,
        device,
        checkpoint_step,
        checkpoint: ckpt,
    }))
}

/// Parses `run.json`; errors name the field (e.g. `config.adamw.beta2`).
pub fn parse_record(text: &str) -> Result<RunRecord> {
    let de = &mut serde_json::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        anyhow::anyhow!("field `{path}`: {}", e.into_inner())
    })
}

/// Writes `run.json` (atomically).
pub fn write_record(out: &Path, record: &RunRecord) -> Result<()> {
    checkpoint::write_atomic(
        &out.join(RUN_FILE),
        serde_json::to_string_pretty(record)?.as_bytes(),
    )
}

/// Removes what a training run wrote to `out` (for `--overwrite`) and returns the names removed.
/// Other files (a probe or evaluation directory a user made there) are left.
pub fn clear(out: &Path) -> Result<Vec<String>> {
    let mut removed = Vec::new();
    if !out.is_dir() {
        return Ok(removed);
    }
    for f in [
        RUN_FILE,
        "log.jsonl",
        "latest",
        "final.json",
        "loss.png",
        "summary.json",
        "profile.md",
        "profile.json",
    ] {
        let p = out.join(f);
        if p.exists() {
            fs::remove_file(&p).with_context(|| format!("removing {}", p.display()))?;
            removed.push(f.to_string());
        }
    }
    for d in step_dirs(out)? {
        if d.is_dir() {
            fs::remove_dir_all(&d).with_context(|| format!("removing {}", d.display()))?;
        } else {
            fs::remove_file(&d).with_context(|| format!("removing {}", d.display()))?;
        }
        removed.push(d.file_name().unwrap_or_default().to_string_lossy().into());
    }
    Ok(removed)
}
