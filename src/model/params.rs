//! Parameter layout: every weight of the model lives in one flat buffer.
//!
//! One flat buffer lets the optimizer, the gradient norm and checkpointing treat the model as a
//! single vector (one AdamW launch over all parameters on the GPU), while each op reads its
//! weight through an offset. Matrices are row-major `[out, in]`, as PyTorch's `nn.Linear` stores
//! them, so `y = x · Wᵀ`.
//!
//! Order in the buffer (and fusion in memory):
//! ```text
//! embed            [V, D]                         model.embed_tokens.weight (the head too, when tied)
//! for each layer l:
//!   qkv            [3D, D]  = q_proj ‖ k_proj ‖ v_proj   (rows stacked: one matmul makes q, k, v)
//!   o              [D, D]                         self_attn.o_proj
//!   gate_up        [2F, D]  = gate_proj ‖ up_proj
//!   down           [D, F]                         mlp.down_proj
//! head             [V, D]                         lm_head.weight (only when untied)
//! ```
//! Weight decay: every matrix but the embedding, as OLMo's optimizer groups it (an `nn.Linear`
//! weight is decayed, an `nn.Embedding` weight is not unless `decay_embeddings`): an untied
//! `lm_head` is a linear layer, so it is decayed. The embedding comes first, so the undecayed
//! region is the prefix `[0, V·D)` (AdamW's `no_decay_len`) with or without a head.

use crate::config::ModelConfig;

/// One named tensor inside the flat parameter buffer, under its Hugging Face name.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorSpec {
    /// Hugging Face OLMo name, e.g. `model.layers.0.self_attn.q_proj.weight`.
    pub name: String,
    /// Row-major shape.
    pub shape: Vec<usize>,
    /// Offset of the first element in the flat buffer.
    pub offset: usize,
    /// Whether AdamW applies weight decay to it (projections yes, the embedding no, as OLMo).
    pub decay: bool,
}

impl TensorSpec {
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }
    /// True for a tensor with no elements (never the case for a valid config).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The element range in the flat buffer.
    pub fn range(&self) -> std::ops::Range<usize> {
        self.offset..self.offset + self.len()
    }
}

/// Offsets of one block's fused weights in the flat buffer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LayerOffsets {
    /// `[3D, D]`: q, k, v projections stacked by rows.
    pub qkv: usize,
    /// `[D, D]`: output projection.
    pub o: usize,
    /// `[2F, D]`: gate rows then up rows.
    pub gate_up: usize,
    /// `[D, F]`: down projection.
    pub down: usize,
}

/// Where every parameter sits in the flat buffer.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamLayout {
    /// Offset of the `[V, D]` embedding (always 0).
    pub embed: usize,
    /// Offset of the `[V, D]` output layer: [`ParamLayout::embed`] when tied, else that of
    /// `lm_head.weight`, the last tensor of the buffer.
    pub head: usize,
    /// Per-block offsets.
    pub layers: Vec<LayerOffsets>,
    /// Every tensor under its HF name, in buffer order (q, k, v and gate, up listed separately).
    pub tensors: Vec<TensorSpec>,
    total: usize,
}

impl ParamLayout {
    /// Lays out the parameters of `cfg`.
    pub fn new(cfg: &ModelConfig) -> Self {
        let (v, d, f) = (cfg.vocab_size, cfg.d_model, cfg.d_ff);
        let mut tensors = Vec::new();
        let mut off = 0usize;
        let mut push = |name: String, shape: Vec<usize>, decay: bool, off: &mut usize| {
            let t = TensorSpec {
                name,
                shape,
                offset: *off,
                decay,
            };
            *off += t.len();
            tensors.push(t);
        };
        push(
            "model.embed_tokens.weight".into(),
            vec![v, d],
            false,
            &mut off,
        );
        let mut layers = Vec::with_capacity(cfg.n_layers);
        for l in 0..cfg.n_layers {
            let p = format!("model.layers.{l}");
            let qkv = off;
            for n in ["q", "k", "v"] {
                push(
                    format!("{p}.self_attn.{n}_proj.weight"),
                    vec![d, d],
                    true,
                    &mut off,
                );
            }
            let o = off;
            push(
                format!("{p}.self_attn.o_proj.weight"),
                vec![d, d],
                true,
                &mut off,
            );
            let gate_up = off;
            push(
                format!("{p}.mlp.gate_proj.weight"),
                vec![f, d],
                true,
                &mut off,
            );
            push(
                format!("{p}.mlp.up_proj.weight"),
                vec![f, d],
                true,
                &mut off,
            );
            let down = off;
            push(
                format!("{p}.mlp.down_proj.weight"),
                vec![d, f],
                true,
                &mut off,
            );
            layers.push(LayerOffsets {
                qkv,
                o,
                gate_up,
                down,
            });
        }
        let head = if cfg.tie_word_embeddings {
            0
        } else {
            let head = off;
            push("lm_head.weight".into(), vec![v, d], true, &mut off);
            head
        };
        ParamLayout {
            embed: 0,
            head,
            layers,
            tensors,
            total: off,
        }
    }

    /// Total number of parameters.
    pub fn len(&self) -> usize {
        self.total
    }

    /// True when there are no parameters.
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// Looks a tensor up by its HF name.
    pub fn get(&self, name: &str) -> Option<&TensorSpec> {
        self.tensors.iter().find(|t| t.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn olmo_1b_has_1_18b_parameters() {
        let cfg = ModelConfig::preset("olmo-1b").unwrap();
        let n = ParamLayout::new(&cfg).len();
        // OLMo-1B reports 1,176,764,416 parameters (embedding 50,304 × 2048 counted once).
        assert_eq!(n, 1_176_764_416);
    }

    #[test]
    fn untied_head_is_one_decayed_tensor_at_the_end() {
        let tied = ModelConfig::preset("olmo-1b").unwrap();
        let cfg = ModelConfig {
            tie_word_embeddings: false,
            ..tied.clone()
        };
        let (a, b) = (ParamLayout::new(&tied), ParamLayout::new(&cfg));
        assert_eq!(a.head, a.embed);
        assert_eq!(b.len(), a.len() + 50_304 * 2048);
        let h = b.tensors.last().unwrap();
        assert_eq!(
            (h.name.as_str(), h.offset, h.decay),
            ("lm_head.weight", a.len(), true)
        );
        assert_eq!(b.head, a.len());
        assert_eq!(&b.tensors[..b.tensors.len() - 1], &a.tensors[..]);
    }

    #[test]
    fn tensors_tile_the_buffer() {
        let cfg = ModelConfig {
            tie_word_embeddings: false,
            ..ModelConfig::preset("tiny").unwrap()
        };
        let lay = ParamLayout::new(&cfg);
        let mut next = 0;
        for t in &lay.tensors {
            assert_eq!(t.offset, next, "{}", t.name);
            next += t.len();
        }
        assert_eq!(next, lay.len());
        assert_eq!(
            lay.get("model.layers.1.self_attn.k_proj.weight")
                .unwrap()
                .offset,
            lay.layers[1].qkv + 256 * 256
        );
    }
}
