//! Per-head activations at the last token: run each text through the model and keep
//! `blocks.{l}.attn.hook_z` (the per-head attention outputs, the input of `o_proj`) at the
//! text's last position, for every layer and head.
//!
//! ```text
//! hook_z (per layer) [B, T, H, dh]        the model's workspace after a forward; row b's last
//!                                          token sits at ((b·T + T−1)·H + h)·dh
//! batch rows         [B, L, H, dh]        f32, gathered over the layers, then pushed row by row
//!                                          to a CaptureWriter (file rows in batch order, each
//!                                          tagged with its text's index)
//! ```
//!
//! Each text is encoded as is (no special token added). A text longer than the model's context is
//! cut to its first `context` tokens (so the probe reads the activation at the last token the
//! model can see, with the positions it was trained on), and counted; with
//! [`CollectOptions::truncate`] false it is an error instead. Texts of equal token length are
//! batched together (up to [`CollectOptions::batch`] per forward pass).

use anyhow::{bail, ensure, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};

use super::capture::{CaptureShape, CaptureWriter};
use crate::backend::{Backend, Float};
use crate::data::tokenizer::Tokenizer;
use crate::model::Model;

/// The hook the probes read, per layer `l`: `blocks.{l}.attn.hook_z`.
pub fn hook_name(layer: usize) -> String {
    format!("blocks.{layer}.attn.hook_z")
}

/// Per-head activations of `n` texts, one `d_head` row per (text, layer, head): what the probes
/// read. Implemented by [`Activations`] (in memory) and by
/// [`Capture`](super::capture::Capture) (a memory-mapped capture file).
pub trait HeadRows: Sync {
    /// Number of texts.
    fn n(&self) -> usize;
    /// Layers L.
    fn layers(&self) -> usize;
    /// Heads per layer H.
    fn heads(&self) -> usize;
    /// Head width dh.
    fn d_head(&self) -> usize;
    /// The `dh` values of text `i`, layer `l`, head `h`.
    fn row(&self, i: usize, l: usize, h: usize) -> &[f32];

    /// The features of one head for every text in text order, widened to f64: `[n, dh]` (the
    /// only full gather the probes make: `n·dh` values).
    fn head_features(&self, l: usize, h: usize) -> Vec<f64> {
        let mut out = Vec::with_capacity(self.n() * self.d_head());
        for i in 0..self.n() {
            out.extend(self.row(i, l, h).iter().map(|&v| v as f64));
        }
        out
    }
}

/// Per-head activations held in memory: `[n, layers, heads, d_head]` f32 (for activations made
/// elsewhere, e.g. planted in tests; captures of texts go to disk through
/// [`CaptureWriter`]).
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
}

impl HeadRows for Activations {
    fn n(&self) -> usize {
        self.n
    }
    fn layers(&self) -> usize {
        self.layers
    }
    fn heads(&self) -> usize {
        self.heads
    }
    fn d_head(&self) -> usize {
        self.d_head
    }
    fn row(&self, i: usize, l: usize, h: usize) -> &[f32] {
        let off = ((i * self.layers + l) * self.heads + h) * self.d_head;
        &self.data[off..off + self.d_head]
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
    /// Rows per chunk of the capture file that [`run_probe`](super::run_probe) writes (`None`:
    /// as many as fit in
    /// [`DEFAULT_CHUNK_BYTES`](super::capture::DEFAULT_CHUNK_BYTES)).
    pub chunk_rows: Option<usize>,
}

impl Default for CollectOptions {
    fn default() -> Self {
        CollectOptions {
            truncate: true,
            batch: 16,
            progress: false,
            chunk_rows: None,
        }
    }
}

/// What happened on the way to a capture.
#[derive(Clone, Debug)]
pub struct Collected {
    /// Texts cut to the context.
    pub truncated: usize,
    /// Token count of each text after any cut.
    pub lengths: Vec<usize>,
}

/// Encodes `texts` and streams each one's last-token `hook_z` for every layer and head to `out`
/// (see the module docs), one row per text with the text's index as its id, batch by batch.
/// `out` must have the shape [`CaptureShape::hook_z_last`] of the model; the caller finishes it.
/// `name` names the text set in errors (`name: text 12 ...`).
///
/// Memory beyond the model's own: one batch of rows (`batch · L·H·dh` f32) and `out`'s chunk.
pub fn collect<B: Backend>(
    model: &mut Model<B>,
    params: &B::Buf,
    tokenizer: &Tokenizer,
    texts: &[String],
    name: &str,
    opts: &CollectOptions,
    out: &mut CaptureWriter,
) -> Result<Collected> {
    ensure!(
        !texts.is_empty(),
        "{name}: no texts to read activations for"
    );
    let cfg = model.cfg.clone();
    let want = CaptureShape::hook_z_last(&cfg);
    ensure!(
        *out.shape() == want,
        "{name}: the capture holds {:?}, the model's last-token hook_z is {want:?}",
        out.shape()
    );
    ensure!(
        out.rows() == 0,
        "{name}: the capture already holds {} rows",
        out.rows()
    );
    let (l_n, h_n, dh) = (cfg.n_layers, cfg.n_heads, cfg.d_head());
    let row_len = l_n * h_n * dh;
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
    let mut rows = Vec::new();
    let mut start = 0;
    let mut batch_ids = Vec::new();
    while start < order.len() {
        let t = ids[order[start]].len();
        let mut end = start;
        while end < order.len() && end - start < opts.batch.max(1) && ids[order[end]].len() == t {
            end += 1;
        }
        let group = &order[start..end];
        rows.clear();
        rows.resize(group.len() * row_len, 0f32);
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
            for r in 0..group.len() {
                let src = ((r * t + t - 1) * h_n) * dh;
                let dst = (r * l_n + l) * h_n * dh;
                for k in 0..h_n * dh {
                    rows[dst + k] = z[src + k].f64() as f32;
                }
            }
        }
        for (r, &i) in group.iter().enumerate() {
            out.push(i, &rows[r * row_len..(r + 1) * row_len])
                .with_context(|| format!("{name}: writing the activations of text {}", i + 1))?;
        }
        pb.inc(group.len() as u64);
        start = end;
    }
    pb.finish_and_clear();
    let lengths = ids.iter().map(|t| t.len()).collect();
    Ok(Collected { truncated, lengths })
}
