//! Incremental decoding on the CPU: RoPE at explicit positions with the KV-cache write
//! ([`kv_append`]), and one query per new token over its row's cached keys
//! ([`attention_decode`]), with the ITI head shift of the flagged tokens.
//!
//! Layouts (see [`CacheShape`], [`crate::backend::DECODE_META`]): `qkv` `[n, 3D]`, caches
//! `[rows, H, t_max, dh]`, `meta` `[n, 3]` (row, pos, shifted), `z` `[n, D]`, RoPE `table`
//! `[t_max, dh/2]` cosines then `[t_max, dh/2]` sines.

use anyhow::{bail, Result};
use rayon::prelude::*;

use super::attention::dot;
use super::pointwise;
use crate::backend::{AttnShape, CacheShape, Float, DECODE_META};

/// Checks that every token's (row, pos) lies inside the cache; returns them with the flags.
pub fn read_meta(meta: &[u32], n: usize, c: CacheShape) -> Result<Vec<(usize, usize, bool)>> {
    if meta.len() < n * DECODE_META {
        bail!(
            "decode metadata holds {} ids, {n} tokens need {}",
            meta.len(),
            n * DECODE_META
        );
    }
    meta[..n * DECODE_META]
        .chunks_exact(DECODE_META)
        .enumerate()
        .map(|(i, m)| {
            let (row, pos) = (m[0] as usize, m[1] as usize);
            if row >= c.rows || pos >= c.t_max {
                bail!(
                    "decode metadata of token {i}: (row {row}, pos {pos}) is outside a cache of \
                     {} rows × {} positions",
                    c.rows,
                    c.t_max
                );
            }
            Ok((row, pos, m[2] != 0))
        })
        .collect()
}

/// Offset of (row, head, pos) in a `[rows, H, t_max, dh]` cache.
fn at(c: CacheShape, row: usize, head: usize, pos: usize) -> usize {
    ((row * c.h + head) * c.t_max + pos) * c.dh
}

/// [`crate::backend::Backend::kv_append`]: token by token, RoPE of its q and k at its position
/// ([`pointwise::rope`] on a one-row table), then its rotated k and its v into the cache.
pub fn kv_append<T: Float>(
    qkv: &mut [T],
    k_cache: &mut [T],
    v_cache: &mut [T],
    table: &[T],
    meta: &[(usize, usize, bool)],
    c: CacheShape,
) {
    let (d, dh, half) = (c.d(), c.dh, c.dh / 2);
    let one = AttnShape {
        b: 1,
        t: 1,
        h: c.h,
        dh,
    };
    let mut tab = vec![T::zero(); dh];
    for (i, &(row, p, _)) in meta.iter().enumerate() {
        tab[..half].copy_from_slice(&table[p * half..(p + 1) * half]);
        let sin = c.t_max * half + p * half;
        tab[half..].copy_from_slice(&table[sin..sin + half]);
        let x = &mut qkv[i * 3 * d..(i + 1) * 3 * d];
        pointwise::rope(x, &tab, one, false);
        for hh in 0..c.h {
            let a = at(c, row, hh, p);
            k_cache[a..a + dh].copy_from_slice(&x[d + hh * dh..d + (hh + 1) * dh]);
            v_cache[a..a + dh].copy_from_slice(&x[2 * d + hh * dh..2 * d + (hh + 1) * dh]);
        }
    }
}

/// [`crate::backend::Backend::attention_decode`]: per (token, head), scores
/// `s_j = q·K[r, hh, j]/√dh` for `j ≤ p`, `w_j = exp(s_j − max s)/Σ exp(s − max s)`,
/// `z = Σ_j w_j V[r, hh, j]` (j in order); then `z += shift` on the flagged tokens. One rayon
/// task per token.
#[allow(clippy::too_many_arguments)]
pub fn attention_decode<T: Float>(
    z: &mut [T],
    qkv: &[T],
    k_cache: &[T],
    v_cache: &[T],
    meta: &[(usize, usize, bool)],
    c: CacheShape,
    shift: Option<&[T]>,
) {
    let (d, dh) = (c.d(), c.dh);
    let scale = T::of(1.0 / (dh as f64).sqrt());
    z.par_chunks_mut(d)
        .zip(meta.par_iter())
        .enumerate()
        .for_each(|(i, (zi, &(row, p, shifted)))| {
            let mut s = vec![T::zero(); p + 1];
            for hh in 0..c.h {
                let q = &qkv[i * 3 * d + hh * dh..i * 3 * d + (hh + 1) * dh];
                let base = at(c, row, hh, 0);
                for (j, sj) in s.iter_mut().enumerate() {
                    *sj = dot(q, &k_cache[base + j * dh..base + (j + 1) * dh]) * scale;
                }
                let mx = s.iter().copied().fold(T::neg_infinity(), T::max);
                let mut sum = T::zero();
                for sj in s.iter_mut() {
                    *sj = (*sj - mx).exp();
                    sum = sum + *sj;
                }
                let out = &mut zi[hh * dh..(hh + 1) * dh];
                out.iter_mut().for_each(|o| *o = T::zero());
                for (j, &sj) in s.iter().enumerate() {
                    let w = sj / sum;
                    let vj = &v_cache[base + j * dh..base + (j + 1) * dh];
                    out.iter_mut().zip(vj).for_each(|(o, &vv)| *o = *o + w * vv);
                }
            }
            if let (Some(sh), true) = (shift, shifted) {
                zi.iter_mut().zip(sh).for_each(|(a, &b)| *a = *a + b);
            }
        });
}
