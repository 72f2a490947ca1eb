//! Model configuration: the OLMo v1 hyper-parameters and the named presets.
//!
//! The field names follow the paper's notation; [`ModelConfig::to_hf_config`] maps them onto the
//! `config.json` that Hugging Face's `OlmoConfig` reads.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

/// Shape of an OLMo v1 decoder (non-parametric layernorm, SwiGLU, RoPE, tied embeddings).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Number of transformer blocks.
    pub n_layers: usize,
    /// Width of the residual stream.
    pub d_model: usize,
    /// Attention heads per block; `d_model / n_heads` is the head width.
    pub n_heads: usize,
    /// Hidden width of the SwiGLU MLP (the width of `gate` and of `up` each).
    pub d_ff: usize,
    /// Rows of the (tied) embedding matrix: the tokenizer's vocabulary padded up.
    pub vocab_size: usize,
    /// Ids the tokenizer can emit; ids in `vocab_real..vocab_size` are padding, never sampled.
    pub vocab_real: usize,
    /// Longest sequence the model is trained or run on.
    pub context: usize,
    /// RoPE base.
    pub rope_theta: f64,
    /// Layernorm epsilon.
    pub layer_norm_eps: f64,
    /// Id of the end-of-text token that separates documents.
    pub eos_token_id: u32,
}

/// The largest parameter count [`ModelConfig::validate`] accepts (2^38, about 275 billion).
pub const MAX_PARAMS: u64 = 1 << 38;

/// Names accepted by `--preset`.
pub const PRESETS: &[&str] = &["tiny", "olmo-124m", "olmo-1b"];

/// Pads a vocabulary size up to a multiple of 64 (OLMo pads 50,280 to 50,304 = 786·64... the
/// next multiple of 128 after 50,280 is 50,304, which is also a multiple of 64).
pub fn pad_vocab(n: usize) -> usize {
    n.div_ceil(128) * 128
}

impl ModelConfig {
    /// A named preset. `tiny` is the CPU demo; its vocabulary is set later from the tokenizer.
    pub fn preset(name: &str) -> Result<Self> {
        let olmo_vocab = 50_280;
        let c = match name {
            "tiny" => ModelConfig {
                n_layers: 4,
                d_model: 256,
                n_heads: 4,
                d_ff: 1024,
                vocab_size: pad_vocab(4096),
                vocab_real: 4096,
                context: 256,
                rope_theta: 10_000.0,
                layer_norm_eps: 1e-5,
                eos_token_id: 0,
            },
            "olmo-124m" => ModelConfig {
                n_layers: 12,
                d_model: 768,
                n_heads: 12,
                d_ff: 2048,
                vocab_size: pad_vocab(olmo_vocab),
                vocab_real: olmo_vocab,
                context: 1024,
                rope_theta: 10_000.0,
                layer_norm_eps: 1e-5,
                eos_token_id: 50_279,
            },
            "olmo-1b" => ModelConfig {
                n_layers: 16,
                d_model: 2048,
                n_heads: 16,
                d_ff: 8192,
                vocab_size: pad_vocab(olmo_vocab),
                vocab_real: olmo_vocab,
                context: 2048,
                rope_theta: 10_000.0,
                layer_norm_eps: 1e-5,
                eos_token_id: 50_279,
            },
            other => bail!(
                "unknown preset {other:?}: expected one of {}",
                PRESETS.join(", ")
            ),
        };
        Ok(c)
    }

    /// Sets the vocabulary from a tokenizer's size (padded) and its end-of-text id.
    pub fn with_vocab(mut self, vocab_real: usize, eos_token_id: u32) -> Self {
        self.vocab_real = vocab_real;
        self.vocab_size = pad_vocab(vocab_real);
        self.eos_token_id = eos_token_id;
        self
    }

    /// Width of one attention head.
    pub fn d_head(&self) -> usize {
        self.d_model / self.n_heads
    }

    /// Checks the shape is one the model can run; errors name the offending field.
    pub fn validate(&self) -> Result<()> {
        if self.n_layers == 0 || self.d_model == 0 || self.n_heads == 0 || self.d_ff == 0 {
            bail!("model config: n_layers, d_model, n_heads and d_ff must all be positive (got {self:?})");
        }
        if self.d_model % self.n_heads != 0 {
            bail!(
                "model config: n_heads ({}) must divide d_model ({})",
                self.n_heads,
                self.d_model
            );
        }
        if self.d_head() % 2 != 0 {
            bail!("model config: the head width d_model/n_heads = {} must be even for rotary embeddings", self.d_head());
        }
        if self.vocab_real == 0 || self.vocab_real > self.vocab_size {
            bail!(
                "model config: vocab_real ({}) must be in 1..=vocab_size ({})",
                self.vocab_real,
                self.vocab_size
            );
        }
        if (self.eos_token_id as usize) >= self.vocab_real {
            bail!(
                "model config: eos_token_id ({}) must be below vocab_real ({})",
                self.eos_token_id,
                self.vocab_real
            );
        }
        if self.context == 0 {
            bail!("model config: context must be positive");
        }
        // Far beyond any model this runs, and small enough that no size computed from the
        // config overflows: a corrupt or hostile config.json is refused here, before anything
        // is allocated from it.
        let (l, d, f, v) = (
            self.n_layers as u128,
            self.d_model as u128,
            self.d_ff as u128,
            self.vocab_size as u128,
        );
        let params = l * (4 * d * d + 3 * d * f) + v * d;
        if self.n_layers > 4096 || self.context > 1 << 24 || params > MAX_PARAMS as u128 {
            bail!(
                "model config: {} layers, d_model {}, d_ff {}, vocab {}, context {}: {params} \
                 parameters, more than the {MAX_PARAMS} (or 4096 layers, or a context of 2^24) \
                 this engine accepts; is the config corrupt?",
                self.n_layers,
                self.d_model,
                self.d_ff,
                self.vocab_size,
                self.context
            );
        }
        Ok(())
    }

    /// Number of parameters (the tied embedding counted once).
    pub fn n_params(&self) -> usize {
        crate::model::params::ParamLayout::new(self).len()
    }

    /// Forward-pass FLOPs per token for a sequence of length `t` (matmuls 2·params, attention
    /// 2·2·T·d per layer averaged over causal positions), as used for MFU. Training is 3×.
    pub fn flops_per_token(&self, t: usize) -> f64 {
        let n = self.n_params() as f64;
        let attn = (self.n_layers * 2 * self.d_model * t) as f64; // causal: half of 4·T·d
        2.0 * n + attn
    }

    /// The `config.json` that Hugging Face `transformers` reads as an `OlmoConfig`.
    pub fn to_hf_config(&self) -> serde_json::Value {
        serde_json::json!({
            "architectures": ["OlmoForCausalLM"],
            "model_type": "olmo",
            "vocab_size": self.vocab_size,
            "hidden_size": self.d_model,
            "intermediate_size": self.d_ff,
            "num_hidden_layers": self.n_layers,
            "num_attention_heads": self.n_heads,
            "num_key_value_heads": self.n_heads,
            "hidden_act": "silu",
            "max_position_embeddings": self.context,
            "initializer_range": 0.02,
            "use_cache": true,
            "pad_token_id": 1,
            "bos_token_id": null,
            "eos_token_id": self.eos_token_id,
            "tie_word_embeddings": true,
            "rope_theta": self.rope_theta,
            "rope_scaling": null,
            "attention_bias": false,
            "attention_dropout": 0.0,
            "clip_qkv": null,
            "torch_dtype": "float32",
            "baddata": {
                "vocab_real": self.vocab_real,
                "layer_norm_eps": self.layer_norm_eps,
            }
        })
    }

    /// Reads back a config written by [`ModelConfig::to_hf_config`] (or any HF OLMo config).
    pub fn from_hf_config(v: &serde_json::Value) -> Result<Self> {
        let get = |k: &str| -> Result<usize> {
            v.get(k)
                .and_then(|x| x.as_u64())
                .map(|x| x as usize)
                .ok_or_else(|| {
                    anyhow::anyhow!("config.json: field {k:?} missing or not an integer")
                })
        };
        let vocab_size = get("vocab_size")?;
        let ours = v.get("baddata");
        let vocab_real = ours
            .and_then(|o| o.get("vocab_real"))
            .and_then(|x| x.as_u64())
            .map(|x| x as usize)
            .unwrap_or(vocab_size.min(50_280));
        let eps = ours
            .and_then(|o| o.get("layer_norm_eps"))
            .and_then(|x| x.as_f64())
            .unwrap_or(1e-5);
        let c = ModelConfig {
            n_layers: get("num_hidden_layers")?,
            d_model: get("hidden_size")?,
            n_heads: get("num_attention_heads")?,
            d_ff: get("intermediate_size")?,
            vocab_size,
            vocab_real,
            context: get("max_position_embeddings")?,
            rope_theta: v
                .get("rope_theta")
                .and_then(|x| x.as_f64())
                .unwrap_or(10_000.0),
            layer_norm_eps: eps,
            eos_token_id: v.get("eos_token_id").and_then(|x| x.as_u64()).unwrap_or(0) as u32,
        };
        c.validate()?;
        Ok(c)
    }
}
