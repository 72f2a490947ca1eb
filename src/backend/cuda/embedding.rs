//! Launchers for `cuda/embedding.cu`: token embedding forward (gather) and a deterministic
//! backward (scatter-add without float atomics). The math is
//! [`crate::backend::cpu::embedding::embedding_fwd`] / [`crate::backend::cpu::embedding::embedding_bwd`].
//!
//! Buffers (fp32 row-major, caller-owned): `wte` / `dwte` `[V, d]` (spans of the flat parameter
//! and gradient buffers), `ids` `[n]` u32, `out` / `dout` `[n, d]`.
//!
//! The backward needs the positions grouped by token id. The ids come from the host when the
//! batch is staged, so the grouping is computed there ([`EmbeddingBwdPlan::new`], a stable sort
//! of `n` positions by id) and uploaded once per batch ([`EmbeddingBwdPlan::upload`]); the
//! kernel then gives each (id, column) element to one thread, which adds that id's positions in
//! increasing order: the same additions in the same order as the CPU loop, so the result is
//! bit-identical to the CPU reference and from run to run.

use std::sync::Arc;

use anyhow::{anyhow, bail, Result};
use cudarc::driver::{
    CudaFunction, CudaSlice, CudaStream, CudaView, CudaViewMut, LaunchConfig, PushKernelArg,
};

use super::{need_len, CudaDevice};

const EMB_THREADS: u32 = 128;

/// The positions of one batch grouped by token id, computed on the host: the distinct ids in
/// increasing order, where each id's positions start, and the positions themselves (increasing
/// within each id).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EmbeddingBwdPlan {
    /// Distinct ids, increasing (`[U]`).
    pub bucket_ids: Vec<u32>,
    /// `[U + 1]`: id `bucket_ids[b]` owns `positions[bucket_start[b]..bucket_start[b + 1]]`.
    pub bucket_start: Vec<u32>,
    /// `[n]` positions grouped by id, increasing within a group.
    pub positions: Vec<u32>,
    /// Vocabulary size the ids were checked against.
    pub vocab: usize,
}

impl EmbeddingBwdPlan {
    /// Groups positions `0..ids.len()` by id; every id must be below `vocab`.
    pub fn new(ids: &[u32], vocab: usize) -> Result<Self> {
        if ids.len() > u32::MAX as usize {
            bail!(
                "embedding backward plan: {} positions do not fit u32",
                ids.len()
            );
        }
        if let Some((i, &id)) = ids.iter().enumerate().find(|(_, &id)| id as usize >= vocab) {
            bail!("embedding backward plan: id {id} at position {i} is not below the vocabulary size {vocab}");
        }
        let mut positions: Vec<u32> = (0..ids.len() as u32).collect();
        // Stable: equal ids keep their positions in increasing order.
        positions.sort_by_key(|&p| ids[p as usize]);
        let mut bucket_ids = Vec::new();
        let mut bucket_start = Vec::new();
        for (k, &p) in positions.iter().enumerate() {
            let id = ids[p as usize];
            if bucket_ids.last() != Some(&id) {
                bucket_ids.push(id);
                bucket_start.push(k as u32);
            }
        }
        bucket_start.push(positions.len() as u32);
        Ok(EmbeddingBwdPlan {
            bucket_ids,
            bucket_start,
            positions,
            vocab,
        })
    }

    /// Number of positions `n`.
    pub fn n(&self) -> usize {
        self.positions.len()
    }

    /// Number of distinct ids `U`.
    pub fn buckets(&self) -> usize {
        self.bucket_ids.len()
    }

    /// Copies the plan to the device (three small u32 buffers).
    pub fn upload(&self, stream: &Arc<CudaStream>) -> Result<DeviceEmbeddingPlan> {
        // cudarc buffers are never empty here: pad an empty list with one unused 0.
        let up = |what: &str, v: &[u32]| -> Result<CudaSlice<u32>> {
            let data: &[u32] = if v.is_empty() { &[0] } else { v };
            stream
                .clone_htod(data)
                .map_err(|e| anyhow!("cannot upload the embedding plan's {what}: {e}"))
        };
        Ok(DeviceEmbeddingPlan {
            bucket_ids: up("bucket ids", &self.bucket_ids)?,
            bucket_start: up("bucket starts", &self.bucket_start)?,
            positions: up("positions", &self.positions)?,
            n: self.n(),
            n_buckets: self.buckets(),
            vocab: self.vocab,
        })
    }
}

/// An [`EmbeddingBwdPlan`] on the device.
pub struct DeviceEmbeddingPlan {
    bucket_ids: CudaSlice<u32>,
    bucket_start: CudaSlice<u32>,
    positions: CudaSlice<u32>,
    n: usize,
    n_buckets: usize,
    vocab: usize,
}

impl DeviceEmbeddingPlan {
    /// Number of positions `n`.
    pub fn n(&self) -> usize {
        self.n
    }
    /// Number of distinct ids.
    pub fn buckets(&self) -> usize {
        self.n_buckets
    }
    /// Vocabulary size `V`.
    pub fn vocab(&self) -> usize {
        self.vocab
    }
}

/// The kernels of `cuda/embedding.cu`, bound to a stream.
pub struct EmbeddingKernels {
    fwd_fn: CudaFunction,
    bwd_fn: CudaFunction,
    stream: Arc<CudaStream>,
    max_blocks: u32,
}

impl EmbeddingKernels {
    /// Looks the kernels up in the `embedding` module.
    pub fn new(gpu: &CudaDevice) -> Result<Self> {
        Ok(EmbeddingKernels {
            fwd_fn: gpu.function("embedding", "embedding_fwd")?,
            bwd_fn: gpu.function("embedding", "embedding_bwd")?,
            stream: gpu.stream().clone(),
            max_blocks: gpu.sm_count() * 16,
        })
    }

    /// `out[i, :] = wte[ids[i], :]` for `i < n`; `out` holds at least `n·d`, `ids` at least
    /// `n`, and `wte` is the whole `[V, d]` table (`V = wte.len() / d`). Ids must be below `V`
    /// (the caller checks them on the host; the kernel writes NaN over the row of an id that is
    /// not, without reading out of bounds).
    pub fn forward(
        &self,
        out: &mut CudaViewMut<'_, f32>,
        ids: &CudaView<'_, u32>,
        wte: &CudaView<'_, f32>,
        n: usize,
        d: usize,
    ) -> Result<()> {
        if d == 0 || wte.len() % d != 0 {
            bail!(
                "embedding_fwd: table of {} elements is not [V, {d}]",
                wte.len()
            );
        }
        need_len("embedding_fwd out", out.len(), n * d)?;
        need_len("embedding_fwd ids", ids.len(), n)?;
        let vocab = wte.len() / d;
        if n > u32::MAX as usize || d > u32::MAX as usize || vocab > u32::MAX as usize {
            bail!("embedding_fwd: shape n={n} d={d} V={vocab} exceeds u32");
        }
        if n == 0 {
            return Ok(());
        }
        let (n32, d32, v32) = (n as u32, d as u32, vocab as u32);
        let cfg = LaunchConfig {
            grid_dim: ((n as u32).min(self.max_blocks), 1, 1),
            block_dim: (EMB_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut b = self.stream.launch_builder(&self.fwd_fn);
        b.arg(out).arg(ids).arg(wte).arg(&n32).arg(&d32).arg(&v32);
        // SAFETY: matches `embedding_fwd(float*, const u32*, const float*, u32, u32, u32)`;
        // out holds n·d, ids n, wte V·d elements (checked above).
        unsafe { b.launch(cfg) }.map_err(|e| anyhow!("embedding_fwd launch failed: {e}"))?;
        Ok(())
    }

    /// ACCUMULATES `dwte[ids[i], :] += dout[i, :]` for the `n = plan.n()` positions of `plan`,
    /// in increasing `i` per id (bit-identical to the CPU reference). `dwte` holds at least
    /// `V·d` (`V = plan.vocab()`), `dout` at least `n·d`.
    pub fn backward(
        &self,
        dwte: &mut CudaViewMut<'_, f32>,
        dout: &CudaView<'_, f32>,
        plan: &DeviceEmbeddingPlan,
        d: usize,
    ) -> Result<()> {
        let n = plan.n;
        need_len("embedding_bwd dwte", dwte.len(), plan.vocab * d)?;
        need_len("embedding_bwd dout", dout.len(), n * d)?;
        if d == 0 || d > u32::MAX as usize || plan.vocab > u32::MAX as usize {
            bail!("embedding_bwd: d={d} V={} out of range", plan.vocab);
        }
        if n == 0 || plan.n_buckets == 0 {
            return Ok(());
        }
        // Column groups of one row: float4s when d % 4 == 0 (the kernel strides over the
        // columns, so the scalar fallback for unaligned views is covered too).
        let cols = if d % 4 == 0 { d / 4 } else { d };
        let cfg = LaunchConfig {
            grid_dim: (
                plan.n_buckets as u32,
                // The kernel strides over columns: any grid.y (at most 65535) covers them.
                (cols as u32).div_ceil(EMB_THREADS).min(65535),
                1,
            ),
            block_dim: (EMB_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let (nb32, d32, v32) = (plan.n_buckets as u32, d as u32, plan.vocab as u32);
        let mut b = self.stream.launch_builder(&self.bwd_fn);
        b.arg(dwte)
            .arg(dout)
            .arg(&plan.bucket_ids)
            .arg(&plan.bucket_start)
            .arg(&plan.positions)
            .arg(&nb32)
            .arg(&d32)
            .arg(&v32);
        // SAFETY: matches `embedding_bwd(float*, const float*, const u32*, const u32*,
        // const u32*, u32, u32, u32)`; the plan's ids are < V and its positions < n (built by
        // EmbeddingBwdPlan::new), dwte holds V·d and dout n·d elements (checked above).
        unsafe { b.launch(cfg) }.map_err(|e| anyhow!("embedding_bwd launch failed: {e}"))?;
        Ok(())
    }
}
