//! One probe per attention head: a seeded, stratified 80/20 split of the texts, a logistic
//! regression on each head's last-token `hook_z`, and the heads ranked by validation accuracy.

use anyhow::{ensure, Result};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use super::activations::HeadRows;
use super::logistic::{Logistic, LogisticConfig};

/// Indices of the training and validation texts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Split {
    /// Training texts, ascending.
    pub train: Vec<usize>,
    /// Validation texts, ascending.
    pub val: Vec<usize>,
}

/// A stratified split: within each class, a seeded shuffle sends `round(val_frac · count)` texts
/// (at least one, and at least one left to train on) to validation. Needs both classes with at
/// least two texts each.
pub fn stratified_split(labels: &[u8], val_frac: f64, seed: u64) -> Result<Split> {
    ensure!(
        val_frac > 0.0 && val_frac < 1.0,
        "validation fraction {val_frac} must be strictly between 0 and 1"
    );
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (mut train, mut val) = (Vec::new(), Vec::new());
    for class in [0u8, 1] {
        let mut idx: Vec<usize> = (0..labels.len()).filter(|&i| labels[i] == class).collect();
        ensure!(
            idx.len() >= 2,
            "class {class} has {} texts: a probe needs at least 2 of each class",
            idx.len()
        );
        idx.shuffle(&mut rng);
        let k = ((val_frac * idx.len() as f64).round() as usize).clamp(1, idx.len() - 1);
        val.extend_from_slice(&idx[..k]);
        train.extend_from_slice(&idx[k..]);
    }
    train.sort_unstable();
    val.sort_unstable();
    Ok(Split { train, val })
}

/// The probe of one head and how well it does.
#[derive(Clone, Debug)]
pub struct HeadResult {
    /// Layer.
    pub layer: usize,
    /// Head within the layer.
    pub head: usize,
    /// Accuracy on the training texts.
    pub train_accuracy: f64,
    /// Accuracy on the validation texts (what heads are ranked by).
    pub val_accuracy: f64,
    /// Mean validation log-loss (nats): the tie-breaker between equally accurate heads.
    pub val_log_loss: f64,
    /// The fitted probe.
    pub probe: Logistic,
}

/// Rows `idx` of `x` `[n, d]`.
pub fn gather(x: &[f64], d: usize, idx: &[usize]) -> Vec<f64> {
    let mut out = Vec::with_capacity(idx.len() * d);
    for &i in idx {
        out.extend_from_slice(&x[i * d..(i + 1) * d]);
    }
    out
}

/// Fits one probe per (layer, head) on the training split; results in (layer, head) order.
/// Heads are fitted in parallel; each fit is sequential, so the results do not depend on the
/// number of threads.
pub fn probe_heads<A: HeadRows + ?Sized>(
    acts: &A,
    labels: &[u8],
    split: &Split,
    cfg: &LogisticConfig,
) -> Result<Vec<HeadResult>> {
    ensure!(
        labels.len() == acts.n(),
        "{} labels for {} texts of activations",
        labels.len(),
        acts.n()
    );
    let d = acts.d_head();
    let y_train: Vec<u8> = split.train.iter().map(|&i| labels[i]).collect();
    let y_val: Vec<u8> = split.val.iter().map(|&i| labels[i]).collect();
    let heads: Vec<(usize, usize)> = (0..acts.layers())
        .flat_map(|l| (0..acts.heads()).map(move |h| (l, h)))
        .collect();
    heads
        .par_iter()
        .map(|&(layer, head)| {
            let x = acts.head_features(layer, head);
            let xt = gather(&x, d, &split.train);
            let xv = gather(&x, d, &split.val);
            let probe = Logistic::fit(&xt, &y_train, d, cfg)
                .map_err(|e| e.context(format!("probe of layer {layer} head {head}")))?;
            Ok(HeadResult {
                layer,
                head,
                train_accuracy: probe.accuracy(&xt, &y_train),
                val_accuracy: probe.accuracy(&xv, &y_val),
                val_log_loss: probe.log_loss(&xv, &y_val),
                probe,
            })
        })
        .collect()
}

/// Indices into `results`, best head first: higher validation accuracy, then lower validation
/// log-loss, then lower (layer, head).
pub fn rank(results: &[HeadResult]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..results.len()).collect();
    order.sort_by(|&a, &b| {
        let (ra, rb) = (&results[a], &results[b]);
        rb.val_accuracy
            .total_cmp(&ra.val_accuracy)
            .then(ra.val_log_loss.total_cmp(&rb.val_log_loss))
            .then((ra.layer, ra.head).cmp(&(rb.layer, rb.head)))
    });
    order
}
