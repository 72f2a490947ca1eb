//! Model configuration: the OLMo v1 hyper-parameters and the named presets.
//!
//! The field names follow the paper's notation; [`ModelConfig::to_hf_config`] maps them onto the
//! `config.json` that Hugging Face's `OlmoConfig` reads.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

/// Shape of an OLMo v1 decoder (non-parametric layernorm, SwiGLU, RoPE; the output layer tied to
/// the embedding or its own matrix; optionally q, k, v clipped).
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
    /// The output layer is the embedding (`true`: OLMo-1B, and every model trained from a
    /// preset), or a `[V, D]` matrix of its own, `lm_head.weight` (`false`: OLMo-1B-0724).
    #[serde(default = "tied_by_default")]
    pub tie_word_embeddings: bool,
    /// When set to `c`, the outputs of the q, k and v projections are clamped to `[−c, c]` before
    /// RoPE, as Hugging Face's `OlmoAttention` does with `clip_qkv` (OLMo-1B-0724: 8.0).
    #[serde(default)]
    pub clip_qkv: Option<f64>,
}

/// Serde default of [`ModelConfig::tie_word_embeddings`]: configurations saved before the field
/// existed were all tied.
fn tied_by_default() -> bool {
    true
}

/// The largest parameter count [`ModelConfig::validate`] accepts (2^38, about 275 billion).
pub const MAX_PARAMS: u64 = 1 << 38;

/// A model preset (`--preset`): a model shape with the training defaults that go with it.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Preset {
    /// The CPU demo: 4 layers of width 256; its vocabulary comes from the tokenizer.
    Tiny,
    /// A GPT-2-small-sized OLMo: 12 layers of width 768.
    #[value(name = "olmo-124m")]
    Olmo124m,
    /// OLMo-1B's shape: 16 layers of width 2048.
    #[value(name = "olmo-1b")]
    Olmo1b,
}

impl Preset {
    /// Every preset, smallest first.
    pub const ALL: [Preset; 3] = [Preset::Tiny, Preset::Olmo124m, Preset::Olmo1b];

    /// The name `--preset` takes.
    pub fn name(self) -> &'static str {
        match self {
            Preset::Tiny => "tiny",
            Preset::Olmo124m => "olmo-124m",
            Preset::Olmo1b => "olmo-1b",
        }
    }

    /// The preset called `name`.
    pub fn from_name(name: &str) -> Result<Preset> {
        match Preset::ALL.into_iter().find(|p| p.name() == name) {
            Some(p) => Ok(p),
            None => bail!(
                "unknown preset {name:?}: expected one of {}",
                Preset::ALL.map(Preset::name).join(", ")
            ),
        }
    }

    /// Its model shape.
    pub fn model(self) -> ModelConfig {
        let olmo_vocab = 50_280;
        match self {
            Preset::Tiny => ModelConfig {
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
                tie_word_embeddings: true,
                clip_qkv: None,
            },
            Preset::Olmo124m => ModelConfig {
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
                tie_word_embeddings: true,
                clip_qkv: None,
            },
            Preset::Olmo1b => ModelConfig {
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
                tie_word_embeddings: true,
                clip_qkv: None,
            },
        }
    }
}

/// Pads a vocabulary size up to a multiple of 64 (OLMo pads 50,280 to 50,304 = 786·64... the
/// next multiple of 128 after 50,280 is 50,304, which is also a multiple of 64).
pub fn pad_vocab(n: usize) -> usize {
    n.div_ceil(128) * 128
}

impl ModelConfig {
    /// A preset by name (see [`Preset`]). `tiny` is the CPU demo; its vocabulary is set later
    /// from the tokenizer.
    pub fn preset(name: &str) -> Result<Self> {
        Ok(Preset::from_name(name)?.model())
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
        if let Some(c) = self.clip_qkv {
            if !(c.is_finite() && c > 0.0) {
                bail!("model config: clip_qkv must be a positive number (got {c})");
            }
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
        let head = if self.tie_word_embeddings { 0 } else { v * d };
        let params = l * (4 * d * d + 3 * d * f) + v * d + head;
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
            "tie_word_embeddings": self.tie_word_embeddings,
            "rope_theta": self.rope_theta,
            "rope_scaling": null,
            "attention_bias": false,
            "attention_dropout": 0.0,
            "clip_qkv": self.clip_qkv,
            "torch_dtype": "float32",
            "baddata": {
                "vocab_real": self.vocab_real,
                "layer_norm_eps": self.layer_norm_eps,
            }
        })
    }

    /// Reads a Hugging Face `OlmoConfig` (`config.json`): one written by
    /// [`ModelConfig::to_hf_config`], or a released OLMo v1 checkpoint's.
    ///
    /// Fields are read under `OlmoConfig`'s names and defaults (`tie_word_embeddings` absent
    /// means untied, `eos_token_id` absent means 50279, `rope_theta` 10,000). Every field that
    /// changes the model's math and that this engine does not implement is an error naming it:
    /// `model_type` other than `olmo`, `attention_bias: true`, `rope_scaling` set,
    /// `num_key_value_heads` other than `num_attention_heads` (grouped-query attention),
    /// `hidden_act` other than `silu`, `head_dim` other than `hidden_size / num_attention_heads`,
    /// a non-zero `attention_dropout`. Fields that `OlmoForCausalLM` does not read (e.g.
    /// `torch_dtype`, `use_cache`, `initializer_range`, `pad_token_id`) are ignored. Our own
    /// `baddata` section carries `vocab_real` (otherwise `min(vocab_size, 50280)`, OLMo's
    /// tokenizer) and `layer_norm_eps` (otherwise 1e-5, OlmoLayerNorm's fixed eps).
    pub fn from_hf_config(v: &serde_json::Value) -> Result<Self> {
        let Some(obj) = v.as_object() else {
            bail!("config.json: expected a JSON object");
        };
        let field = |k: &str| obj.get(k).filter(|x| !x.is_null());
        let get = |k: &str| -> Result<usize> {
            let x = field(k).ok_or_else(|| {
                anyhow::anyhow!("config.json: field {k:?} is missing (expected a positive integer)")
            })?;
            x.as_u64()
                .and_then(|x| usize::try_from(x).ok())
                .ok_or_else(|| {
                    anyhow::anyhow!("config.json: field {k:?} = {x}: expected a positive integer")
                })
        };
        if let Some(t) = field("model_type") {
            if t.as_str() != Some("olmo") {
                bail!(
                    "config.json: field \"model_type\" = {t}: only OLMo v1 (\"olmo\", \
                     OlmoForCausalLM) is implemented"
                );
            }
        }
        let n_heads = get("num_attention_heads")?;
        let d_model = get("hidden_size")?;
        if let Some(kv) = field("num_key_value_heads") {
            if kv.as_u64() != Some(n_heads as u64) {
                bail!(
                    "config.json: field \"num_key_value_heads\" = {kv} differs from \
                     num_attention_heads = {n_heads}: grouped-query attention is not implemented"
                );
            }
        }
        if let Some(a) = field("hidden_act") {
            if a.as_str() != Some("silu") {
                bail!(
                    "config.json: field \"hidden_act\" = {a}: only \"silu\" (SwiGLU) is implemented"
                );
            }
        }
        if let Some(b) = field("attention_bias") {
            if b.as_bool() != Some(false) {
                bail!(
                    "config.json: field \"attention_bias\" = {b}: biases on the q, k, v, o \
                     projections are not implemented (expected false)"
                );
            }
        }
        if let Some(r) = field("rope_scaling") {
            bail!("config.json: field \"rope_scaling\" = {r}: RoPE scaling is not implemented (expected null)");
        }
        if let Some(p) = field("attention_dropout") {
            if p.as_f64() != Some(0.0) {
                bail!(
                    "config.json: field \"attention_dropout\" = {p}: attention dropout is not \
                     implemented (expected 0.0)"
                );
            }
        }
        if let Some(h) = field("head_dim") {
            let dh = d_model.checked_div(n_heads).unwrap_or(0);
            if h.as_u64() != Some(dh as u64) || dh * n_heads != d_model {
                bail!(
                    "config.json: field \"head_dim\" = {h}: only hidden_size / \
                     num_attention_heads = {d_model} / {n_heads} is implemented"
                );
            }
        }
        let tie_word_embeddings = match field("tie_word_embeddings") {
            None => false, // OlmoConfig's default
            Some(t) => t.as_bool().ok_or_else(|| {
                anyhow::anyhow!(
                    "config.json: field \"tie_word_embeddings\" = {t}: expected true or false"
                )
            })?,
        };
        let clip_qkv = match field("clip_qkv") {
            None => None,
            Some(c) => Some(c.as_f64().filter(|c| c.is_finite() && *c > 0.0).ok_or_else(|| {
                anyhow::anyhow!("config.json: field \"clip_qkv\" = {c}: expected null or a positive number")
            })?),
        };
        let rope_theta = match field("rope_theta") {
            None => 10_000.0,
            Some(t) => t
                .as_f64()
                .filter(|t| t.is_finite() && *t > 0.0)
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "config.json: field \"rope_theta\" = {t}: expected a positive number"
                    )
                })?,
        };
        let eos_token_id = match field("eos_token_id") {
            None => 50_279, // OlmoConfig's default
            Some(e) => e
                .as_u64()
                .and_then(|e| u32::try_from(e).ok())
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "config.json: field \"eos_token_id\" = {e}: expected one token id"
                    )
                })?,
        };
        let vocab_size = get("vocab_size")?;
        let ours = field("baddata");
        let vocab_real = match ours.and_then(|o| o.get("vocab_real")) {
            None => vocab_size.min(50_280),
            Some(x) => x
                .as_u64()
                .and_then(|x| usize::try_from(x).ok())
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "config.json: field \"baddata.vocab_real\" = {x}: expected an integer"
                    )
                })?,
        };
        let layer_norm_eps = match ours.and_then(|o| o.get("layer_norm_eps")) {
            None => 1e-5,
            Some(x) => x.as_f64().filter(|e| e.is_finite() && *e > 0.0).ok_or_else(|| {
                anyhow::anyhow!("config.json: field \"baddata.layer_norm_eps\" = {x}: expected a positive number")
            })?,
        };
        let c = ModelConfig {
            n_layers: get("num_hidden_layers")?,
            d_model,
            n_heads,
            d_ff: get("intermediate_size")?,
            vocab_size,
            vocab_real,
            context: get("max_position_embeddings")?,
            rope_theta,
            layer_norm_eps,
            eos_token_id,
            tie_word_embeddings,
            clip_qkv,
        };
        c.validate()?;
        Ok(c)
    }
}
