//! Token embedding: the forward gather and the backward scatter-add (the CPU side of
//! `cuda/embedding.cu`).

use crate::backend::Float;
use anyhow::{bail, Result};

/// `out[i, :] = wte[ids[i], :]`; `out` `[n, d]`, `wte` `[V, d]`.
pub fn embedding_fwd<T: Float>(out: &mut [T], ids: &[u32], wte: &[T], d: usize) -> Result<()> {
    let v = wte.len() / d;
    for (i, (row, &id)) in out.chunks_exact_mut(d).zip(ids).enumerate() {
        let id = id as usize;
        if id >= v {
            bail!("embedding: id {id} at position {i} is not below the vocabulary size {v}");
        }
        row.copy_from_slice(&wte[id * d..(id + 1) * d]);
    }
    Ok(())
}

/// `dwte[ids[i], :] += dout[i, :]`, i in increasing order (serial: ids repeat, so rows of
/// `dwte` are shared between positions; a fixed order keeps the sum deterministic).
pub fn embedding_bwd<T: Float>(dwte: &mut [T], ids: &[u32], dout: &[T], d: usize) -> Result<()> {
    let v = dwte.len() / d;
    for (i, (row, &id)) in dout.chunks_exact(d).zip(ids).enumerate() {
        let id = id as usize;
        if id >= v {
            bail!(
                "embedding backward: id {id} at position {i} is not below the vocabulary size {v}"
            );
        }
        for (g, &x) in dwte[id * d..(id + 1) * d].iter_mut().zip(row) {
            *g = *g + x;
        }
    }
    Ok(())
}
