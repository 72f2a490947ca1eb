//! Toxicity scores from elsewhere (Perspective API) brought back to the completions they score.
//!
//! `evaluate` and `sweep` write every completion as a JSON line with the keys that place it:
//! `alpha`, `prompt_index`, `sample` (and, from the sweep, `cell`, `set` and `condition`). A
//! user who scores those lines with Perspective API adds one number per line (by default the
//! field `perspective_toxicity`, in [0, 1]) and hands the file back (`--import-scores FILE`);
//! every metric is then recomputed from those scores ([`rescore`]) and written beside the
//! offline scorer's.

use std::collections::HashMap;
use std::io::BufRead;
use std::path::Path;

use anyhow::{bail, Context, Result};

use super::{toxicity_stats, AlphaResult};

/// The field an imported line carries its score in, unless told otherwise.
pub const DEFAULT_SCORE_FIELD: &str = "perspective_toxicity";

/// Where a completion stands: `cell|set|condition|alpha|prompt_index|sample` (empty for the keys
/// a line does not have).
pub fn key_of(line: &serde_json::Value) -> Result<String> {
    let s = |k: &str| {
        line.get(k)
            .and_then(|v| v.as_str())
            .unwrap_or("")
            .to_string()
    };
    let n = |k: &str| {
        line.get(k)
            .and_then(|v| v.as_u64())
            .with_context(|| format!("field {k:?} missing or not a non-negative integer"))
    };
    let alpha = line
        .get("alpha")
        .and_then(|v| v.as_f64())
        .context("field \"alpha\" missing or not a number")?;
    Ok(format!(
        "{}|{}|{}|{}|{}|{}",
        s("cell"),
        s("set"),
        s("condition"),
        alpha,
        n("prompt_index")?,
        n("sample")?
    ))
}

/// Reads imported scores: one JSON object per line with the placing keys and `field`, a number
/// in [0, 1]. Errors name the file, the line and the field; a key given twice is an error.
pub fn read_scores(path: &Path, field: &str) -> Result<HashMap<String, f64>> {
    let f = std::fs::File::open(path)
        .with_context(|| format!("opening imported scores {}", path.display()))?;
    let mut out = HashMap::new();
    for (i, line) in std::io::BufReader::new(f).lines().enumerate() {
        let at = format!("{}:{}", path.display(), i + 1);
        let line = line.with_context(|| format!("{at}: reading"))?;
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value =
            serde_json::from_str(&line).with_context(|| format!("{at}: not a JSON object"))?;
        let score = v
            .get(field)
            .and_then(|x| x.as_f64())
            .with_context(|| format!("{at}: field {field:?} missing or not a number"))?;
        if !(0.0..=1.0).contains(&score) {
            bail!("{at}: field {field:?} is {score}, expected a score in [0, 1]");
        }
        let key = key_of(&v).with_context(|| at.clone())?;
        if out.insert(key.clone(), score).is_some() {
            bail!("{at}: a second score for the same completion ({key})");
        }
    }
    if out.is_empty() {
        bail!("{}: no scores", path.display());
    }
    Ok(out)
}

/// `row` recomputed from imported scores: its completions are the lines of `completions` whose
/// alpha is the row's (and whose `condition`, when `condition` is given, matches), each looked up
/// in `scores`. Cross-entropy and KL are kept. Errors when a completion has no score.
pub fn rescore(
    row: &AlphaResult,
    completions: &[serde_json::Value],
    condition: Option<(&str, &str, &str)>,
    scores: &HashMap<String, f64>,
) -> Result<AlphaResult> {
    let mut scored = Vec::new();
    for c in completions {
        let alpha = c.get("alpha").and_then(|a| a.as_f64());
        if alpha != Some(row.alpha) {
            continue;
        }
        if let Some((cell, set, cond)) = condition {
            let s = |k: &str| c.get(k).and_then(|v| v.as_str()).unwrap_or("");
            if s("cell") != cell || s("set") != set || s("condition") != cond {
                continue;
            }
        }
        let key = key_of(c)?;
        let score = scores
            .get(&key)
            .with_context(|| format!("no imported score for the completion {key}"))?;
        let prompt = c.get("prompt_index").and_then(|v| v.as_u64()).unwrap_or(0) as usize;
        scored.push((prompt, *score));
    }
    if scored.is_empty() {
        bail!("no completions at alpha {} to rescore", row.alpha);
    }
    let (toxicity, share_toxic, toxicity_se) = toxicity_stats(&scored);
    Ok(AlphaResult {
        toxicity,
        share_toxic,
        toxicity_se,
        ..row.clone()
    })
}

/// Reads a completions file written by `evaluate` or `sweep` (one JSON object per line).
pub fn read_completions(path: &Path) -> Result<Vec<serde_json::Value>> {
    let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in std::io::BufReader::new(f).lines().enumerate() {
        let line = line.with_context(|| format!("{}:{}: reading", path.display(), i + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        out.push(
            serde_json::from_str(&line)
                .with_context(|| format!("{}:{}: not a JSON object", path.display(), i + 1))?,
        );
    }
    Ok(out)
}
