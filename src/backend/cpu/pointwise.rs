//! Row-wise and element-wise ops: residual add, row-vector add, clamp, rotary embedding,
//! SwiGLU (the CPU side of `cuda/pointwise.cu`). Parallel over rows (each row written by one task: deterministic).

use crate::backend::{AttnShape, Float};
use rayon::prelude::*;

/// Rows per rayon task for cheap row ops.
const ROWS_PER_TASK: usize = 16;

/// `out = a + b` element-wise.
pub fn add<T: Float>(out: &mut [T], a: &[T], b: &[T]) {
    const CHUNK: usize = 1 << 14;
    out.par_chunks_mut(CHUNK)
        .zip(a.par_chunks(CHUNK).zip(b.par_chunks(CHUNK)))
        .for_each(|(o, (a, b))| {
            for ((o, &a), &b) in o.iter_mut().zip(a).zip(b) {
                *o = a + b;
            }
        });
}

/// `x[i, :] += v` for every row `i` of `x` `[n, d]`, `v` `[d]`.
pub fn add_rows<T: Float>(x: &mut [T], v: &[T]) {
    let d = v.len();
    x.par_chunks_mut(d * ROWS_PER_TASK).for_each(|rows| {
        for row in rows.chunks_exact_mut(d) {
            for (x, &s) in row.iter_mut().zip(v) {
                *x = *x + s;
            }
        }
    });
}

/// `x[i] = −c` where `x[i] < −c`, `c` where `x[i] > c` (NaN unchanged): `clip_qkv`'s clamp.
pub fn clamp<T: Float>(x: &mut [T], c: T) {
    const CHUNK: usize = 1 << 14;
    x.par_chunks_mut(CHUNK).for_each(|x| {
        for v in x {
            if *v < -c {
                *v = -c;
            } else if *v > c {
                *v = c;
            }
        }
    });
}

/// Clamp backward: `dx[i] = 0` unless `−c ≤ x[i] ≤ c` (`x` the clamp's input).
pub fn clamp_bwd<T: Float>(dx: &mut [T], x: &[T], c: T) {
    const CHUNK: usize = 1 << 14;
    dx.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .for_each(|(dx, x)| {
            for (d, &v) in dx.iter_mut().zip(x) {
                if !(v >= -c && v <= c) {
                    *d = T::zero();
                }
            }
        });
}

/// Rotary embedding in place on the q and k thirds of `qkv` `[B, T, 3D]`; `table` is `[T, dh/2]`
/// cosines then `[T, dh/2]` sines. Forward: `(x1, x2) -> (x1·c − x2·s, x2·c + x1·s)`;
/// `transpose` applies the inverse rotation `(y1, y2) -> (y1·c + y2·s, y2·c − y1·s)` (the
/// backward, since the rotation is orthogonal).
pub fn rope<T: Float>(qkv: &mut [T], table: &[T], s: AttnShape, transpose: bool) {
    let d = s.d();
    let half = s.dh / 2;
    let (cos, sin) = table[..s.t * s.dh].split_at(s.t * half);
    qkv.par_chunks_mut(3 * d).enumerate().for_each(|(row, x)| {
        let pos = row % s.t;
        let c = &cos[pos * half..(pos + 1) * half];
        let sn = &sin[pos * half..(pos + 1) * half];
        // q and k: 2H heads of dh contiguous values each.
        for head in x[..2 * d].chunks_exact_mut(s.dh) {
            let (x1, x2) = head.split_at_mut(half);
            for i in 0..half {
                let (a, b) = (x1[i], x2[i]);
                if transpose {
                    x1[i] = a * c[i] + b * sn[i];
                    x2[i] = b * c[i] - a * sn[i];
                } else {
                    x1[i] = a * c[i] - b * sn[i];
                    x2[i] = b * c[i] + a * sn[i];
                }
            }
        }
    });
}

/// Logistic sigmoid `σ(g) = 1 / (1 + e^(−g))`.
#[inline]
fn sigmoid<T: Float>(g: T) -> T {
    T::one() / (T::one() + (-g).exp())
}

/// `h[i, j] = silu(gu[i, j]) · gu[i, f + j]` with `silu(g) = g·σ(g)`; `gu` `[n, 2f]`, `h` `[n, f]`.
pub fn swiglu_fwd<T: Float>(h: &mut [T], gu: &[T], f: usize) {
    h.par_chunks_mut(f * ROWS_PER_TASK)
        .zip(gu.par_chunks(2 * f * ROWS_PER_TASK))
        .for_each(|(h, gu)| {
            for (h, gu) in h.chunks_exact_mut(f).zip(gu.chunks_exact(2 * f)) {
                let (g, u) = gu.split_at(f);
                for j in 0..f {
                    h[j] = g[j] * sigmoid(g[j]) * u[j];
                }
            }
        });
}

/// SwiGLU backward: `dgate = dh·up·σ(g)·(1 + g·(1 − σ(g)))`, `dup = dh·g·σ(g)`; `dgu` `[n, 2f]`.
pub fn swiglu_bwd<T: Float>(dgu: &mut [T], dh: &[T], gu: &[T], f: usize) {
    dgu.par_chunks_mut(2 * f * ROWS_PER_TASK)
        .zip(
            dh.par_chunks(f * ROWS_PER_TASK)
                .zip(gu.par_chunks(2 * f * ROWS_PER_TASK)),
        )
        .for_each(|(dgu, (dh, gu))| {
            for ((dgu, dh), gu) in dgu
                .chunks_exact_mut(2 * f)
                .zip(dh.chunks_exact(f))
                .zip(gu.chunks_exact(2 * f))
            {
                let (g, u) = gu.split_at(f);
                let (dg, du) = dgu.split_at_mut(f);
                for j in 0..f {
                    let sg = sigmoid(g[j]);
                    let silu = g[j] * sg;
                    du[j] = dh[j] * silu;
                    dg[j] = dh[j] * u[j] * sg * (T::one() + g[j] * (T::one() - sg));
                }
            }
        });
}
