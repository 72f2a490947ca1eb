//! Labelled texts for the probes: `{text, label}` pairs with label 1 = toxic, 0 = not.
//!
//! Sources ([`LabelFormat`]):
//! - `jsonl`: one object per line, `{"text": str, "label": 0|1}`; other fields are ignored (so
//!   the demo's `probe.jsonl`, `{"text", "label", "source", "score"}`, reads as is).
//! - `toxigen`: ToxiGen's human-annotated rows as JSONL, `{"text": str, "toxicity_human": 1..5}`;
//!   the label is `toxicity_human > threshold` (2.5 by default).
//!
//! Files may be gzip-compressed; blank lines are skipped. Every error names the file and line.

use std::io::BufRead;
use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::data::demo::ProbeItem;
use crate::data::text::open_maybe_gz;

/// One labelled example.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LabelledText {
    /// The text the model reads.
    pub text: String,
    /// 1: toxic; 0: not toxic.
    pub label: u8,
}

/// How a labelled file is laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LabelFormat {
    /// {"text", "label"} per line, label 0 or 1.
    Jsonl,
    /// ToxiGen annotated rows {"text", "toxicity_human"} per line, binarised at a threshold.
    Toxigen,
}

/// Default ToxiGen threshold: `toxicity_human > 2.5` is toxic (the scale is 1 to 5).
pub const TOXIGEN_THRESHOLD: f64 = 2.5;

/// Parses one line of `format`; `where_` (e.g. `file.jsonl:12`) prefixes every error.
pub fn parse_line(
    line: &str,
    format: LabelFormat,
    threshold: f64,
    where_: &str,
) -> Result<LabelledText> {
    let v: serde_json::Value =
        serde_json::from_str(line).with_context(|| format!("{where_}: invalid JSON"))?;
    let text = v
        .get("text")
        .and_then(|t| t.as_str())
        .with_context(|| format!("{where_}: expected a string field \"text\""))?
        .to_string();
    let label = match format {
        LabelFormat::Jsonl => {
            let raw = v
                .get("label")
                .with_context(|| format!("{where_}: expected a field \"label\" (0 or 1)"))?;
            match raw.as_u64() {
                Some(0) => 0,
                Some(1) => 1,
                _ => {
                    bail!("{where_}: label {raw} is not 0 or 1 (expected 0 = not toxic, 1 = toxic)")
                }
            }
        }
        LabelFormat::Toxigen => {
            let raw = v.get("toxicity_human").with_context(|| {
                format!("{where_}: expected a numeric field \"toxicity_human\" (1 to 5)")
            })?;
            let score = raw.as_f64().with_context(|| {
                format!("{where_}: \"toxicity_human\" is {raw}, expected a number from 1 to 5")
            })?;
            if !(1.0..=5.0).contains(&score) {
                bail!("{where_}: \"toxicity_human\" is {score}, expected a number from 1 to 5");
            }
            u8::from(score > threshold)
        }
    };
    Ok(LabelledText { text, label })
}

/// Reads a labelled file (possibly gzipped) in `format`. `threshold` only matters for ToxiGen.
/// Errors on a label other than 0/1 (naming file and line), an empty file, or a set with a
/// single class (see [`check_classes`]).
pub fn read_labelled(
    path: &Path,
    format: LabelFormat,
    threshold: f64,
) -> Result<Vec<LabelledText>> {
    let reader = open_maybe_gz(path)?;
    let mut out = Vec::new();
    for (i, line) in reader.lines().enumerate() {
        let where_ = format!("{}:{}", path.display(), i + 1);
        let line = line.with_context(|| format!("{where_}: reading"))?;
        if line.trim().is_empty() {
            continue;
        }
        out.push(parse_line(&line, format, threshold, &where_)?);
    }
    check_classes(&out, &path.display().to_string())?;
    Ok(out)
}

/// The demo's probe set as labelled texts (errors on a label that is not 0/1).
pub fn from_probe_items(items: &[ProbeItem], name: &str) -> Result<Vec<LabelledText>> {
    let out = items
        .iter()
        .enumerate()
        .map(|(i, p)| {
            if p.label > 1 {
                bail!("{name}:{}: label {} is not 0 or 1", i + 1, p.label);
            }
            Ok(LabelledText {
                text: p.text.clone(),
                label: p.label,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    check_classes(&out, name)?;
    Ok(out)
}

/// Counts of (label 0, label 1).
pub fn class_counts(texts: &[LabelledText]) -> (usize, usize) {
    let pos = texts.iter().filter(|t| t.label == 1).count();
    (texts.len() - pos, pos)
}

/// A probe needs both classes, each with at least two examples (one for training, one for
/// validation); `name` names the set in the error.
pub fn check_classes(texts: &[LabelledText], name: &str) -> Result<()> {
    let (neg, pos) = class_counts(texts);
    if texts.is_empty() {
        bail!("{name}: no labelled texts (expected lines with a text and a label)");
    }
    if neg == 0 || pos == 0 {
        bail!(
            "{name}: only one class ({} texts, all labelled {}): a probe needs both toxic (1) and \
             non-toxic (0) examples",
            texts.len(),
            u8::from(pos > 0)
        );
    }
    if neg < 2 || pos < 2 {
        bail!(
            "{name}: {neg} non-toxic and {pos} toxic texts: a probe needs at least 2 of each (one \
             to train on, one to validate)"
        );
    }
    Ok(())
}
