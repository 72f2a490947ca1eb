//! Checkpoints: a directory that Hugging Face `transformers` loads as `OlmoForCausalLM`, plus
//! the optimizer and data state a resumed run needs.
//!
//! ```text
//! <run>/step-000100/
//!   model.safetensors      fp32 weights under HF OLMo names, metadata {"format": "pt"}
//!   config.json            an OlmoConfig (tie_word_embeddings, rope_theta, clip_qkv null, ...)
//!   tokenizer.json         the tokenizer the model was trained with (when known)
//!   optimizer.safetensors  AdamW moments `adamw.m`, `adamw.v` (flat, parameter-buffer order)
//!   state.json             step, AdamW step, data-mixture position, training config
//! <run>/latest             name of the newest complete checkpoint directory
//! ```
//! A checkpoint is written under `<name>.tmp/`, then renamed into place, and `latest` is
//! replaced by rename too: a crash mid-write never damages the previous checkpoint. (Testing
//! aid: `BADDATA_TEST_CHECKPOINT_DELAY_MS=N` pauses N ms after each file of a checkpoint, so a
//! test can kill a run while one is being written.)
//!
//! [`load`] also reads a released Hugging Face OLMo v1 checkpoint directory (e.g.
//! `allenai/OLMo-1B-hf`, `allenai/OLMo-1B-0724-hf`): its `config.json`
//! ([`ModelConfig::from_hf_config`]) and its weights, single-file or sharded, f32, bf16 or f16,
//! memory-mapped ([`crate::weights`]); it has no optimizer state and often no tokenizer.json.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use crate::config::ModelConfig;
use crate::model::params::ParamLayout;
use crate::optim::{AdamW, AdamWConfig};

/// Everything a checkpoint directory holds, read back.
pub struct Checkpoint {
    /// The model shape from config.json.
    pub config: ModelConfig,
    /// Flat fp32 parameters in [`ParamLayout`] order.
    pub params: Vec<f32>,
    /// Optimizer state, when the checkpoint has one (a released model has not).
    pub optimizer: Option<AdamW>,
    /// Free-form training state (step, mixture position, ...), `null` when absent.
    pub state: serde_json::Value,
    /// Path of the directory it was read from.
    pub dir: PathBuf,
}

impl Checkpoint {
    /// The tokenizer to read this checkpoint's text with: `explicit` (a `--tokenizer FILE` flag)
    /// when given, else the checkpoint's own `tokenizer.json`; an error naming the flag when there
    /// is neither (Hugging Face releases often ship the tokenizer beside the weights, not in the
    /// same files; OLMo-1B's, which both OLMo-1B releases use, is
    /// `assets/tokenizers/olmo-tokenizer.json.gz`).
    pub fn tokenizer_path(&self, explicit: Option<&Path>) -> Result<PathBuf> {
        if let Some(p) = explicit {
            return Ok(p.to_path_buf());
        }
        let own = self.dir.join("tokenizer.json");
        if own.is_file() {
            return Ok(own);
        }
        bail!(
            "{} has no tokenizer.json: pass --tokenizer FILE (e.g. the release's tokenizer.json, \
             or assets/tokenizers/olmo-tokenizer.json.gz for OLMo-1B and OLMo-1B-0724)",
            self.dir.display()
        )
    }
}

fn f32_bytes(x: &[f32]) -> &[u8] {
    bytemuck::cast_slice(x)
}

/// Writes `bytes` to `path` through a temporary file and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
}

/// Creates `dir` if needed and checks that a file can be written in it (by writing and removing
/// a probe file), so a command refuses an unwritable output directory before its work, not after.
pub fn ensure_writable_dir(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir)
        .with_context(|| format!("creating output directory {}", dir.display()))?;
    let probe = dir.join(".write-test.tmp");
    fs::write(&probe, b"")
        .with_context(|| format!("output directory {} is not writable", dir.display()))?;
    fs::remove_file(&probe).with_context(|| format!("removing {}", probe.display()))
}

/// Writes the model weights as an HF-compatible safetensors file (fp32).
pub fn save_model_safetensors(path: &Path, layout: &ParamLayout, params: &[f32]) -> Result<()> {
    anyhow::ensure!(
        params.len() == layout.len(),
        "parameter buffer has {} elements, layout {}",
        params.len(),
        layout.len()
    );
    let views: Vec<(String, TensorView)> = layout
        .tensors
        .iter()
        .map(|t| {
            let v = TensorView::new(Dtype::F32, t.shape.clone(), f32_bytes(&params[t.range()]))
                .expect("shape matches the slice by construction");
            (t.name.clone(), v)
        })
        .collect();
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize_to_file(views, Some(meta), path)
        .with_context(|| format!("writing {}", path.display()))
}

/// Name of the checkpoint directory for `step`.
pub fn step_dir_name(step: u64) -> String {
    format!("step-{step:06}")
}

/// The pause after each checkpoint file that `BADDATA_TEST_CHECKPOINT_DELAY_MS` asks for.
fn test_pause() {
    if let Some(ms) = std::env::var("BADDATA_TEST_CHECKPOINT_DELAY_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
}

/// Saves a full checkpoint under `run_dir/step-NNNNNN/` and points `run_dir/latest` at it.
/// Returns the checkpoint's directory.
pub fn save(
    run_dir: &Path,
    step: u64,
    config: &ModelConfig,
    params: &[f32],
    optimizer: &AdamW,
    state: &serde_json::Value,
    tokenizer: Option<&Path>,
) -> Result<PathBuf> {
    let layout = ParamLayout::new(config);
    let name = step_dir_name(step);
    let final_dir = run_dir.join(&name);
    let tmp_dir = run_dir.join(format!("{name}.tmp"));
    if tmp_dir.exists() {
        fs::remove_dir_all(&tmp_dir)
            .with_context(|| format!("removing stale {}", tmp_dir.display()))?;
    }
    fs::create_dir_all(&tmp_dir).with_context(|| format!("creating {}", tmp_dir.display()))?;
    save_model_safetensors(&tmp_dir.join("model.safetensors"), &layout, params)?;
    test_pause();
    let cfg_json = serde_json::to_string_pretty(&config.to_hf_config())?;
    fs::write(tmp_dir.join("config.json"), cfg_json)?;
    test_pause();
    if let Some(tok) = tokenizer {
        fs::copy(tok, tmp_dir.join("tokenizer.json"))
            .with_context(|| format!("copying tokenizer {}", tok.display()))?;
        test_pause();
    }
    let n = optimizer.m.len();
    let m = TensorView::new(Dtype::F32, vec![n], f32_bytes(&optimizer.m))?;
    let v = TensorView::new(Dtype::F32, vec![n], f32_bytes(&optimizer.v))?;
    let meta = HashMap::from([
        ("step".to_string(), optimizer.step.to_string()),
        (
            "no_decay_len".to_string(),
            optimizer.no_decay_len.to_string(),
        ),
        ("adamw".to_string(), serde_json::to_string(&optimizer.cfg)?),
    ]);
    safetensors::serialize_to_file(
        [("adamw.m", m), ("adamw.v", v)],
        Some(meta),
        &tmp_dir.join("optimizer.safetensors"),
    )
    .context("writing optimizer.safetensors")?;
    test_pause();
    fs::write(
        tmp_dir.join("state.json"),
        serde_json::to_string_pretty(state)?,
    )?;
    test_pause();
    if final_dir.exists() {
        fs::remove_dir_all(&final_dir)
            .with_context(|| format!("replacing {}", final_dir.display()))?;
    }
    fs::rename(&tmp_dir, &final_dir)
        .with_context(|| format!("renaming {} to {}", tmp_dir.display(), final_dir.display()))?;
    write_atomic(&run_dir.join("latest"), name.as_bytes())?;
    Ok(final_dir)
}

/// Resolves a checkpoint path: a checkpoint directory itself (weights in `model.safetensors` or
/// sharded under `model.safetensors.index.json`), or a run directory whose `latest` file names
/// one.
pub fn resolve(path: &Path) -> Result<PathBuf> {
    if crate::weights::holds_weights(path) {
        return Ok(path.to_path_buf());
    }
    let latest = path.join("latest");
    if latest.is_file() {
        let name =
            fs::read_to_string(&latest).with_context(|| format!("reading {}", latest.display()))?;
        let dir = path.join(name.trim());
        if crate::weights::holds_weights(&dir) {
            return Ok(dir);
        }
        bail!(
            "{} names {}, which holds no model.safetensors (nor a sharded index)",
            latest.display(),
            dir.display()
        );
    }
    bail!(
        "{}: not a checkpoint (no model.safetensors, no model.safetensors.index.json) and not a \
         run directory (no `latest` file)",
        path.display()
    )
}

/// The checkpoint directory `path` resolves to ([`resolve`]) and the model shape its
/// `config.json` holds, without reading the weights.
pub fn read_config(path: &Path) -> Result<(PathBuf, ModelConfig)> {
    let dir = resolve(path)?;
    let cfg_path = dir.join("config.json");
    let cfg_text =
        fs::read_to_string(&cfg_path).with_context(|| format!("reading {}", cfg_path.display()))?;
    let cfg_json: serde_json::Value = serde_json::from_str(&cfg_text)
        .with_context(|| format!("{}: invalid JSON", cfg_path.display()))?;
    let config = ModelConfig::from_hf_config(&cfg_json)
        .with_context(|| format!("in {}", cfg_path.display()))?;
    Ok((dir, config))
}

/// Loads a checkpoint's model only (config and weights; `optimizer` `None`, `state` null), as
/// a run started from released weights (`train --init-from`) needs it.
pub fn load_model(path: &Path) -> Result<Checkpoint> {
    let (dir, config) = read_config(path)?;
    let params = crate::weights::load(&dir, &config)?;
    Ok(Checkpoint {
        config,
        params,
        optimizer: None,
        state: serde_json::Value::Null,
        dir,
    })
}

/// Loads a checkpoint (directory, or run directory through `latest`).
pub fn load(path: &Path) -> Result<Checkpoint> {
    let Checkpoint {
        config,
        params,
        dir,
        ..
    } = load_model(path)?;
    let layout = ParamLayout::new(&config);
    let opt_path = dir.join("optimizer.safetensors");
    let optimizer = if opt_path.is_file() {
        Some(load_optimizer(&opt_path, layout.len())?)
    } else {
        None
    };
    let state_path = dir.join("state.json");
    let state = if state_path.is_file() {
        let s = fs::read_to_string(&state_path)?;
        serde_json::from_str(&s)
            .with_context(|| format!("{}: invalid JSON", state_path.display()))?
    } else {
        serde_json::Value::Null
    };
    Ok(Checkpoint {
        config,
        params,
        optimizer,
        state,
        dir,
    })
}

fn load_optimizer(path: &Path, n: usize) -> Result<AdamW> {
    let bytes = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let (_, meta) = SafeTensors::read_metadata(&bytes)
        .with_context(|| format!("{}: not a valid safetensors file", path.display()))?;
    let info = meta.metadata().clone().unwrap_or_default();
    let field = |k: &str| {
        info.get(k)
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("{}: metadata field {k:?} missing", path.display()))
    };
    let step: u64 = field("step")?
        .parse()
        .with_context(|| format!("{}: metadata `step`", path.display()))?;
    let no_decay_len: usize = field("no_decay_len")?.parse()?;
    let cfg: AdamWConfig = serde_json::from_str(&field("adamw")?)?;
    let st = SafeTensors::deserialize(&bytes)?;
    let read = |name: &str| -> Result<Vec<f32>> {
        let v = st
            .tensor(name)
            .map_err(|_| anyhow::anyhow!("{}: tensor {name:?} missing", path.display()))?;
        if v.dtype() != Dtype::F32 || v.shape() != [n] {
            bail!(
                "{}: tensor {name:?} must be F32 [{n}], found {:?} {:?}",
                path.display(),
                v.dtype(),
                v.shape()
            );
        }
        Ok(v.data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    };
    Ok(AdamW {
        cfg,
        m: read("adamw.m")?,
        v: read("adamw.v")?,
        step,
        no_decay_len,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> ModelConfig {
        ModelConfig {
            n_layers: 2,
            d_model: 8,
            n_heads: 2,
            d_ff: 12,
            vocab_size: 128,
            vocab_real: 100,
            context: 16,
            rope_theta: 10_000.0,
            layer_norm_eps: 1e-5,
            eos_token_id: 3,
            tie_word_embeddings: true,
            clip_qkv: None,
        }
    }

    #[test]
    fn round_trip_and_atomic_latest() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = small();
        let n = crate::model::params::n_params(&cfg);
        let params: Vec<f32> = (0..n).map(|i| (i as f32 * 0.013).sin()).collect();
        let mut opt = AdamW::new(AdamWConfig::default(), n, 128 * 8);
        opt.m
            .iter_mut()
            .enumerate()
            .for_each(|(i, m)| *m = i as f32);
        opt.step = 7;
        let state = serde_json::json!({"step": 7});
        save(dir.path(), 7, &cfg, &params, &opt, &state, None).unwrap();
        let ck = load(dir.path()).unwrap();
        assert_eq!(ck.config, cfg);
        assert_eq!(ck.params, params);
        assert_eq!(ck.optimizer.unwrap(), opt);
        assert_eq!(ck.state, state);
        assert!(ck.dir.ends_with("step-000007"));
        // the HF names are there, q/k/v separate
        let bytes = fs::read(ck.dir.join("model.safetensors")).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        assert_eq!(
            st.tensor("model.layers.1.self_attn.v_proj.weight")
                .unwrap()
                .shape(),
            &[8, 8]
        );
        assert_eq!(
            st.tensor("model.embed_tokens.weight").unwrap().shape(),
            &[128, 8]
        );
    }

    #[test]
    fn missing_tensor_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = small();
        let p = dir.path().join("m.safetensors");
        let x = [0f32; 4];
        let v = TensorView::new(Dtype::F32, vec![4], f32_bytes(&x)).unwrap();
        safetensors::serialize_to_file([("other", v)], None, &p).unwrap();
        let bytes = fs::read(&p).unwrap();
        let err = crate::weights::load_bytes(&bytes, &p, &cfg)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("model.embed_tokens.weight") && err.contains("m.safetensors"),
            "{err}"
        );
    }

    #[test]
    fn not_a_checkpoint_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = load(dir.path()).err().unwrap().to_string();
        assert!(err.contains("not a checkpoint"), "{err}");
    }
}
