//! Causal self-attention on the CPU, one rayon task per (batch, head): each task reads its head's
//! slices of `qkv` and writes only its own columns of the output, so tasks never share an output
//! element and every sum runs in a fixed order.
//!
//! Layout: `qkv` `[B, T, 3D]` with q at columns `[0, D)`, k at `[D, 2D)`, v at `[2D, 3D)`, head
//! `h` at `h·dh..(h+1)·dh` inside each third (HF's `view(B, T, H, dh)`); `z` `[B, T, H, dh]`;
//! `lse` `[B, H, T]`. Scores are recomputed row by row: no `T×T` matrix is kept.

use crate::backend::{AttnShape, Float};
use rayon::prelude::*;

/// A raw pointer that tasks writing disjoint elements may share.
#[derive(Clone, Copy)]
struct SharedMut<T>(*mut T);
// SAFETY: used only by tasks that write disjoint index sets (their own (batch, head) columns).
unsafe impl<T> Send for SharedMut<T> {}
unsafe impl<T> Sync for SharedMut<T> {}

impl<T> SharedMut<T> {
    /// The pointer (a method, so closures capture the whole `Send` wrapper, not the field).
    fn ptr(self) -> *mut T {
        self.0
    }

    /// Writes `src` at `off`.
    ///
    /// # Safety
    /// `off..off + src.len()` must lie in the buffer and be written by no other task.
    unsafe fn write(self, off: usize, src: &[T])
    where
        T: Copy,
    {
        std::ptr::copy_nonoverlapping(src.as_ptr(), self.0.add(off), src.len());
    }
}

/// Dot product with eight independent partial sums (vectorisable; fixed order).
#[inline]
pub fn dot<T: Float>(a: &[T], b: &[T]) -> T {
    let mut acc = [T::zero(); 8];
    let ca = a.chunks_exact(8);
    let cb = b.chunks_exact(8);
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] = acc[l] + x[l] * y[l];
        }
    }
    let mut s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for (&x, &y) in ra.iter().zip(rb) {
        s = s + x * y;
    }
    s
}

/// Query rows per block: each (batch, head) task walks its queries in blocks of `BQ` rows, so
/// every product is a small GEMM over the causal prefix of keys (`[BQ, i1]` scratch scores,
/// never the whole `T×T`); inside a rayon task [`Float::gemm`] runs single-threaded (no nested
/// parallelism).
const BQ: usize = 32;

/// Causal attention forward: `z_i = Σ_{j≤i} softmax_j(q_i·k_j/√dh)·v_j`, `lse_i` saved.
///
/// Per (batch, head) and query block `[i0, i1)`: `S = scale·Q_blk·K[..i1]ᵀ` (GEMM), masked
/// row softmax in place (`P`, zero above the diagonal), `Z_blk = P·V[..i1]` (GEMM).
pub fn forward<T: Float>(z: &mut [T], lse: &mut [T], qkv: &[T], s: AttnShape) {
    let AttnShape { b, t, h, dh } = s;
    let d = s.d();
    let scale = T::of(1.0 / (dh as f64).sqrt());
    let zp = SharedMut(z.as_mut_ptr());
    lse[..b * h * t]
        .par_chunks_mut(t)
        .enumerate()
        .for_each(|(bh, lse_row)| {
            let (bi, hi) = (bh / h, bh % h);
            let mut sc = vec![T::zero(); BQ * t];
            let base = bi * t * 3 * d + hi * dh;
            for i0 in (0..t).step_by(BQ) {
                let i1 = (i0 + BQ).min(t);
                let (bq, kn) = (i1 - i0, i1);
                // SAFETY: Q_blk [bq, dh] (row stride 3D), Kᵀ [dh, kn] (column stride 3D) lie in
                // qkv; sc holds bq·kn ≤ BQ·T elements.
                unsafe {
                    T::gemm(
                        bq,
                        dh,
                        kn,
                        scale,
                        qkv.as_ptr().add(base + i0 * 3 * d),
                        (3 * d) as isize,
                        1,
                        qkv.as_ptr().add(base + d),
                        1,
                        (3 * d) as isize,
                        T::zero(),
                        sc.as_mut_ptr(),
                        kn as isize,
                        1,
                    );
                }
                for (r, row) in sc[..bq * kn].chunks_exact_mut(kn).enumerate() {
                    let i = i0 + r;
                    let mx = row[..=i].iter().copied().fold(T::neg_infinity(), T::max);
                    let mut sum = T::zero();
                    for x in row[..=i].iter_mut() {
                        *x = (*x - mx).exp();
                        sum = sum + *x;
                    }
                    let inv = T::one() / sum;
                    row[..=i].iter_mut().for_each(|x| *x = *x * inv);
                    row[i + 1..].iter_mut().for_each(|x| *x = T::zero());
                    lse_row[i] = mx + sum.ln();
                }
                // SAFETY: P [bq, kn], V [kn, dh] (row stride 3D) in bounds; the output rows
                // i0..i1, columns of head hi of z are written by this task only.
                unsafe {
                    T::gemm(
                        bq,
                        kn,
                        dh,
                        T::one(),
                        sc.as_ptr(),
                        kn as isize,
                        1,
                        qkv.as_ptr().add(base + 2 * d),
                        (3 * d) as isize,
                        1,
                        T::zero(),
                        zp.ptr().add((bi * t + i0) * d + hi * dh),
                        d as isize,
                        1,
                    );
                }
            }
        });
}

/// Causal attention backward; overwrites `dqkv` `[B, T, 3D]`. See
/// [`crate::backend::Backend::attention_bwd`].
///
/// Per (batch, head) and query block: recompute `P = exp(scale·Q_blk·Kᵀ − lse)` (masked),
/// `dP = dZ_blk·Vᵀ`, `dS = P ⊙ (dP − Δ)·scale` with `Δ_i = dz_i·z_i`, then
/// `dQ_blk = dS·K`, `dK += dSᵀ·Q_blk`, `dV += Pᵀ·dZ_blk`; blocks in increasing order, so every
/// sum has a fixed order.
pub fn backward<T: Float>(dqkv: &mut [T], dz: &[T], z: &[T], qkv: &[T], lse: &[T], s: AttnShape) {
    let AttnShape { b, t, h, dh } = s;
    let d = s.d();
    let scale = T::of(1.0 / (dh as f64).sqrt());
    let gp = SharedMut(dqkv.as_mut_ptr());
    (0..b * h).into_par_iter().for_each(|bh| {
        let (bi, hi) = (bh / h, bh % h);
        let lse_row = &lse[bh * t..(bh + 1) * t];
        let mut p = vec![T::zero(); BQ * t];
        let mut ds = vec![T::zero(); BQ * t];
        let mut dk = vec![T::zero(); t * dh];
        let mut dv = vec![T::zero(); t * dh];
        let base = bi * t * 3 * d + hi * dh;
        let zbase = bi * t * d + hi * dh;
        let q = qkv.as_ptr();
        let rs3 = (3 * d) as isize;
        for i0 in (0..t).step_by(BQ) {
            let i1 = (i0 + BQ).min(t);
            let (bq, kn) = (i1 - i0, i1);
            // SAFETY (all GEMMs below): operands are the in-bounds head slices of qkv / dz
            // (row strides 3D and D) and the task-local scratch; outputs are task-local or the
            // rows i0..i1 of this head's q columns of dqkv, written by this task only.
            unsafe {
                // P ← scale·Q_blk·Kᵀ, dS ← dZ_blk·Vᵀ
                T::gemm(
                    bq,
                    dh,
                    kn,
                    scale,
                    q.add(base + i0 * 3 * d),
                    rs3,
                    1,
                    q.add(base + d),
                    1,
                    rs3,
                    T::zero(),
                    p.as_mut_ptr(),
                    kn as isize,
                    1,
                );
                T::gemm(
                    bq,
                    dh,
                    kn,
                    T::one(),
                    dz.as_ptr().add(zbase + i0 * d),
                    d as isize,
                    1,
                    q.add(base + 2 * d),
                    1,
                    rs3,
                    T::zero(),
                    ds.as_mut_ptr(),
                    kn as isize,
                    1,
                );
            }
            for r in 0..bq {
                let i = i0 + r;
                let o = zbase + i * d;
                let delta = dot(&dz[o..o + dh], &z[o..o + dh]);
                let prow = &mut p[r * kn..(r + 1) * kn];
                let drow = &mut ds[r * kn..(r + 1) * kn];
                for j in 0..kn {
                    if j <= i {
                        let pj = (prow[j] - lse_row[i]).exp();
                        prow[j] = pj;
                        drow[j] = pj * (drow[j] - delta) * scale;
                    } else {
                        prow[j] = T::zero();
                        drow[j] = T::zero();
                    }
                }
            }
            unsafe {
                // dQ_blk = dS·K[..kn]
                T::gemm(
                    bq,
                    kn,
                    dh,
                    T::one(),
                    ds.as_ptr(),
                    kn as isize,
                    1,
                    q.add(base + d),
                    rs3,
                    1,
                    T::zero(),
                    gp.ptr().add(base + i0 * 3 * d),
                    rs3,
                    1,
                );
                // dK[..kn] += dSᵀ·Q_blk ; dV[..kn] += Pᵀ·dZ_blk
                T::gemm(
                    kn,
                    bq,
                    dh,
                    T::one(),
                    ds.as_ptr(),
                    1,
                    kn as isize,
                    q.add(base + i0 * 3 * d),
                    rs3,
                    1,
                    T::one(),
                    dk.as_mut_ptr(),
                    dh as isize,
                    1,
                );
                T::gemm(
                    kn,
                    bq,
                    dh,
                    T::one(),
                    p.as_ptr(),
                    1,
                    kn as isize,
                    dz.as_ptr().add(zbase + i0 * d),
                    d as isize,
                    1,
                    T::one(),
                    dv.as_mut_ptr(),
                    dh as isize,
                    1,
                );
            }
        }
        for j in 0..t {
            let o = base + j * 3 * d;
            // SAFETY: k and v columns of head hi in row (bi, j): this task only.
            unsafe {
                gp.write(o + d, &dk[j * dh..(j + 1) * dh]);
                gp.write(o + 2 * d, &dv[j * dh..(j + 1) * dh]);
            }
        }
    });
}
