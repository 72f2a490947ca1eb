//! Non-parametric layernorm (OLMo v1: no weight, no bias), one row per task.

use crate::backend::Float;
use rayon::prelude::*;

/// Rows per rayon task.
const ROWS_PER_TASK: usize = 16;

/// Per row of `x` `[n, d]`: `mean = Σx/d`, `var = Σ(x − mean)²/d`, `rstd = 1/√(var + eps)`,
/// `out = (x − mean)·rstd`. Two passes over the row, sums in index order.
pub fn layernorm_fwd<T: Float>(
    out: &mut [T],
    mean: &mut [T],
    rstd: &mut [T],
    x: &[T],
    d: usize,
    eps: T,
) {
    let inv_d = T::one() / T::of(d as f64);
    out.par_chunks_mut(d * ROWS_PER_TASK)
        .zip(mean.par_chunks_mut(ROWS_PER_TASK))
        .zip(
            rstd.par_chunks_mut(ROWS_PER_TASK)
                .zip(x.par_chunks(d * ROWS_PER_TASK)),
        )
        .for_each(|((out, mean), (rstd, x))| {
            for (((o, m), r), x) in out
                .chunks_exact_mut(d)
                .zip(mean.iter_mut())
                .zip(rstd.iter_mut())
                .zip(x.chunks_exact(d))
            {
                let mu = x.iter().copied().sum::<T>() * inv_d;
                let var = x.iter().map(|&v| (v - mu) * (v - mu)).sum::<T>() * inv_d;
                let rs = T::one() / (var + eps).sqrt();
                for (o, &v) in o.iter_mut().zip(x) {
                    *o = (v - mu) * rs;
                }
                *m = mu;
                *r = rs;
            }
        });
}

/// Per row: `dx (+)= rstd·(dy − mean(dy) − xhat·mean(dy·xhat))` from the saved output `xhat`.
pub fn layernorm_bwd<T: Float>(
    dx: &mut [T],
    dy: &[T],
    xhat: &[T],
    rstd: &[T],
    d: usize,
    accumulate: bool,
) {
    let inv_d = T::one() / T::of(d as f64);
    dx.par_chunks_mut(d * ROWS_PER_TASK)
        .zip(dy.par_chunks(d * ROWS_PER_TASK))
        .zip(
            xhat.par_chunks(d * ROWS_PER_TASK)
                .zip(rstd.par_chunks(ROWS_PER_TASK)),
        )
        .for_each(|((dx, dy), (xhat, rstd))| {
            for (((dx, dy), xh), &rs) in dx
                .chunks_exact_mut(d)
                .zip(dy.chunks_exact(d))
                .zip(xhat.chunks_exact(d))
                .zip(rstd)
            {
                let mdy = dy.iter().copied().sum::<T>() * inv_d;
                let mdyx = dy.iter().zip(xh).map(|(&a, &b)| a * b).sum::<T>() * inv_d;
                for ((g, &a), &b) in dx.iter_mut().zip(dy).zip(xh) {
                    let v = rs * (a - mdy - b * mdyx);
                    *g = if accumulate { *g + v } else { v };
                }
            }
        });
}
