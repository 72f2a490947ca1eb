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

use crate::backend::{Span, SpanMut};
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

/// Where one weight matrix sits in a flat buffer: `rows × cols`, row-major, from `offset`. The
/// layout hands these out so that no caller recomputes a weight's length from the model's sizes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Matrix {
    /// Offset of the first element.
    pub offset: usize,
    /// Rows (a linear layer's output features).
    pub rows: usize,
    /// Columns (its input features).
    pub cols: usize,
}

impl Matrix {
    /// Number of elements, `rows · cols`.
    pub fn len(&self) -> usize {
        self.rows * self.cols
    }
    /// True for a matrix with no elements (never the case for a valid config).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The element range in the flat buffer.
    pub fn range(&self) -> std::ops::Range<usize> {
        self.offset..self.offset + self.len()
    }
    /// This matrix inside `buf` (the parameter buffer), for an op to read.
    pub fn of<'a, B: ?Sized>(&self, buf: &'a B) -> Span<'a, B> {
        Span::new(buf, self.offset, self.len())
    }
    /// This matrix inside `buf` (the gradient buffer), for an op to write.
    pub fn of_mut<'a, B: ?Sized>(&self, buf: &'a mut B) -> SpanMut<'a, B> {
        SpanMut::new(buf, self.offset, self.len())
    }
}

/// One block's fused weights in the flat buffer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LayerWeights {
    /// `[3D, D]`: q, k, v projections stacked by rows.
    pub qkv: Matrix,
    /// `[D, D]`: output projection.
    pub o: Matrix,
    /// `[2F, D]`: gate rows then up rows.
    pub gate_up: Matrix,
    /// `[D, F]`: down projection.
    pub down: Matrix,
}

/// Where every parameter sits in the flat buffer.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamLayout {
    /// The `[V, D]` embedding (always at offset 0).
    pub embed: Matrix,
    /// The `[V, D]` output layer: [`ParamLayout::embed`] when tied, else `lm_head.weight`, the
    /// last tensor of the buffer.
    pub head: Matrix,
    /// Per-block weights.
    pub layers: Vec<LayerWeights>,
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
            let m = |offset, rows, cols| Matrix { offset, rows, cols };
            layers.push(LayerWeights {
                qkv: m(qkv, 3 * d, d),
                o: m(o, d, d),
                gate_up: m(gate_up, 2 * f, d),
                down: m(down, d, f),
            });
        }
        let embed = Matrix {
            offset: 0,
            rows: v,
            cols: d,
        };
        let head = if cfg.tie_word_embeddings {
            embed
        } else {
            let head = off;
            push("lm_head.weight".into(), vec![v, d], true, &mut off);
            Matrix {
                offset: head,
                ..embed
            }
        };
        ParamLayout {
            embed,
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

/// Number of parameters of `cfg` (a tied embedding counted once): the length of its layout.
pub fn n_params(cfg: &ModelConfig) -> usize {
    ParamLayout::new(cfg).len()
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
        assert_eq!(b.head.offset, a.len());
        assert_eq!(b.head.range(), h.range());
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
            lay.layers[1].qkv.offset + 256 * 256
        );
        // Each fused matrix covers exactly the tensors it stacks.
        for (l, w) in lay.layers.iter().enumerate() {
            let at = |n: &str| lay.get(&format!("model.layers.{l}.{n}.weight")).unwrap();
            assert_eq!(w.qkv.offset, at("self_attn.q_proj").offset);
            assert_eq!(w.qkv.range().end, at("self_attn.v_proj").range().end);
            assert_eq!(w.o.range(), at("self_attn.o_proj").range());
            assert_eq!(w.gate_up.offset, at("mlp.gate_proj").offset);
            assert_eq!(w.gate_up.range().end, at("mlp.up_proj").range().end);
            assert_eq!(w.down.range(), at("mlp.down_proj").range());
        }
    }
}
