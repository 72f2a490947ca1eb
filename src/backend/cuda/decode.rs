//! Launchers for `cuda/decode.cu`: the two ops of KV-cache decoding, fp32, 1-D blocks,
//! deterministic. The math is [`crate::backend::cpu::decode::kv_append`] and
//! [`crate::backend::cpu::decode::attention_decode`].
//!
//! Buffers (fp32 row-major, caller-owned): `qkv` `[n, 3D]` (q ‖ k ‖ v per new token), caches
//! `[rows, H, t_max, dh]` ([`CacheShape`]), `meta` `[n, 3]` u32 (row, pos, shifted; see
//! [`crate::backend::DECODE_META`]), `table` `[t_max, dh/2]` cosines then `[t_max, dh/2]`
//! sines, `z` `[n, D]`, `shift` `[D]`. The caller (the executor) has checked every (row, pos)
//! of `meta` against the cache shape: the kernels index the caches with them unchecked.

use std::sync::Arc;

use anyhow::{anyhow, bail, Result};
use cudarc::driver::{
    CudaFunction, CudaStream, CudaView, CudaViewMut, LaunchConfig, PushKernelArg,
};

use super::{need_len, CudaDevice};
use crate::backend::{CacheShape, DECODE_META};

/// Threads per block of both kernels (`DEC_THREADS` in `cuda/decode.cu`).
const DEC_THREADS: u32 = 256;

/// Widest head `attention_decode` supports (`32·8`: eight columns per lane).
pub const MAX_DECODE_DH: usize = 256;

/// The kernels of `cuda/decode.cu`, bound to a stream.
pub struct DecodeKernels {
    append_fn: CudaFunction,
    /// `attention_decode_r{1,2,4,8}`: heads of up to 32, 64, 128, 256 columns.
    attn_fns: [CudaFunction; 4],
    stream: Arc<CudaStream>,
    max_blocks: u32,
}

/// Checks a cache shape the kernels can index (even head width, 32-bit extents).
fn check_shape(op: &str, n: usize, c: CacheShape) -> Result<()> {
    if c.dh == 0 || c.dh % 2 != 0 || c.h == 0 || c.t_max == 0 {
        bail!("{op}: cache shape {c:?} needs an even, non-zero head width and non-zero H, t_max");
    }
    if n > u32::MAX as usize / 3 || c.len() > u32::MAX as usize * 64 || c.t_max > u32::MAX as usize
    {
        bail!("{op}: {n} tokens over cache {c:?} is out of range");
    }
    Ok(())
}

impl DecodeKernels {
    /// Looks the kernels up in the `decode` module.
    pub fn new(gpu: &CudaDevice) -> Result<Self> {
        Ok(DecodeKernels {
            append_fn: gpu.function("decode", "kv_append")?,
            attn_fns: [
                gpu.function("decode", "attention_decode_r1")?,
                gpu.function("decode", "attention_decode_r2")?,
                gpu.function("decode", "attention_decode_r4")?,
                gpu.function("decode", "attention_decode_r8")?,
            ],
            stream: gpu.stream().clone(),
            max_blocks: gpu.sm_count() * 8 * 4,
        })
    }

    /// RoPE of the q and k of each new token at its position `meta[3i + 1]`, in place in `qkv`,
    /// then its rotated k and its v into `k_cache`, `v_cache` at (row, head, pos) (see
    /// [`crate::backend::Backend::kv_append`]). One thread per (token, head, rotation pair).
    #[allow(clippy::too_many_arguments)]
    pub fn kv_append(
        &self,
        qkv: &mut CudaViewMut<'_, f32>,
        k_cache: &mut CudaViewMut<'_, f32>,
        v_cache: &mut CudaViewMut<'_, f32>,
        table: &CudaView<'_, f32>,
        meta: &CudaView<'_, u32>,
        n: usize,
        c: CacheShape,
    ) -> Result<()> {
        check_shape("kv_append", n, c)?;
        need_len("kv_append qkv", qkv.len(), n * 3 * c.d())?;
        need_len("kv_append k_cache", k_cache.len(), c.len())?;
        need_len("kv_append v_cache", v_cache.len(), c.len())?;
        need_len("kv_append table", table.len(), c.t_max * c.dh)?;
        need_len("kv_append meta", meta.len(), n * DECODE_META)?;
        if n == 0 {
            return Ok(());
        }
        let work = n * c.h * (c.dh / 2);
        let blocks = work
            .div_ceil(DEC_THREADS as usize)
            .clamp(1, self.max_blocks as usize);
        let cfg = LaunchConfig {
            grid_dim: (blocks as u32, 1, 1),
            block_dim: (DEC_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let (n32, h32, dh32, t32) = (n as u32, c.h as u32, c.dh as u32, c.t_max as u32);
        let mut b = self.stream.launch_builder(&self.append_fn);
        b.arg(qkv)
            .arg(k_cache)
            .arg(v_cache)
            .arg(table)
            .arg(meta)
            .arg(&n32)
            .arg(&h32)
            .arg(&dh32)
            .arg(&t32);
        // SAFETY: matches `kv_append(float*, float*, float*, const float*, const unsigned*,
        // unsigned, unsigned, unsigned, unsigned)`; buffer sizes checked above, (row, pos) of
        // meta checked by the caller.
        unsafe { b.launch(cfg) }.map_err(|e| anyhow!("kv_append launch failed: {e}"))?;
        Ok(())
    }

    /// One query per (new token, head) over its row's cached positions `0..=pos`, online softmax
    /// in fp32, `z[i] += shift` for the tokens flagged in `meta` when `shift` is given (see
    /// [`crate::backend::Backend::attention_decode`]). One block of 256 threads per (token,
    /// head).
    #[allow(clippy::too_many_arguments)]
    pub fn attention_decode(
        &self,
        z: &mut CudaViewMut<'_, f32>,
        qkv: &CudaView<'_, f32>,
        k_cache: &CudaView<'_, f32>,
        v_cache: &CudaView<'_, f32>,
        meta: &CudaView<'_, u32>,
        n: usize,
        c: CacheShape,
        shift: Option<&CudaView<'_, f32>>,
    ) -> Result<()> {
        check_shape("attention_decode", n, c)?;
        if c.dh > MAX_DECODE_DH {
            bail!(
                "attention_decode: head width {} is wider than the {MAX_DECODE_DH} supported",
                c.dh
            );
        }
        need_len("attention_decode z", z.len(), n * c.d())?;
        need_len("attention_decode qkv", qkv.len(), n * 3 * c.d())?;
        need_len("attention_decode k_cache", k_cache.len(), c.len())?;
        need_len("attention_decode v_cache", v_cache.len(), c.len())?;
        need_len("attention_decode meta", meta.len(), n * DECODE_META)?;
        if let Some(sh) = shift {
            need_len("attention_decode shift", sh.len(), c.d())?;
        }
        if n == 0 {
            return Ok(());
        }
        let blocks = n * c.h;
        if blocks > i32::MAX as usize {
            bail!(
                "attention_decode: {n} tokens × {} heads is too many blocks",
                c.h
            );
        }
        let f = match c.dh.div_ceil(32) {
            1 => &self.attn_fns[0],
            2 => &self.attn_fns[1],
            3 | 4 => &self.attn_fns[2],
            _ => &self.attn_fns[3],
        };
        let cfg = LaunchConfig {
            grid_dim: (blocks as u32, 1, 1),
            block_dim: (DEC_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let (h32, dh32, t32) = (c.h as u32, c.dh as u32, c.t_max as u32);
        let scale = 1.0f32 / (c.dh as f32).sqrt();
        let null: u64 = 0;
        let mut b = self.stream.launch_builder(f);
        b.arg(z).arg(qkv).arg(k_cache).arg(v_cache).arg(meta);
        match shift {
            Some(sh) => b.arg(sh),
            None => b.arg(&null),
        };
        b.arg(&h32).arg(&dh32).arg(&t32).arg(&scale);
        // SAFETY: matches `attention_decode_r{R}(float*, const float*, const float*, const
        // float*, const unsigned*, const float* (null when no shift), unsigned, unsigned,
        // unsigned, float)`; sizes checked above (dh ≤ 32·R for the kernel picked), (row, pos)
        // of meta checked by the caller.
        unsafe { b.launch(cfg) }.map_err(|e| anyhow!("attention_decode launch failed: {e}"))?;
        Ok(())
    }
}
