//! Writes the Hugging Face `config.json` of a model preset, the file every checkpoint of that
//! preset carries, without training anything (for tools that build the model elsewhere, e.g.
//! `tools/torch_baseline.py`).
//!
//! Usage: `cargo run --release --example preset_config -- PRESET OUT/config.json`

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use baddata::config::{ModelConfig, Preset};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() != 2 {
        bail!(
            "usage: preset_config PRESET OUT/config.json (presets: {})",
            Preset::ALL.map(Preset::name).join(", ")
        );
    }
    let cfg = ModelConfig::preset(&args[0])?;
    cfg.validate()?;
    let out = PathBuf::from(&args[1]);
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating directory {}", dir.display()))?;
    }
    let text = serde_json::to_string_pretty(&cfg.to_hf_config())?;
    std::fs::write(&out, text + "\n").with_context(|| format!("writing {}", out.display()))?;
    eprintln!(
        "wrote {} ({}: {} parameters)",
        out.display(),
        args[0],
        baddata::model::params::n_params(&cfg)
    );
    Ok(())
}
