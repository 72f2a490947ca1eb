//! Optimizer ops on flat buffers: the squared gradient norm and the AdamW update, generic over
//! the executor's float type and, in f32, bit-identical to [`crate::optim::adamw`].

use crate::backend::Float;
use crate::backend::StepArgs;
use rayon::prelude::*;

/// Elements per partial sum of [`norm_sq`] (the same chunking as `optim::adamw::global_norm`).
const NORM_CHUNK: usize = 4096;

/// Elements per rayon task of [`adamw`].
const ADAM_CHUNK: usize = 1 << 14;

/// `Σ g²` in f64: per 4096-element chunk a partial sum in index order, chunks added in order.
pub fn norm_sq<T: Float>(g: &[T]) -> f64 {
    let partial: Vec<f64> = g
        .par_chunks(NORM_CHUNK)
        .map(|c| c.iter().map(|&x| x.f64() * x.f64()).sum::<f64>())
        .collect();
    partial.iter().fold(0.0, |a, &s| a + s)
}

/// AdamW, element by element, with the operations in the order of
/// `optim::adamw::adamw_reference` (so f32 results match it bit for bit).
pub fn adamw<T: Float>(p: &mut [T], g: &[T], m: &mut [T], v: &mut [T], a: &StepArgs) {
    let c = |x: f32| T::of(x as f64);
    let (lr, b1, b2, eps, wd, cs, bc1, bc2) = (
        c(a.lr),
        c(a.beta1),
        c(a.beta2),
        c(a.eps),
        c(a.weight_decay),
        c(a.clip_scale),
        c(a.bias1),
        c(a.bias2),
    );
    let one = T::one();
    p.par_chunks_mut(ADAM_CHUNK)
        .zip(g.par_chunks(ADAM_CHUNK))
        .zip(
            m.par_chunks_mut(ADAM_CHUNK)
                .zip(v.par_chunks_mut(ADAM_CHUNK)),
        )
        .enumerate()
        .for_each(|(ci, ((p, g), (m, v)))| {
            for i in 0..p.len() {
                let gi = g[i] * cs;
                let mut pi = p[i];
                if (ci * ADAM_CHUNK + i) as u64 >= a.no_decay_len {
                    pi = pi - lr * wd * pi;
                }
                let mi = b1 * m[i] + (one - b1) * gi;
                let vi = b2 * v[i] + (one - b2) * gi * gi;
                let mhat = mi / bc1;
                let vhat = vi / bc2;
                p[i] = pi - lr * mhat / (vhat.sqrt() + eps);
                m[i] = mi;
                v[i] = vi;
            }
        });
}
