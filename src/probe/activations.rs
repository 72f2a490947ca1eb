//! Per-head activations at the last token: run each text through the model and keep
//! `blocks.{l}.attn.hook_z` (the per-head attention outputs, the input of `o_proj`) at the
//! text's last position, for every layer and head.
//!
//! ```text
//! Activations.data   [n_texts, L, H, dh]  f32, row-major
//! hook_z (per layer) [B, T, H, dh]        the model's workspace after a forward; row b's last
//!                                          token sits at ((b·T + T−1)·H + h)·dh
//! ```
//!
//! Each text is encoded as is (no special token added). A text longer than the model's context is
//! cut to its first `context` tokens (so the probe reads the activation at the last token the
//! model can see, with the positions it was trained on), and counted; with
//! [`CollectOptions::truncate`] false it is an error instead. Texts of equal token length are
//! batched together (up to [`CollectOptions::batch`] per forward pass).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use crate::backend::{Backend, Float};
use crate::data::tokenizer::Tokenizer;
use crate::model::Model;

/// The hook the probes read, per layer `l`: `blocks.{l}.attn.hook_z`.
pub fn hook_name(layer: usize) -> String {
    format!("blocks.{layer}.attn.hook_z")
}

/// Last-token `hook_z` of `n` texts: `[n, layers, heads, d_head]` f32.
#[derive(Clone, Debug, PartialEq)]
pub struct Activations {
    /// Number of texts.
    pub n: usize,
    /// Layers L.
    pub layers: usize,
    /// Heads per layer H.
    pub heads: usize,
    /// Head width dh.
    pub d_head: usize,
    /// `[n, L, H, dh]`, row-major.
    pub data: Vec<f32>,
}

impl Activations {
    /// Wraps `data` `[n, layers, heads, d_head]`, checking its length.
    pub fn from_vec(
        n: usize,
        layers: usize,
        heads: usize,
        d_head: usize,
        data: Vec<f32>,
    ) -> Result<Self> {
        ensure!(
            data.len() == n * layers * heads * d_head,
            "activations: {} values, expected n·L·H·dh = {n}·{layers}·{heads}·{d_head} = {}",
            data.len(),
            n * layers * heads * d_head
        );
        Ok(Activations {
            n,
            layers,
            heads,
            d_head,
            data,
        })
    }

    /// The `dh` values of text `i`, layer `l`, head `h`.
    pub fn row(&self, i: usize, l: usize, h: usize) -> &[f32] {
        let off = ((i * self.layers + l) * self.heads + h) * self.d_head;
        &self.data[off..off + self.d_head]
    }

    /// The features of one head for every text, widened to f64: `[n, dh]`.
    pub fn head_features(&self, l: usize, h: usize) -> Vec<f64> {
        let mut out = Vec::with_capacity(self.n * self.d_head);
        for i in 0..self.n {
            out.extend(self.row(i, l, h).iter().map(|&v| v as f64));
        }
        out
    }

    /// Writes the activations and their labels as safetensors: `hook_z_last` F32 `[n, L, H, dh]`
    /// and `labels` U8 `[n]`, with metadata `hook`, `position` and the caller's `meta` entries.
    pub fn save(&self, path: &Path, labels: &[u8], meta: &BTreeMap<String, String>) -> Result<()> {
        ensure!(
            labels.len() == self.n,
            "saving activations: {} labels for {} texts",
            labels.len(),
            self.n
        );
        let shape = vec![self.n, self.layers, self.heads, self.d_head];
        let acts = TensorView::new(Dtype::F32, shape, bytemuck::cast_slice(&self.data))?;
        let lab = TensorView::new(Dtype::U8, vec![self.n], labels)?;
        let mut m: HashMap<String, String> = meta.clone().into_iter().collect();
        m.insert("hook".into(), "blocks.{l}.attn.hook_z".into());
        m.insert("position".into(), "last token".into());
        m.insert(
            "layout".into(),
            "[n_texts, n_layers, n_heads, d_head]".into(),
        );
        safetensors::serialize_to_file([("hook_z_last", acts), ("labels", lab)], Some(m), path)
            .with_context(|| format!("writing {}", path.display()))
    }

    /// Reads a file written by [`Activations::save`]: the activations, the labels and the
    /// metadata.
    pub fn load(path: &Path) -> Result<(Activations, Vec<u8>, HashMap<String, String>)> {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let (_, header) = SafeTensors::read_metadata(&bytes)
            .with_context(|| format!("{}: not a valid safetensors file", path.display()))?;
        let meta = header.metadata().clone().unwrap_or_default();
        let st = SafeTensors::deserialize(&bytes)
            .with_context(|| format!("{}: not a valid safetensors file", path.display()))?;
        let a = st.tensor("hook_z_last").map_err(|_| {
            anyhow::anyhow!("{}: tensor \"hook_z_last\" is missing", path.display())
        })?;
        let &[n, l, h, dh] = a.shape() else {
            bail!(
                "{}: \"hook_z_last\" has shape {:?}, expected [n_texts, n_layers, n_heads, d_head]",
                path.display(),
                a.shape()
            );
        };
        ensure!(
            a.dtype() == Dtype::F32,
            "{}: \"hook_z_last\" is {:?}, expected F32",
            path.display(),
            a.dtype()
        );
        let data = a
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let lab = st
            .tensor("labels")
            .map_err(|_| anyhow::anyhow!("{}: tensor \"labels\" is missing", path.display()))?;
        ensure!(
            lab.dtype() == Dtype::U8 && lab.shape() == [n],
            "{}: \"labels\" must be U8 [{n}], found {:?} {:?}",
            path.display(),
            lab.dtype(),
            lab.shape()
        );
        Ok((
            Activations::from_vec(n, l, h, dh, data)?,
            lab.data().to_vec(),
            meta,
        ))
    }
}

/// How texts become activations.
#[derive(Clone, Debug)]
pub struct CollectOptions {
    /// Cut texts longer than the context to their first `context` tokens (else: an error).
    pub truncate: bool,
    /// Most texts per forward pass (texts of equal token length only).
    pub batch: usize,
    /// Show a progress bar over texts on stderr.
    pub progress: bool,
}

impl Default for CollectOptions {
    fn default() -> Self {
        CollectOptions {
            truncate: true,
            batch: 16,
            progress: false,
        }
    }
}

/// Activations plus what happened on the way.
#[derive(Clone, Debug)]
pub struct Collected {
    /// `[n, L, H, dh]` last-token `hook_z`.
    pub acts: Activations,
    /// Texts cut to the context.
    pub truncated: usize,
    /// Token count of each text after any cut.
    pub lengths: Vec<usize>,
}

/// Encodes `texts` and collects each one's last-token `hook_z` for every layer and head (see
/// the module docs). `name` names the text set in errors (`name: text 12 ...`).
pub fn collect<B: Backend>(
    model: &mut Model<B>,
    params: &B::Buf,
    tokenizer: &Tokenizer,
    texts: &[String],
    name: &str,
    opts: &CollectOptions,
) -> Result<Collected> {
    ensure!(
        !texts.is_empty(),
        "{name}: no texts to read activations for"
    );
    let cfg = model.cfg.clone();
    let (l_n, h_n, dh) = (cfg.n_layers, cfg.n_heads, cfg.d_head());
    let ctx = cfg.context;
    let mut ids = tokenizer.encode_batch(texts)?;
    let mut truncated = 0;
    for (i, t) in ids.iter_mut().enumerate() {
        if t.is_empty() {
            bail!(
                "{name}: text {} encodes to no tokens: every text needs at least one",
                i + 1
            );
        }
        if t.len() > ctx {
            if !opts.truncate {
                bail!(
                    "{name}: text {} is {} tokens long, longer than the model's context of {ctx} \
                     (allow cutting it to its first {ctx} tokens to go on)",
                    i + 1,
                    t.len()
                );
            }
            t.truncate(ctx);
            truncated += 1;
        }
    }
    // Group by length (ascending, then input order), batches of up to opts.batch.
    let mut order: Vec<usize> = (0..ids.len()).collect();
    order.sort_by_key(|&i| (ids[i].len(), i));
    let pb = if opts.progress {
        let pb = ProgressBar::new(texts.len() as u64);
        pb.set_style(
            ProgressStyle::with_template("{bar:40} {pos}/{len} texts [{elapsed}<{eta}] {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        pb.set_message("reading hook_z");
        pb
    } else {
        ProgressBar::hidden()
    };
    let mut data = vec![0f32; texts.len() * l_n * h_n * dh];
    let mut start = 0;
    let mut batch_ids = Vec::new();
    while start < order.len() {
        let t = ids[order[start]].len();
        let mut end = start;
        while end < order.len() && end - start < opts.batch.max(1) && ids[order[end]].len() == t {
            end += 1;
        }
        let group = &order[start..end];
        batch_ids.clear();
        for &i in group {
            batch_ids.extend_from_slice(&ids[i]);
        }
        model
            .logits(params, &batch_ids, group.len(), t)
            .with_context(|| format!("{name}: forward pass over text {}", group[0] + 1))?;
        for l in 0..l_n {
            let (buf, b, seq) = model
                .activation(&hook_name(l))
                .with_context(|| format!("the model has no activation {}", hook_name(l)))?;
            ensure!(
                b == group.len() && seq == t,
                "hook_z has shape [{b}, {seq}], expected [{}, {t}]",
                group.len()
            );
            let z = model.backend().download(buf)?;
            for (r, &i) in group.iter().enumerate() {
                let src = ((r * t + t - 1) * h_n) * dh;
                let dst = (i * l_n + l) * h_n * dh;
                for k in 0..h_n * dh {
                    data[dst + k] = z[src + k].f64() as f32;
                }
            }
        }
        pb.inc(group.len() as u64);
        start = end;
    }
    pb.finish_and_clear();
    let lengths = ids.iter().map(|t| t.len()).collect();
    Ok(Collected {
        acts: Activations::from_vec(texts.len(), l_n, h_n, dh, data)?,
        truncated,
        lengths,
    })
}
