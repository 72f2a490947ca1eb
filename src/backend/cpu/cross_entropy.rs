//! Fused softmax cross-entropy: loss per row and, optionally, the gradient written over the
//! logits (so the `[N, V]` buffer is reused).

use crate::backend::Float;
use anyhow::{bail, Result};
use rayon::prelude::*;

/// Per row `i` of `logits` `[n, v]`: `losses[i] = lse_i − logits[i, t_i]` with
/// `lse_i = max + ln Σ exp(logits − max)`; with `grad_scale = Some(s)` the row becomes
/// `s·(softmax − onehot(t_i))`.
pub fn cross_entropy<T: Float>(
    logits: &mut [T],
    losses: &mut [T],
    targets: &[u32],
    v: usize,
    grad_scale: Option<T>,
) -> Result<()> {
    if let Some((i, &t)) = targets.iter().enumerate().find(|(_, &t)| t as usize >= v) {
        bail!("cross_entropy: target {t} at position {i} is not below the vocabulary size {v}");
    }
    logits
        .par_chunks_mut(v)
        .zip(losses.par_iter_mut())
        .zip(targets.par_iter())
        .for_each(|((row, loss), &t)| {
            let t = t as usize;
            let mx = row.iter().copied().fold(T::neg_infinity(), T::max);
            let target_logit = row[t];
            match grad_scale {
                Some(s) => {
                    // One exp pass: keep e = exp(x − max) in the row, then scale by s/Σe.
                    let mut sum = T::zero();
                    for x in row.iter_mut() {
                        *x = (*x - mx).exp();
                        sum = sum + *x;
                    }
                    *loss = mx + sum.ln() - target_logit;
                    let k = s / sum;
                    row.iter_mut().for_each(|x| *x = *x * k);
                    row[t] = row[t] - s;
                }
                None => {
                    let sum = row.iter().map(|&x| (x - mx).exp()).sum::<T>();
                    *loss = mx + sum.ln() - target_logit;
                }
            }
        });
    Ok(())
}
