//! Launchers for `cuda/attention.cu`: causal flash attention forward and backward on the tensor
//! cores (bf16 operands, fp32 accumulation and softmax). The math is
//! [`crate::backend::cpu::attention::forward`] / [`crate::backend::cpu::attention::backward`]
//! (see [`crate::backend::Backend::attention_fwd`] and
//! [`crate::backend::Backend::attention_bwd`]).
//!
//! Buffers (fp32, row-major, caller-owned, no output aliasing an input): `qkv` / `dqkv`
//! `[B, T, 3D]` (q ‖ k ‖ v per row, head `h` at columns `h·dh..(h+1)·dh` of each third), `z` /
//! `dz` `[B, T, H, dh]`, `lse` `[B, H, T]`, `shift` `[H·dh]`. Each view must hold at least the
//! elements the shape needs; only those are touched. The backward also uses a `[B, H, T]`
//! scratch (`Δ_i = dz_i·z_i`) owned by [`AttentionKernels`] and grown on demand.
//!
//! Tiling (see the kernel file): blocks of 4 warps over 64-row query or key tiles, warp `w`
//! owning rows `16w..16w+15`; the forward and dQ kernels loop over the key tiles of a query
//! tile's causal prefix, the dK/dV kernel over the query tiles at or after its key tile. No
//! atomics: results are bit-identical from launch to launch.

use std::sync::{Arc, Mutex};

use anyhow::{anyhow, bail, Context, Result};
use cudarc::driver::sys::CUfunction_attribute;
use cudarc::driver::{
    CudaFunction, CudaSlice, CudaStream, CudaView, CudaViewMut, LaunchConfig, PushKernelArg,
};

use super::{need_len, CudaDevice};
use crate::backend::AttnShape;

/// Threads per block (`ATT_THREADS`: 4 warps).
const THREADS: u32 = 128;
/// Rows per query or key tile (`ATT_BQ` = `ATT_BK`).
const TILE: usize = 64;
/// Head widths with compiled kernels.
pub const SUPPORTED_DH: [usize; 3] = [32, 64, 128];

/// Rounds a shared-memory region up to 128 bytes (`att_align`).
const fn align128(bytes: u32) -> u32 {
    (bytes + 127) & !127
}

/// Dynamic shared memory of `attention_fwd_d{dh}` in bytes (`attn_fwd_smem`): Q, K, V bf16
/// tiles `[64, dh + 8]`, the fp32 score tile `[64, 68]`, the bf16 probability tile `[64, 72]`,
/// the fp32 output tile `[64, dh + 4]` and 64 row factors.
pub const fn fwd_smem_bytes(dh: u32) -> u32 {
    3 * align128(64 * (dh + 8) * 2)
        + align128(64 * 68 * 4)
        + align128(64 * 72 * 2)
        + align128(64 * (dh + 4) * 4)
        + align128(64 * 4)
}

/// Dynamic shared memory of `attention_bwd_dkdv_d{dh}` and `attention_bwd_dq_d{dh}` in bytes
/// (`attn_bwd_smem`): four bf16 tiles `[64, dh + 8]`, two fp32 score tiles `[64, 68]` (reused
/// as one `[64, dh + 4]` output tile), two bf16 tiles `[64, 72]`, lse and Δ of 64 rows.
pub const fn bwd_smem_bytes(dh: u32) -> u32 {
    let s2 = 2 * align128(64 * 68 * 4);
    let o = align128(64 * (dh + 4) * 4);
    4 * align128(64 * (dh + 8) * 2)
        + if s2 > o { s2 } else { o }
        + 2 * align128(64 * 72 * 2)
        + 2 * align128(64 * 4)
}

/// The three kernels of one head width.
struct HeadKernels {
    dh: usize,
    fwd: CudaFunction,
    dkdv: CudaFunction,
    dq: CudaFunction,
    /// Why these kernels cannot run on this GPU (their shared memory exceeds its per-block
    /// limit, e.g. dh = 128 needs 120.5 KiB, more than the 99 KiB of sm_86 or sm_89), or `None`.
    unavailable: Option<String>,
}

/// The kernels of `cuda/attention.cu`, bound to a stream, with the backward's Δ scratch.
pub struct AttentionKernels {
    per_dh: Vec<HeadKernels>,
    delta_fn: CudaFunction,
    stream: Arc<CudaStream>,
    delta: Mutex<Option<CudaSlice<f32>>>,
}

/// Raises `f`'s dynamic shared-memory limit to `bytes` (needed above 48 KiB).
fn allow_smem(f: &CudaFunction, name: &str, bytes: u32) -> Result<()> {
    f.set_attribute(
        CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
        bytes as i32,
    )
    .map_err(|e| {
        anyhow!("attention: cannot give kernel `{name}` {bytes} bytes of shared memory: {e}")
    })
}

/// Checks the shape against the kernels' limits: a supported `dh`, `T` and `H` within `i32`,
/// `H` and `B` within the grid's y and z limits (65,535).
fn check_shape(op: &str, s: AttnShape) -> Result<()> {
    if !SUPPORTED_DH.contains(&s.dh) {
        bail!(
            "{op}: head width dh = {} is not supported by the CUDA attention kernels \
             (supported: {SUPPORTED_DH:?})",
            s.dh
        );
    }
    if s.t > i32::MAX as usize || s.h > 65_535 || s.b > 65_535 {
        bail!(
            "{op}: shape B={} T={} H={} is out of range (T < 2^31, H and B at most 65,535)",
            s.b,
            s.t,
            s.h
        );
    }
    let rows = s.b.checked_mul(s.t).and_then(|n| n.checked_mul(s.h));
    if rows.map_or(true, |r| r.div_ceil(4) > i32::MAX as usize) {
        bail!(
            "{op}: shape B={} T={} H={} has too many rows",
            s.b,
            s.t,
            s.h
        );
    }
    Ok(())
}

/// Grid of one block per (64-row tile, head, sequence) with the given dynamic shared memory.
fn tile_config(s: AttnShape, smem: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (s.t.div_ceil(TILE) as u32, s.h as u32, s.b as u32),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: smem,
    }
}

impl AttentionKernels {
    /// Looks the kernels up in the `attention` module and raises their shared-memory limits.
    pub fn new(gpu: &CudaDevice) -> Result<Self> {
        let mut per_dh = Vec::with_capacity(SUPPORTED_DH.len());
        for dh in SUPPORTED_DH {
            let names = [
                format!("attention_fwd_d{dh}"),
                format!("attention_bwd_dkdv_d{dh}"),
                format!("attention_bwd_dq_d{dh}"),
            ];
            let fwd = gpu.function("attention", &names[0])?;
            let dkdv = gpu.function("attention", &names[1])?;
            let dq = gpu.function("attention", &names[2])?;
            // A GPU with less shared memory per block than one head width needs still runs the
            // others: the failure is kept and reported when that width is launched.
            let unavailable = allow_smem(&fwd, &names[0], fwd_smem_bytes(dh as u32))
                .and_then(|()| allow_smem(&dkdv, &names[1], bwd_smem_bytes(dh as u32)))
                .and_then(|()| allow_smem(&dq, &names[2], bwd_smem_bytes(dh as u32)))
                .err()
                .map(|e| format!("{e:#}"));
            per_dh.push(HeadKernels {
                dh,
                fwd,
                dkdv,
                dq,
                unavailable,
            });
        }
        Ok(AttentionKernels {
            per_dh,
            delta_fn: gpu.function("attention", "attention_bwd_delta")?,
            stream: gpu.stream().clone(),
            delta: Mutex::new(None),
        })
    }

    fn kernels(&self, dh: usize) -> Result<&HeadKernels> {
        let k = self
            .per_dh
            .iter()
            .find(|k| k.dh == dh)
            .with_context(|| format!("attention: no kernels for head width dh = {dh}"))?;
        if let Some(why) = &k.unavailable {
            bail!("attention: the dh = {dh} kernels cannot run on this GPU: {why}");
        }
        Ok(k)
    }

    /// Causal attention forward: `qkv` `[B, T, 3D]` (q ‖ k ‖ v per row; head h at columns
    /// `h·dh..(h+1)·dh` of each third) → `z` `[B, T, H, dh]`,
    /// `z_i = Σ_{j≤i} softmax_j(q_i·k_j/√dh)·v_j`, and `lse` `[B, H, T]`, the natural
    /// log-sum-exp of each row of scaled scores. When `shift` is `Some` (a `[H·dh]` vector: the
    /// ITI head shift of this layer), `z[b, t, :] += shift` in the epilogue; `lse` is
    /// unaffected. `shift` is for inference only: [`Self::backward`] assumes an unshifted `z`.
    /// q, k, v are rounded to bf16 for the tensor cores (fp32 accumulation and softmax).
    pub fn forward(
        &self,
        z: &mut CudaViewMut<'_, f32>,
        lse: &mut CudaViewMut<'_, f32>,
        qkv: &CudaView<'_, f32>,
        s: AttnShape,
        shift: Option<&CudaView<'_, f32>>,
    ) -> Result<()> {
        check_shape("attention_fwd", s)?;
        let (n, d) = (s.n(), s.d());
        need_len("attention_fwd z", z.len(), n * d)?;
        need_len("attention_fwd lse", lse.len(), s.b * s.h * s.t)?;
        need_len("attention_fwd qkv", qkv.len(), n * 3 * d)?;
        if let Some(sh) = shift {
            need_len("attention_fwd shift", sh.len(), d)?;
        }
        if n == 0 || s.h == 0 {
            return Ok(());
        }
        let k = self.kernels(s.dh)?;
        let (t32, h32) = (s.t as i32, s.h as i32);
        let scale = 1.0f32 / (s.dh as f32).sqrt();
        let null: u64 = 0;
        let mut l = self.stream.launch_builder(&k.fwd);
        l.arg(z).arg(lse).arg(qkv);
        match shift {
            Some(sh) => l.arg(sh),
            None => l.arg(&null),
        };
        l.arg(&t32).arg(&h32).arg(&scale);
        // SAFETY: matches `attention_fwd_d{dh}(float*, float*, const float*, const float*
        // (null when no shift), int, int, float)`; buffer sizes checked above; the block's
        // dynamic shared memory is the size the kernel lays out (limit raised in `new`).
        unsafe { l.launch(tile_config(s, fwd_smem_bytes(s.dh as u32))) }
            .map_err(|e| anyhow!("attention_fwd launch failed: {e}"))?;
        Ok(())
    }

    /// Causal attention backward: overwrites `dqkv` `[B, T, 3D]` (all three thirds) from `dz`
    /// `[B, T, H, dh]`, the forward's unshifted `z` and `lse`, and `qkv`. With
    /// `p_ij = exp(q_i·k_j/√dh − lse_i)` and `Δ_i = bf16(dz_i)·z_i`: `dv_j = Σ_i p_ij dz_i`,
    /// `ds_ij = p_ij (dz_i·v_j − Δ_i)`, `dq_i = Σ_j ds_ij k_j/√dh`, `dk_j = Σ_i ds_ij q_i/√dh`.
    /// q, k, v, dz, P and dS are rounded to bf16 for the tensor cores; Δ and every sum are
    /// fp32. Three launches (Δ, then dK/dV per key tile, then dQ per query tile), no atomics.
    pub fn backward(
        &self,
        dqkv: &mut CudaViewMut<'_, f32>,
        dz: &CudaView<'_, f32>,
        z: &CudaView<'_, f32>,
        qkv: &CudaView<'_, f32>,
        lse: &CudaView<'_, f32>,
        s: AttnShape,
    ) -> Result<()> {
        check_shape("attention_bwd", s)?;
        let (n, d) = (s.n(), s.d());
        let nl = s.b * s.h * s.t;
        need_len("attention_bwd dqkv", dqkv.len(), n * 3 * d)?;
        need_len("attention_bwd dz", dz.len(), n * d)?;
        need_len("attention_bwd z", z.len(), n * d)?;
        need_len("attention_bwd qkv", qkv.len(), n * 3 * d)?;
        need_len("attention_bwd lse", lse.len(), nl)?;
        if n == 0 || s.h == 0 {
            return Ok(());
        }
        let k = self.kernels(s.dh)?;
        let mut guard = self
            .delta
            .lock()
            .map_err(|_| anyhow!("attention_bwd: the Δ scratch lock is poisoned"))?;
        if guard.as_ref().map_or(true, |b| b.len() < nl) {
            // SAFETY: every element the kernels read (the first B·H·T) is written by the Δ
            // kernel first, in stream order.
            let buf = unsafe { self.stream.alloc::<f32>(nl) }
                .map_err(|e| anyhow!("attention_bwd: cannot allocate {nl} floats for Δ: {e}"))?;
            *guard = Some(buf);
        }
        let delta = guard
            .as_mut()
            .context("attention_bwd: Δ scratch missing after allocation")?;
        let (b32, t32, h32, dh32) = (s.b as u32, s.t as u32, s.h as u32, s.dh as u32);
        let mut l = self.stream.launch_builder(&self.delta_fn);
        l.arg(&mut *delta)
            .arg(dz)
            .arg(z)
            .arg(&b32)
            .arg(&t32)
            .arg(&h32)
            .arg(&dh32);
        let rows = (n * s.h).div_ceil(4) as u32;
        // SAFETY: matches `attention_bwd_delta(float*, const float*, const float*, u32, u32, u32,
        // u32)`; Δ holds ≥ B·H·T elements, dz and z ≥ B·T·D (checked above); one warp per row.
        unsafe {
            l.launch(LaunchConfig {
                grid_dim: (rows, 1, 1),
                block_dim: (THREADS, 1, 1),
                shared_mem_bytes: 0,
            })
        }
        .map_err(|e| anyhow!("attention_bwd Δ launch failed: {e}"))?;

        let (ti, hi) = (s.t as i32, s.h as i32);
        let scale = 1.0f32 / (s.dh as f32).sqrt();
        let cfg = tile_config(s, bwd_smem_bytes(s.dh as u32));
        for (f, what) in [(&k.dkdv, "dK/dV"), (&k.dq, "dQ")] {
            let mut l = self.stream.launch_builder(f);
            l.arg(&mut *dqkv)
                .arg(dz)
                .arg(qkv)
                .arg(lse)
                .arg(&*delta)
                .arg(&ti)
                .arg(&hi)
                .arg(&scale);
            // SAFETY: matches `attention_bwd_{dkdv,dq}_d{dh}(float*, const float*, const float*,
            // const float*, const float*, int, int, float)`; sizes checked above; the dK/dV
            // kernel writes only the k and v thirds of dqkv, the dQ kernel only the q third.
            unsafe { l.launch(cfg) }
                .map_err(|e| anyhow!("attention_bwd {what} launch failed: {e}"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shared-memory sizes agree with the kernel file's formulas, evaluated by hand for
    /// dh = 128 (the largest): fwd 3·17408 + 17408 + 9216 + 33792 + 256, bwd 4·17408 +
    /// max(2·17408, 33792) + 2·9216 + 2·256; both within an H100's 227 KiB per block.
    #[test]
    fn smem_sizes_match_the_kernel_layout() {
        assert_eq!(fwd_smem_bytes(128), 112_896);
        assert_eq!(bwd_smem_bytes(128), 123_392);
        assert_eq!(fwd_smem_bytes(64), 3 * 9216 + 17408 + 9216 + 17408 + 256);
        assert_eq!(bwd_smem_bytes(32), 4 * 5120 + 34816 + 2 * 9216 + 512);
        assert!(bwd_smem_bytes(128) <= 227 * 1024);
    }

    /// Every head width fits the opt-in shared memory per block of an A100 (163 KiB) and an
    /// H100 (227 KiB), each also needs the attribute raised (more than the default 48 KiB), and
    /// at dh = 64 (OLMo-124M) two forward blocks fit one H100 SM (228 KiB, 1 KiB reserved per
    /// block).
    #[test]
    fn smem_fits_a100_and_h100() {
        for dh in SUPPORTED_DH {
            let (f, b) = (fwd_smem_bytes(dh as u32), bwd_smem_bytes(dh as u32));
            assert!(
                f <= 163 * 1024 && b <= 163 * 1024,
                "dh {dh}: fwd {f} bwd {b} bytes"
            );
            assert!(
                f > 48 * 1024 && b > 48 * 1024,
                "dh {dh}: fwd {f} bwd {b} bytes"
            );
        }
        assert!(2 * (fwd_smem_bytes(64) + 1024) <= 228 * 1024);
    }
}
